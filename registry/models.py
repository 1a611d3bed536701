"""Registry tables: model versions with their lineage, the per-alias pointers, and the audit log.

The schema is created by migration 0003; a test checks these models and the migrated database agree.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import field_validator
from sqlalchemy import JSON, Column, String, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from core.clock import UTCDateTime, utcnow

# Version ids double as vLLM served model names and URL path segments: keep them boring.
ALIAS_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
VERSION_SUFFIX = re.compile(r"-v\d+$")  # "<alias>-v<N>": an alias never looks like a version id


class VersionStatus(StrEnum):
    candidate = "candidate"  # registered, maybe gated; not serving traffic
    rejected = "rejected"  # failed the gate, or was rolled back
    canary = "canary"  # serving a share of its alias's traffic
    production = "production"  # serving the rest
    archived = "archived"  # retired (a former production version can come back through rollback)


class ModelVersionBase(SQLModel):
    alias: str = Field(index=True, description="The model alias this version serves, e.g. domain-assistant.")
    base_model: str = Field(description="Base model path or HF id the version was trained from.")
    parent_id: str | None = Field(
        default=None, foreign_key="model_versions.id", description="The version it was trained on top of."
    )
    adapter_path: str | None = Field(default=None, description="The LoRA adapter directory, if any.")
    merged_path: str | None = Field(default=None, description="The servable checkpoint (merged weights).")
    dataset_version_id: str | None = None
    dataset_hash: str | None = None
    training_config: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    library_versions: dict[str, str | None] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    code_revision: str | None = None
    training_metrics: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class ModelVersionCreate(ModelVersionBase):
    """What the trainer hands over when a checkpoint is ready."""

    model_config = {"extra": "forbid"}  # type: ignore[assignment]

    @field_validator("alias")
    @classmethod
    def _alias_is_served_name_safe(cls, value: str) -> str:
        return validate_alias(value)

    @field_validator("code_revision", mode="before")
    @classmethod
    def _revision_from_trainer_metadata(cls, value: Any) -> Any:
        """Accept trainer.metadata.code_revision()'s {"commit", "dirty"} as "<commit>" or "<commit>+dirty"."""
        if isinstance(value, dict):
            commit = value.get("commit")
            return None if commit is None else commit + ("+dirty" if value.get("dirty") else "")
        return value


class ModelVersion(ModelVersionBase, table=True):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("alias", "number", name="uq_model_versions_alias_number"),)

    id: str = Field(primary_key=True, description="<alias>-v<number>; also the vLLM served model name.")
    number: int
    status: VersionStatus = Field(default=VersionStatus.candidate, sa_type=String(16), index=True)
    files_manifest: dict[str, str] = Field(
        default_factory=dict, sa_column=Column(JSON, nullable=False),
        description="relative path -> sha256 of every file of the version, fixed at registration.",
    )
    eval_reports: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    gate_passed: bool | None = None
    gate: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    created_at: datetime = Field(sa_type=UTCDateTime, default_factory=utcnow)
    updated_at: datetime = Field(sa_type=UTCDateTime, default_factory=utcnow)
    gated_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    canary_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    production_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    retired_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class ModelVersionPublic(ModelVersionBase):
    id: str
    number: int
    status: VersionStatus
    files_manifest: dict[str, str]
    eval_reports: dict[str, Any]
    gate_passed: bool | None
    gate: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime
    gated_at: datetime | None
    canary_at: datetime | None
    production_at: datetime | None
    retired_at: datetime | None


class ModelAlias(SQLModel, table=True):
    """Where an alias's traffic goes. Changed only inside the transitions of registry.store."""

    __tablename__ = "model_aliases"

    alias: str = Field(primary_key=True)
    production_id: str | None = Field(default=None, foreign_key="model_versions.id")
    canary_id: str | None = Field(default=None, foreign_key="model_versions.id")
    canary_weight: int = Field(default=0, description="Percent of the alias's traffic sent to the canary.")
    generation: int = Field(default=0, description="Bumped by every transition; the audit log carries it.")
    updated_at: datetime = Field(sa_type=UTCDateTime, default_factory=utcnow)


class AuditEntryBase(SQLModel):
    alias: str = Field(index=True)
    version_id: str | None = None
    action: str = Field(sa_type=String(32))
    actor: str
    reason: str = Field(default="", sa_column=Column(Text, nullable=False))
    from_status: str | None = Field(default=None, sa_type=String(16))
    to_status: str | None = Field(default=None, sa_type=String(16))
    before: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    after: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(sa_type=UTCDateTime, default_factory=utcnow)


class AuditEntry(AuditEntryBase, table=True):
    """One row per transition: who, when, what changed (alias pointers before/after), and why."""

    __tablename__ = "registry_audit"

    id: int | None = Field(default=None, primary_key=True)


class AuditEntryPublic(AuditEntryBase):
    id: int


def validate_alias(value: str) -> str:
    if not ALIAS_PATTERN.match(value):
        raise ValueError(
            f"alias {value!r}: use 1-63 lowercase letters, digits, '.', '_' or '-', starting with a letter "
            "or digit (it becomes part of served model names and URLs)"
        )
    if VERSION_SUFFIX.search(value):
        raise ValueError(f"alias {value!r}: must not end in -v<number>, which marks version ids")
    return value
