"""The launcher's bookkeeping without servers: which deployment drains, when it is reaped, and that a base
server hosting the new production adapter keeps running. (Real servers: tests/test_deploy_vllm.py.)

Deployments here have no pid and point at a closed port, so a reap finds nothing in flight and has no process
to signal; everything else is the real launcher on the real store.
"""

from __future__ import annotations

import socket
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine

from core.clock import utcnow
from core.db import make_engine
from core.deployments_table import DeploymentCreate, DeploymentMode, DeploymentPublic, DeploymentStatus
from core.settings import Settings
from deploy import canary
from deploy.deployments import active_deployment, get_deployment, record_deployment
from deploy.launcher import Launcher, ServeConfig
from registry import store
from tests.gateway_helpers import closed_port_url
from tests.test_deploy_helpers import base_and_candidate


@pytest.fixture
def engine(sqlite_url: str):
    engine = make_engine(sqlite_url)
    yield engine
    engine.dispose()


def deployment(engine: Engine, version: str, mode: DeploymentMode, url: str,
               host: DeploymentPublic | None = None) -> DeploymentPublic:
    return record_deployment(engine, DeploymentCreate(
        version_id=version, alias="assistant", mode=mode, served_name=version, model_path="/m", base_url=url,
        machine=socket.gethostname(), port=int(url.rsplit(":", 1)[1]), lora_enabled=mode == DeploymentMode.merged,
        host_deployment_id=host.id if host else None,
    ))


def test_promoted_adapter_keeps_its_host_and_a_rolled_back_one_is_reaped(engine: Engine, tmp_path: Path) -> None:
    production, adapter = base_and_candidate(engine, tmp_path)
    url = closed_port_url()
    host = deployment(engine, production, DeploymentMode.merged, url)
    hosted = deployment(engine, adapter, DeploymentMode.adapter, url, host)
    launcher = Launcher(engine, tmp_path, ServeConfig(drain_grace_s=30))
    store.start_canary(engine, adapter, 10, "test", "go")

    canary.promote_canary(engine, "assistant", launcher=launcher)
    assert get_deployment(engine, host.id).status == DeploymentStatus.running  # home of the new production

    # a later adapter canary is rolled back: it drains, waits out the grace, then is unloaded and stopped
    _same, third = base_and_candidate(engine, tmp_path, base=store.get_version(engine, production).merged_path)
    third_deployment = deployment(engine, third, DeploymentMode.adapter, url, host)
    store.start_canary(engine, third, 10, "test", "go")
    canary.rollback_canary(engine, "assistant", launcher=launcher, reason="users dislike it")
    draining = get_deployment(engine, third_deployment.id)
    assert draining.status == DeploymentStatus.draining and "users dislike it" in draining.status_reason
    assert launcher.reap() == []  # within the grace a gateway may still route to it
    reaped = launcher.reap(now=utcnow() + timedelta(seconds=31))
    assert [d.id for d in reaped] == [third_deployment.id] and reaped[0].status == DeploymentStatus.stopped
    assert active_deployment(engine, adapter) == hosted  # the production adapter is untouched


def test_old_production_drains_after_a_merged_canary_is_promoted(engine: Engine, tmp_path: Path) -> None:
    production, candidate = base_and_candidate(engine, tmp_path)
    old = deployment(engine, production, DeploymentMode.merged, closed_port_url())
    deployment(engine, candidate, DeploymentMode.merged, closed_port_url())
    launcher = Launcher(engine, tmp_path, ServeConfig(drain_grace_s=0))
    store.start_canary(engine, candidate, 50, "test", "go")
    canary.promote_canary(engine, "assistant", launcher=launcher, reason="better")
    assert get_deployment(engine, old.id).status == DeploymentStatus.draining
    assert canary.wait_drained(launcher, timeout_s=5) == [production]
    assert get_deployment(engine, old.id).status == DeploymentStatus.stopped
    assert active_deployment(engine, candidate) is not None


def test_ensure_refuses_what_it_cannot_serve(engine: Engine, tmp_path: Path) -> None:
    from deploy.deployments import DeploymentError

    _production, candidate = base_and_candidate(engine, tmp_path)
    # no adapter to hot-load: even in adapter mode the version can only run on its own (merged) server
    launcher = Launcher(engine, tmp_path, ServeConfig(mode="adapter", health_timeout_s=5), python="/bin/false")
    with pytest.raises(DeploymentError, match="vLLM did not start"):
        launcher.ensure(candidate)
    failing = Launcher(engine, tmp_path, ServeConfig(mode="merged", health_timeout_s=5), python="/bin/false")
    with pytest.raises(DeploymentError, match="vLLM did not start"):
        failing.ensure(candidate)
    assert active_deployment(engine, candidate) is None


def test_settings_set_the_drain_grace(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, routing_cache_s=10)
    assert ServeConfig.for_settings(settings).drain_grace_s == 21
    assert ServeConfig.for_settings(settings, drain_grace_s=3).drain_grace_s == 3


def test_servers_are_recorded_under_the_advertised_host(tmp_path: Path) -> None:
    one_machine = ServeConfig.for_settings(Settings(home=tmp_path))
    assert (one_machine.host, one_machine.url_for(8001)) == ("127.0.0.1", "http://127.0.0.1:8001")
    shared = ServeConfig.for_settings(Settings(home=tmp_path, vllm_host="0.0.0.0", advertised_host="gpu-7.internal"))
    assert (shared.host, shared.url_for(8001)) == ("0.0.0.0", "http://gpu-7.internal:8001")
    # listening everywhere with no name given: this machine's name, never 0.0.0.0 (unreachable from elsewhere)
    unnamed = ServeConfig.for_settings(Settings(home=tmp_path, vllm_host="0.0.0.0"))
    assert unnamed.url_for(8001) == f"http://{socket.getfqdn()}:8001"


def test_a_server_on_another_machine_is_not_stopped_from_here(engine: Engine, tmp_path: Path) -> None:
    from deploy.deployments import DeploymentError

    production, candidate = base_and_candidate(engine, tmp_path)
    elsewhere = record_deployment(engine, DeploymentCreate(
        version_id=candidate, alias="assistant", mode=DeploymentMode.merged, served_name=candidate, model_path="/m",
        base_url="http://gpu-7.internal:8001", machine="gpu-7", port=8001, pid=4242, lora_enabled=True))
    launcher = Launcher(engine, tmp_path, ServeConfig(drain_grace_s=0))
    with pytest.raises(DeploymentError, match=r"runs on gpu-7 .*stop it there"):
        launcher.stop(candidate)
    assert get_deployment(engine, elsewhere.id).status == DeploymentStatus.running  # nothing changed
    assert launcher.stop_all() == []  # only this machine's servers
    # drained (a rolled-back canary), it is left for its machine to stop rather than failing the reaper
    launcher.drain(candidate, "rolled back")
    assert launcher.reap(now=utcnow() + timedelta(seconds=60)) == []
    assert get_deployment(engine, elsewhere.id).status == DeploymentStatus.draining
    # the control: the same stop on the machine it runs on goes through
    here = deployment(engine, production, DeploymentMode.merged, closed_port_url())
    assert launcher.stop(production).id == here.id


def test_an_unrecorded_server_of_a_dead_cycle_is_stopped(engine: Engine, tmp_path: Path) -> None:
    """A worker killed while its candidate's server was starting never recorded it; the clean-up finds it by
    its served name (the version id) and stops it, and leaves other versions' servers alone."""
    import subprocess
    import sys

    def server(name: str) -> subprocess.Popen:  # the argv of a vLLM API server, without the weight of one
        return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)",
                                 "vllm.entrypoints.openai.api_server", "--served-model-name", name],
                                start_new_session=True)

    stray, other = server("assistant-v9"), server("assistant-v10")
    try:
        launcher = Launcher(engine, tmp_path, ServeConfig(stop_grace_s=5))
        assert launcher.stop_strays("assistant-v9") == [stray.pid]
        assert stray.wait(10) is not None and other.poll() is None  # the other version's server still runs
        assert launcher.stop_strays("assistant-v9") == []
    finally:
        for process in (stray, other):
            process.kill()
            process.wait()
