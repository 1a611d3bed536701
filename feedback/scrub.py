"""Secrets and personal data out of training text: typed placeholders, counted per kind.

Kinds run in a fixed order (keys and tokens first, so a key that contains digits is never half-eaten by
the card or phone patterns). Card numbers must pass the Luhn check and phone numbers need separators and
9-15 digits, which keeps ids, timestamps, dates, versions and IP addresses as they are.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping

SCRUB_KINDS: tuple[str, ...] = ("api_key", "aws_key", "bearer_token", "email", "card_number", "phone")

PLACEHOLDERS = {
    "api_key": "[API_KEY]",
    "aws_key": "[AWS_KEY]",
    "bearer_token": "[TOKEN]",
    "email": "[EMAIL]",
    "card_number": "[CARD_NUMBER]",
    "phone": "[PHONE]",
}

_API_KEY = re.compile(
    r"\b(?:"
    r"sk-(?:proj-|ant-|live-|test-)?[A-Za-z0-9_-]{20,}"  # OpenAI / Anthropic / Stripe style
    r"|tl-[A-Za-z0-9_-]{32,}"  # this gateway's own keys
    r"|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{40,}"
    r"|xox[abpors]-[A-Za-z0-9-]{10,}"
    r"|AIza[0-9A-Za-z_-]{35}"
    r")"
)
_AWS_ACCESS_KEY = re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA)[0-9A-Z]{16}\b")
# A 40-character secret is only recognisable by what names it.
_AWS_SECRET = re.compile(
    r"(?i)(aws_?secret(?:_?access)?_?key[\"']?\s*[:=]\s*[\"']?)([A-Za-z0-9/+=]{40})(?![A-Za-z0-9/+=])"
)
_BEARER = re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]{12,}")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")
_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
# Card networks start with 2-6 (Mastercard 2/5, Amex 3, Visa 4, Discover 6); 1... is a timestamp or an id.
_CARD = re.compile(r"(?<![\d-])[2-6](?:[ -]?\d){12,18}(?![\d-])")
_PHONE = re.compile(
    r"(?<![\w.+/-])"
    r"(?:\+\d{1,3}[\s.-]?)?"
    r"(?:\(\d{1,4}\)[\s.-]?|\d{2,4}[\s.-])"
    r"\d{2,4}(?:[\s.-]\d{2,4}){0,2}"
    r"(?![\w/-]|\.\d)"
)
_IPV4 = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")


def luhn_valid(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2 == 1:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _only_digits(text: str) -> str:
    return "".join(c for c in text if c.isdigit())


class Scrubber:
    """Replaces each enabled kind by its placeholder; `counts` accumulates over every call."""

    def __init__(self, kinds: Iterable[str] = SCRUB_KINDS, extra: Mapping[str, str] | None = None) -> None:
        enabled = set(kinds)
        unknown = enabled - set(SCRUB_KINDS)
        if unknown:
            raise ValueError(f"scrub_kinds: unknown kind(s) {', '.join(sorted(unknown))}")
        self.counts: Counter[str] = Counter()
        steps: list[tuple[str, Callable[[str], str]]] = []
        builders = {
            "api_key": self._simple("api_key", _API_KEY),
            "aws_key": self._aws,
            "bearer_token": self._bearer,
            "email": self._simple("email", _EMAIL),
            "card_number": self._card,
            "phone": self._phone,
        }
        for kind in SCRUB_KINDS:
            if kind in enabled:
                steps.append((kind, builders[kind]))
        for name, pattern in (extra or {}).items():
            steps.append((name, self._simple(name, re.compile(pattern), f"[{name.upper()}]")))
        self._steps = steps

    def scrub(self, text: str) -> str:
        for _kind, step in self._steps:
            text = step(text)
        return text

    def _simple(self, kind: str, pattern: re.Pattern[str], placeholder: str | None = None) -> Callable[[str], str]:
        replacement = placeholder or PLACEHOLDERS[kind]

        def step(text: str) -> str:
            text, n = pattern.subn(replacement, text)
            self.counts[kind] += n
            return text

        return step

    def _aws(self, text: str) -> str:
        text, n_ids = _AWS_ACCESS_KEY.subn(PLACEHOLDERS["aws_key"], text)
        text, n_secrets = _AWS_SECRET.subn(lambda m: m.group(1) + PLACEHOLDERS["aws_key"], text)
        self.counts["aws_key"] += n_ids + n_secrets
        return text

    def _bearer(self, text: str) -> str:
        text, n_bearer = _BEARER.subn(lambda m: m.group(1) + PLACEHOLDERS["bearer_token"], text)
        text, n_jwt = _JWT.subn(PLACEHOLDERS["bearer_token"], text)
        self.counts["bearer_token"] += n_bearer + n_jwt
        return text

    def _card(self, text: str) -> str:
        def replace(match: re.Match[str]) -> str:
            if luhn_valid(_only_digits(match.group())):
                self.counts["card_number"] += 1
                return PLACEHOLDERS["card_number"]
            return match.group()

        return _CARD.sub(replace, text)

    def _phone(self, text: str) -> str:
        def replace(match: re.Match[str]) -> str:
            if 9 <= len(_only_digits(match.group())) <= 15 and not _IPV4.fullmatch(match.group()):
                self.counts["phone"] += 1
                return PLACEHOLDERS["phone"]
            return match.group()

        return _PHONE.sub(replace, text)

    def scrub_messages(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        return [{"role": m["role"], "content": self.scrub(m["content"])} for m in messages]


def scrub_text(text: str, kinds: Iterable[str] = SCRUB_KINDS) -> tuple[str, dict[str, int]]:
    """One-off scrub: the clean text and how many of each kind were replaced."""
    scrubber = Scrubber(kinds)
    clean = scrubber.scrub(text)
    return clean, {kind: n for kind, n in scrubber.counts.items() if n}
