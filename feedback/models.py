"""Tables of the interaction log and user feedback (Base / Create / Public layers, SQLModel).

The schema itself is created by the explicit migrations in core/migrations; a test checks that these
models and the migrated database agree.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import field_validator
from sqlalchemy import JSON, Column, Index, String, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from core.clock import UTCDateTime, utcnow


class InteractionStatus(StrEnum):
    ok = "ok"
    upstream_error = "upstream_error"  # the upstream failed or answered non-2xx
    client_disconnected = "client_disconnected"  # the caller left mid-stream; the row has the partial text
    rejected = "rejected"  # the gateway refused it before any upstream call
    # a stream being answered: written before its first byte left, replaced by its final row when it ends; one
    # left so for good is a stream whose gateway process died mid-answer (gateway.streaming)
    in_progress = "in_progress"


class InteractionBase(SQLModel):
    response_id: str | None = Field(default=None, index=True, description="The `id` the upstream answered.")
    api_key_id: str = Field(index=True)
    model_alias: str = Field(index=True)
    served_version: str = Field(index=True)
    endpoint: str = Field(description="chat.completions or completions")
    stream: bool = False
    end_user: str | None = Field(default=None, description="The request's `user` field.")
    request_body: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    response_body: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    response_text: str | None = Field(default=None, sa_column=Column(Text))
    finish_reason: str | None = None
    status: InteractionStatus = Field(default=InteractionStatus.ok, sa_type=String(32))
    http_status: int = 200
    error: str | None = Field(default=None, sa_column=Column(Text))
    latency_ms: float | None = None
    ttft_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    idempotency_key: str | None = None
    idempotency_fingerprint: str | None = Field(
        default=None, max_length=64, description="SHA-256 of the request an Idempotency-Key was first used with.")
    created_at: datetime = Field(sa_type=UTCDateTime, default_factory=utcnow, index=True)
    completed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class Interaction(InteractionBase, table=True):
    __tablename__ = "interactions"
    __table_args__ = (
        UniqueConstraint("api_key_id", "idempotency_key", name="uq_interactions_idempotency"),
        # Curation reads one alias in (created_at, id) pages; without it SQLite sorts the alias per page
        # (migration 0002).
        Index("ix_interactions_alias_created_at_id", "model_alias", "created_at", "id"),
    )

    id: str = Field(primary_key=True, description="The gateway's request id (x-request-id).")


class IdempotencyClaim(SQLModel, table=True):
    """An Idempotency-Key whose first request is being served: the claim that makes a concurrent duplicate, in
    any gateway process, wait for the answer instead of generating a second one. Expires if its holder died."""

    __tablename__ = "idempotency_claims"

    api_key_id: str = Field(primary_key=True)
    idempotency_key: str = Field(primary_key=True)
    fingerprint: str = Field(max_length=64)
    request_id: str
    expires_at: datetime = Field(sa_type=UTCDateTime)


class InteractionPublic(InteractionBase):
    id: str
    feedback: list[FeedbackPublic] = []


class Rating(StrEnum):
    up = "up"
    down = "down"


class FeedbackBase(SQLModel):
    rating: Rating = Field(sa_type=String(8))
    score: float | None = Field(default=None, ge=0, le=10, description="Optional numeric score, 0-10.")
    comment: str | None = Field(default=None, max_length=10_000, sa_column=Column(Text))
    correction: str | None = Field(
        default=None, max_length=100_000, description="The answer the model should have given.",
        sa_column=Column(Text),
    )


class FeedbackCreate(FeedbackBase):
    """Body of POST /v1/feedback."""

    model_config = {"extra": "forbid"}  # type: ignore[assignment]

    response_id: str = Field(min_length=1, max_length=200)
    user: str | None = Field(default=None, max_length=200, description="The end user giving the rating.")

    @field_validator("correction", "comment")
    @classmethod
    def _blank_is_none(cls, value: str | None) -> str | None:
        return value if value and value.strip() else None

    @field_validator("correction", "comment", "user")
    @classmethod
    def _storable_text(cls, value: str | None) -> str | None:
        """PostgreSQL text cannot hold NUL: kept as U+FFFD, as the interaction log keeps it."""
        return value.replace("\x00", "\ufffd") if value and "\x00" in value else value


class Feedback(FeedbackBase, table=True):
    __tablename__ = "feedback"
    __table_args__ = (UniqueConstraint("interaction_id", "end_user", name="uq_feedback_per_user"),)

    id: int | None = Field(default=None, primary_key=True)
    interaction_id: str = Field(foreign_key="interactions.id", index=True)
    end_user: str = Field(default="", description="'' when the rater gave no user id.")
    api_key_id: str
    created_at: datetime = Field(sa_type=UTCDateTime, default_factory=utcnow)
    updated_at: datetime = Field(sa_type=UTCDateTime, default_factory=utcnow)


class FeedbackPublic(FeedbackBase):
    id: int
    interaction_id: str
    end_user: str
    created_at: datetime
    updated_at: datetime


InteractionPublic.model_rebuild()
