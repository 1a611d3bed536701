"""Metrics across processes: one scrape of `tuneloop serve --workers 2` counts what both gateway processes
served; the worker process's cycle and canary metrics, rendered and served over HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from core.api_keys import Scope, create_key
from core.db import make_engine, migrate
from deploy.cycle import Step, run_cycle
from deploy.vllm import free_port
from deploy.worker_metrics import WorkerMetrics, observe_canary, observe_run, serve_worker_metrics
from gateway.metrics import GatewayMetrics
from tests.fake_upstream import UpstreamState, make_fake_upstream
from tests.servers import serve

ADMIN_KEY = "admin-secret-for-metrics"


def _samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    return [(s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples
            if s.name == name]


def _requests_counted(text: str) -> float:
    return sum(value for _labels, value in _samples(text, "tuneloop_requests_total"))


def _shares(metrics_dir: Path) -> dict[int, float]:
    """Requests each gateway process counted, read from that process's own file (what a scrape of it alone,
    without multiprocess mode, would have shown)."""
    shares = {}
    for path in metrics_dir.glob("counter_*.db"):
        pid = int(path.stem.rsplit("_", 1)[1])
        shares[pid] = sum(s.value for metric in MultiProcessCollector.merge([str(path)])
                          for s in metric.samples if s.name == "tuneloop_requests_total")
    return shares


def _parent(pid: int) -> int:
    # /proc/PID/stat: "pid (comm) state ppid ..."; comm may hold spaces, so split after its closing parenthesis
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _ask(base_url: str, key: str) -> str:
    # a client, and so a connection, per request: the kernel hands each new connection to either process
    with openai.OpenAI(base_url=base_url + "/v1", api_key=key, max_retries=0, timeout=30) as client:
        answer = client.chat.completions.create(model="fake", messages=[{"role": "user", "content": "hi"}])
    return answer.choices[0].message.content or ""


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"tuneloop serve exited: {log.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"tuneloop serve never answered /health: {log.read_text()[-3000:]}")


def test_one_scrape_counts_the_requests_of_both_gateway_processes(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'tuneloop.db'}"
    migrate(db_url)
    engine = make_engine(db_url)
    _public, app_key = create_key(engine, Scope.app, "metrics-test")
    engine.dispose()
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    stale = MmapedDict(str(metrics_dir / "counter_999999.db"))  # an earlier run's count: serve must clear it
    stale.write_value(mmap_key("tuneloop_requests", "tuneloop_requests_total", ["endpoint", "version", "status"],
                               ["chat.completions", "fake", "200"], "Requests."), 1000.0, 0.0)
    stale.close()
    state = UpstreamState()
    with serve(make_fake_upstream(state)) as upstream_url:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TUNELOOP_", "PROMETHEUS_"))}
        env.update(TUNELOOP_HOME=str(tmp_path), TUNELOOP_DATABASE_URL=db_url, TUNELOOP_ADMIN_KEY=ADMIN_KEY,
                   TUNELOOP_PORT=str(port), TUNELOOP_UPSTREAMS=json.dumps({"fake": [upstream_url]}))
        tuneloop = Path(sys.executable).with_name("tuneloop")
        log = tmp_path / "serve.log"  # a file, not a pipe nobody reads while the test runs: a full pipe blocks
        with log.open("w") as out:
            proc = subprocess.Popen([str(tuneloop), "serve", "--workers", "2"], env=env, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        try:
            _wait_healthy(base, proc, log)
            # each gateway process makes its files when it builds its app; before that, traffic finds one process
            deadline = time.monotonic() + 60
            while len(list(metrics_dir.glob("histogram_*.db"))) < 2:
                assert time.monotonic() < deadline, f"not two processes writing metric files: {os.listdir(metrics_dir)}"
                time.sleep(0.1)
            sent, deadline = 0, time.monotonic() + 60
            with ThreadPoolExecutor(8) as pool:
                while len([n for n in _shares(metrics_dir).values() if n > 0]) < 2:
                    assert time.monotonic() < deadline, f"one process served all {sent} requests"
                    assert list(pool.map(lambda _: _ask(base, app_key), range(8))) == ["w0 w1 w2 w3 w4"] * 8
                    sent += 8
            shares = _shares(metrics_dir)
            # the control: two gateway processes of this server answered, neither all of them, so a scrape of
            # one process alone could not show `sent`
            assert len(shares) == 2 and all(0 < n < sent for n in shares.values()), shares
            assert {_parent(pid) for pid in shares} == {proc.pid}
            assert len(state.requests) == sent

            admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
            text = httpx.get(base + "/metrics", headers=admin, timeout=10).text
            assert _requests_counted(text) == sent
            assert _samples(text, "tuneloop_request_latency_seconds_count") == [({"endpoint": "chat.completions"},
                                                                                 sent)]
            # one queue depth for the server (the processes' sum), not one per process
            assert [labels for labels, _ in _samples(text, "tuneloop_log_writer_queue_depth")] == [{}]

            # A process that dies keeps its counts (totals never go down); its live gauge leaves with it.
            victim = next(iter(shares))
            os.kill(victim, signal.SIGKILL)
            gauge_file = metrics_dir / f"gauge_livesum_{victim}.db"
            assert gauge_file.exists()
            deadline = time.monotonic() + 30
            while True:
                text = httpx.get(base + "/metrics", headers=admin, timeout=10).text  # any live process answers
                if not gauge_file.exists():
                    break
                assert time.monotonic() < deadline, "the dead process's gauge was never dropped"
                time.sleep(0.1)  # the supervisor reaps the process within half a second
            assert _requests_counted(text) == sent
            assert _requests_counted(httpx.get(base + "/metrics", headers=admin, timeout=10).text) == sent
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    assert proc.returncode == 0, log.read_text()[-3000:]


def test_metrics_across_processes_need_the_directory_set_before_import(tmp_path: Path) -> None:
    # this test process imported prometheus_client without PROMETHEUS_MULTIPROC_DIR: values live in memory
    with pytest.raises(RuntimeError, match="PROMETHEUS_MULTIPROC_DIR"):
        GatewayMetrics(multiprocess_dir=tmp_path)
    # a process whose values go to another directory than the one scraped would be missed by every scrape
    written, scraped = tmp_path / "written", tmp_path / "scraped"
    written.mkdir()
    scraped.mkdir()
    code = "import sys; from pathlib import Path; from gateway.metrics import GatewayMetrics; " \
           "GatewayMetrics(multiprocess_dir=Path(sys.argv[1]))"
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(written)}
    root = Path(__file__).resolve().parent.parent
    wrong = subprocess.run([sys.executable, "-c", code, str(scraped)], env=env, cwd=root, capture_output=True,
                           text=True, timeout=60)
    assert wrong.returncode != 0 and f"PROMETHEUS_MULTIPROC_DIR is not {scraped}" in wrong.stderr
    right = subprocess.run([sys.executable, "-c", code, str(written)], env=env, cwd=root, capture_output=True,
                           text=True, timeout=60)
    assert right.returncode == 0, right.stderr


def test_worker_metrics_record_cycle_runs_and_canary_actions(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)

    def boom(ctx) -> dict:  # type: ignore[no-untyped-def]
        raise RuntimeError("CUDA out of memory")

    trained = run_cycle(engine, "demo", [Step("curate", lambda c: {"n_train": 40}),
                                         Step("train", lambda c: {"tokens_per_second": 1234.5})])
    failed = run_cycle(engine, "demo", [Step("curate", lambda c: {"n_train": 40}), Step("train", boom)])
    engine.dispose()
    metrics = WorkerMetrics()
    observe_run(metrics, trained)
    observe_run(metrics, failed)
    for action in ("wait", "wait", "advance", "promote"):
        observe_canary(metrics, "demo", action)

    text = metrics.render().decode()
    runs = {(labels["alias"], labels["status"]): value for labels, value in _samples(text, "tuneloop_cycle_runs_total")}
    assert runs == {("demo", "failed"): 1.0, ("demo", "succeeded"): 1.0}
    counts = {(labels["step"], labels["outcome"]): value
              for labels, value in _samples(text, "tuneloop_cycle_step_seconds_count")}
    assert counts == {("curate", "succeeded"): 2.0, ("train", "succeeded"): 1.0, ("train", "failed"): 1.0}
    train = trained.steps[1]
    durations = {labels["outcome"]: value for labels, value in _samples(text, "tuneloop_cycle_step_seconds_sum")
                 if labels["step"] == "train"}
    assert durations["succeeded"] == pytest.approx((train.finished_at - train.started_at).total_seconds())
    assert _samples(text, "tuneloop_training_tokens_per_second") == [({"alias": "demo"}, 1234.5)]
    actions = {(labels["alias"], labels["action"]): value
               for labels, value in _samples(text, "tuneloop_canary_actions_total")}
    assert actions == {("demo", "wait"): 2.0, ("demo", "advance"): 1.0, ("demo", "promote"): 1.0}

    assert serve_worker_metrics(metrics, "127.0.0.1", 0) is None  # port 0: not served
    server = serve_worker_metrics(metrics, "127.0.0.1", free_port())
    assert server is not None
    try:
        served = httpx.get(server.url, timeout=10)
        assert served.status_code == 200
        assert _samples(served.text, "tuneloop_training_tokens_per_second") == [({"alias": "demo"}, 1234.5)]
    finally:
        server.stop()
    with pytest.raises(httpx.TransportError):
        httpx.get(server.url, timeout=2)
