"""The canary controller on the real store (SQLite and PostgreSQL) with traffic written to the interaction log:
automatic rollback and promotion with the audit log, staged weights, waiting, per-arm figures, a stage no
canary request reached ("no canary traffic"), and the refusals (gate not passed, no production, bad weight) that
change nothing and start no server."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from typer.testing import CliRunner

from core.clock import utcnow
from core.db import make_engine
from core.policies import CanaryPolicy
from deploy import canary
from deploy.analysis import Action
from deploy.deployments import list_deployments
from deploy.figures import arm_figures
from deploy.launcher import Launcher
from registry import store
from registry.errors import GateNotPassed, InvalidTransition, InvalidWeight, NoProductionVersion
from registry.models import VersionStatus
from tests.test_deploy_helpers import base_and_candidate, fake_deployment, traffic
from tuneloop.cli import app

POLICY = CanaryPolicy(min_requests=40, min_ratings=20, max_thumbs_down_rate_increase=0.10,
                      max_error_rate_increase=0.05, max_p95_latency_ratio=2.0)


@pytest.fixture
def engine(any_db_url: str):
    engine = make_engine(any_db_url)
    yield engine
    engine.dispose()


def registry_state(engine: Engine, alias: str = "assistant") -> tuple:
    """Everything a registry operation can write for the alias: its pointers, every version, every audit entry."""
    return store.get_alias_state(engine, alias), store.list_versions(engine, alias), store.audit_log(engine, alias)


def test_thumbs_down_canary_is_rolled_back_and_a_good_one_promoted(engine: Engine, tmp_path: Path) -> None:
    production, bad = base_and_candidate(engine, tmp_path)
    canary.start(engine, bad, 50, actor="alice", reason="try v2")
    traffic(engine, "assistant", production, 60, up=27, down=3)
    traffic(engine, "assistant", bad, 60, up=6, down=24)
    result = canary.step(engine, "assistant", POLICY)
    assert result.action == Action.rollback and result.canary_id == bad and result.weight == 0
    assert store.get_version(engine, bad).status == VersionStatus.rejected
    assert store.get_aliases(engine, "assistant") == (production, None, 0)
    entry = store.audit_log(engine, "assistant")[-1]
    assert entry.action == "rollback_canary" and entry.actor == canary.CONTROLLER
    assert "thumbs-down rate canary 80.0%" in entry.reason

    good = _second_candidate(engine, tmp_path)
    store.record_gate(engine, good, {"passed": True, "reasons": ["ok"]})
    canary.start(engine, good, 50, actor="alice", reason="try v3")
    traffic(engine, "assistant", production, 60, up=25, down=5)
    traffic(engine, "assistant", good, 60, up=26, down=4)
    result = canary.step(engine, "assistant", POLICY)
    assert result.action == Action.promote, result.reasons
    assert store.get_aliases(engine, "assistant") == (good, None, 0)
    assert store.get_version(engine, production).status == VersionStatus.archived
    actions = [e.action for e in store.audit_log(engine, "assistant")]
    assert actions[-2:] == ["start_canary", "promote"] and "rollback_canary" in actions
    assert store.consistency_problems(engine) == []


def _second_candidate(engine: Engine, tmp_path: Path) -> str:
    from registry.models import ModelVersionCreate
    from tests.test_deploy_helpers import checkpoint

    return store.register_candidate(engine, ModelVersionCreate(
        alias="assistant", base_model="b", merged_path=checkpoint(tmp_path, "v3"))).id


def test_the_window_starts_with_the_canary(engine: Engine, tmp_path: Path) -> None:
    production, candidate = base_and_candidate(engine, tmp_path)
    traffic(engine, "assistant", production, 50, down=40, at=utcnow() - timedelta(hours=1))  # before: ignored
    canary.start(engine, candidate, 30)
    traffic(engine, "assistant", production, 45, errors=5, up=10, down=2, latency_ms=120)
    traffic(engine, "assistant", candidate, 20, up=1, down=1, latency_ms=300)
    traffic(engine, "assistant", "other-version", 10)
    _state, figures, analysis = canary.evaluate(engine, "assistant", POLICY)
    prod, cand = figures[production], figures[candidate]
    assert (prod.requests, prod.errors, prod.thumbs_up, prod.thumbs_down) == (45, 5, 10, 2)
    assert (cand.requests, cand.thumbs_up, cand.thumbs_down, cand.latency_samples) == (20, 1, 1, 20)
    assert cand.p95_latency_ms == pytest.approx(300) and prod.latency_samples == 40
    assert analysis is not None and analysis.action == Action.wait  # too few canary requests and ratings
    before = registry_state(engine)
    assert canary.step(engine, "assistant", POLICY).action == Action.wait
    assert registry_state(engine) == before
    everything = arm_figures(engine, "assistant", [production], utcnow() - timedelta(days=1))
    assert everything[production].requests == 95


def test_staged_weights_advance_then_promote(engine: Engine, tmp_path: Path) -> None:
    production, candidate = base_and_candidate(engine, tmp_path)
    staged = CanaryPolicy(**{**POLICY.to_dict(), "stages": (25, 60)})
    canary.start(engine, candidate, 10)
    for expected_weight in (25, 60):
        traffic(engine, "assistant", production, 50, up=22)
        traffic(engine, "assistant", candidate, 50, up=22)
        result = canary.step(engine, "assistant", staged)
        assert (result.action, result.weight) == (Action.advance, expected_weight)
        assert store.get_aliases(engine, "assistant") == (production, candidate, expected_weight)
        # a new stage is judged on its own traffic: nothing yet
        assert canary.step(engine, "assistant", staged).action == Action.wait
    traffic(engine, "assistant", production, 50, up=22)
    traffic(engine, "assistant", candidate, 50, up=22)
    assert canary.step(engine, "assistant", staged).action == Action.promote
    actions = [e.action for e in store.audit_log(engine, "assistant")]
    assert actions[-4:] == ["start_canary", "set_canary_weight", "set_canary_weight", "promote"]


def test_no_canary_waits_and_manual_transitions_need_one(engine: Engine, tmp_path: Path) -> None:
    base_and_candidate(engine, tmp_path)
    result = canary.step(engine, "assistant", POLICY)
    assert result.action == Action.wait and result.reasons == ("no canary running",)
    with pytest.raises(InvalidTransition, match="no canary"):
        canary.promote_canary(engine, "assistant")
    with pytest.raises(InvalidTransition, match="no canary"):
        canary.rollback_canary(engine, "assistant")


def test_refusals_change_nothing_and_start_no_server(engine: Engine, tmp_path: Path) -> None:
    _production, ungated = base_and_candidate(engine, tmp_path, gate=False)
    # a launcher whose vLLM "python" fails at once: any attempt to start a server would show up as an error
    launcher = Launcher(engine, tmp_path / "work", python="/bin/false")
    # each refusal is compared with a snapshot taken just before it; the writes in between are the test's own
    before = registry_state(engine)
    with pytest.raises(GateNotPassed, match="has not passed the gate"):
        canary.start(engine, ungated, 10, launcher=launcher)
    assert registry_state(engine) == before and list_deployments(engine) == []
    store.record_gate(engine, ungated, {"passed": True, "reasons": ["ok"]})
    before = registry_state(engine)
    for bad in (-1, 101, 12.5, True, "10"):
        with pytest.raises(InvalidWeight, match="0 to 100"):
            canary.start(engine, ungated, bad, launcher=launcher)  # type: ignore[arg-type]
        assert registry_state(engine) == before and list_deployments(engine) == [], f"weight {bad!r}"
    with engine.begin() as conn:  # an alias whose production pointer was cleared (e.g. a hand-edited store)
        conn.execute(text("UPDATE model_aliases SET production_id = NULL WHERE alias = 'assistant'"))
    before = registry_state(engine)
    with pytest.raises(NoProductionVersion, match="no production version"):
        canary.start(engine, ungated, 10, launcher=launcher)
    assert registry_state(engine) == before
    assert list_deployments(engine) == []


def test_cli_refusals_say_why_and_status_reports(any_db_url: str, tmp_path: Path) -> None:
    engine = make_engine(any_db_url)
    production, candidate = base_and_candidate(engine, tmp_path, gate=False)
    env = {"TUNELOOP_DATABASE_URL": any_db_url, "TUNELOOP_HOME": str(tmp_path / "home")}
    runner = CliRunner()
    before = registry_state(engine)
    refused = runner.invoke(app, ["canary", "start", candidate, "--weight", "10"], env=env)
    assert refused.exit_code == 1 and "has not passed the gate" in refused.output
    assert registry_state(engine) == before and list_deployments(engine) == []
    store.record_gate(engine, candidate, {"passed": True, "reasons": ["ok"]})
    before = registry_state(engine)  # a new snapshot: the gate just written is the test's own write
    refused = runner.invoke(app, ["canary", "start", candidate, "--weight", "150"], env=env)
    assert refused.exit_code == 1 and "0 to 100" in refused.output
    assert registry_state(engine) == before and list_deployments(engine) == []

    started = runner.invoke(app, ["canary", "start", candidate, "--weight", "40", "--no-serve"], env=env)
    assert started.exit_code == 0, started.output
    traffic(engine, "assistant", production, 50, up=25)
    traffic(engine, "assistant", candidate, 50, up=5, down=20)
    policy = tmp_path / "policy.yaml"
    policy.write_text("min_requests: 40\nmin_ratings: 20\nmax_p95_latency_ratio: 2.0\n")
    status = runner.invoke(app, ["canary", "status", "assistant", "--policy", str(policy)], env=env)
    assert status.exit_code == 0 and "rollback" in status.output and "assistant-v2" in status.output
    policy.write_text("min_request: 40\n")
    bad = runner.invoke(app, ["canary", "status", "assistant", "--policy", str(policy)], env=env)
    assert bad.exit_code == 2 and "min_request" in bad.output
    policy.write_text("min_requests: 40\nmin_ratings: 20\nmax_p95_latency_ratio: 2.0\n")
    stepped = runner.invoke(app, ["canary", "step", "assistant", "--policy", str(policy), "--no-serve"], env=env)
    assert stepped.exit_code == 0 and "rollback" in stepped.output
    assert store.get_version(engine, candidate).status == VersionStatus.rejected
    engine.dispose()


def test_a_stage_without_canary_traffic_says_so_in_evaluate_step_and_status(any_db_url: str,
                                                                             tmp_path: Path) -> None:
    engine = make_engine(any_db_url)
    production, candidate = base_and_candidate(engine, tmp_path)
    canary.start(engine, candidate, 20, actor="alice", reason="try v2")
    traffic(engine, "assistant", production, 300, up=40)  # production is busy, the canary got nothing
    later = utcnow() + timedelta(hours=2, minutes=5, seconds=10)
    _state, figures, analysis = canary.evaluate(engine, "assistant", POLICY, now=later)
    assert figures[candidate].requests == 0
    assert analysis is not None and analysis.action == Action.wait and analysis.no_canary_traffic
    assert analysis.reasons[0].startswith(f"no canary traffic: {candidate} has served 0 requests in this stage "
                                          "(running 2h 05m at canary weight 20%)")
    before = registry_state(engine)
    result = canary.step(engine, "assistant", POLICY)
    assert result.action == Action.wait and result.reasons[0].startswith("no canary traffic")
    assert registry_state(engine) == before  # a reason, not a decision: nothing moved

    env = {"TUNELOOP_DATABASE_URL": any_db_url, "TUNELOOP_HOME": str(tmp_path / "home")}
    policy = tmp_path / "policy.yaml"
    policy.write_text("min_requests: 40\nmin_ratings: 20\nmax_p95_latency_ratio: 2.0\n")
    runner = CliRunner()
    status = runner.invoke(app, ["canary", "status", "assistant", "--policy", str(policy)], env=env)
    assert status.exit_code == 0, status.output
    text = " ".join(status.output.split())  # rich wraps long lines
    assert f"no canary traffic: {candidate} has served 0 requests in this stage (running " in text
    assert "at canary weight 20%)" in text and "analysis: wait" in text
    as_json = runner.invoke(app, ["canary", "status", "assistant", "--policy", str(policy), "--json"], env=env)
    assert as_json.exit_code == 0, as_json.output
    assert '"no_canary_traffic": true' in as_json.output

    traffic(engine, "assistant", candidate, 1)  # the control: one canary request and the reason is gone
    _state, figures, analysis = canary.evaluate(engine, "assistant", POLICY)
    assert figures[candidate].requests == 1
    assert analysis is not None and analysis.action == Action.wait and not analysis.no_canary_traffic
    assert not any("no canary traffic" in r for r in analysis.reasons)
    status = runner.invoke(app, ["canary", "status", "assistant", "--policy", str(policy)], env=env)
    assert status.exit_code == 0 and "analysis: wait" in status.output and "no canary traffic" not in status.output
    engine.dispose()


class _DrainFails(RuntimeError):
    pass


@pytest.mark.parametrize("decision", ["promote", "rollback"])
def test_a_promotion_or_rollback_is_one_transaction_with_its_drain(engine: Engine, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    decision: str) -> None:
    """A crash between the registry change and the drain of the server leaving traffic leaves neither: the
    registry keeps its pointers and the server keeps running. The control, without the crash, does both."""
    import deploy.launcher as launcher_module

    production, candidate = base_and_candidate(engine, tmp_path)
    launcher = Launcher(engine, tmp_path / "work", python="/bin/false")  # never starts a server here
    canary.start(engine, candidate, 50, actor="alice", reason="try v2")
    for version in (production, candidate):
        fake_deployment(engine, version, f"http://127.0.0.1:{9000 + len(version)}")
    leaving = production if decision == "promote" else candidate
    act = canary.promote_canary if decision == "promote" else canary.rollback_canary
    before = registry_state(engine), list_deployments(engine)
    real_set_status = launcher_module.set_status

    def crash(*args: object, **kwargs: object) -> None:
        raise _DrainFails("killed while draining")

    monkeypatch.setattr(launcher_module, "set_status", crash)
    with pytest.raises(_DrainFails):
        act(engine, "assistant", launcher=launcher, actor="alice", reason="decided")
    assert (registry_state(engine), list_deployments(engine)) == before
    assert store.consistency_problems(engine) == []

    monkeypatch.setattr(launcher_module, "set_status", real_set_status)
    act(engine, "assistant", launcher=launcher, actor="alice", reason="decided")
    assert store.audit_log(engine, "assistant")[-1].action == ("promote" if decision == "promote"
                                                                else "rollback_canary")
    statuses = {d.version_id: d.status for d in list_deployments(engine)}
    assert statuses[leaving] == "draining" and statuses[production if leaving == candidate else candidate] == "running"
