"""The gateway benchmark: direct vs tuneloop (traces off and on) vs LiteLLM in front of one fast fake upstream,
measured alternately.

    .venv/bin/python benchmarks/gateway/run.py [--rounds 3] [--duration 5] [--ttfc-n 200]   (or: make bench-gateway)

Core A (the first allowed CPU) runs the proxy under test: tuneloop's gateway (one uvicorn process, durable
logging on: SQLite WAL, synchronous=FULL, a non-streamed answer leaves only after its row committed), the same
gateway with OpenTelemetry traces on (a second process, exporting to the fake upstream's OTLP sink), or
LiteLLM's proxy (one worker). Core B runs the fake upstream, wrk and this script. Prints a markdown table and
writes it to benchmarks/gateway/RESULTS.md; checks afterwards that each gateway logged exactly one row per
upstream call, and that the traced one's spans reached the sink.
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
from dataclasses import dataclass
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
TRACED = "tuneloop + traces"
TARGETS = ("direct", "tuneloop", TRACED, "litellm")  # the order they alternate in
GATEWAYS = {"tuneloop": "/gw", TRACED: "/gwt"}  # tuneloop's targets -> the upstream path prefix of their calls
TRACED_SERVICE = "bench"  # its spans' service.name: bench-gateway
BENCH_LIMIT = 10_000_000  # requests per minute on the gateway's key
SPAN_SETTLE_S = 15.0  # the batch exporter sends a partial batch every 5 s: wait at most this for the last ones


@dataclass(frozen=True)
class GatewayProcess:
    """One of tuneloop's gateway processes under test: its own home and database, its own upstream prefix."""

    base: str  # http://127.0.0.1:PORT
    admin_key: str
    home: Path
    prefix: str


def start_all(procs: Processes, tmp: Path, core_proxy: int, core_load: int, litellm_python: Path | None,
              traces: bool) -> tuple[dict[str, tuple[str, str]], dict[str, int], dict[str, GatewayProcess], str]:
    """Start upstream, gateways and LiteLLM; return target -> (chat URL, bearer key), target -> the pid whose
    CPU time is the target's cost, tuneloop's targets -> their gateway process, and the upstream's base URL
    (also the traced gateway's OTLP endpoint)."""
    from core.api_keys import Scope, create_key
    from core.db import make_engine, migrate

    up_port, ll_port = free_port(), free_port()
    upstream = f"http://127.0.0.1:{up_port}"
    pids = {"direct": procs.start("upstream", [sys.executable, str(HERE / "fake_upstream.py"), "--port",
                                               str(up_port)], core_load).pid}
    wait_http(upstream + "/health", procs)
    targets = {"direct": (upstream + "/v1/chat/completions", "")}

    # no inherited TUNELOOP_* or OTEL_* setting (the SDK reads the latter): both gateways run on defaults alone
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("TUNELOOP_", "OTEL_"))}
    gateways: dict[str, GatewayProcess] = {}
    for name, prefix in GATEWAYS.items():
        if name == TRACED and not traces:
            continue
        slug = "tuneloop-traces" if name == TRACED else "tuneloop"
        home = tmp / slug
        home.mkdir()
        db_url = f"sqlite:///{home / 'tuneloop.db'}"
        migrate(db_url)
        engine = make_engine(db_url)
        # limits far above what the run reaches: the limiter's cost is in the figures, its refusals are not
        _public, app_key = create_key(engine, Scope.app, "bench", rpm=BENCH_LIMIT, tpm=BENCH_LIMIT * 100)
        engine.dispose()
        env = dict(base_env, TUNELOOP_HOME=str(home), TUNELOOP_ADMIN_KEY="tl-admin-" + secrets.token_hex(8),
                   TUNELOOP_UPSTREAMS=json.dumps({MODEL: [upstream + prefix]}), PYTHONPATH=str(ROOT))
        if name == TRACED:  # the only difference: spans exported over OTLP/HTTP to the upstream's sink
            env.update(TUNELOOP_OTEL_ENDPOINT=upstream, TUNELOOP_OTEL_SERVICE_NAME=TRACED_SERVICE)
        gw_port = free_port()
        argv = [sys.executable, "-m", "uvicorn", "tuneloop.asgi:gateway_app", "--factory", "--host", "127.0.0.1",
                "--port", str(gw_port), "--loop", "uvloop", "--http", "httptools", "--log-level", "warning",
                "--no-access-log"]
        pids[name] = procs.start(slug, argv, core_proxy, env, ROOT).pid
        base = f"http://127.0.0.1:{gw_port}"
        wait_http(base + "/health", procs)
        targets[name] = (base + "/v1/chat/completions", app_key)
        gateways[name] = GatewayProcess(base, env["TUNELOOP_ADMIN_KEY"], home, prefix)

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
        ll_env = dict(base_env, PYTHONPATH=str(ROOT), LITELLM_LOG="ERROR", LITELLM_LOCAL_MODEL_COST_MAP="True",
                      NO_DOCS="True")
        litellm_bin = str(litellm_python.parent / "litellm")
        argv = [litellm_bin, "--config", str(tmp / "litellm.yaml"), "--host", "127.0.0.1", "--port", str(ll_port),
                "--num_workers", "1", "--log_config", str(tmp / "litellm-log.json")]
        pids["litellm"] = procs.start("litellm", argv, core_proxy, ll_env, tmp).pid
        wait_http(f"http://127.0.0.1:{ll_port}/health/liveliness", procs, timeout_s=180)
        targets["litellm"] = (f"http://127.0.0.1:{ll_port}/v1/chat/completions", master)
    return targets, pids, gateways, upstream


def fmt(value: float, digits: int = 2) -> str:
    return "n/a" if value != value else f"{value:,.{digits}f}"  # NaN check


def signed(value: float, digits: int) -> str:
    return "n/a" if value != value else ("+" if value >= 0 else "-") + fmt(abs(value), digits)


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
    litellm_row = (f"peak {fmt(peak_ratio, 1)}x ({fmt(peak.get('tuneloop', float('nan')), 0)} vs "
                   f"{fmt(peak.get('litellm', float('nan')), 0)} req/s); per round {ratios}; CPU per request at best "
                   f"{fmt(cpu_ratio, 1)}x less ({fmt(cpu.get('tuneloop', float('nan')), 0)} vs "
                   f"{fmt(cpu.get('litellm', float('nan')), 0)} µs)" if has_ll else "LiteLLM not measured in this run")
    rows += ["", "| target | measured | verdict |", "|---|---|---|",
             f"| ≥ 10x LiteLLM requests/s per worker | {litellm_row} | "
             f"{verdict(peak_ratio >= 10 if has_ll else None)} |",
             f"| ≤ 2 ms added p50 at concurrency 1 | +{fmt(added_p50)} ms (median of per-round differences), of "
             f"which the durable commit it waits for is {fmt(floor_ms)} ms (median single-row SQLite commit on the "
             f"same disk): {signed(added_p50 - floor_ms, 2)} ms beyond it | "
             f"{verdict(added_p50 <= 2)} |",
             f"| ≤ 2 ms added time to first chunk | +{fmt(added_ttfc)} ms (median vs median) | "
             f"{verdict(added_ttfc <= 2)} |"]
    if TRACED in targets:
        on_off = {  # traced minus (or over) plain in the same round; medians over rounds
            "server CPU µs/request, on - off": (lambda on, off: on.cpu_us_per_request - off.cpu_us_per_request, 0),
            "server CPU per request, on / off": (lambda on, off: on.cpu_us_per_request / off.cpu_us_per_request,
                                                 None),
            "requests/s, on / off": (lambda on, off: on.rps / off.rps if off.rps else float("nan"), None),
            "p50 ms, on - off": (lambda on, off: on.p50_ms - off.p50_ms, 2),
        }
        rows += ["", "| traces on vs off (off: `tuneloop`, on: `tuneloop + traces`, same round; median over "
                 "rounds) | concurrency 1 | concurrency 8 | concurrency 32 |", "|---|---:|---:|---:|"]
        for label, (fn, digits) in on_off.items():
            values = [per_round(c, fn, TRACED, "tuneloop") for c in CONCURRENCY]
            cells = [signed(v, digits) if digits is not None else f"{fmt(v, 3)} ({signed((v - 1) * 100, 1)} %)"
                     for v in values]
            rows.append(f"| {label} | " + " | ".join(cells) + " |")
        rows.append(f"| time to first chunk (streamed, concurrency 1, median), on - off | "
                    f"{signed(fc.median(TRACED) - fc.median('tuneloop'), 2)} ms | | |")
    return "\n".join(rows + [""] + [f"- {n}" for n in notes]) + "\n"


def interaction_rows(gw: GatewayProcess) -> int:
    import sqlite3

    with sqlite3.connect(gw.home / "tuneloop.db") as db:
        return int(db.execute("SELECT count(*) FROM interactions").fetchone()[0])


def gateway_log_check(name: str, gw: GatewayProcess, upstream_url: str, client_ok: int,
                      in_flight_bound: int) -> tuple[bool, str]:
    """Rows in the gateway's database vs upstream calls it made vs 200s it reported vs 200s clients received."""
    import sqlite3

    base, admin_key = gw.base, gw.admin_key
    with urllib.request.urlopen(upstream_url + "/stats", timeout=5) as answer:
        upstream_calls = json.loads(answer.read()).get(gw.prefix, 0)
    rows = ok_rows = -1
    for _ in range(50):  # streamed rows are written just after the stream ends: wait until the count is still
        with sqlite3.connect(gw.home / "tuneloop.db") as db:
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
    text = (f"`{name}` durable-log check {'PASSED' if ok else 'FAILED'}: {rows} rows in the gateway's database "
            f"({ok_rows} ok), {upstream_calls} upstream calls made by the gateway, {int(reported)} answers 200 by "
            f"the gateway's own count; clients received {client_ok} 200s (wrk does not count the ≤ {in_flight_bound} "
            f"requests in flight when it stops, which the gateway still answered and logged)")
    return ok, text


def span_check(gw: GatewayProcess, upstream_url: str) -> tuple[bool, str]:
    """What the OTLP sink received from the traced gateway: posts, bytes, and its spans by kind, against the
    rows the gateway logged (one GenAI span per finished call; one HTTP server span per request). Waits for the
    exporter's last partial batch (it sends one every 5 s) until the GenAI spans match the rows or stop growing."""
    rows = interaction_rows(gw)
    deadline, last, still_since = time.monotonic() + SPAN_SETTLE_S, None, time.monotonic()
    while True:
        with urllib.request.urlopen(upstream_url + "/otlp", timeout=5) as answer:
            sink = json.loads(answer.read())
        spans: dict[str, int] = sink["spans"]
        genai = sum(n for name, n in spans.items() if name.split(" ", 1)[0] in ("chat", "text_completion"))
        if genai != last:
            last, still_since = genai, time.monotonic()
        if genai >= rows or time.monotonic() > deadline or time.monotonic() - still_since > 6:
            break
        time.sleep(0.5)
    other = sum(spans.values()) - genai
    ok = sink["posts"] > 0 and genai > 0
    names = ", ".join(f"{n:,} `{name}`" for name, n in sorted(spans.items(), key=lambda kv: -kv[1]))
    missing = (f"; {rows - genai:,} calls had no span at the sink (dropped by the batch exporter's full queue)"
               if genai < rows else "")
    undecoded = f", {sink['undecoded']} posts not decoded" if sink["undecoded"] else ""
    text = (f"OTLP sink check {'PASSED' if ok else 'FAILED'}: the traced gateway posted {sink['posts']:,} OTLP/HTTP "
            f"exports ({sink['bytes'] / 1e6:,.1f} MB{undecoded}) to the fake upstream's /v1/traces, holding "
            f"{genai:,} GenAI call spans for its {rows:,} logged rows and {other:,} other spans (FastAPI's HTTP "
            f"server spans): {names}{missing}")
    return ok, text


def measure(load: Callable[[str, int, float, str], LoadResult], targets: dict[str, tuple[str, str]],
            pids: dict[str, int], rounds: int, duration: float
            ) -> tuple[dict[tuple[str, int], list[LoadResult]], dict[str, int], dict[str, int], dict[str, float]]:
    """All wrk runs, alternating targets within each round; also, per gateway, the 200s its clients got and the
    most requests that can have been in flight when a run stopped; and per target the CPU µs per measured request
    that its process spent outside the measured runs (idle, between runs; for the traced gateway also the last
    partial batch of each run, exported up to 5 s after it) from the first run until 6 s after the last."""
    client_ok = dict.fromkeys(GATEWAYS, 0)
    in_flight = dict.fromkeys(GATEWAYS, 0)
    names = [n for n in TARGETS if n in targets]
    print(f"warming up {', '.join(names)} ...", flush=True)
    for name in names:
        warm = load(targets[name][0], 8, 2.0, targets[name][1])
        if name in GATEWAYS:
            client_ok[name] += warm.ok
            in_flight[name] += 8
    results: dict[tuple[str, int], list[LoadResult]] = {}
    start_cpu = {name: cpu_seconds(pids[name]) for name in names}
    in_runs = dict.fromkeys(names, 0.0)
    for conc in CONCURRENCY:
        for rnd in range(rounds):
            for name in names:
                before = cpu_seconds(pids[name])
                result = load(targets[name][0], conc, duration, targets[name][1])
                spent = cpu_seconds(pids[name]) - before
                in_runs[name] += spent
                result.cpu_us_per_request = spent * 1e6 / max(1, result.requests)
                results.setdefault((name, conc), []).append(result)
                if name in GATEWAYS:
                    client_ok[name] += result.ok
                    in_flight[name] += conc
                print(f"c={conc:>2} round {rnd + 1}/{rounds} {name:>17}: {result.rps:8.0f} req/s  p50 "
                      f"{result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms  CPU {result.cpu_us_per_request:6.0f} "
                      f"µs/req  errors {result.errors}", flush=True)
    time.sleep(6)  # the traced gateway's last partial batch
    outside = {name: (cpu_seconds(pids[name]) - start_cpu[name] - in_runs[name]) * 1e6
               / max(1, sum(r.requests for c in CONCURRENCY for r in results[(name, c)])) for name in names}
    return results, client_ok, in_flight, outside


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


def sqlite_synchronous(home: Path) -> str:
    """journal_mode of the gateway's database file, and synchronous as core.db.make_engine sets it."""
    from core.db import make_engine

    engine = make_engine(f"sqlite:///{home / 'tuneloop.db'}")
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
    parser.add_argument("--no-litellm", action="store_true", help="Skip LiteLLM.")
    parser.add_argument("--no-traces", action="store_true",
                        help="Skip the second gateway with OpenTelemetry traces on (`tuneloop + traces`).")
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
            targets, pids, gateways, upstream = start_all(procs, tmp, core_proxy, core_load,
                                                          litellm.python if litellm else None, not args.no_traces)
            names = [n for n in TARGETS if n in targets]

            def load(url: str, conc: int, duration: float, key: str) -> LoadResult:
                procs.check_alive()
                if wrk:
                    return run_wrk(wrk, url, conc, duration, body, key, core_load)
                return run_python_load(url, conc, duration, body, key)

            results, client_ok, in_flight, outside = measure(load, targets, pids, args.rounds, args.duration)
            print(f"streaming: time to first chunk, {args.ttfc_n} requests per target, alternating ...", flush=True)
            fc = measure_first_chunk({n: targets[n] for n in names}, stream_body, args.ttfc_n)
            checks = []
            for name, gw in gateways.items():
                client_ok[name] += fc.ok.get(name, 0)
                checks.append(gateway_log_check(name, gw, upstream, client_ok[name], in_flight[name]))
            if TRACED in gateways:
                print("waiting for the traced gateway's last spans ...", flush=True)
                checks.append(span_check(gateways[TRACED], upstream))
            pragmas = sqlite_synchronous(gateways["tuneloop"].home)
            print("durable commit floor: 200 single-row commits ...", flush=True)
            floor_ms = commit_floor(tmp)
        finally:
            procs.stop_all()
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    loadgen = (subprocess.run([wrk, "--version"], capture_output=True, text=True, check=False).stdout.split(" [")[0]
               if wrk else "the Python fallback load generator in load.py (wrk unavailable)")
    traced = TRACED in names
    notes += [
        f"Pinning: core {core_proxy} runs only the proxies under test, one taking load at a time (tuneloop: one "
        f"uvicorn process with uvloop + httptools{', one per tuneloop target' if traced else ''}; LiteLLM: one "
        f"worker). Core {core_load} runs the fake upstream{' (and OTLP sink)' if traced else ''}, the load "
        f"generator and the TTFC client together, so `direct` is upstream + load generator sharing one core. All "
        f"at nice {args.nice}.",
        f"Load generator: {loadgen}, 1 thread, keep-alive, closed loop; {args.rounds} rounds of {args.duration:g} s "
        f"per concurrency, the {len(names)} targets alternating within each round ({' → '.join(names)}); medians "
        f"over rounds. Server CPU: user + system time of the answering process (upstream, gateway or LiteLLM) per "
        f"request, during its runs; outside them, from the first run until 6 s after the last, each process spent "
        + ", ".join(f"`{n}` {fmt(outside[n], 1)}" for n in names) + " µs more per measured request.",
        f"Durable logging on: SQLite in a temp dir ({pragmas}); every non-streamed answer left only after its "
        "row committed (group commit).",
        *([f"Traces: `{TRACED}` is a second gateway process, the same but for TUNELOOP_OTEL_ENDPOINT set to the "
           "fake upstream, whose /v1/traces answers 200 and counts what it gets (so the exporter's own cost is in "
           "the figures, a real collector's is not): a GenAI span per call and FastAPI's HTTP server span per "
           "request, exported over OTLP/HTTP protobuf in batches by the SDK's BatchSpanProcessor (its defaults). "
           "`tuneloop` has the setting empty, its default: no span code runs (one `is None` check per call)."]
          if traced else []),
        f"Rate limits on: the gateway's key has rpm {BENCH_LIMIT:,} and tpm {BENCH_LIMIT * 100:,}, so the limiter "
        "counts every request and its tokens (in process) and never refuses one.",
        (f"LiteLLM: litellm {litellm.version} in .venv-bench, no database (so it logs nothing), master key auth, "
         "uvicorn access log off, httptools installed." if litellm and litellm.python else
         "LiteLLM: not measured in this run" + (" (--no-litellm)." if args.no_litellm else ".")),
        *(text for _ok, text in checks),
        f"Machine: {os.cpu_count()} CPUs ({cpu}), shared with other work, so numbers are noisy; compare "
        f"ratios within one run. Python {platform.python_version()}, "
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC.",
    ]
    report = build_report(results, fc, notes, names, floor_ms)
    print("\n" + report)
    args.out.write_text("# Gateway benchmark results\n\nWritten by `benchmarks/gateway/run.py`.\n\n" + report)
    print(f"written to {args.out}")
    return 0 if all(ok for ok, _text in checks) else 1


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup in `finally` on kill, too
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
