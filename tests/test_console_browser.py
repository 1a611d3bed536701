"""The ops console in a real browser: headless Chromium (Debian's package) driven by Playwright.

The store is filled through the real gateway: the official openai client asks an alias whose production and
canary versions are two OpenAI-compatible upstreams, users rate answers through POST /v1/feedback (one
correction carries an e-mail address and an API key), a real curation run makes a dataset, and a cycle's
steps are recorded as the worker records them. A person signs in with an admin key, reads every page (the
figures must equal the database's, the plots must have points, the browser must log no error), then rolls a
canary back and promotes another from the page; the registry's audit log must say the console did it.
Screenshots of every page go to var/test-artifacts/console/.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import sync_playwright
from sqlalchemy import func
from sqlmodel import Session, col, select

from core.settings import Settings
from deploy import controls
from deploy.cycle_runs import RunStatus, finish_step, start_run, start_step, update_run
from feedback.curate import curate
from feedback.models import Feedback, Interaction, Rating
from feedback.policy import CurationPolicy
from registry import store
from registry.models import ModelVersionCreate
from tests.fake_upstream import UpstreamState, make_fake_upstream
from tests.gateway_helpers import RunningGateway, running_gateway
from tests.servers import serve
from tests.test_deploy_helpers import PASSED, base_and_candidate, checkpoint, fake_deployment

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(os.environ.get("TUNELOOP_TEST_ARTIFACTS", Path(__file__).resolve().parent.parent / "var" /
                                "test-artifacts")) / "console"
ALIAS = "assistant"
SECRET_EMAIL = "jane.doe@example.com"
SECRET_KEY = "sk-proj-" + "A1b2C3d4E5f6G7h8I9j0" * 2



@dataclass
class World:
    gateway: RunningGateway
    production: str
    canary: str
    second: str
    run_id: int
    corrected_id: str
    curated: list[int]  # train and eval rows of the cycle's dataset


@pytest.fixture
def world(sqlite_url: str, tmp_path: Path) -> Iterator[World]:
    with running_gateway(sqlite_url, tmp_path / "home", upstreams={}) as gateway:
        engine = gateway.engine
        production, canary = base_and_candidate(engine, tmp_path)
        second = store.register_candidate(engine, ModelVersionCreate(
            alias=ALIAS, base_model=store.get_version(engine, production).base_model,
            merged_path=checkpoint(tmp_path, "second"))).id
        store.record_gate(engine, second, PASSED)
        with serve(make_fake_upstream(UpstreamState())) as production_url, \
                serve(make_fake_upstream(UpstreamState())) as canary_url, \
                serve(make_fake_upstream(UpstreamState())) as second_url:
            for version, url in ((production, production_url), (canary, canary_url), (second, second_url)):
                fake_deployment(engine, version, url)
            store.start_canary(engine, canary, 50, "test", "users will judge it")
            corrected = _traffic(gateway)
            run_id, curated = _a_cycle(gateway, tmp_path)
            yield World(gateway, production, canary, second, run_id, corrected, curated)


def _traffic(gateway: RunningGateway) -> str:
    """40 chats from 20 users through the gateway; the canary's answers are disliked, production's liked; one
    thumbs-down carries a correction with secrets in it. Returns that interaction's response id."""
    client = gateway.client()
    corrected = ""
    with httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {gateway.app_key}"}) as rater:
        for i in range(40):
            user = f"user-{i % 20}"
            raw = client.chat.completions.with_raw_response.create(
                model=ALIAS, messages=[{"role": "user", "content": f"Where is order {i}? Mail me at {SECRET_EMAIL}"}],
                user=user)
            completion, version = raw.parse(), raw.headers["x-tuneloop-version"]
            if i % 4 == 3:
                continue  # not every answer is rated
            body = {"response_id": completion.id, "user": user,
                    "rating": "down" if version.endswith("v2") else "up"}
            if body["rating"] == "down" and not corrected:
                body["correction"] = f"Order {i} ships tomorrow; write to {SECRET_EMAIL} with key {SECRET_KEY}"
                corrected = completion.id
            assert rater.post("/v1/feedback", json=body).status_code == 200
    assert corrected
    return corrected


def _a_cycle(gateway: RunningGateway, tmp_path: Path) -> tuple[int, list[int]]:
    """A real curation of that traffic, recorded as a cycle's steps the way the worker records them."""
    engine = gateway.engine
    run = start_run(engine, ALIAS, "schedule", "test-worker")
    assert run.id is not None
    step = start_step(engine, run.id, "curate")
    result = curate(engine, Settings(home=tmp_path / "home"), CurationPolicy(min_tokens=0, max_tokens=None), ALIAS)
    finish_step(engine, step, RunStatus.succeeded, {"counts": result.counts, "dataset_id": result.dataset_id,
                                                    "n_train": result.n_train, "n_eval": result.n_eval,
                                                    "method": "sft", "method_reason": "test"})
    step = start_step(engine, run.id, "train")
    finish_step(engine, step, RunStatus.failed, error="CUDA out of memory (a recorded failure)")
    update_run(engine, run.id, status=RunStatus.failed, dataset_id=result.dataset_id,
               error="train: CUDA out of memory (a recorded failure)")
    return run.id, [result.n_train, result.n_eval]


def _db_counts(world: World, version: str) -> dict[str, int]:
    with Session(world.gateway.engine) as session:
        requests = session.exec(select(func.count()).select_from(Interaction)
                                .where(Interaction.served_version == version)).one()
        ratings = dict(session.exec(
            select(Feedback.rating, func.count()).join(Interaction, col(Interaction.id) == col(Feedback.interaction_id))
            .where(Interaction.served_version == version).group_by(Feedback.rating)).all())
    return {"requests": requests, "up": ratings.get(Rating.up, 0), "down": ratings.get(Rating.down, 0)}


@pytest.fixture
def browser() -> Iterator[object]:
    # never skipped: a console nobody could load in a browser is a failure (`make test` installs chromium)
    assert CHROMIUM is not None, "Debian's chromium is not installed: `make browser` (part of `make test`)"
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


def test_an_operator_reads_every_page_and_acts_from_the_console(world: World, browser) -> None:  # type: ignore[no-untyped-def]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    problems: list[str] = []
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    url = world.gateway.url

    # a stranger is sent to sign in; an admin key gets in, and the browser's script cannot read the cookie
    page.goto(url + "/console/versions")
    assert page.url.startswith(url + "/console/signin")
    page.fill("#key", world.gateway.admin_key)
    page.click("#signin")
    assert page.url == url + "/console/versions"
    assert page.evaluate("document.cookie") == ""  # HttpOnly
    cookie = next(c for c in page.context.cookies() if c["name"] == "tuneloop_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["expires"] > 0

    # overview: the figures are the database's, the plots have points
    page.goto(url + "/console")
    page.screenshot(path=str(ARTIFACTS / "overview.png"), full_page=True)
    for version in (world.production, world.canary):
        expected = _db_counts(world, version)
        row = page.locator(f"table.window-figures tr[data-version='{version}']")
        assert int(row.locator("[data-field=requests]").inner_text()) == expected["requests"] > 0
        assert int(row.locator("[data-field=thumbs_up]").inner_text()) == expected["up"]
        assert int(row.locator("[data-field=thumbs_down]").inner_text()) == expected["down"]
        points = page.locator(f"svg.chart[aria-label='requests'] circle.point[data-series='{version}']")
        assert points.count() == 24
        assert sum(float(v) for v in points.evaluate_all("ps => ps.map(p => p.dataset.value)")) == expected["requests"]
        stage = page.locator(f"table.stage-figures tr[data-version='{version}'] [data-field=requests]")
        assert int(stage.inner_text()) == expected["requests"]
    assert page.locator("svg.chart[aria-label='thumbs-up rate'] circle.point").count() >= 2
    assert page.locator("[data-field=decision]").inner_text() in ("rollback", "wait")
    assert page.locator("[data-field=canary]").inner_text() == world.canary

    # cycles: the history and one cycle's steps, with the curation's real counts and the failure's reason
    page.click("text=Cycles")
    page.screenshot(path=str(ARTIFACTS / "cycles.png"), full_page=True)
    assert page.locator(f"tr[data-run='{world.run_id}'] [data-field=status]").inner_text() == "failed"
    page.click(f"tr[data-run='{world.run_id}'] a")
    page.screenshot(path=str(ARTIFACTS / "cycle.png"), full_page=True)
    assert "out of memory" in page.locator("[data-field=reason]").first.inner_text()
    assert page.locator("tr[data-step=curate] [data-field=status]").inner_text() == "succeeded"
    shown = [int(page.locator(f"[data-field={name}]").inner_text()) for name in ("n_train", "n_eval")]
    assert shown == world.curated and sum(shown) > 0
    assert page.locator("tr[data-step=train] [data-field=status]").inner_text() == "failed"

    # interactions: the total is the log's, a filter narrows it, one interaction is shown scrubbed
    page.click("text=Interactions")
    with Session(world.gateway.engine) as session:
        total = session.exec(select(func.count()).select_from(Interaction)).one()
    assert int(page.locator("#total").inner_text()) == total == 40
    page.select_option("select[name=rating]", "down")
    page.click("#search")
    assert int(page.locator("#total").inner_text()) == _db_counts(world, world.canary)["down"]
    page.screenshot(path=str(ARTIFACTS / "interactions.png"), full_page=True)
    interaction_id = world.gateway.wait_for_row(world.corrected_id).id
    page.goto(url + f"/console/interactions/{interaction_id}")
    page.screenshot(path=str(ARTIFACTS / "interaction.png"), full_page=True)
    shown = page.locator("main").inner_text()
    assert SECRET_EMAIL not in shown and SECRET_KEY not in shown
    assert "[EMAIL]" in shown and "[API_KEY]" in shown
    assert "ships tomorrow" in page.locator("pre.correction").inner_text()

    # actions: a dismissed confirmation changes nothing (the control), an accepted one rolls the canary back
    page.goto(url + "/console")
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.click("button.rollback")
    assert store.get_aliases(world.gateway.engine, ALIAS) == (world.production, world.canary, 50)
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("button.rollback")
    page.wait_for_url("**/console?notice=rolled_back")
    assert store.get_aliases(world.gateway.engine, ALIAS) == (world.production, None, 0)
    assert "rolled back" in page.locator("#notice").inner_text().lower()

    store.start_canary(world.gateway.engine, world.second, 20, "test", "the next candidate")
    page.goto(url + "/console")
    page.fill("input.weight", "150")  # the browser's own check stops it; the server's refuses what gets through
    page.evaluate("document.querySelector('input.weight').removeAttribute('max')")
    page.once("dialog", lambda dialog: dialog.accept())
    assert problems == []
    page.click("button.set-weight")
    assert "Refused:" in page.locator("#error").inner_text() and "weight" in page.locator("#error").inner_text()
    assert problems == ["Failed to load resource: the server responded with a status of 409 (Conflict)"]
    problems.clear()  # the refusal's own status, and nothing else
    assert store.get_aliases(world.gateway.engine, ALIAS) == (world.production, world.second, 20)
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("button.promote")
    page.wait_for_url("**/console?notice=promoted")
    assert store.get_aliases(world.gateway.engine, ALIAS) == (world.second, None, 0)

    # the schedule: pause it, ask for a cycle, resume it (the worker reads these rows: tests/test_schedule_controls)
    for button, notice in (("pause", "paused"), ("run-now", "requested"), ("resume", "resumed")):
        page.once("dialog", lambda dialog: dialog.accept())
        page.click(f"button.{button}")
        page.wait_for_url(f"**/console?notice={notice}")
        hold = controls.control_state(world.gateway.engine, ALIAS)
        if notice == "paused":
            assert hold.paused and hold.paused_by.startswith("console:")
            assert "paused" in page.locator("[data-field=schedule]").inner_text()
        if notice == "requested":
            assert hold.run_requested_by is not None and hold.run_requested_by.startswith("console:")
            assert page.locator("[data-field=requested]").count() == 1
    assert not controls.control_state(world.gateway.engine, ALIAS).paused

    audit = store.audit_log(world.gateway.engine, ALIAS)
    by_action = {(e.action, e.version_id): e for e in audit}
    assert by_action[("rollback_canary", world.canary)].actor.startswith("console:")
    assert by_action[("promote", world.second)].actor.startswith("console:")

    # versions: every version with its status, and the audit log the actions wrote
    page.click("text=Versions")
    page.screenshot(path=str(ARTIFACTS / "versions.png"), full_page=True)
    for version in store.list_versions(world.gateway.engine, ALIAS):
        assert page.locator(f"tr[data-version='{version.id}'] [data-field=status]").inner_text() == version.status
    assert page.locator("table.audit tr[data-audit]").count() == len(audit)
    page.click(f"tr[data-version='{world.second}'] a")
    page.screenshot(path=str(ARTIFACTS / "version.png"), full_page=True)
    assert page.locator("[data-field=status]").inner_text() == "production"

    # signing out ends the session in the browser too
    page.click("#signout")
    page.goto(url + "/console")
    assert page.url.startswith(url + "/console/signin")
    assert problems == []
