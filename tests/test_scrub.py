"""Scrubbing: each kind is replaced by its typed placeholder and counted; look-alikes are left alone."""

from __future__ import annotations

import pytest

from feedback.scrub import SCRUB_KINDS, Scrubber, luhn_valid, scrub_text


@pytest.mark.parametrize(
    ("kind", "text", "expected"),
    [
        ("api_key", "use sk-proj-Ab12Cd34Ef56Gh78Ij90Kl12 here", "use [API_KEY] here"),
        ("api_key", "key=sk-ant-api03-abcdefghijklmnopqrstuvwxyz0123", "key=[API_KEY]"),
        ("api_key", "token ghp_abcdefghijklmnopqrstuvwxyz0123456789", "token [API_KEY]"),
        ("api_key", "gateway key tl-4Vq9x0bYcZ-d_ePfQgRhSiTjUkVlWmXnYoZp1q2r3s4", "gateway key [API_KEY]"),
        ("aws_key", "id AKIAIOSFODNN7EXAMPLE ok", "id [AWS_KEY] ok"),
        (
            "aws_key",
            "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "aws_secret_access_key = [AWS_KEY]",
        ),
        ("bearer_token", "Authorization: Bearer abc123def456ghi789jkl", "Authorization: Bearer [TOKEN]"),
        (
            "bearer_token",
            "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
            "jwt [TOKEN]",
        ),
        ("email", "write to jane.doe+news@mail.example.co.uk.", "write to [EMAIL]."),
        ("card_number", "card 4111 1111 1111 1111 exp 12/29", "card [CARD_NUMBER] exp 12/29"),
        ("card_number", "amex 3782-822463-10005", "amex [CARD_NUMBER]"),
        ("card_number", "raw 5555555555554444.", "raw [CARD_NUMBER]."),
        ("phone", "call +1 (555) 123-4567 now", "call [PHONE] now"),
        ("phone", "office: +44 20 7946 0958", "office: [PHONE]"),
        ("phone", "555.123.4567 or 555-123-4567", "[PHONE] or [PHONE]"),
    ],
)
def test_each_kind_becomes_its_placeholder_and_is_counted(kind: str, text: str, expected: str) -> None:
    clean, counts = scrub_text(text)
    assert clean == expected
    assert counts == {kind: expected.count("[")}


@pytest.mark.parametrize(
    "text",
    [
        "released on 2024-01-15 at 10:30:00",
        "host 192.168.100.200 and 10.0.0.1, version 1.2.3",
        "order 12345678901 shipped; ts 1700000000000",
        "card-like 4111 1111 1111 1112 fails the Luhn check",
        "a task-abcdefghijklmnopqrstuvwxyz is not a key",
        "bearer tokens are short-lived",
        "pi is 3.14159265358979",
        "email me at the usual address",
    ],
)
def test_look_alikes_are_left_alone(text: str) -> None:
    assert scrub_text(text) == (text, {})


def test_disabled_kinds_stay_and_extra_kinds_apply() -> None:
    scrubber = Scrubber(kinds=("email",), extra={"employee_id": r"\bEMP-\d{6}\b"})
    text = "bob@example.com, EMP-123456, +1 (555) 123-4567, sk-proj-Ab12Cd34Ef56Gh78Ij90Kl12"
    assert scrubber.scrub(text) == "[EMAIL], [EMPLOYEE_ID], +1 (555) 123-4567, sk-proj-Ab12Cd34Ef56Gh78Ij90Kl12"
    assert dict(scrubber.counts) == {"email": 1, "employee_id": 1}


def test_counts_accumulate_over_messages() -> None:
    scrubber = Scrubber()
    messages = [
        {"role": "user", "content": "my mail is a@b.io and my card 4242 4242 4242 4242"},
        {"role": "assistant", "content": "Noted a@b.io; never share Bearer abcdefghijklmnop1234 either."},
    ]
    clean = scrubber.scrub_messages(messages)
    assert clean[0]["content"] == "my mail is [EMAIL] and my card [CARD_NUMBER]"
    assert clean[1]["content"] == "Noted [EMAIL]; never share Bearer [TOKEN] either."
    assert {k: v for k, v in scrubber.counts.items() if v} == {"email": 2, "card_number": 1, "bearer_token": 1}
    assert messages[0]["content"].startswith("my mail is a@b.io")  # the input is not modified


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="scrub_kinds: unknown kind"):
        Scrubber(kinds=("email", "ssn"))
    assert set(SCRUB_KINDS) == {"api_key", "aws_key", "bearer_token", "email", "card_number", "phone"}


def test_luhn() -> None:
    assert luhn_valid("4111111111111111")
    assert luhn_valid("378282246310005")
    assert not luhn_valid("4111111111111112")
