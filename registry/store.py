"""The model registry: versions with lineage, and the transitions that move an alias's traffic pointers.

Every transition runs in one database transaction that first locks the alias row (SELECT ... FOR UPDATE on
PostgreSQL, BEGIN IMMEDIATE on SQLite), checks the preconditions, changes the version statuses and the
pointers together, bumps the alias generation and writes the audit row. A process killed anywhere in it
leaves the previous committed state, and two operators cannot interleave transitions on one alias.
Given an Engine, a transition is its own transaction; given a Session (core.db.unit_of_work), it joins the
caller's, so a larger unit of work (a promotion with its server's drain) commits or fails as one.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from core.clock import utcnow
from core.db import Db, writing
from registry.errors import (
    GateNotPassed,
    InvalidTransition,
    InvalidWeight,
    NoProductionVersion,
    RegistryError,
    UnknownAlias,
    UnknownVersion,
)
from registry.files import build_manifest, make_read_only
from registry.gate import GateDecision
from registry.models import (
    AuditEntry,
    ModelAlias,
    ModelVersion,
    ModelVersionCreate,
    ModelVersionPublic,
    VersionStatus,
    validate_alias,
)
from registry.queries import (
    AliasState,
    alias_state,
    audit_log,
    consistency_problems,
    get_alias_state,
    get_aliases,
    get_version,
    list_aliases,
    list_versions,
    snapshot,
    verify_files,
)

__all__ = [
    "AliasState", "GateNotPassed", "InvalidTransition", "InvalidWeight", "NoProductionVersion", "RegistryError",
    "UnknownAlias", "UnknownVersion", "archive", "audit_log", "consistency_problems", "get_alias_state",
    "get_aliases", "get_version", "list_aliases", "list_versions", "lock_alias", "promote", "record_gate",
    "register_base", "register_candidate", "reject", "rollback", "set_canary_weight", "start_canary", "verify_files",
]

_VERSION_ID = re.compile(r"^(?P<alias>.+)-v(?P<number>\d+)$")


def version_id_for(alias: str, number: int) -> str:
    return f"{alias}-v{number}"


# --- registering ---------------------------------------------------------------------------------------


def register_base(engine: Engine, alias: str, base_model_path: str, actor: str = "system") -> ModelVersionPublic:
    """Register `base_model_path` as the first production version of `alias` (idempotent).

    There is then always a version to compare a candidate against and to roll back to.
    """
    validate_alias(alias)
    base = _normalised_path(base_model_path)
    existing = _first_version(engine, alias)
    if existing is not None:
        return _same_base_or_error(existing, base)
    manifest = build_manifest({"merged": base})
    version_id = version_id_for(alias, 1)
    try:
        with _locked_alias(engine, alias, must_exist=False) as (session, alias_row):
            if alias_row is not None:  # registered meanwhile by another process
                raise _AlreadyThere
            now = utcnow()
            version = ModelVersion(
                id=version_id, number=1, alias=alias, base_model=base, merged_path=base,
                status=VersionStatus.production, files_manifest=manifest, production_at=now,
            )
            session.add(version)
            session.flush()  # the pointer's foreign key needs the version row first
            alias_row = ModelAlias(alias=alias, production_id=version_id)
            before = snapshot(None)
            session.add(alias_row)
            session.flush()
            _write_audit(session, alias_row, before, "register_base", actor, f"base model {base}",
                         version_id, None, VersionStatus.production)
    except (_AlreadyThere, IntegrityError):
        pass
    existing = _first_version(engine, alias)
    assert existing is not None
    return _same_base_or_error(existing, base)


def register_candidate(engine: Engine, spec: ModelVersionCreate, actor: str = "trainer") -> ModelVersionPublic:
    """Record a trained checkpoint as the alias's next version, status `candidate`; its files become read-only."""
    spec = ModelVersionCreate.model_validate(spec.model_dump())  # re-validates specs built without validation
    if not spec.merged_path and not spec.adapter_path:
        raise RegistryError("a candidate needs merged_path or adapter_path (something to serve)")
    for field_name in ("merged_path", "adapter_path"):
        value = getattr(spec, field_name)
        if value and not Path(value).exists():
            raise RegistryError(f"{field_name}: {value} does not exist")
    paths = {"merged": spec.merged_path, "adapter": spec.adapter_path}
    manifest = build_manifest(paths)  # hashed outside the lock: it can take a while for large weights
    with _locked_alias(engine, spec.alias) as (session, alias_row):
        assert alias_row is not None
        if alias_row.production_id is None:
            raise NoProductionVersion(f"alias {spec.alias!r} has no production version; register its base first")
        parent_id = spec.parent_id or alias_row.production_id
        parent = session.get(ModelVersion, parent_id)
        if parent is None or parent.alias != spec.alias:
            raise UnknownVersion(f"parent_id: no version {parent_id!r} of alias {spec.alias!r}")
        number = (session.exec(
            select(func.max(ModelVersion.number)).where(ModelVersion.alias == spec.alias)
        ).one() or 0) + 1
        data = spec.model_dump()
        data.update(parent_id=parent_id, merged_path=_normalised_path(spec.merged_path),
                    adapter_path=_normalised_path(spec.adapter_path))
        version = ModelVersion(**data, id=version_id_for(spec.alias, number), number=number,
                               status=VersionStatus.candidate, files_manifest=manifest)
        session.add(version)
        session.flush()
        before = snapshot(alias_row)
        _write_audit(session, alias_row, before, "register", actor,
                     f"dataset {spec.dataset_version_id or '-'}; parent {parent_id}",
                     version.id, None, VersionStatus.candidate, bump=False)
        version_id = version.id
    for raw in paths.values():
        make_read_only(raw)
    return get_version(engine, version_id)


# --- transitions ---------------------------------------------------------------------------------------


def record_gate(db: Db, version_id: str, decision: GateDecision | Mapping[str, Any],
                reports: dict[str, Any] | None = None, actor: str = "gate") -> ModelVersionPublic:
    """Store a gate decision (and eval report summaries) on a candidate: passed stays `candidate`, failed
    becomes `rejected`. A rejected version may be gated again (e.g. after a judge outage)."""
    data = decision.to_dict() if isinstance(decision, GateDecision) else dict(decision)
    if not isinstance(data.get("passed"), bool):
        raise RegistryError("decision: needs a boolean 'passed' (a registry.gate.GateDecision)")
    passed = bool(data["passed"])
    with _locked_version(db, version_id) as (session, alias_row, version):
        _require_status(version, {VersionStatus.candidate, VersionStatus.rejected}, "be gated")
        before, from_status = snapshot(alias_row), version.status
        now = utcnow()
        version.gate, version.gate_passed, version.gated_at = data, passed, now
        if reports:
            version.eval_reports = {**version.eval_reports, **reports}
        _set_status(version, VersionStatus.candidate if passed else VersionStatus.rejected, now)
        reasons = "; ".join(data.get("reasons", []))
        _write_audit(session, alias_row, before, "gate", actor, f"{'passed' if passed else 'failed'}: {reasons}",
                     version.id, from_status, version.status, bump=False)
        return ModelVersionPublic.model_validate(version)


def start_canary(db: Db, version_id: str, weight: int, actor: str, reason: str) -> ModelVersionPublic:
    """Send `weight` percent of the alias's traffic to a candidate that passed the gate."""
    _check_weight(weight)
    with _locked_version(db, version_id) as (session, alias_row, version):
        _require_status(version, {VersionStatus.candidate}, "start a canary")
        if not version.gate_passed:
            raise GateNotPassed(f"{version_id} has not passed the gate; run `tuneloop eval {version_id}` first")
        if alias_row.production_id is None:
            raise NoProductionVersion(f"alias {version.alias!r} has no production version to compare against")
        if alias_row.canary_id is not None:
            raise InvalidTransition(
                f"alias {version.alias!r} already has canary {alias_row.canary_id}; promote or roll it back first"
            )
        before = snapshot(alias_row)
        _set_status(version, VersionStatus.canary, utcnow())
        alias_row.canary_id, alias_row.canary_weight = version.id, weight
        _write_audit(session, alias_row, before, "start_canary", actor, reason, version.id,
                     VersionStatus.candidate, VersionStatus.canary)
        return ModelVersionPublic.model_validate(version)


def set_canary_weight(db: Db, alias_or_version: str, weight: int, actor: str,
                      reason: str) -> ModelVersionPublic:
    _check_weight(weight)
    alias, named_version = _resolve(db, alias_or_version)
    with _locked_alias(db, alias) as (session, alias_row):
        assert alias_row is not None
        if alias_row.canary_id is None or (named_version and named_version != alias_row.canary_id):
            raise InvalidTransition(f"{alias_or_version} is not a running canary")
        before = snapshot(alias_row)
        alias_row.canary_weight = weight
        _write_audit(session, alias_row, before, "set_canary_weight", actor, reason, alias_row.canary_id,
                     VersionStatus.canary, VersionStatus.canary)
        return get_version(session, alias_row.canary_id)


def promote(db: Db, version_id: str, actor: str, reason: str) -> ModelVersionPublic:
    """Canary -> production; the previous production version is archived (it stays a rollback target)."""
    with _locked_version(db, version_id) as (session, alias_row, version):
        if alias_row.canary_id != version.id:
            raise InvalidTransition(
                f"{version_id} is {version.status}, not the running canary of {version.alias!r}; "
                "only a canary can be promoted"
            )
        before, now = snapshot(alias_row), utcnow()
        if alias_row.production_id is not None:
            old = session.get(ModelVersion, alias_row.production_id)
            assert old is not None
            _set_status(old, VersionStatus.archived, now)
        _set_status(version, VersionStatus.production, now)
        alias_row.production_id, alias_row.canary_id, alias_row.canary_weight = version.id, None, 0
        _write_audit(session, alias_row, before, "promote", actor, reason, version.id,
                     VersionStatus.canary, VersionStatus.production)
        return ModelVersionPublic.model_validate(version)


def rollback(db: Db, alias_or_version: str, actor: str, reason: str) -> ModelVersionPublic:
    """Stop the alias's canary (-> rejected, weight 0) or, with no canary running, put the previous
    production version back. Returns the version rolled back (now `rejected`)."""
    alias, named_version = _resolve(db, alias_or_version)
    with _locked_alias(db, alias) as (session, alias_row):
        assert alias_row is not None
        before, now = snapshot(alias_row), utcnow()
        canary_id, production_id = alias_row.canary_id, alias_row.production_id
        if canary_id is not None and named_version in (None, canary_id):
            victim = session.get(ModelVersion, canary_id)
            assert victim is not None
            alias_row.canary_id, alias_row.canary_weight = None, 0
            action, from_status = "rollback_canary", VersionStatus.canary
        elif named_version is None or named_version == production_id:
            if canary_id is not None:
                raise InvalidTransition(f"alias {alias!r} has canary {canary_id} running; roll it back first")
            previous = session.exec(
                select(ModelVersion)
                .where(ModelVersion.alias == alias, ModelVersion.status == VersionStatus.archived,
                       ModelVersion.production_at.is_not(None))  # type: ignore[union-attr]
                .order_by(ModelVersion.production_at.desc())  # type: ignore[union-attr]
            ).first()
            if previous is None:
                raise InvalidTransition(f"alias {alias!r} has no earlier production version to roll back to")
            victim = session.get(ModelVersion, production_id)
            assert victim is not None
            _set_status(previous, VersionStatus.production, now)
            alias_row.production_id = previous.id
            action, from_status = "rollback_production", VersionStatus.production
        else:
            raise InvalidTransition(f"{named_version} is neither the canary nor the production version")
        _set_status(victim, VersionStatus.rejected, now)
        _write_audit(session, alias_row, before, action, actor, reason, victim.id, from_status,
                     VersionStatus.rejected)
        return ModelVersionPublic.model_validate(victim)


def archive(db: Db, version_id: str, actor: str, reason: str) -> ModelVersionPublic:
    """Retire a version that serves nothing (candidate or rejected)."""
    return _retire(db, version_id, VersionStatus.archived, actor, reason)


def reject(db: Db, version_id: str, actor: str, reason: str) -> ModelVersionPublic:
    """Mark a candidate as rejected; a running canary is rolled back (its traffic goes to production)."""
    current = get_version(db, version_id)
    if current.status == VersionStatus.canary:
        return rollback(db, version_id, actor, reason)
    return _retire(db, version_id, VersionStatus.rejected, actor, reason)


def _retire(db: Db, version_id: str, status: VersionStatus, actor: str, reason: str) -> ModelVersionPublic:
    with _locked_version(db, version_id) as (session, alias_row, version):
        allowed = {VersionStatus.candidate} | ({VersionStatus.rejected} if status == VersionStatus.archived else set())
        _require_status(version, allowed, f"become {status}")
        before, from_status = snapshot(alias_row), version.status
        _set_status(version, status, utcnow())
        _write_audit(session, alias_row, before, str(status), actor, reason, version.id, from_status, status,
                     bump=False)
        return ModelVersionPublic.model_validate(version)


# --- internals -----------------------------------------------------------------------------------------


class _AlreadyThere(Exception):
    pass


@contextmanager
def _locked_alias(db: Db, alias: str, *, must_exist: bool = True) -> Iterator[tuple[Session, ModelAlias | None]]:
    """The alias row locked in the caller's transaction (a Session), or in one of its own (an Engine) that
    commits on normal exit and rolls back on any error."""
    with writing(db) as session:
        row = session.exec(select(ModelAlias).where(ModelAlias.alias == alias).with_for_update()).first()
        if row is None and must_exist:
            raise UnknownAlias(f"no model alias {alias!r}; register its base model first")
        yield session, row


def lock_alias(session: Session, alias: str) -> AliasState:
    """Lock the alias row in the caller's transaction and read its pointers: a unit of work that reads them
    to decide what to change (which server drains after a promotion) reads them under the lock."""
    with _locked_alias(session, alias) as (_session, row):
        assert row is not None
        return alias_state(row)


@contextmanager
def _locked_version(db: Db, version_id: str) -> Iterator[tuple[Session, ModelAlias, ModelVersion]]:
    alias = get_version(db, version_id).alias  # the alias never changes, so reading it unlocked is safe
    with _locked_alias(db, alias) as (session, alias_row):
        assert alias_row is not None
        version = session.get(ModelVersion, version_id)
        assert version is not None
        yield session, alias_row, version


def _resolve(db: Db, alias_or_version: str) -> tuple[str, str | None]:
    """(alias, version id or None). Aliases cannot end in -v<N>, so the two never collide."""
    if get_alias_state(db, alias_or_version) is not None:
        return alias_or_version, None
    if _VERSION_ID.match(alias_or_version):
        return get_version(db, alias_or_version).alias, alias_or_version
    raise UnknownAlias(f"no model alias or version {alias_or_version!r}")


def _require_status(version: ModelVersion, allowed: set[VersionStatus], action: str) -> None:
    if version.status not in allowed:
        names = ", ".join(sorted(str(s) for s in allowed))
        raise InvalidTransition(f"{version.id} is {version.status}; only a version that is {names} can {action}")


def _check_weight(weight: object) -> None:
    if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 100:
        raise InvalidWeight(f"weight {weight!r}: must be an integer percent from 0 to 100")


def _set_status(version: ModelVersion, status: VersionStatus, now: datetime) -> None:
    version.status, version.updated_at = status, now
    if status == VersionStatus.canary:
        version.canary_at = now
    elif status == VersionStatus.production:
        version.production_at, version.retired_at = now, None
    elif status in (VersionStatus.archived, VersionStatus.rejected):
        version.retired_at = now


def _write_audit(session: Session, alias_row: ModelAlias, before: dict[str, Any], action: str, actor: str,
                 reason: str, version_id: str | None, from_status: str | None, to_status: str | None,
                 *, bump: bool = True) -> None:
    """Record the transition (and bump the alias generation) in the caller's transaction."""
    if not actor or not actor.strip():
        raise RegistryError("actor: say who is making this change")
    if bump:  # only pointer changes bump it: a router reloads when the generation moves
        alias_row.generation += 1
    alias_row.updated_at = utcnow()
    session.add(alias_row)
    session.add(AuditEntry(alias=alias_row.alias, version_id=version_id, action=action, actor=actor,
                           reason=reason or "", from_status=from_status and str(from_status),
                           to_status=to_status and str(to_status), before=before, after=snapshot(alias_row)))
    session.flush()


def _first_version(engine: Engine, alias: str) -> ModelVersionPublic | None:
    with Session(engine) as session:
        row = session.exec(select(ModelVersion).where(ModelVersion.alias == alias, ModelVersion.number == 1)).first()
        return ModelVersionPublic.model_validate(row) if row is not None else None


def _same_base_or_error(existing: ModelVersionPublic, base: str) -> ModelVersionPublic:
    if existing.base_model != base:
        raise RegistryError(
            f"alias {existing.alias!r} is registered with base model {existing.base_model}, not {base}; "
            "a different base model needs a new alias"
        )
    return existing


def _normalised_path(raw: str | None) -> str | None:
    """Local paths are stored absolute (a relative one would change meaning with the working directory)."""
    if raw and Path(raw).exists():
        return str(Path(raw).resolve())
    return raw


