"""Reading and writing the deployments table: the record of what runs where.

Processes are started and stopped in deploy/launcher.py; this module only keeps the books, so the router
(a gateway in another process) and a restarted controller see the same picture.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlmodel import col, select

from core.clock import utcnow
from core.db import Db, reading, writing
from core.deployments_table import ACTIVE_STATUSES, Deployment, DeploymentCreate, DeploymentPublic, DeploymentStatus


class DeploymentError(RuntimeError):
    """A deployment could not be started, found or stopped; the message says why."""


def record_deployment(db: Db, spec: DeploymentCreate) -> DeploymentPublic:
    row = Deployment.model_validate(DeploymentCreate.model_validate(spec.model_dump()).model_dump())
    with writing(db) as session:
        session.add(row)
    return DeploymentPublic.model_validate(row)


def get_deployment(db: Db, deployment_id: int) -> DeploymentPublic:
    with reading(db) as session:
        row = session.get(Deployment, deployment_id)
        if row is None:
            raise DeploymentError(f"no deployment {deployment_id}")
        return DeploymentPublic.model_validate(row)


def list_deployments(
    db: Db, *, alias: str | None = None, version_id: str | None = None,
    statuses: Iterable[DeploymentStatus] | None = None,
) -> list[DeploymentPublic]:
    query = select(Deployment).order_by(col(Deployment.id))
    if alias is not None:
        query = query.where(Deployment.alias == alias)
    if version_id is not None:
        query = query.where(Deployment.version_id == version_id)
    if statuses is not None:
        query = query.where(col(Deployment.status).in_([str(s) for s in statuses]))
    with reading(db) as session:
        return [DeploymentPublic.model_validate(row) for row in session.exec(query)]


def active_deployment(db: Db, version_id: str) -> DeploymentPublic | None:
    """The newest running or draining deployment of a version (there is at most one in normal operation)."""
    found = list_deployments(db, version_id=version_id, statuses=ACTIVE_STATUSES)
    return found[-1] if found else None


def active_deployments(db: Db) -> list[DeploymentPublic]:
    return list_deployments(db, statuses=ACTIVE_STATUSES)


def hosted_adapters(db: Db, host_deployment_id: int) -> list[DeploymentPublic]:
    """Active adapter deployments that live inside the given base server."""
    with reading(db) as session:
        rows = session.exec(
            select(Deployment).where(Deployment.host_deployment_id == host_deployment_id,
                                     col(Deployment.status).in_([str(s) for s in ACTIVE_STATUSES]))
        )
        return [DeploymentPublic.model_validate(row) for row in rows]


def set_status(db: Db, deployment_id: int, status: DeploymentStatus, reason: str = "") -> DeploymentPublic:
    with writing(db) as session:
        row = session.get(Deployment, deployment_id)
        if row is None:
            raise DeploymentError(f"no deployment {deployment_id}")
        now = utcnow()
        row.status, row.status_reason = status, reason
        if status == DeploymentStatus.draining and row.drain_started_at is None:
            row.drain_started_at = now
        elif status == DeploymentStatus.running:
            row.drain_started_at = None
        elif status in (DeploymentStatus.stopped, DeploymentStatus.failed):
            row.stopped_at = now
        session.add(row)
    return DeploymentPublic.model_validate(row)
