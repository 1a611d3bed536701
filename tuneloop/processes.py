"""`tuneloop up` as a supervisor of two processes: `tuneloop worker` (scheduler, cycle, vLLM servers) and
`tuneloop serve` (the gateway). A training run that runs out of memory takes down at most the worker's child,
never the endpoint; a child that dies is started again (five times at most). SIGTERM, SIGHUP or Ctrl-C stops
both (the worker stops the vLLM servers it started), and `up` exits 143 once they are gone. If `up` itself dies,
its children get SIGTERM from the kernel (a parent-death signal) and stop the same way.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
from rich.console import Console
from sqlalchemy import Engine

from core.deployments_table import DeploymentStatus
from core.settings import Settings
from deploy.deployments import active_deployment
from deploy.vllm_http import is_healthy
from registry.store import get_aliases

STOP_GRACE_S = 180.0  # the worker stops its vLLM servers one by one (20 s grace each) before it exits
RESTART_BACKOFF_S = 5.0
MAX_RESTARTS = 5  # a child that keeps dying (a bad setting, a port taken) ends `up` rather than loop for ever
PR_SET_PDEATHSIG = 1


def _die_with_up() -> None:
    """In the child, before exec: SIGTERM when `up` dies (killed, crashed), so its children stop cleanly (the
    worker stops its vLLM servers) instead of living on as orphans."""
    import contextlib
    import ctypes

    with contextlib.suppress(OSError):  # not Linux: orphans are possible, as with any supervisor killed with -9
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class UpError(RuntimeError):
    """A process of `tuneloop up` could not start; the message says which and why."""


@dataclass
class Child:
    """One supervised process: how to start it, and the process when running."""

    name: str
    argv: list[str]
    process: subprocess.Popen | None = None
    restarts: int = 0
    started_at: float = field(default=0.0)

    def start(self) -> None:
        self.process = subprocess.Popen(self.argv, preexec_fn=_die_with_up)
        self.started_at = time.monotonic()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, grace_s: float) -> None:
        if not self.alive():
            return
        assert self.process is not None
        self.process.terminate()
        try:
            self.process.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def tuneloop_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "tuneloop.cli", *args]


def wait_for(what: str, ready: Callable[[], bool], child: Child, timeout_s: float, stopping: threading.Event) -> None:
    """Poll `ready` until it holds; fail if `child` exits or `timeout_s` passes first."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        if stopping.is_set():
            raise KeyboardInterrupt
        if not child.alive():
            code = child.process.returncode if child.process else None
            raise UpError(f"{child.name} exited ({code}) before {what}; its output is above")
        if time.monotonic() > deadline:
            raise UpError(f"{what}: not within {timeout_s:.0f} s")
        stopping.wait(0.5)


def production_served(engine: Engine, alias: str) -> Callable[[], bool]:
    def ready() -> bool:
        production_id = get_aliases(engine, alias)[0]
        deployment = active_deployment(engine, production_id) if production_id else None
        return (deployment is not None and deployment.status == DeploymentStatus.running
                and is_healthy(deployment.base_url))

    return ready


def gateway_healthy(base_url: str) -> Callable[[], bool]:
    def ready() -> bool:
        try:
            return httpx.get(base_url + "/health", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    return ready


def run_up(settings: Settings, engine: Engine, alias: str, banner: str, console: Console) -> int:
    """Start the worker, wait for the alias's production server, start the gateway, print `banner`, then keep
    both running until SIGTERM/SIGINT. Returns the exit code (143 after SIGTERM, 130 after Ctrl-C)."""
    stopping = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        received.append(signum)
        stopping.set()

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_signal)
    worker = Child("tuneloop worker", tuneloop_argv("worker", "--stop-servers-on-exit"))
    gateway = Child("tuneloop serve", tuneloop_argv("serve"))
    base_url = f"http://{settings.host}:{settings.port}"
    try:
        worker.start()
        console.print(f"worker started (pid {worker.process.pid}); serving {alias} on vLLM (about 30 s on CPU) ...")
        wait_for(f"{alias}'s production version was served", production_served(engine, alias), worker, 900, stopping)
        gateway.start()
        wait_for("the gateway answered /health", gateway_healthy(base_url), gateway, 120, stopping)
        console.print(banner, soft_wrap=True, markup=False, highlight=False)
        console.print(f"gateway pid {gateway.process.pid} at {base_url}; worker pid {worker.process.pid}")
        while not stopping.wait(1.0):
            for child in (gateway, worker):
                if not child.alive() and time.monotonic() - child.started_at > RESTART_BACKOFF_S:
                    code = child.process.returncode if child.process else None
                    if child.restarts >= MAX_RESTARTS:
                        raise UpError(f"{child.name} exited ({code}) {MAX_RESTARTS + 1} times; its output is above")
                    child.restarts += 1
                    console.print(f"{child.name} exited ({code}); starting it again (restart {child.restarts})")
                    child.start()
    except KeyboardInterrupt:
        pass
    finally:
        gateway.stop(STOP_GRACE_S)
        worker.stop(STOP_GRACE_S)
    return 130 if received and received[-1] == signal.SIGINT else 143
