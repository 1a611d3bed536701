"""The judge prompts (the reference recipe's 1-5 rubric, and its pairwise sibling) and robust parsing of verdicts.

Judges answer "JSON only" most of the time; the parsers also accept fenced JSON and JSON inside chatty text.
Anything else raises VerdictParseError, which the LLM judges treat as worth another attempt.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

# The reference recipe's judge prompt (registry/README.md), word for word.
SCORE_PROMPT = """You are evaluating an AI assistant's response to a technical question.
Question: {question}
Reference answer: {reference}
Model response: {response}
Score the response from 1 to 5:
1 = Completely wrong or missing critical information
3 = Partially correct — minor errors or key omissions
5 = Correct, complete, and well-formatted
Respond with JSON only: {{"score": <int>, "reason": "<one sentence>"}}"""

PAIRWISE_PROMPT = """You are comparing two AI assistant responses to the same question.
Question: {question}
Reference answer: {reference}
Response A: {response_a}
Response B: {response_b}
Which response is better: more correct, more complete and better formatted, judged against the reference?
Ignore the order in which the responses are shown and their length unless it matters for correctness.
Respond with JSON only: {{"winner": "A" | "B" | "tie", "reason": "<one sentence>"}}"""

Winner = Literal["A", "B", "tie"]


class VerdictParseError(ValueError):
    """The judge's text holds no usable verdict."""


@dataclass(frozen=True)
class ScoreVerdict:
    score: int
    reason: str


@dataclass(frozen=True)
class PairwiseVerdict:
    winner: Winner
    reason: str


def score_prompt(question: str, reference: str, answer: str) -> str:
    return SCORE_PROMPT.format(question=question, reference=reference, response=answer)


def pairwise_prompt(question: str, reference: str, answer_a: str, answer_b: str) -> str:
    return PAIRWISE_PROMPT.format(question=question, reference=reference, response_a=answer_a, response_b=answer_b)


_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)
# Fallbacks for a reply cut off by max_tokens after the verdict (e.g. '{"score": 4, "reason": "The ans').
_LOOSE_SCORE = re.compile(r"\"?score\"?\s*[:=]\s*\"?([1-5])(?:\.0+)?\b", re.IGNORECASE)
_LOOSE_WINNER = re.compile(r"\"?winner\"?\s*[:=]\s*\"(A|B|tie)\"", re.IGNORECASE)


def _json_objects(text: str) -> list[dict[str, Any]]:
    """Every JSON object embedded in `text`, fenced blocks first."""
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    decoder = json.JSONDecoder()
    found: list[dict[str, Any]] = []
    for candidate in candidates:
        for start in (i for i, ch in enumerate(candidate) if ch == "{"):
            try:
                value, _ = decoder.raw_decode(candidate, start)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                found.append(value)
    return found


def _as_score(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        value = value.strip()
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, int | float) and float(value).is_integer() and 1 <= value <= 5:
        return int(value)
    return None


def parse_score(text: str) -> ScoreVerdict:
    """{"score": 1-5, "reason": "..."} from a judge's reply."""
    for obj in _json_objects(text):
        if "score" in obj:
            score = _as_score(obj["score"])
            if score is None:
                raise VerdictParseError(f"score {obj['score']!r} is not an integer from 1 to 5")
            return ScoreVerdict(score, str(obj.get("reason", "")).strip())
    loose = _LOOSE_SCORE.search(text)
    if loose:
        return ScoreVerdict(int(loose.group(1)), "")
    raise VerdictParseError(f"no score in judge reply: {text[:200]!r}")


def parse_pairwise(text: str) -> PairwiseVerdict:
    """{"winner": "A" | "B" | "tie", "reason": "..."} from a judge's reply."""
    for obj in _json_objects(text):
        if "winner" in obj:
            winner = str(obj["winner"]).strip().strip("\"'").lower()
            normalised = {"a": "A", "b": "B", "tie": "tie", "draw": "tie", "equal": "tie"}.get(winner)
            if normalised is None:
                raise VerdictParseError(f"winner {obj['winner']!r} is not A, B or tie")
            return PairwiseVerdict(normalised, str(obj.get("reason", "")).strip())  # type: ignore[arg-type]
    loose = _LOOSE_WINNER.search(text)
    if loose:
        winner = loose.group(1)
        return PairwiseVerdict("tie" if winner.lower() == "tie" else winner.upper(), "")  # type: ignore[arg-type]
    raise VerdictParseError(f"no winner in judge reply: {text[:200]!r}")


def render_question(messages: list[dict[str, Any]]) -> str:
    """The prompt the judge sees: a lone user turn as is; a conversation (system prompt included) by role."""
    if len(messages) == 1 and messages[0].get("role") == "user":
        return content_text(messages[0].get("content"))
    return "\n".join(f"[{m.get('role', 'user')}] {content_text(m.get('content'))}" for m in messages)


def content_text(content: Any) -> str:
    """A message's text, whether `content` is a string or a list of OpenAI content parts."""
    if content is None:
        return ""
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return str(content)
