"""A day of thumbs alone on the real default base (SmolLM2-135M-Instruct): the sentiment task, which the base
gets right part of the time, users who only click, one cycle with `method: auto`, the gate, the canary.

The cycle must choose KTO (nobody typed a correction), lift held-out correct answers by at least 15 points
over the same questions asked of the base before the cycle, pass the gate, and be promoted because users'
thumbs-up rate on the canary beats production's (one-sided Fisher test, p < 0.01)."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from core.db import make_engine
from core.settings import Settings
from deploy.launcher import Launcher
from registry import store
from tuneloop.demo import DemoConfig, run_demo

pytestmark = pytest.mark.slow


@pytest.mark.timeout(1800)  # a KTO run over ~200 rows: 4 min on 2 free cores, several times that on a busy box
def test_a_thumbs_only_day_is_learned_with_kto_and_promoted(tmp_path: Path, real_model_dir: Path) -> None:
    settings = Settings(home=tmp_path, base_model=str(real_model_dir), routing_cache_s=0.5)
    config = DemoConfig.for_feedback("thumbs-only", morning_requests=200, afternoon_requests=120, heldout=60)
    try:
        report = run_demo(settings, Console(width=120), config)
    finally:
        Launcher.for_settings(make_engine(settings.resolved_database_url), settings).stop_all("test finished")
    # on failure, what the cycle saw and made: the data's counts, the method's plan, the run's losses
    seen = {step.name: step.figures for step in report.cycle.steps if step.name in ("curate", "train")}
    assert report.cycle.status == "succeeded", (report.cycle.reason or report.cycle.error, report.before, seen)
    curate_figures = next(step.figures for step in report.cycle.steps if step.name == "curate")
    assert curate_figures["method"] == "kto", curate_figures
    assert curate_figures["counts"]["selected"].get("correction", 0) == 0  # thumbs alone
    assert 0.2 <= report.before.correct <= 0.6, "the task must be one the base gets partly right"
    assert report.after is not None and report.after.correct >= report.before.correct + 0.15
    assert report.gate["passed"], report.gate
    assert report.canary_action == "promote", report.canary_reasons
    assert report.thumbs_p_value is not None and report.thumbs_p_value < 0.01
    engine = make_engine(settings.resolved_database_url)
    version = store.get_version(engine, report.cycle.version_id)
    assert version.status == "production"
    assert version.training_config["method_plan"]["method"] == "kto"
    views = version.training_config["dataset_views"]
    assert views["kto"]["train"] > views["sft"]["train"] > 0  # every thumb, not only the thumbs-up answers
