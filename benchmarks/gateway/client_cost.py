"""What the upstream HTTP client alone costs: CPU per request of gateway.upstream vs aiohttp, same fake upstream.

    .venv/bin/python benchmarks/gateway/client_cost.py [--rounds 3] [--n 20000] [--concurrency 32]

The client under test runs pinned to the first allowed core, the fake upstream (no chunk gap) to the second;
each measurement is a fresh process (32 keep-alive workers, non-streamed then streamed), clients alternating
round by round. aiohttp is not a project dependency: without it installed only gateway.upstream is measured.
This is the number behind README.md's "Upstream HTTP client" section.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(ROOT), str(HERE)]

from procs import Processes, free_port, pick_cores, wait_http  # noqa: E402

BODY = (b'{"model":"bench","messages":[{"role":"user","content":"Say hello in one short sentence."}],'
        b'"max_tokens":16,"stream":%s}')
HEADERS = {"content-type": "application/json", "x-request-id": "0123456789abcdef0123456789abcdef"}


async def _one_gateway(client, url: str, body: bytes, stream: bool) -> None:  # type: ignore[no-untyped-def]
    response = await client.post(url, body, HEADERS)
    try:
        if stream:
            async for _chunk in response.aiter_raw():
                pass
        else:
            await response.aread()
    finally:
        await response.aclose()


async def _one_aiohttp(session, url: str, body: bytes, stream: bool) -> None:  # type: ignore[no-untyped-def]
    response = await session.post(url, data=body, headers=HEADERS, allow_redirects=False)
    try:
        if stream:
            async for _chunk in response.content.iter_any():
                pass
        else:
            await response.read()
    finally:
        response.release()


async def child(client_name: str, url: str, n: int, concurrency: int, stream: bool) -> float:
    """CPU µs per request of this process, after a warm-up."""
    if client_name == "aiohttp":
        import aiohttp

        # configured as the gateway would: one pool, connect timeout only, no cookies, no compression
        client = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1000, keepalive_timeout=4.0, ttl_dns_cache=10),
            timeout=aiohttp.ClientTimeout(total=None, connect=3.0, sock_connect=3.0),
            cookie_jar=aiohttp.DummyCookieJar(), skip_auto_headers=("User-Agent", "Accept-Encoding"))
        one, close = _one_aiohttp, client.close
    else:
        from gateway.upstream import UpstreamClient

        client = UpstreamClient(connect_timeout=3.0, max_connections=1000, max_idle=200)
        one, close = _one_gateway, client.aclose
    body = BODY % (b"true" if stream else b"false")

    async def worker(count: int) -> None:
        for _ in range(count):
            await one(client, url, body, stream)

    await asyncio.gather(*(worker(20) for _ in range(concurrency)))
    started = time.process_time()
    await asyncio.gather(*(worker(n // concurrency) for _ in range(concurrency)))
    cpu = time.process_time() - started
    await close()
    return cpu / (n // concurrency * concurrency) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--n", type=int, default=20000, help="Requests per measurement.")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--child", nargs=2, metavar=("CLIENT", "URL"), help=argparse.SUPPRESS)
    parser.add_argument("--stream", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import uvloop  # as the gateway runs under uvicorn --loop uvloop

        print(uvloop.run(child(args.child[0], args.child[1], args.n, args.concurrency, args.stream)))
        return

    try:
        import aiohttp
        clients = {"gateway.upstream": "gateway", f"aiohttp {aiohttp.__version__}": "aiohttp"}
    except ImportError:
        print("aiohttp not installed: measuring gateway.upstream only", flush=True)
        clients = {"gateway.upstream": "gateway"}
    core_client, core_upstream = pick_cores()
    results: dict[tuple[str, bool], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="client-cost-") as tmp:
        procs = Processes(Path(tmp))
        try:
            port = free_port()
            procs.start("upstream", [sys.executable, str(HERE / "fake_upstream.py"), "--port", str(port),
                                     "--chunk-gap-ms", "0"], core_upstream)
            wait_http(f"http://127.0.0.1:{port}/health", procs)
            url = f"http://127.0.0.1:{port}/cost/v1/chat/completions"
            for round_ in range(args.rounds):
                for label, name in clients.items():
                    for stream in (False, True):
                        argv = ["taskset", "-c", str(core_client), sys.executable, __file__, "--child", name, url,
                                "--n", str(args.n), "--concurrency", str(args.concurrency)]
                        out = subprocess.run(argv + (["--stream"] if stream else []), check=True,
                                             capture_output=True, text=True, cwd=ROOT).stdout
                        results.setdefault((label, stream), []).append(float(out.split()[-1]))
                print(f"round {round_ + 1}/{args.rounds} done", flush=True)
        finally:
            procs.stop_all()
    print(f"\nclient CPU per request, median of {args.rounds} rounds, concurrency {args.concurrency}:\n\n"
          "| client | non-streamed µs/request | streamed µs/request |\n|---|---:|---:|")
    for label in clients:
        print(f"| {label} | {statistics.median(results[(label, False)]):.0f} | "
              f"{statistics.median(results[(label, True)]):.0f} |")


if __name__ == "__main__":
    main()
