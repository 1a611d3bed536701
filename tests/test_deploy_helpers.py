"""Shared setup for the deploy/canary/router tests (no tests here): registry versions, deployment rows and
synthetic traffic in the interaction log."""

from __future__ import annotations

import uuid
from datetime import datetime
from pathlib import Path

from sqlalchemy import Engine
from sqlmodel import Session

from core.clock import utcnow
from core.deployments_table import DeploymentCreate, DeploymentMode, DeploymentPublic
from deploy.deployments import record_deployment
from feedback.models import Feedback, Interaction, InteractionStatus, Rating
from registry import store
from registry.models import ModelVersionCreate

PASSED = {"passed": True, "reasons": ["judge mean 4.5 >= 4.0"], "figures": {"mean": 4.5}}


def checkpoint(root: Path, name: str) -> str:
    path = root / name
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text('{"n": 1}')
    (path / "model.safetensors").write_bytes(name.encode())
    return str(path)


def base_and_candidate(engine: Engine, root: Path, alias: str = "assistant", gate: bool = True,
                       base: str | None = None, **candidate: object) -> tuple[str, str]:
    """Register the base (production v1) and a candidate v2; the candidate passes the gate when `gate`."""
    base_path = base or checkpoint(root, f"{alias}-base")
    production = store.register_base(engine, alias, base_path).id
    spec = {"alias": alias, "base_model": base_path, **candidate}
    if "merged_path" not in spec and "adapter_path" not in spec:
        spec["merged_path"] = checkpoint(root, f"{alias}-cand-{uuid.uuid4().hex[:6]}")
    version = store.register_candidate(engine, ModelVersionCreate(**spec)).id  # type: ignore[arg-type]
    if gate:
        store.record_gate(engine, version, PASSED)
    return production, version


def fake_deployment(engine: Engine, version_id: str, url: str, alias: str = "assistant") -> DeploymentPublic:
    """A deployment row for routing tests: the router only reads the table, it never calls the server."""
    return record_deployment(engine, DeploymentCreate(
        version_id=version_id, alias=alias, mode=DeploymentMode.merged, served_name=version_id, model_path="/m",
        base_url=url, machine="elsewhere", port=int(url.rsplit(":", 1)[1]),
    ))


def traffic(engine: Engine, alias: str, version: str, n: int, *, errors: int = 0, up: int = 0, down: int = 0,
            latency_ms: float = 100.0, at: datetime | None = None) -> None:
    """`n` interactions of `version` (the first `errors` failed), `up` + `down` of them rated."""
    assert up + down <= n - errors
    created = at or utcnow()
    with Session(engine) as session:
        for i in range(n):
            row_id = uuid.uuid4().hex
            failed = i < errors
            session.add(Interaction(
                id=row_id, api_key_id="k", model_alias=alias, served_version=version, endpoint="chat.completions",
                end_user=f"user-{i}", status=InteractionStatus.upstream_error if failed else InteractionStatus.ok,
                http_status=502 if failed else 200, latency_ms=latency_ms, created_at=created,
            ))
            rated = i - errors
            if 0 <= rated < up + down:
                session.flush()
                session.add(Feedback(interaction_id=row_id, api_key_id="k", end_user=f"user-{i}",
                                     rating=Rating.up if rated < up else Rating.down))
        session.commit()
