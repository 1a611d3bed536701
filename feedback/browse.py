"""Reading the interaction log a page at a time (the ops console's interaction list), newest first.

Filters are exact (alias, served version, status), a rating (any thumbs-up / thumbs-down / none), and a text
that the request, the answer or the end user contains. Pages are keyed by offset: the list is for people
reading a few pages, not for exports (`tuneloop curate` reads everything).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sqlalchemy import Engine, String, cast, exists, func, or_
from sqlmodel import Session, col, select

from feedback.models import Feedback, Interaction, Rating

RatingFilter = Literal["", "up", "down", "none"]


@dataclass(frozen=True)
class InteractionQuery:
    alias: str = ""
    version: str = ""
    status: str = ""
    rating: RatingFilter = ""
    text: str = ""
    limit: int = 50
    offset: int = 0


@dataclass(frozen=True)
class InteractionRow:
    id: str
    created_at: object
    alias: str
    version: str
    status: str
    end_user: str | None
    latency_ms: float | None
    ups: int
    downs: int


@dataclass(frozen=True)
class InteractionPage:
    rows: list[InteractionRow]
    total: int
    query: InteractionQuery


def search_interactions(engine: Engine, query: InteractionQuery) -> InteractionPage:
    if any("\x00" in value for value in (query.alias, query.version, query.status, query.text)):
        return InteractionPage(rows=[], total=0, query=query)  # nothing stored holds NUL (PostgreSQL refuses it)
    ups = (select(func.count()).where(Feedback.interaction_id == Interaction.id, Feedback.rating == Rating.up.value)
           .scalar_subquery())
    downs = (select(func.count())
             .where(Feedback.interaction_id == Interaction.id, Feedback.rating == Rating.down.value)
             .scalar_subquery())
    conditions = []
    if query.alias:
        conditions.append(Interaction.model_alias == query.alias)
    if query.version:
        conditions.append(Interaction.served_version == query.version)
    if query.status:
        conditions.append(Interaction.status == query.status)
    rated = exists().where(Feedback.interaction_id == Interaction.id)
    if query.rating in ("up", "down"):
        conditions.append(exists().where(Feedback.interaction_id == Interaction.id, Feedback.rating == query.rating))
    elif query.rating == "none":
        conditions.append(~rated)
    if query.text:
        pattern = f"%{_escape_like(query.text)}%"
        conditions.append(or_(
            col(Interaction.response_text).ilike(pattern, escape="\\"),
            cast(Interaction.request_body, String).ilike(pattern, escape="\\"),
            col(Interaction.end_user).ilike(pattern, escape="\\"),
        ))
    with Session(engine) as session:
        total = session.exec(select(func.count()).select_from(Interaction).where(*conditions)).one()
        rows = session.exec(
            select(Interaction.id, Interaction.created_at, Interaction.model_alias, Interaction.served_version,
                   Interaction.status, Interaction.end_user, Interaction.latency_ms, ups, downs)
            .where(*conditions).order_by(col(Interaction.created_at).desc(), col(Interaction.id).desc())
            .limit(query.limit).offset(query.offset)
        ).all()
    return InteractionPage(
        rows=[InteractionRow(id=r[0], created_at=r[1], alias=r[2], version=r[3], status=str(r[4]), end_user=r[5],
                             latency_ms=r[6], ups=int(r[7]), downs=int(r[8])) for r in rows],
        total=int(total), query=query)


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
