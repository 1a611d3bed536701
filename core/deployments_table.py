"""The deployments table: which registry version runs where (server, port, pid, log), so the gateway can route
to it and a restarted controller finds it.

The schema is created by migration 0004; a test checks these models and the migrated database agree.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import JSON, Column, String, Text
from sqlmodel import Field, SQLModel

from core.clock import UTCDateTime, utcnow


class DeploymentMode(StrEnum):
    merged = "merged"  # a full checkpoint on its own vLLM server
    adapter = "adapter"  # a LoRA adapter hot-loaded into a running base server (no second server)


class DeploymentStatus(StrEnum):
    running = "running"  # serving; the router may send traffic to it
    draining = "draining"  # no longer pointed to; stopped once its in-flight requests are done
    stopped = "stopped"  # stopped on purpose
    failed = "failed"  # found dead or unhealthy


ACTIVE_STATUSES = (DeploymentStatus.running, DeploymentStatus.draining)


class DeploymentBase(SQLModel):
    version_id: str = Field(foreign_key="model_versions.id", index=True, description="The registry version served.")
    alias: str = Field(index=True)
    mode: DeploymentMode = Field(sa_type=String(16))
    served_name: str = Field(description="The vLLM model name (--served-model-name or LoRA name) = version id.")
    model_path: str = Field(description="Checkpoint the server loaded (merged) or the adapter directory.")
    base_url: str = Field(description="http://host:port of the vLLM OpenAI server (…/v1 not included).")
    machine: str = Field(description="Hostname of the machine the server runs on (pids mean something only there).")
    port: int
    pid: int | None = Field(default=None, description="The server's process (group) id; the host's for adapters.")
    host_deployment_id: int | None = Field(
        default=None, foreign_key="deployments.id", description="Adapter mode: the deployment of the base server."
    )
    lora_enabled: bool = Field(default=False, description="Merged mode: started with --enable-lora (hosts adapters).")
    log_path: str | None = None
    command: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))


class DeploymentCreate(DeploymentBase):
    model_config = {"extra": "forbid"}  # type: ignore[assignment]


class Deployment(DeploymentBase, table=True):
    __tablename__ = "deployments"

    id: int | None = Field(default=None, primary_key=True)
    status: DeploymentStatus = Field(default=DeploymentStatus.running, sa_type=String(16), index=True)
    status_reason: str = Field(default="", sa_column=Column(Text, nullable=False))
    started_at: datetime = Field(sa_type=UTCDateTime, default_factory=utcnow)
    drain_started_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    stopped_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class DeploymentPublic(DeploymentBase):
    id: int
    status: DeploymentStatus
    status_reason: str
    started_at: datetime
    drain_started_at: datetime | None
    stopped_at: datetime | None


    @property
    def active(self) -> bool:
        return self.status in ACTIVE_STATUSES
