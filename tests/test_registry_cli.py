"""`tuneloop models ...`: rich tables, transitions with actor and reason, clear refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from core.db import make_engine, migrate
from registry import store
from registry.models import ModelVersionCreate
from tuneloop.cli import app

PASSED = {"passed": True, "reasons": ["ok: mean score 4.60 vs minimum 4.00"], "figures": {}}


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TUNELOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps tables to the terminal width
    migrate(f"sqlite:///{(tmp_path / 'home' / 'tuneloop.db').resolve()}")  # `tuneloop migrate`, as a user would
    return tmp_path / "home"


def _checkpoint(root: Path, name: str) -> str:
    path = root / name
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(name.encode())
    return str(path)


def test_models_commands(home: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    base = _checkpoint(tmp_path, "base")
    result = runner.invoke(app, ["models", "register-base", "assistant", base])
    assert result.exit_code == 0 and "assistant-v1" in result.output
    engine = make_engine(f"sqlite:///{(home / 'tuneloop.db').resolve()}")
    spec = ModelVersionCreate(alias="assistant", base_model=base, merged_path=_checkpoint(tmp_path, "c2"),
                              dataset_version_id="ds-0123", training_config={"lr": 0.0002})
    candidate = store.register_candidate(engine, spec).id
    store.record_gate(engine, candidate, PASSED, reports={"candidate_eval": {"n": 5, "mean_score": 4.6}})
    store.start_canary(engine, candidate, 10, "deployer", "gate passed")

    listed = runner.invoke(app, ["models", "list"])
    assert listed.exit_code == 0
    rows = {line.split()[1]: line for line in listed.output.splitlines() if "assistant-v" in line}
    assert "production" in rows["assistant-v1"] and "90%" in rows["assistant-v1"]
    assert "canary" in rows["assistant-v2"] and "10%" in rows["assistant-v2"] and "4.60" in rows["assistant-v2"]

    promoted = runner.invoke(app, ["models", "promote", candidate, "--reason", "canary healthy", "--actor", "ops"])
    assert promoted.exit_code == 0, promoted.output
    assert store.get_aliases(engine, "assistant") == (candidate, None, 0)

    shown = runner.invoke(app, ["models", "show", candidate])
    assert shown.exit_code == 0
    for text in ("ds-0123", "0.0002", "PASSED", "mean score 4.60", "canary healthy", "ops", "candidate_eval"):
        assert text in shown.output, text

    rolled = runner.invoke(app, ["models", "rollback", "assistant", "--reason", "complaints"])
    assert rolled.exit_code == 0 and "rejected" in rolled.output
    assert store.get_aliases(engine, "assistant") == ("assistant-v1", None, 0)

    archived = runner.invoke(app, ["models", "archive", candidate, "--reason", "cleanup"])
    assert archived.exit_code == 0 and "archived" in archived.output

    audit = runner.invoke(app, ["models", "audit", "assistant"])
    assert [a for a in ("register_base", "promote", "rollback_production", "archived") if a not in audit.output] == []
    assert store.consistency_problems(engine) == []
    engine.dispose()


def test_refusals_are_clear_messages_not_tracebacks(home: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    runner.invoke(app, ["models", "register-base", "assistant", _checkpoint(tmp_path, "base")])
    for args, message in (
        (["models", "promote", "assistant-v1", "--reason", "x"], "only a canary can be promoted"),
        (["models", "rollback", "assistant", "--reason", "x"], "no earlier production version"),
        (["models", "show", "assistant-v9"], "no model version 'assistant-v9'"),
        (["models", "archive", "assistant-v1", "--reason", "x"], "only a version that is candidate"),
        (["models", "register-base", "Bad Alias"], "alias 'Bad Alias'"),
        (["eval", "assistant-v1", "--url", "http://127.0.0.1:9"], "only candidates are gated"),
    ):
        result = runner.invoke(app, args)
        # CliRunner never prints an exception: a crash is exit code 1 too, told apart only by result.exception
        assert result.exit_code == 1, (args, result.output)
        assert isinstance(result.exception, SystemExit), (args, result.exception)
        assert message in " ".join(result.output.split()), (args, result.output)


def test_eval_gate_overrides_are_checked_before_anything_runs(home: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    runner.invoke(app, ["models", "register-base", "assistant", _checkpoint(tmp_path, "base")])
    engine = make_engine(f"sqlite:///{(home / 'tuneloop.db').resolve()}")
    candidate = store.register_candidate(engine, ModelVersionCreate(
        alias="assistant", base_model="b", merged_path=_checkpoint(tmp_path, "v2"))).id
    before = store.get_version(engine, candidate), store.audit_log(engine, "assistant")
    for gate, message in ((["--gate", "min_mean_score=9"], "--gate: min_mean_score: Input should be less than"),
                          (["--gate", "min_mean=4"], "--gate 'min_mean=4': expected field=value")):
        result = runner.invoke(app, ["eval", candidate, "--url", "http://127.0.0.1:9", *gate])
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
        assert message in " ".join(result.output.split()), result.output
    assert (store.get_version(engine, candidate), store.audit_log(engine, "assistant")) == before
