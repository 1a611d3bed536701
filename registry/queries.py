"""Reading the registry: versions, alias pointers, the audit log, and the consistency invariants.

Everything here is read-only; `registry.store` re-exports it next to the transitions.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlmodel import select

from core.db import Db, reading
from registry.errors import UnknownVersion
from registry.files import verify_manifest
from registry.models import AuditEntry, AuditEntryPublic, ModelAlias, ModelVersion, ModelVersionPublic, VersionStatus


@dataclass(frozen=True)
class AliasState:
    alias: str
    production_id: str | None
    canary_id: str | None
    canary_weight: int
    generation: int
    updated_at: datetime | None


def get_version(db: Db, version_id: str) -> ModelVersionPublic:
    with reading(db) as session:
        row = session.get(ModelVersion, version_id)
        if row is None:
            raise UnknownVersion(f"no model version {version_id!r}")
        return ModelVersionPublic.model_validate(row)


def list_versions(db: Db, alias: str | None = None) -> list[ModelVersionPublic]:
    query = select(ModelVersion).order_by(ModelVersion.alias, ModelVersion.number)
    if alias is not None:
        query = query.where(ModelVersion.alias == alias)
    with reading(db) as session:
        return [ModelVersionPublic.model_validate(row) for row in session.exec(query)]


def get_aliases(db: Db, alias: str) -> tuple[str | None, str | None, int]:
    """(production version id, canary version id, canary weight 0-100): one primary-key read.

    An alias that was never registered gives (None, None, 0).
    """
    state = get_alias_state(db, alias)
    if state is None:
        return None, None, 0
    return state.production_id, state.canary_id, state.canary_weight


def get_alias_state(db: Db, alias: str) -> AliasState | None:
    with reading(db) as session:
        row = session.get(ModelAlias, alias)
        return alias_state(row) if row is not None else None


def list_aliases(db: Db) -> list[AliasState]:
    """Every alias's pointers in one query (a router can load its whole table at once)."""
    with reading(db) as session:
        return [alias_state(row) for row in session.exec(select(ModelAlias).order_by(ModelAlias.alias))]


def audit_log(db: Db, alias: str | None = None, limit: int | None = None) -> list[AuditEntryPublic]:
    """Audit entries, oldest first (the last `limit` ones when given)."""
    query = select(AuditEntry).order_by(AuditEntry.id.desc())  # type: ignore[union-attr]
    if alias is not None:
        query = query.where(AuditEntry.alias == alias)
    if limit is not None:
        query = query.limit(limit)
    with reading(db) as session:
        rows = [AuditEntryPublic.model_validate(row) for row in session.exec(query)]
    return rows[::-1]


def verify_files(db: Db, version_id: str) -> list[str]:
    """Differences between a version's files on disk and its registered manifest (empty: intact)."""
    version = get_version(db, version_id)
    return verify_manifest(version_paths(version), version.files_manifest)


def consistency_problems(db: Db, alias: str | None = None) -> list[str]:
    """Invariants linking pointers, statuses and the audit log; empty when the registry is consistent.

    Exactly one production version per alias and it is the pointer's; the canary status matches the canary
    pointer; the weight is 0-100 and 0 without a canary; the audit log is an unbroken chain (each entry
    starts from the state the previous one left) ending at the current pointers.
    """
    problems: list[str] = []
    states = list_aliases(db) if alias is None else [s for s in [get_alias_state(db, alias)] if s]
    for state in states:
        name = state.alias
        by_status: dict[str, list[str]] = {}
        for version in list_versions(db, name):
            by_status.setdefault(version.status, []).append(version.id)
        production = by_status.get(VersionStatus.production, [])
        canary = by_status.get(VersionStatus.canary, [])
        if production != [state.production_id]:
            problems.append(f"{name}: production pointer {state.production_id}, production status {production}")
        if canary != ([state.canary_id] if state.canary_id else []):
            problems.append(f"{name}: canary pointer {state.canary_id}, canary status {canary}")
        if not 0 <= state.canary_weight <= 100 or (state.canary_id is None and state.canary_weight != 0):
            problems.append(f"{name}: canary weight {state.canary_weight} with canary {state.canary_id}")
        previous: dict[str, Any] = {}
        for entry in audit_log(db, name):
            if entry.before != previous:
                problems.append(f"{name}: audit entry {entry.id} ({entry.action}) does not follow the one before")
            previous = entry.after
        if previous != snapshot_of_state(state):
            problems.append(f"{name}: the last audit entry does not describe the current pointers")
    return problems


def snapshot(row: ModelAlias | None) -> dict[str, Any]:
    if row is None:
        return {}
    return {"production": row.production_id, "canary": row.canary_id, "canary_weight": row.canary_weight,
            "generation": row.generation}


def snapshot_of_state(state: AliasState) -> dict[str, Any]:
    return {"production": state.production_id, "canary": state.canary_id, "canary_weight": state.canary_weight,
            "generation": state.generation}


def alias_state(row: ModelAlias) -> AliasState:
    return AliasState(row.alias, row.production_id, row.canary_id, row.canary_weight, row.generation, row.updated_at)


def version_paths(version: ModelVersionPublic) -> dict[str, str | None]:
    return {"merged": version.merged_path, "adapter": version.adapter_path}

