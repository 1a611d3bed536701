"""The offline reference judge: deterministic, no network, so the loop runs anywhere with no judge key.

It scores an answer by its similarity to the reference after an optional format check:
- format: a checker callable (reference, answer) -> None or a complaint; by default, when the reference
  is JSON the answer must be JSON of the same shape (same type, and the same keys for an object);
- JSON: when reference and answer are both JSON, each field is judged on its own (numbers, booleans and
  null must be equal, strings are compared as text) and the similarity is the mean over the reference's
  fields, so `{"order_id": 4821}` against `{"order_id": 4812}` is wrong, not 90 % alike as text;
- similarity otherwise: the larger of token F1 (bag of words) and character sequence similarity, with exact and
  short-reference containment ("4" inside "The answer is 4.") counting as a match;
- similarity maps to the 1-5 rubric through fixed thresholds (SCORE_THRESHOLDS).
It is a crude stand-in for an LLM judge (it cannot tell a paraphrase that is wrong from one that is right)
but it is monotone in closeness to the reference, which is what a self-training loop mostly needs.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from collections.abc import Callable
from difflib import SequenceMatcher
from typing import Any

from registry.judges import CompareResult, JudgeResult
from registry.reports import JudgeUsage

FormatChecker = Callable[[str, str], str | None]

# (lowest similarity, score), highest first.
SCORE_THRESHOLDS: tuple[tuple[float, int], ...] = ((0.9, 5), (0.7, 4), (0.45, 3), (0.2, 2), (0.0, 1))
TIE_MARGIN = 0.02  # similarities closer than this are a tie in pairwise mode
SHORT_REFERENCE_TOKENS = 3

_TOKEN = re.compile(r"\w+(?:[.,]\d+)*", re.UNICODE)


def normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(text.split())


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(normalise(text))


def token_f1(reference: str, answer: str) -> float:
    ref, ans = Counter(tokens(reference)), Counter(tokens(answer))
    overlap = sum((ref & ans).values())
    if not ref or not ans or overlap == 0:
        return 0.0
    precision, recall = overlap / sum(ans.values()), overlap / sum(ref.values())
    return 2 * precision * recall / (precision + recall)


def similarity(reference: str, answer: str) -> float:
    """0-1 closeness of `answer` to `reference`."""
    ref_norm, ans_norm = normalise(reference), normalise(answer)
    if not ans_norm:
        return 0.0
    if ref_norm == ans_norm:
        return 1.0
    ref_tokens, ans_tokens = tokens(reference), tokens(answer)
    if 0 < len(ref_tokens) <= SHORT_REFERENCE_TOKENS and len(ans_tokens) <= 12:
        # A short fact ("4", "Paris") stated inside a short sentence is a correct answer.
        window = len(ref_tokens)
        if any(ans_tokens[i:i + window] == ref_tokens for i in range(len(ans_tokens) - window + 1)):
            return 0.95
    sequence = SequenceMatcher(None, ref_norm, ans_norm, autojunk=False).ratio()
    return max(token_f1(reference, answer), sequence)


def _parse_json(text: str) -> Any:
    stripped = text.strip()
    fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", stripped, re.DOTALL)
    return json.loads(fenced.group(1) if fenced else stripped)


def json_shape_checker(reference: str, answer: str) -> str | None:
    """When the reference is JSON, the answer must be JSON of the same type (and keys, for objects)."""
    try:
        expected = _parse_json(reference)
    except (json.JSONDecodeError, ValueError):
        return None  # free-text reference: no format to enforce
    if not isinstance(expected, dict | list):
        return None
    try:
        got = _parse_json(answer)
    except (json.JSONDecodeError, ValueError):
        return "the reference is JSON but the answer is not valid JSON"
    if type(got) is not type(expected):
        return f"expected a JSON {type(expected).__name__}, got {type(got).__name__}"
    if isinstance(expected, dict) and set(got) != set(expected):
        return f"JSON keys {sorted(got)} differ from the reference's {sorted(expected)}"
    return None


def json_similarity(expected: Any, got: Any) -> float:
    """0-1 closeness of two parsed JSON values, field by field."""
    if isinstance(expected, dict):
        if not isinstance(got, dict):
            return 0.0
        if not expected:
            return float(not got)
        return sum(json_similarity(value, got.get(key)) for key, value in expected.items()) / len(expected)
    if isinstance(expected, list):
        if not isinstance(got, list):
            return 0.0
        if not expected:
            return float(not got)
        return sum(json_similarity(e, g) for e, g in zip(expected, got, strict=False)) / max(len(expected), len(got))
    if isinstance(expected, str):
        return similarity(expected, got) if isinstance(got, str) else 0.0
    # bool is an int subclass in Python: True must not equal 1 here
    return float(type(expected) is type(got) and expected == got)


def _json_values(reference: str, answer: str) -> tuple[Any, Any] | None:
    try:
        expected = _parse_json(reference)
        if not isinstance(expected, dict | list):
            return None
        return expected, _parse_json(answer)
    except (json.JSONDecodeError, ValueError):
        return None


def score_for(value: float) -> int:
    return next(score for threshold, score in SCORE_THRESHOLDS if value >= threshold)


class ReferenceJudge:
    """Offline, deterministic judge implementing the Judge protocol."""

    name = "reference"

    def __init__(self, format_checker: FormatChecker | None = json_shape_checker) -> None:
        self.format_checker = format_checker
        self.usage = JudgeUsage()

    def closeness(self, reference: str, answer: str) -> tuple[float, str]:
        """(similarity 0-1, explanation); a failed format check counts as 0."""
        if self.format_checker is not None:
            complaint = self.format_checker(reference, answer)
            if complaint:
                return 0.0, f"format: {complaint}"
        values = _json_values(reference, answer)
        if values is not None:
            value = json_similarity(*values)
            return value, f"JSON fields matching the reference {value:.2f}"
        value = similarity(reference, answer)
        return value, f"similarity to the reference {value:.2f}"

    async def score(self, question: str, reference: str, answer: str) -> JudgeResult:
        value, reason = self.closeness(reference, answer)
        self.usage.calls += 1
        return JudgeResult(score_for(value), reason, JudgeUsage(calls=1))

    async def compare(self, question: str, reference: str, answer_a: str, answer_b: str) -> CompareResult:
        value_a, _ = self.closeness(reference, answer_a)
        value_b, _ = self.closeness(reference, answer_b)
        self.usage.calls += 1
        reason = f"similarity A {value_a:.2f}, B {value_b:.2f}"
        if abs(value_a - value_b) < TIE_MARGIN:
            return CompareResult("tie", reason, JudgeUsage(calls=1))
        return CompareResult("A" if value_a > value_b else "B", reason, JudgeUsage(calls=1))
