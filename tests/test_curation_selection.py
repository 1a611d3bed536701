"""Selection rules (pure) and the streaming read of rated interactions (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import Session

from core.db import make_engine
from feedback.examples import Example
from feedback.models import Feedback, Interaction
from feedback.selection import (
    InteractionRow,
    Vote,
    count_window,
    iter_rated_interactions,
    prompt_messages,
    resolve_votes,
    select_example,
)

T0 = datetime(2026, 3, 1, tzinfo=UTC)
QUESTION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}]


def _row(**overrides) -> InteractionRow:
    values = dict(
        id="req-1", created_at=T0, endpoint="chat.completions", request_body={"messages": QUESTION},
        response_text="Paris.", finish_reason="stop", status="ok",
    )
    values.update(overrides)
    return InteractionRow(**values)


def _vote(rating: str, correction: str | None = None, user: str = "u1", minute: int = 0) -> Vote:
    return Vote(rating, correction, user, T0 + timedelta(minutes=minute))


def test_thumbs_up_becomes_the_example_as_it_was() -> None:
    example = select_example(_row(), [_vote("up")])
    assert isinstance(example, Example)
    assert example.messages == [*QUESTION, {"role": "assistant", "content": "Paris."}]
    assert (example.kind, example.source, example.interaction_id) == ("thumbs_up", "interaction:req-1", "req-1")


def test_thumbs_down_with_correction_uses_the_correction() -> None:
    example = select_example(_row(response_text="Lyon."), [_vote("down", "Paris.")])
    assert isinstance(example, Example)
    assert example.kind == "correction"
    assert example.messages[-1] == {"role": "assistant", "content": "Paris."}


@pytest.mark.parametrize(
    ("row", "votes", "reason"),
    [
        (_row(), [_vote("down")], "down_without_correction"),
        (_row(), [_vote("down", "   ")], "down_without_correction"),
        (_row(status="upstream_error", response_text=None), [_vote("up")], "upstream_error"),
        (_row(status="client_disconnected"), [_vote("up")], "client_disconnected"),
        (_row(response_text="  "), [_vote("up")], "empty_answer"),
        (_row(response_text=None), [_vote("up")], "empty_answer"),
        (_row(finish_reason="length"), [_vote("up")], "truncated"),
        (_row(endpoint="completions", request_body={"prompt": "Capital of France?"}), [_vote("up")], "not_chat"),
        (_row(), [], "no_feedback"),
        (_row(), [_vote("up", user="a"), _vote("down", "Paris!", user="b")], "conflicting_ratings"),
        (
            _row(request_body={"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
            [_vote("up")],
            "unsupported_messages",
        ),
        (
            _row(request_body={"messages": [{"role": "tool", "content": "{}", "tool_call_id": "x"}]}),
            [_vote("up")],
            "unsupported_messages",
        ),
        (_row(request_body={"messages": [{"role": "system", "content": "only a system turn"}]}), [_vote("up")],
         "unsupported_messages"),
    ],
)
def test_exclusions_name_their_reason(row: InteractionRow, votes: list[Vote], reason: str) -> None:
    assert select_example(row, votes) == reason


def test_truncated_or_empty_answers_still_count_when_corrected() -> None:
    example = select_example(_row(response_text="", finish_reason="length"), [_vote("down", "Paris.")])
    assert isinstance(example, Example) and example.messages[-1]["content"] == "Paris."


def test_majority_decides_and_the_latest_correction_wins() -> None:
    assert resolve_votes([_vote("up", user="a"), _vote("up", user="b"), _vote("down", "X", user="c")]) == ("up", None)
    votes = [
        _vote("down", "older fix", user="a", minute=1),
        _vote("down", "newest fix", user="b", minute=5),
        _vote("down", None, user="c", minute=9),
        _vote("up", user="d"),
    ]
    assert resolve_votes(votes) == ("down", "newest fix")
    assert resolve_votes([_vote("up", user="a"), _vote("down", user="b")]) == ("tie", None)


def test_prompt_messages_flattens_text_parts_and_maps_developer_to_system() -> None:
    body = {
        "messages": [
            {"role": "developer", "content": "Rules."},
            {"role": "user", "content": [{"type": "text", "text": "Line one"}, {"type": "text", "text": "two"}]},
        ]
    }
    assert prompt_messages(body) == [
        {"role": "system", "content": "Rules."},
        {"role": "user", "content": "Line one\ntwo"},
    ]
    assert prompt_messages({"prompt": "x"}) is None


def _interaction(i: int, minute: float, alias: str = "support") -> Interaction:
    return Interaction(
        id=f"req-{i:04d}", api_key_id="key", model_alias=alias, served_version="v1", endpoint="chat.completions",
        request_body={"messages": [{"role": "user", "content": f"question {i}"}]}, response_text=f"answer {i}",
        finish_reason="stop", created_at=T0 + timedelta(minutes=minute),
    )


def _feedback(i: int, rating: str, minute: float, user: str = "") -> Feedback:
    when = T0 + timedelta(minutes=minute)
    return Feedback(interaction_id=f"req-{i:04d}", rating=rating, end_user=user, api_key_id="key",
                    created_at=when, updated_at=when)


def test_pages_cover_the_window_once_in_order_with_late_feedback(any_db_url: str) -> None:
    engine = make_engine(any_db_url)
    with Session(engine) as session:
        # 30 interactions, several sharing a timestamp so the keyset must break ties on id.
        session.add_all(_interaction(i, minute=i // 3) for i in range(30))
        session.add(_interaction(99, minute=5, alias="other"))
        session.commit()
        session.add_all(_feedback(i, "up", minute=i // 3 + 0.5) for i in range(0, 30, 2))  # rated right away
        session.add(_feedback(4, "down", minute=1.6, user="second"))
        session.add(_feedback(1, "up", minute=40))  # a late rating of an interaction from before the window
        session.add(_feedback(3, "up", minute=99))  # after `until`: not part of this run
        session.add(_feedback(99, "up", minute=20))
        session.commit()

    since, until = T0 + timedelta(minutes=2), T0 + timedelta(minutes=60)
    pages = list(iter_rated_interactions(engine, "support", since, until, batch_size=4))
    ids = [row.id for page in pages for row, _ in page]
    assert ids == ["req-0001"] + [f"req-{i:04d}" for i in range(6, 30, 2)]
    assert all(len(page) <= 4 for page in pages)
    votes = {row.id: votes for page in pages for row, votes in page}
    assert [v.rating for v in votes["req-0001"]] == ["up"]
    assert count_window(engine, "support", since, until) == (24 + 1, 12 + 1)

    everything = [row.id for page in iter_rated_interactions(engine, "support", None, until, 7) for row, _ in page]
    # All history: the late rating is an ordinary one; req-3 was rated after `until`.
    assert everything == ["req-0000", "req-0001", "req-0002"] + [f"req-{i:04d}" for i in range(4, 30, 2)]
    rated_votes = {r.id: v for p in iter_rated_interactions(engine, "support", None, until, 7) for r, v in p}
    assert sorted(v.end_user for v in rated_votes["req-0004"]) == ["", "second"]
    engine.dispose()
