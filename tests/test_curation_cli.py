"""The policy's validation and the `tuneloop curate` / `tuneloop datasets` commands."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import Session
from typer.testing import CliRunner

from core.db import make_engine, migrate
from feedback.models import Feedback, Interaction
from feedback.policy import CurationPolicy
from tuneloop.cli import app


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"eval_fraction": 1.5}, "eval_fraction"),
        ({"min_eval_examples": -1}, "min_eval_examples"),
        ({"min_tokens": 10, "max_tokens": 5}, "max_tokens"),
        ({"refusal_patterns": ("(unclosed",)}, "refusal_patterns"),
        ({"system_prompt_mode": "rewrite"}, "system_prompt_mode"),
        ({"system_prompt_mode": "normalise"}, "system_prompt"),
        ({"scrub_kinds": ("email", "ssn")}, "scrub_kinds"),
        ({"scrub_extra": {"Bad Name": "x"}}, "scrub_extra"),
        ({"scrub_extra": {"ticket": "[unclosed"}}, "scrub_extra"),
        ({"near_dup_threshold": 0}, "near_dup_threshold"),
        ({"shingle_size": 0}, "shingle_size"),
        ({"num_perm": 8}, "num_perm"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_policy_values_name_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(ValueError, match=rf"^{field}:"):
        CurationPolicy(**overrides)


def test_policy_from_mapping_checks_keys_and_types() -> None:
    policy = CurationPolicy.from_mapping({"eval_fraction": 0.1, "min_tokens": 8.0, "scrub_kinds": ["email"]})
    assert (policy.eval_fraction, policy.min_tokens, policy.scrub_kinds) == (0.1, 8, ("email",))
    assert CurationPolicy.from_mapping(policy.to_dict()) == policy
    with pytest.raises(ValueError, match=r"^eval_fracton: unknown policy field"):
        CurationPolicy.from_mapping({"eval_fracton": 0.1})
    with pytest.raises(ValueError, match=r"^min_tokens: must be a whole number"):
        CurationPolicy.from_mapping({"min_tokens": 2.5})
    with pytest.raises(ValueError, match=r"^dedup_include_system: must be true or false"):
        CurationPolicy.from_mapping({"dedup_include_system": "yes"})
    with pytest.raises(ValueError, match=r"^scrub_kinds: must be a list"):
        CurationPolicy.from_mapping({"scrub_kinds": "email"})


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    url = f"sqlite:///{tmp_path / 'tuneloop.db'}"
    monkeypatch.setenv("TUNELOOP_HOME", str(tmp_path))
    monkeypatch.setenv("TUNELOOP_DATABASE_URL", url)
    migrate(url)
    engine = make_engine(url)
    t0 = datetime.now(UTC) - timedelta(hours=1)
    with Session(engine) as session:
        for i in range(6):
            session.add(Interaction(
                id=f"req-{i}", api_key_id="key", model_alias="support", served_version="v1",
                endpoint="chat.completions", created_at=t0 + timedelta(minutes=i), finish_reason="stop",
                request_body={"messages": [{"role": "user", "content": f"Question {i}: " + "alpha beta " * i}]},
                response_text=f"Answer {i} " + "gamma delta epsilon " * (i + 1),
            ))
        session.commit()
        session.add_all(Feedback(interaction_id=f"req-{i}", rating="up", api_key_id="key") for i in range(5))
        session.commit()
    engine.dispose()
    (tmp_path / "policy.yaml").write_text("min_tokens: 0\nmax_tokens: null\nmin_eval_examples: 1\n")
    return tmp_path


def test_curate_then_list_and_show(home: Path) -> None:
    runner = CliRunner()
    policy = ["--policy", str(home / "policy.yaml")]
    dry = runner.invoke(app, ["curate", "--alias", "support", "--dry-run", *policy])
    assert dry.exit_code == 0, dry.output
    assert "dry run" in dry.output and "no_feedback" in dry.output
    assert not (home / "datasets").exists()

    built = runner.invoke(app, ["curate", "--alias", "support", *policy, "--threshold", "0.95"])
    assert built.exit_code == 0, built.output
    dataset_id = next(word for word in built.output.split() if word.startswith("ds-")).rstrip(":")
    manifest = json.loads((home / "datasets" / dataset_id / "manifest.json").read_text())
    assert manifest["policy"]["near_dup_threshold"] == 0.95
    assert manifest["n_train"] + manifest["n_eval"] == 5

    listed = runner.invoke(app, ["datasets", "list", "--alias", "support"])
    assert listed.exit_code == 0 and dataset_id in listed.output
    shown = runner.invoke(app, ["datasets", "show", dataset_id])
    assert shown.exit_code == 0 and '"sha256"' in shown.output and "5 source interactions" in shown.output
    assert runner.invoke(app, ["datasets", "show", "ds-nope"]).exit_code == 1

    again = runner.invoke(app, ["curate", "--alias", "support", *policy])
    assert again.exit_code == 0 and "nothing new" in again.output
    assert "near_dup_threshold" in runner.invoke(app, ["datasets", "policy"]).output


def test_bad_input_is_an_error_message_not_a_traceback(home: Path) -> None:
    runner = CliRunner()
    bad_policy = home / "bad.yaml"
    bad_policy.write_text("eval_fraction: 2\n")
    # CliRunner never prints an exception, so "Traceback" is never in its output: a crash shows as
    # result.exception (exit code 1, empty output), a refusal as the SystemExit of its exit code.
    result = runner.invoke(app, ["curate", "--alias", "support", "--policy", str(bad_policy)])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.exception
    assert "eval_fraction: must be in [0, 1)" in " ".join(result.output.split())
    result = runner.invoke(app, ["curate", "--alias", "support", "--since", "yesterday"])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.exception
    assert "--since: 'yesterday' is not an ISO date/time" in " ".join(result.output.split())
    # The default policy measures lengths with HOME/models/demo-base, which this home lacks.
    result = runner.invoke(app, ["curate", "--alias", "support"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
    assert "no tokenizer at" in result.output
