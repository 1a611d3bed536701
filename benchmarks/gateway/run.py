"""The gateway benchmark: direct vs tuneloop vs LiteLLM in front of one fast fake upstream, measured alternately.

    .venv/bin/python benchmarks/gateway/run.py [--rounds 3] [--duration 5] [--ttfc-n 200]   (or: make bench-gateway)

Core A (the first allowed CPU) runs the proxy under test: tuneloop's gateway (one uvicorn process, durable
logging on: SQLite WAL, synchronous=FULL, a non-streamed answer leaves only after its row committed) or LiteLLM's
proxy (one worker). Core B runs the fake upstream, wrk and this script. Prints a markdown table and writes it to
benchmarks/gateway/RESULTS.md; checks afterwards that the gateway logged exactly one row per upstream call.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(ROOT), str(HERE)]

from load import (  # noqa: E402
    FirstChunk,
    LoadResult,
    cpu_seconds,
    measure_first_chunk,
    run_python_load,
    run_wrk,
)
from procs import Processes, ensure_litellm, ensure_wrk, free_port, pick_cores, wait_http  # noqa: E402

MODEL = "bench"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello in one short sentence."}],
        "max_tokens": 16}
CONCURRENCY = (1, 8, 32)
TARGETS = ("direct", "tuneloop", "litellm")
BENCH_LIMIT = 10_000_000  # requests per minute on the gateway's key


def start_all(procs: Processes, tmp: Path, core_proxy: int, core_load: int, litellm_python: Path | None
              ) -> tuple[dict[str, tuple[str, str]], dict[str, int], tuple[str, str]]:
    """Start upstream, gateway and LiteLLM; return target -> (chat URL, bearer key), target -> the pid whose
    CPU time is the target's cost, and the gateway's (base URL, admin key)."""
    from core.api_keys import Scope, create_key
    from core.db import make_engine, migrate

    up_port, gw_port, ll_port = free_port(), free_port(), free_port()
    upstream = f"http://127.0.0.1:{up_port}"
    pids = {"direct": procs.start("upstream", [sys.executable, str(HERE / "fake_upstream.py"), "--port",
                                               str(up_port)], core_load).pid}
    wait_http(upstream + "/health", procs)
    targets = {"direct": (upstream + "/v1/chat/completions", "")}

    db_url = f"sqlite:///{tmp / 'tuneloop.db'}"
    migrate(db_url)
    engine = make_engine(db_url)
    # limits far above what the run reaches: the limiter's cost is in the figures, its refusals are not
    _public, app_key = create_key(engine, Scope.app, "bench", rpm=BENCH_LIMIT, tpm=BENCH_LIMIT * 100)
    engine.dispose()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNELOOP_")}
    env.update(TUNELOOP_HOME=str(tmp), TUNELOOP_ADMIN_KEY="tl-admin-" + secrets.token_hex(8),
               TUNELOOP_UPSTREAMS=json.dumps({MODEL: [upstream + "/gw"]}), PYTHONPATH=str(ROOT))
    argv = [sys.executable, "-m", "uvicorn", "tuneloop.asgi:gateway_app", "--factory", "--host", "127.0.0.1",
            "--port", str(gw_port), "--loop", "uvloop", "--http", "httptools", "--log-level", "warning",
            "--no-access-log"]
    pids["tuneloop"] = procs.start("tuneloop", argv, core_proxy, env, ROOT).pid
    wait_http(f"http://127.0.0.1:{gw_port}/health", procs)
    targets["tuneloop"] = (f"http://127.0.0.1:{gw_port}/v1/chat/completions", app_key)
    admin = (f"http://127.0.0.1:{gw_port}", env["TUNELOOP_ADMIN_KEY"])

    if litellm_python is not None:
        master = "sk-bench-" + secrets.token_hex(8)
        (tmp / "litellm.yaml").write_text(json.dumps({
            "model_list": [{"model_name": MODEL, "litellm_params": {
                "model": f"openai/{MODEL}", "api_base": upstream + "/litellm/v1", "api_key": "sk-upstream"}}],
            "general_settings": {"master_key": master},
            "litellm_settings": {"set_verbose": False, "telemetry": False},
        }))
        (tmp / "litellm-log.json").write_text(json.dumps({
            "version": 1, "disable_existing_loggers": False,
            "loggers": {name: {"level": "WARNING"} for name in ("uvicorn", "uvicorn.error", "uvicorn.access")}}))
        ll_env = dict(env, LITELLM_LOG="ERROR", LITELLM_LOCAL_MODEL_COST_MAP="True", NO_DOCS="True")
        litellm_bin = str(litellm_python.parent / "litellm")
        argv = [litellm_bin, "--config", str(tmp / "litellm.yaml"), "--host", "127.0.0.1", "--port", str(ll_port),
                "--num_workers", "1", "--log_config", str(tmp / "litellm-log.json")]
        pids["litellm"] = procs.start("litellm", argv, core_proxy, ll_env, tmp).pid
        wait_http(f"http://127.0.0.1:{ll_port}/health/liveliness", procs, timeout_s=180)
        targets["litellm"] = (f"http://127.0.0.1:{ll_port}/v1/chat/completions", master)
    return targets, pids, admin


def fmt(value: float, digits: int = 2) -> str:
    return "n/a" if value != value else f"{value:,.{digits}f}"  # NaN check


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def build_report(results: dict[tuple[str, int], list[LoadResult]], fc: FirstChunk, notes: list[str],
                 targets: list[str], floor_ms: float) -> str:
    rows = ["| target | concurrency | requests/s | p50 ms | p99 ms | server CPU µs/request | errors |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for conc in CONCURRENCY:
        for name in targets:
            runs = results.get((name, conc), [])
            rows.append(f"| {name} | {conc} | {fmt(med([r.rps for r in runs]), 0)} | "
                        f"{fmt(med([r.p50_ms for r in runs]))} | {fmt(med([r.p99_ms for r in runs]))} | "
                        f"{fmt(med([r.cpu_us_per_request for r in runs]), 0)} | {sum(r.errors for r in runs)} |")
    rows += ["", "| streamed, concurrency 1 | time to first chunk, median ms | p90 ms | samples |",
             "|---|---:|---:|---:|"]
    rows += [f"| {n} | {fmt(fc.median(n))} | {fmt(fc.p90(n))} | {len(fc.samples_ms[n])} |" for n in targets]

    def per_round(conc: int, fn: Callable[[LoadResult, LoadResult], float], a: str, b: str) -> float:
        pairs = zip(results.get((a, conc), []), results.get((b, conc), []), strict=False)
        return med([fn(x, y) for x, y in pairs])

    ratio = {c: per_round(c, lambda t, ll: t.rps / ll.rps if ll.rps else float("nan"), "tuneloop", "litellm")
             for c in CONCURRENCY}
    peak = {n: max((med([r.rps for r in results.get((n, c), [])]) for c in CONCURRENCY), default=float("nan"))
            for n in targets}
    peak_ratio = peak.get("tuneloop", float("nan")) / peak.get("litellm", float("nan"))
    cpu = {n: min((med([r.cpu_us_per_request for r in results.get((n, c), [])]) for c in CONCURRENCY),
                  default=float("nan")) for n in targets}
    cpu_ratio = cpu.get("litellm", float("nan")) / cpu.get("tuneloop", float("nan"))
    added_p50 = per_round(1, lambda t, d: t.p50_ms - d.p50_ms, "tuneloop", "direct")
    added_ttfc = fc.median("tuneloop") - fc.median("direct")

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else ("**met**" if ok else "**missed**")

    has_ll = "litellm" in targets
    ratios = ", ".join(f"c={c}: {fmt(ratio[c], 1)}x" for c in CONCURRENCY)
    rows += ["", "| target | measured | verdict |", "|---|---|---|",
             f"| ≥ 10x LiteLLM requests/s per worker | peak {fmt(peak_ratio, 1)}x "
             f"({fmt(peak.get('tuneloop', float('nan')), 0)} vs {fmt(peak.get('litellm', float('nan')), 0)} req/s);"
             f" per round {ratios}; CPU per request at best {fmt(cpu_ratio, 1)}x less "
             f"({fmt(cpu.get('tuneloop', float('nan')), 0)} vs {fmt(cpu.get('litellm', float('nan')), 0)} µs) | "
             f"{verdict(peak_ratio >= 10 if has_ll else None)} |",
             f"| ≤ 2 ms added p50 at concurrency 1 | +{fmt(added_p50)} ms (median of per-round differences), of "
             f"which the durable commit it waits for is {fmt(floor_ms)} ms (median single-row SQLite commit on the "
             f"same disk): +{fmt(added_p50 - floor_ms)} ms beyond it | "
             f"{verdict(added_p50 <= 2)} |",
             f"| ≤ 2 ms added time to first chunk | +{fmt(added_ttfc)} ms (median vs median) | "
             f"{verdict(added_ttfc <= 2)} |"]
    return "\n".join(rows + [""] + [f"- {n}" for n in notes]) + "\n"


def gateway_log_check(tmp: Path, upstream_url: str, admin: tuple[str, str], client_ok: int,
                      in_flight_bound: int) -> tuple[bool, str]:
    """Rows in the gateway's database vs upstream calls it made vs 200s it reported vs 200s clients received."""
    import sqlite3

    base, admin_key = admin
    with urllib.request.urlopen(upstream_url + "/stats", timeout=5) as answer:
        upstream_calls = json.loads(answer.read()).get("/gw", 0)
    rows = ok_rows = -1
    for _ in range(50):  # streamed rows are written just after the stream ends: wait until the count is still
        with sqlite3.connect(tmp / "tuneloop.db") as db:
            now = db.execute("SELECT count(*), sum(status = 'ok' AND http_status = 200) FROM interactions").fetchone()
        if now[0] == rows:
            break
        rows, ok_rows = now[0], now[1] or 0
        time.sleep(0.2)
    request = urllib.request.Request(base + "/metrics", headers={"authorization": f"Bearer {admin_key}"})
    with urllib.request.urlopen(request, timeout=5) as answer:
        metric_lines = answer.read().decode().splitlines()
    reported = sum(float(ln.rsplit(" ", 1)[1]) for ln in metric_lines
                   if ln.startswith("tuneloop_requests_total{") and 'status="200"' in ln)
    ok = rows == ok_rows == upstream_calls == int(reported) and client_ok <= rows <= client_ok + in_flight_bound
    text = (f"durable-log check {'PASSED' if ok else 'FAILED'}: {rows} rows in the gateway's database ({ok_rows} ok), "
            f"{upstream_calls} upstream calls made by the gateway, {int(reported)} answers 200 by the gateway's own "
            f"count; clients received {client_ok} 200s (wrk does not count the ≤ {in_flight_bound} requests in "
            f"flight when it stops, which the gateway still answered and logged)")
    return ok, text


def measure(load: Callable[[str, int, float, str], LoadResult], targets: dict[str, tuple[str, str]],
            pids: dict[str, int], rounds: int, duration: float) -> tuple[dict[tuple[str, int], list[LoadResult]],
                                                                       int, int]:
    """All wrk runs, alternating targets within each round; also 200s the gateway's clients got, and the
    most requests that can have been in flight when a run stopped."""
    client_ok, in_flight = 0, 0
    names = [n for n in TARGETS if n in targets]
    print(f"warming up {', '.join(names)} ...", flush=True)
    for name in names:
        warm = load(targets[name][0], 8, 2.0, targets[name][1])
        if name == "tuneloop":
            client_ok, in_flight = client_ok + warm.ok, in_flight + 8
    results: dict[tuple[str, int], list[LoadResult]] = {}
    for conc in CONCURRENCY:
        for rnd in range(rounds):
            for name in names:
                before = cpu_seconds(pids[name])
                result = load(targets[name][0], conc, duration, targets[name][1])
                result.cpu_us_per_request = (cpu_seconds(pids[name]) - before) * 1e6 / max(1, result.requests)
                results.setdefault((name, conc), []).append(result)
                if name == "tuneloop":
                    client_ok, in_flight = client_ok + result.ok, in_flight + conc
                print(f"c={conc:>2} round {rnd + 1}/{rounds} {name:>8}: {result.rps:8.0f} req/s  p50 "
                      f"{result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms  CPU {result.cpu_us_per_request:6.0f} "
                      f"µs/req  errors {result.errors}", flush=True)
    return results, client_ok, in_flight


def commit_floor(tmp: Path, n: int = 200) -> float:
    """Median ms of one durable single-row commit of an interaction into a scratch database beside the gateway's:
    what the gateway's log writer waits for on each request at concurrency 1 (the disk's flush, mostly)."""
    from core.clock import utcnow
    from core.db import make_engine, migrate
    from feedback.interaction_log import interaction_values
    from feedback.models import Interaction

    url = f"sqlite:///{tmp / 'floor.db'}"
    migrate(url)
    engine = make_engine(url)
    insert = Interaction.__table__.insert()  # type: ignore[attr-defined]
    times = []
    for i in range(n + 100):  # the first 100 grow the WAL file, not timed
        row = interaction_values(id=f"floor-{i}", api_key_id="k", model_alias=MODEL, served_version=MODEL,
                                 endpoint="chat.completions", request_body=CHAT, response_text="Hello.",
                                 response_body={"choices": [{"message": {"content": "Hello."}}]},
                                 completed_at=utcnow())
        started = time.perf_counter()
        with engine.begin() as connection:
            connection.execute(insert, [row])
        if i >= 100:
            times.append((time.perf_counter() - started) * 1000)
    engine.dispose()
    return statistics.median(times)


def sqlite_synchronous(tmp: Path) -> str:
    """journal_mode of the gateway's database file, and synchronous as core.db.make_engine sets it."""
    from core.db import make_engine

    engine = make_engine(f"sqlite:///{tmp / 'tuneloop.db'}")
    with engine.connect() as connection:
        journal = connection.exec_driver_sql("PRAGMA journal_mode").scalar()
        synchronous = connection.exec_driver_sql("PRAGMA synchronous").scalar()
    engine.dispose()
    return f"journal_mode={journal}, synchronous={ {0: 'OFF', 1: 'NORMAL', 2: 'FULL', 3: 'EXTRA'}.get(synchronous)}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="Alternating rounds per concurrency.")
    parser.add_argument("--duration", type=float, default=5.0, help="Seconds per wrk run.")
    parser.add_argument("--ttfc-n", type=int, default=200, help="Streamed requests per target for TTFC.")
    parser.add_argument("--no-litellm", action="store_true", help="Skip LiteLLM (direct and tuneloop only).")
    parser.add_argument("--nice", type=int, default=-10 if os.geteuid() == 0 else 0,
                        help="Niceness of every benchmark process (default -10 as root: other work on the "
                             "machine preempts the measured processes less).")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    args = parser.parse_args()

    core_proxy, core_load = pick_cores()
    os.sched_setaffinity(0, {core_load})
    if args.nice:
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)  # inherited by every process started from here
    wrk = ensure_wrk()
    notes: list[str] = []
    litellm = None
    if not args.no_litellm:
        litellm = ensure_litellm(ROOT)
        if litellm.python is None:
            print(f"LiteLLM unavailable: {litellm.error}", flush=True)
            notes.append(f"LiteLLM not measured: {litellm.error}")
    body = json.dumps(CHAT).encode()
    stream_body = json.dumps(dict(CHAT, stream=True)).encode()
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp_name:
        tmp = Path(tmp_name)
        procs = Processes(tmp)
        try:
            targets, pids, admin = start_all(procs, tmp, core_proxy, core_load, litellm.python if litellm else None)
            names = [n for n in TARGETS if n in targets]

            def load(url: str, conc: int, duration: float, key: str) -> LoadResult:
                procs.check_alive()
                if wrk:
                    return run_wrk(wrk, url, conc, duration, body, key, core_load)
                return run_python_load(url, conc, duration, body, key)

            results, client_ok, in_flight = measure(load, targets, pids, args.rounds, args.duration)
            print(f"streaming: time to first chunk, {args.ttfc_n} requests per target, alternating ...", flush=True)
            fc = measure_first_chunk({n: targets[n] for n in names}, stream_body, args.ttfc_n)
            client_ok += fc.ok.get("tuneloop", 0)
            log_ok, log_text = gateway_log_check(tmp, targets["direct"][0].rsplit("/v1/", 1)[0], admin,
                                                 client_ok, in_flight)
            pragmas = sqlite_synchronous(tmp)
            print("durable commit floor: 200 single-row commits ...", flush=True)
            floor_ms = commit_floor(tmp)
        finally:
            procs.stop_all()
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    loadgen = (subprocess.run([wrk, "--version"], capture_output=True, text=True, check=False).stdout.split(" [")[0]
               if wrk else "the Python fallback load generator in load.py (wrk unavailable)")
    notes += [
        f"Pinning: core {core_proxy} runs only the proxy under test (tuneloop: one uvicorn process with uvloop + "
        f"httptools; LiteLLM: one worker). Core {core_load} runs the fake upstream, the load generator and the "
        f"TTFC client together, so `direct` is upstream + load generator sharing one core. All at nice {args.nice}.",
        f"Load generator: {loadgen}, 1 thread, keep-alive, closed loop; {args.rounds} rounds of {args.duration:g} s "
        f"per concurrency, the three targets alternating within each round; medians over rounds. Server CPU: "
        f"user + system time of the answering process (upstream, gateway or LiteLLM) per request.",
        f"Durable logging on: SQLite in a temp dir ({pragmas}); every non-streamed answer left only after its "
        "row committed (group commit).",
        f"Rate limits on: the gateway's key has rpm {BENCH_LIMIT:,} and tpm {BENCH_LIMIT * 100:,}, so the limiter "
        "counts every request and its tokens (in process) and never refuses one.",
        f"LiteLLM: {'litellm ' + litellm.version if litellm and litellm.python else 'not measured'} in .venv-bench, "
        "no database (so it logs nothing), master key auth, uvicorn access log off, httptools installed.",
        log_text,
        f"Machine: {os.cpu_count()} CPUs ({cpu}), shared with other work, so numbers are noisy; compare "
        f"ratios within one run. Python {platform.python_version()}, "
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC.",
    ]
    report = build_report(results, fc, notes, names, floor_ms)
    print("\n" + report)
    args.out.write_text("# Gateway benchmark results\n\nWritten by `benchmarks/gateway/run.py`.\n\n" + report)
    print(f"written to {args.out}")
    return 0 if log_ok else 1


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup in `finally` on kill, too
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
