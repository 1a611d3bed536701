"""Which logged interactions become examples: the selection rules (pure) and the streaming read.

Rules every view shares (`rate_interaction`), checked in this order; the first that applies names the reason:
  not_chat                  a completions (prompt) request: no conversation to learn from
  <status>                  the call did not succeed (upstream_error, client_disconnected, rejected), or is a
                            stream not finished (in_progress: still running, or its gateway process died)
  no_feedback               nobody rated it (counted with one COUNT query, never read)
  conflicting_ratings       as many users rated it up as down (one vote per user; majority wins)
  unsupported_messages      tool calls, images or other turns a chat example cannot hold
Then the SFT view's own (`select_example`):
  down_without_correction   majority down and no down-voter wrote the answer it should have given
  empty_answer              majority up but the answer is blank
  truncated                 majority up but the answer stopped at max_tokens (finish_reason "length")
A majority-up interaction becomes an example as it was; a majority-down one with a correction becomes
an example whose assistant turn is the correction (the latest one written, by updated_at then user).
The preference views (feedback/views.py) start from the same rated interactions.

The window: interactions created in [since, until) with feedback given before `until`, plus older
interactions whose feedback arrived in [since, until) (a late rating is not lost at the nightly cut).
Pages are read with keyset pagination on (created_at, id), so memory holds one page at a time.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, and_, exists, func, not_, select

from core.chat_format import check_messages
from core.clock import as_utc
from feedback.examples import Example, Messages
from feedback.models import Feedback, Interaction, InteractionStatus, Rating

CHAT_ENDPOINT = "chat.completions"


@dataclass(frozen=True)
class InteractionRow:
    """The columns of an interaction that curation reads."""

    id: str
    created_at: datetime
    endpoint: str
    request_body: dict[str, Any]
    response_text: str | None
    finish_reason: str | None
    status: str


@dataclass(frozen=True)
class Vote:
    rating: str
    correction: str | None
    end_user: str
    updated_at: datetime


def resolve_votes(votes: Sequence[Vote]) -> tuple[str, str | None]:
    """("up", None), ("down", correction or None) or ("tie", None): one vote per user, majority wins."""
    ups = sum(1 for v in votes if v.rating == Rating.up)
    downs = len(votes) - ups
    if ups == downs:
        return "tie", None
    if ups > downs:
        return "up", None
    corrections = [v for v in votes if v.rating == Rating.down and v.correction and v.correction.strip()]
    if not corrections:
        return "down", None
    latest = max(corrections, key=lambda v: (v.updated_at, v.end_user))
    return "down", latest.correction


def prompt_messages(request_body: dict[str, Any]) -> Messages | None:
    """The request's conversation as plain {"role", "content"} turns, or None if it cannot be one."""
    raw = request_body.get("messages")
    if not isinstance(raw, list):
        return None
    messages: Messages = []
    for message in raw:
        if not isinstance(message, dict) or message.get("tool_calls") or message.get("function_call"):
            return None
        role = "system" if message.get("role") == "developer" else message.get("role")
        content = _text_content(message.get("content"))
        if role not in ("system", "user", "assistant") or content is None:
            return None
        messages.append({"role": role, "content": content})
    return messages


def _text_content(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts: only text parts can become training text
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                return None
            parts.append(part["text"])
        return "\n".join(parts)
    return None


@dataclass(frozen=True)
class Rated:
    """A rated chat interaction every view can learn from: the prompt, the served answer and the verdict."""

    prompt: Messages
    answer: str  # the served answer as it was ("" when blank)
    verdict: str  # "up" or "down" (majority of one vote per user)
    correction: str | None  # the answer a down-voter wrote, if any
    truncated: bool  # the answer stopped at max_tokens
    interaction_id: str


def rate_interaction(row: InteractionRow, votes: Sequence[Vote]) -> Rated | str:
    """The rules every view shares (not_chat, <status>, no_feedback, conflicting_ratings, unsupported_messages):
    the rated interaction, or the reason it is excluded from every view."""
    if row.endpoint != CHAT_ENDPOINT:
        return "not_chat"
    if row.status != InteractionStatus.ok:
        return str(row.status)
    if not votes:
        return "no_feedback"
    verdict, correction = resolve_votes(votes)
    if verdict == "tie":
        return "conflicting_ratings"
    prompt = prompt_messages(row.request_body)
    if prompt is None:
        return "unsupported_messages"
    messages, _reason = check_messages([*prompt, {"role": "assistant", "content": correction or "-"}])
    if messages is None:
        return "unsupported_messages"
    return Rated(messages[:-1], row.response_text or "", verdict, correction, row.finish_reason == "length", row.id)


def select_example(row: InteractionRow, votes: Sequence[Vote]) -> Example | str:
    """The SFT example an interaction gives, or the reason it gives none (see the module docstring)."""
    rated = rate_interaction(row, votes)
    return rated if isinstance(rated, str) else sft_example(rated)


def sft_example(rated: Rated) -> Example | str:
    """The SFT view of a rated interaction: the example, or the reason it gives none."""
    if rated.verdict == "down":
        if rated.correction is None:
            return "down_without_correction"
        answer, kind = rated.correction, "correction"
    else:
        if not rated.answer.strip():
            return "empty_answer"
        if rated.truncated:
            return "truncated"
        answer, kind = rated.answer, "thumbs_up"
    messages = [*rated.prompt, {"role": "assistant", "content": answer}]
    return Example(messages, source=f"interaction:{rated.interaction_id}", kind=kind,
                   interaction_id=rated.interaction_id)


_INTERACTIONS = Interaction.__table__  # type: ignore[attr-defined]
_I = _INTERACTIONS.c
_F = Feedback.__table__.c  # type: ignore[attr-defined]
_ROW_COLUMNS = (_I.id, _I.created_at, _I.endpoint, _I.request_body, _I.response_text, _I.finish_reason, _I.status)


def _window_conditions(alias: str, since: datetime | None, until: datetime) -> tuple[list[Any], list[Any]]:
    """WHERE clauses of the two passes: rated interactions in the window, and late ratings of older ones."""
    rated_before_until = exists().where(_F.interaction_id == _I.id, _F.updated_at < until)
    in_window = [_I.model_alias == alias, _I.created_at < until, rated_before_until]
    if since is None:
        return in_window, []
    in_window.append(_I.created_at >= since)
    late_ids = select(_F.interaction_id).where(_F.updated_at >= since, _F.updated_at < until)
    late = [_I.model_alias == alias, _I.created_at < since, _I.id.in_(late_ids)]
    return in_window, late


def count_window(engine: Engine, alias: str, since: datetime | None, until: datetime) -> tuple[int, int]:
    """(interactions created in the window, of which rated before `until`) plus late-rated older ones."""
    in_window, late = _window_conditions(alias, since, until)
    created = [_I.model_alias == alias, _I.created_at < until]
    if since is not None:
        created.append(_I.created_at >= since)
    def count(conditions: list[Any]) -> int:
        if not conditions:
            return 0
        return conn.execute(select(func.count()).select_from(_INTERACTIONS).where(*conditions)).scalar_one()

    with engine.connect() as conn:
        late_n = count(late)
        return count(created) + late_n, count(in_window) + late_n


def iter_rated_interactions(
    engine: Engine, alias: str, since: datetime | None, until: datetime, batch_size: int
) -> Iterator[list[tuple[InteractionRow, list[Vote]]]]:
    """Pages of (interaction, its votes): late-rated older interactions first, then the window."""
    since = as_utc(since) if since is not None else None
    until = as_utc(until)
    in_window, late = _window_conditions(alias, since, until)
    for conditions in (late, in_window):
        if conditions:
            yield from _pages(engine, conditions, until, batch_size)


def _pages(
    engine: Engine, conditions: list[Any], until: datetime, batch_size: int
) -> Iterator[list[tuple[InteractionRow, list[Vote]]]]:
    last: tuple[datetime, str] | None = None
    while True:
        query = select(*_ROW_COLUMNS).where(*conditions)
        if last is not None:
            # ">= then not the ones already read" keeps SQLite on the created_at index (an OR would not).
            query = query.where(_I.created_at >= last[0], not_(and_(_I.created_at == last[0], _I.id <= last[1])))
        query = query.order_by(_I.created_at, _I.id).limit(batch_size)
        with engine.connect() as conn:
            rows = [InteractionRow(*r) for r in conn.execute(query)]
            if not rows:
                return
            votes: dict[str, list[Vote]] = {row.id: [] for row in rows}
            vote_query = select(_F.interaction_id, _F.rating, _F.correction, _F.end_user, _F.updated_at).where(
                _F.interaction_id.in_(list(votes)), _F.updated_at < until
            )
            for interaction_id, rating, correction, end_user, updated_at in conn.execute(vote_query):
                votes[interaction_id].append(Vote(rating, correction, end_user, updated_at))
        yield [(row, votes[row.id]) for row in rows]
        last = (rows[-1].created_at, rows[-1].id)
