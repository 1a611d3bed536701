"""The migrated `deployments` table matches core.deployments_table, on SQLite and PostgreSQL; 0004 downgrades cleanly;
the table's bookkeeping (record, status changes, hosted adapters) works on both."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlmodel import SQLModel

import core.deployments_table  # noqa: F401  (registers the table on SQLModel.metadata)
from core.db import downgrade, make_engine, migrate
from core.deployments_table import DeploymentCreate, DeploymentMode, DeploymentStatus
from deploy.deployments import (
    active_deployment,
    hosted_adapters,
    list_deployments,
    record_deployment,
    set_status,
)
from deploy.launcher import ServeConfig
from deploy.vllm_http import parse_metrics, requests_in_flight
from registry import store


def _only_deployments(obj, name, type_, reflected, compare_to) -> bool:
    # Other packages own other tables (and their own schema tests).
    table = name if type_ == "table" else getattr(getattr(obj, "table", None), "name", None)
    return table == "deployments"


@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_migrated_schema_matches_the_model(db: str, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("sqlite_url" if db == "sqlite" else "pg_url")
    engine = make_engine(url)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"include_object": _only_deployments})
        diffs = compare_metadata(context, SQLModel.metadata)
    engine.dispose()
    assert "deployments" in SQLModel.metadata.tables
    assert diffs == []


def test_downgrade_to_0003_drops_the_table(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    assert "deployments" in inspect(engine).get_table_names()
    downgrade(sqlite_url, "0003")
    assert "deployments" not in inspect(engine).get_table_names()
    migrate(sqlite_url)
    assert "deployments" in inspect(engine).get_table_names()
    engine.dispose()


def test_bookkeeping(any_db_url: str, tmp_path: Path) -> None:
    engine = make_engine(any_db_url)
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    store.register_base(engine, "assistant", str(base))
    host = record_deployment(engine, DeploymentCreate(
        version_id="assistant-v1", alias="assistant", mode=DeploymentMode.merged, served_name="assistant-v1",
        model_path=str(base), base_url="http://127.0.0.1:9", machine="m", port=9, pid=123, lora_enabled=True,
        command=["python", "-m", "vllm"],
    ))
    assert host.status == DeploymentStatus.running and host.started_at.tzinfo is not None
    assert active_deployment(engine, "assistant-v1") == host
    adapter = record_deployment(engine, DeploymentCreate(
        version_id="assistant-v1", alias="assistant", mode=DeploymentMode.adapter, served_name="x",
        model_path="/a", base_url=host.base_url, machine="m", port=9, host_deployment_id=host.id,
    ))
    assert [d.id for d in hosted_adapters(engine, host.id)] == [adapter.id]
    draining = set_status(engine, adapter.id, DeploymentStatus.draining, "leaving")
    assert draining.drain_started_at is not None and draining.active
    stopped = set_status(engine, adapter.id, DeploymentStatus.stopped, "done")
    assert stopped.stopped_at is not None and not stopped.active and stopped.status_reason == "done"
    assert hosted_adapters(engine, host.id) == []
    assert len(list_deployments(engine, alias="assistant")) == 2
    assert len(list_deployments(engine, statuses=[DeploymentStatus.stopped])) == 1
    engine.dispose()


@pytest.mark.parametrize("field, value, message", [
    ("mode", "sideways", "mode"),
    ("drain_grace_s", -1, "drain_grace_s"),
    ("stop_grace_s", 0, "stop_grace_s"),
    ("gpu_memory_utilization", 1.5, "gpu_memory_utilization"),
    ("tensor_parallel_size", 0, "tensor_parallel_size"),
])
def test_serve_config_names_the_bad_field(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ServeConfig(**{field: value})


def test_serve_config_builds_the_vllm_command() -> None:
    config = ServeConfig(quantization="awq_marlin", gpu_memory_utilization=0.85, max_num_seqs=64,
                         enable_chunked_prefill=True, tensor_parallel_size=2, max_model_len=4096)
    command = config.server_config("/models/v3", "assistant-v3").command("python")
    joined = " ".join(command)
    for part in ("--model /models/v3", "--served-model-name assistant-v3", "--quantization awq_marlin",
                 "--gpu-memory-utilization 0.85", "--max-num-seqs 64", "--enable-chunked-prefill",
                 "--tensor-parallel-size 2", "--max-model-len 4096", "--enable-lora"):
        assert part in joined


METRICS = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="demo-v1"} 2.0
vllm:num_requests_waiting{engine="0",model_name="demo-v1"} 1.0
vllm:lora_requests_info{max_lora="1",running_lora_adapters="demo-v2",waiting_lora_adapters=""} 1.7e+09
vllm:lora_requests_info{max_lora="1",running_lora_adapters="",waiting_lora_adapters=""} 1.8e+09
vllm:lora_requests_info{max_lora="1",running_lora_adapters="demo-v3,demo-v4",waiting_lora_adapters=""} 1.75e+09
"""


def test_in_flight_requests_from_vllm_metrics() -> None:
    samples = parse_metrics(METRICS)
    assert requests_in_flight(samples) == 3
    # the newest lora_requests_info sample is the current state: nobody's adapter is busy now
    assert requests_in_flight(samples, "demo-v2") == 0 and requests_in_flight(samples, "demo-v3") == 0
    busy = METRICS.replace("1.75e+09", "1.9e+09")
    assert requests_in_flight(parse_metrics(busy), "demo-v4") == 1
    assert requests_in_flight(parse_metrics("garbage\n"), "x") == 0
