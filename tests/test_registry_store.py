"""Registry: lineage, transitions, refusals that change nothing, audit log, schema = models (SQLite + PostgreSQL)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine
from sqlmodel import SQLModel

from core.db import make_engine
from registry import store
from registry.models import ModelVersionCreate, VersionStatus

REGISTRY_TABLES = {"model_versions", "model_aliases", "registry_audit"}
PASSED = {"passed": True, "reasons": ["mean 4.5 >= 4.0"], "figures": {"mean": 4.5}}
FAILED = {"passed": False, "reasons": ["mean 2.0 < 4.0"], "figures": {"mean": 2.0}}


@pytest.fixture
def engine(any_db_url: str):
    engine = make_engine(any_db_url)
    yield engine
    engine.dispose()


def _checkpoint(root: Path, name: str, content: bytes = b"weights") -> str:
    path = root / name
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(content)
    (path / "config.json").write_text('{"n": 1}')
    return str(path)


def _candidate(engine: Engine, tmp_path: Path, name: str, alias: str = "assistant") -> str:
    spec = ModelVersionCreate(
        alias=alias, base_model="base", merged_path=_checkpoint(tmp_path, name), dataset_version_id="ds-1",
        dataset_hash="abc", training_config={"lr": 2e-4, "r": 16}, library_versions={"peft": "0.21.2"},
        code_revision="deadbeef", training_metrics={"train_loss": 1.2},
    )
    return store.register_candidate(engine, spec).id


def _state(engine: Engine, alias: str = "assistant") -> tuple:
    """Everything a registry operation can write for the alias: its pointers, every version, every audit entry."""
    return store.get_alias_state(engine, alias), store.list_versions(engine, alias), store.audit_log(engine, alias)


def _table_of(diff) -> str | None:
    """The table an alembic autogenerate diff is about."""
    if isinstance(diff, list):  # modify_* diffs: [(op, schema, table, column, ...)]
        return diff[0][2]
    if diff[0] in ("add_column", "remove_column"):
        return diff[2]
    item = diff[1]
    return item.name if hasattr(item, "columns") and not hasattr(item, "table") else item.table.name


def test_migrated_schema_matches_models(engine: Engine) -> None:
    import registry.models  # noqa: F401  (registers the tables on SQLModel.metadata)

    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)

    # Other packages' tables are checked by their own tests.
    ours = [d for d in diffs if _table_of(d) in REGISTRY_TABLES]
    assert ours == []


def test_register_base_is_idempotent_and_is_production(engine: Engine, tmp_path: Path) -> None:
    base = _checkpoint(tmp_path, "base")
    first = store.register_base(engine, "assistant", base)
    again = store.register_base(engine, "assistant", base)
    assert first.id == again.id == "assistant-v1"
    assert first.status == VersionStatus.production
    assert "merged/model.safetensors" in first.files_manifest
    assert store.get_aliases(engine, "assistant") == ("assistant-v1", None, 0)
    assert store.get_aliases(engine, "nobody") == (None, None, 0)
    assert [e.action for e in store.audit_log(engine, "assistant")] == ["register_base"]
    with pytest.raises(store.RegistryError, match="new alias"):
        store.register_base(engine, "assistant", _checkpoint(tmp_path, "other-base"))
    with pytest.raises(ValueError, match="alias"):
        store.register_base(engine, "Bad Alias!", base)
    with pytest.raises(ValueError, match="-v<number>"):
        store.register_base(engine, "assistant-v2", base)


def test_candidate_lineage_numbering_and_immutable_files(engine: Engine, tmp_path: Path) -> None:
    store.register_base(engine, "assistant", _checkpoint(tmp_path, "base"))
    v2 = store.get_version(engine, _candidate(engine, tmp_path, "c2"))
    v3 = store.get_version(engine, _candidate(engine, tmp_path, "c3"))
    assert (v2.id, v3.id) == ("assistant-v2", "assistant-v3")
    assert v2.parent_id == "assistant-v1" and v2.status == VersionStatus.candidate
    assert v2.training_config == {"lr": 2e-4, "r": 16} and v2.dataset_hash == "abc"
    assert v2.library_versions == {"peft": "0.21.2"} and v2.code_revision == "deadbeef"
    weights = Path(v2.merged_path) / "model.safetensors"
    assert not os.access(weights, os.W_OK) or os.geteuid() == 0  # root ignores permission bits
    assert not weights.stat().st_mode & 0o222
    assert store.verify_files(engine, v2.id) == []
    weights.chmod(0o644)
    weights.write_bytes(b"tampered")
    assert store.verify_files(engine, v2.id) == ["changed: merged/model.safetensors"]
    with pytest.raises(store.UnknownAlias):
        _candidate(engine, tmp_path, "orphan", alias="unregistered")
    with pytest.raises(store.RegistryError, match="does not exist"):
        store.register_candidate(engine, ModelVersionCreate(alias="assistant", base_model="b", merged_path="/nope"))


def test_full_lifecycle_with_audit_log(engine: Engine, tmp_path: Path) -> None:
    store.register_base(engine, "assistant", _checkpoint(tmp_path, "base"))
    v2 = _candidate(engine, tmp_path, "c2")
    store.record_gate(engine, v2, PASSED, reports={"eval": {"mean_score": 4.5}})
    assert store.get_version(engine, v2).eval_reports == {"eval": {"mean_score": 4.5}}
    store.start_canary(engine, v2, 10, "alice", "nightly gate passed")
    assert store.get_aliases(engine, "assistant") == ("assistant-v1", v2, 10)
    store.set_canary_weight(engine, "assistant", 50, "alice", "healthy")
    assert store.get_aliases(engine, "assistant") == ("assistant-v1", v2, 50)
    promoted = store.promote(engine, v2, "bob", "canary metrics fine")
    assert promoted.status == VersionStatus.production and promoted.production_at is not None
    assert store.get_version(engine, "assistant-v1").status == VersionStatus.archived
    assert store.get_aliases(engine, "assistant") == (v2, None, 0)

    log = store.audit_log(engine, "assistant")
    assert [e.action for e in log] == [
        "register_base", "register", "gate", "start_canary", "set_canary_weight", "promote"
    ]
    last = log[-1]
    assert (last.actor, last.reason, last.from_status, last.to_status) == (
        "bob", "canary metrics fine", "canary", "production"
    )
    assert last.before["production"] == "assistant-v1" and last.after["production"] == v2
    assert last.after["generation"] == last.before["generation"] + 1
    assert store.consistency_problems(engine) == []


def test_refusals_change_nothing(engine: Engine, tmp_path: Path) -> None:
    store.register_base(engine, "assistant", _checkpoint(tmp_path, "base"))
    v2 = _candidate(engine, tmp_path, "c2")
    # each refusal is compared with a snapshot taken just before it; the writes in between are the test's own
    before = _state(engine)
    with pytest.raises(store.GateNotPassed):
        store.start_canary(engine, v2, 10, "alice", "too early")
    assert _state(engine) == before
    store.record_gate(engine, v2, FAILED)
    assert store.get_version(engine, v2).status == VersionStatus.rejected
    before = _state(engine)
    with pytest.raises(store.InvalidTransition):
        store.start_canary(engine, v2, 10, "alice", "rejected")
    assert _state(engine) == before
    store.record_gate(engine, v2, PASSED)  # re-evaluated after, say, a judge outage
    before = _state(engine)
    for bad in (-1, 101, 10.5, True, "10"):
        with pytest.raises(store.InvalidWeight, match="weight"):
            store.start_canary(engine, v2, bad, "alice", "bad weight")  # type: ignore[arg-type]
        assert _state(engine) == before, f"weight {bad!r}"
    with pytest.raises(store.InvalidTransition, match="only a canary"):
        store.promote(engine, v2, "alice", "skip the canary")
    assert _state(engine) == before
    with pytest.raises(store.InvalidTransition, match="no earlier production"):
        store.rollback(engine, "assistant", "alice", "nothing to go back to")
    assert _state(engine) == before
    with pytest.raises(store.InvalidTransition):
        store.archive(engine, "assistant-v1", "alice", "archive production")
    assert _state(engine) == before
    with pytest.raises(store.RegistryError, match="actor"):
        store.start_canary(engine, v2, 10, " ", "anonymous")
    assert _state(engine) == before
    store.start_canary(engine, v2, 10, "alice", "ok")
    assert _state(engine) != before  # the control: the snapshot does see a write
    v3 = _candidate(engine, tmp_path, "c3")
    store.record_gate(engine, v3, PASSED)
    with pytest.raises(store.InvalidTransition, match="already has canary"):
        store.start_canary(engine, v3, 10, "alice", "second canary")
    assert store.consistency_problems(engine) == []


def test_rollbacks(engine: Engine, tmp_path: Path) -> None:
    store.register_base(engine, "assistant", _checkpoint(tmp_path, "base"))
    v2 = _candidate(engine, tmp_path, "c2")
    store.record_gate(engine, v2, PASSED)
    store.start_canary(engine, v2, 20, "alice", "go")
    rolled = store.rollback(engine, v2, "alice", "error rate up")
    assert rolled.status == VersionStatus.rejected
    assert store.get_aliases(engine, "assistant") == ("assistant-v1", None, 0)

    v3 = _candidate(engine, tmp_path, "c3")
    store.record_gate(engine, v3, PASSED)
    store.start_canary(engine, v3, 20, "alice", "go")
    store.promote(engine, v3, "alice", "good")
    v4 = _candidate(engine, tmp_path, "c4")
    store.record_gate(engine, v4, PASSED)
    store.start_canary(engine, v4, 20, "alice", "go")
    store.promote(engine, v4, "alice", "good")
    assert store.get_aliases(engine, "assistant") == (v4, None, 0)
    store.rollback(engine, "assistant", "bob", "complaints")  # production back to the previous production
    assert store.get_aliases(engine, "assistant") == (v3, None, 0)
    assert store.get_version(engine, v4).status == VersionStatus.rejected
    store.rollback(engine, v3, "bob", "still bad")
    assert store.get_aliases(engine, "assistant") == ("assistant-v1", None, 0)
    with pytest.raises(store.InvalidTransition):
        store.rollback(engine, "assistant", "bob", "no more")
    v5 = _candidate(engine, tmp_path, "c5")
    assert store.reject(engine, v5, "bob", "not needed").status == VersionStatus.rejected
    assert store.archive(engine, v5, "bob", "cleanup").status == VersionStatus.archived
    v6 = _candidate(engine, tmp_path, "c6")
    store.record_gate(engine, v6, PASSED)
    store.start_canary(engine, v6, 5, "alice", "go")
    store.reject(engine, v6, "monitor", "latency")  # rejecting a canary takes its traffic away
    assert store.get_aliases(engine, "assistant") == ("assistant-v1", None, 0)
    assert store.consistency_problems(engine) == []


def test_concurrent_canary_starts_admit_exactly_one(engine: Engine, tmp_path: Path) -> None:
    store.register_base(engine, "assistant", _checkpoint(tmp_path, "base"))
    candidates = [_candidate(engine, tmp_path, f"c{i}") for i in range(4)]
    for version_id in candidates:
        store.record_gate(engine, version_id, PASSED)
    outcomes: list[str] = []
    barrier = threading.Barrier(len(candidates))

    def start(version_id: str) -> None:
        barrier.wait()
        try:
            store.start_canary(engine, version_id, 10, "racer", "race")
            outcomes.append("ok")
        except store.InvalidTransition:
            outcomes.append("refused")

    threads = [threading.Thread(target=start, args=(v,)) for v in candidates]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["ok", "refused", "refused", "refused"]
    assert store.consistency_problems(engine) == []
