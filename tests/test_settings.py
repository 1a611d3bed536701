"""The one settings object: environment over YAML, and mistakes named by their variable."""

from __future__ import annotations

import subprocess
import sys

import pytest

from core.settings import SettingsError, load_settings


def test_environment_wins_over_yaml(tmp_path, monkeypatch):
    config = tmp_path / "tuneloop.yaml"
    config.write_text("port: 9001\nupstreams:\n  demo: ['http://127.0.0.1:8001/']\ntimeouts:\n  connect: 7\n")
    monkeypatch.setenv("TUNELOOP_CONFIG", str(config))
    monkeypatch.setenv("TUNELOOP_TIMEOUTS__CONNECT", "2.5")
    settings = load_settings()
    assert settings.port == 9001 and settings.timeouts.connect == 2.5
    assert settings.upstreams == {"demo": ["http://127.0.0.1:8001"]}


def test_bad_values_name_the_variable(monkeypatch):
    monkeypatch.setenv("TUNELOOP_TIMEOUTS__CONNECT", "-1")
    with pytest.raises(SettingsError, match="TUNELOOP_TIMEOUTS__CONNECT: Input should be greater than 0"):
        load_settings()
    monkeypatch.delenv("TUNELOOP_TIMEOUTS__CONNECT")
    monkeypatch.setenv("TUNELOOP_UPSTREAMS", '{"demo": ["ftp://nope"]}')
    with pytest.raises(SettingsError, match=r"TUNELOOP_UPSTREAMS.*not an http"):
        load_settings()


def test_cli_reports_bad_settings_without_a_traceback(tmp_path):
    env = {"TUNELOOP_PORT": "abc", "TUNELOOP_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-m", "tuneloop.cli", "migrate"], capture_output=True, text=True,
                            env=env)
    assert result.returncode == 2
    assert "TUNELOOP_PORT" in result.stdout and "Traceback" not in result.stdout + result.stderr


def test_bad_cycle_policies_name_their_variable_when_the_settings_load(monkeypatch) -> None:
    monkeypatch.setenv("TUNELOOP_CYCLE__GATE__MIN_MEAN_SCORE", "7")
    with pytest.raises(SettingsError, match="TUNELOOP_CYCLE__GATE__MIN_MEAN_SCORE"):
        load_settings()
    monkeypatch.delenv("TUNELOOP_CYCLE__GATE__MIN_MEAN_SCORE")
    monkeypatch.setenv("TUNELOOP_CYCLE__CANARY__STAGES", "[50, 20]")
    with pytest.raises(SettingsError, match=r"TUNELOOP_CYCLE__CANARY__STAGES.*increasing"):
        load_settings()
    monkeypatch.setenv("TUNELOOP_CYCLE__CANARY__STAGES", "[20, 50]")
    monkeypatch.setenv("TUNELOOP_CYCLE__GATE", '{"min_golden_score": null}')  # None turns a check off
    settings = load_settings()
    assert settings.cycle.canary.stages == (20, 50) and settings.cycle.gate.min_golden_score is None


def test_a_bad_cycle_train_field_stops_a_process_at_start(monkeypatch, tmp_path) -> None:
    from typer.testing import CliRunner

    from core.db import migrate
    from tuneloop.cli import app
    from tuneloop.compose import job_context

    monkeypatch.setenv("TUNELOOP_HOME", str(tmp_path))
    monkeypatch.setenv("TUNELOOP_CYCLE__TRAIN", '{"learning_rat": 0.001}')
    with pytest.raises(SettingsError, match=r"TUNELOOP_CYCLE__TRAIN__LEARNING_RAT.*did you mean learning_rate"):
        job_context(load_settings())
    refused = CliRunner().invoke(app, ["cycle", "run-now"])
    assert refused.exit_code != 0 and isinstance(refused.exception, SettingsError)
    assert not (tmp_path / "datasets").exists()  # refused before curation
    monkeypatch.setenv("TUNELOOP_CYCLE__TRAIN", '{"learning_rate": 0.001}')
    migrate(load_settings().resolved_database_url)
    assert job_context(load_settings()).settings.cycle.train == {"learning_rate": 0.001}


def test_a_variable_that_names_no_setting_is_refused_with_a_hint(monkeypatch) -> None:
    monkeypatch.setenv("TUNELOOP_JUDGE_KIND", "openai")  # the judge's variables before they nested
    monkeypatch.setenv("TUNELOOP_DATABSE_URL", "sqlite:///x.db")
    with pytest.raises(SettingsError) as refused:
        load_settings()
    assert "TUNELOOP_JUDGE_KIND: not a setting; did you mean TUNELOOP_JUDGE__KIND?" in str(refused.value)
    assert "TUNELOOP_DATABSE_URL: not a setting; did you mean TUNELOOP_DATABASE_URL?" in str(refused.value)
    monkeypatch.delenv("TUNELOOP_JUDGE_KIND")
    monkeypatch.delenv("TUNELOOP_DATABSE_URL")
    monkeypatch.setenv("TUNELOOP_TIMEOUTS__CONECT", "2")  # a misspelt nested key
    with pytest.raises(SettingsError, match="TUNELOOP_TIMEOUTS__CONECT: Extra inputs are not permitted"):
        load_settings()
    monkeypatch.delenv("TUNELOOP_TIMEOUTS__CONECT")
    monkeypatch.setenv("TUNELOOP_JUDGE__KIND", "reference")
    monkeypatch.setenv("TUNELOOP_TEST_PG", "postgresql://elsewhere/test")  # the suite's own, not a setting
    assert load_settings().judge.kind == "reference"
