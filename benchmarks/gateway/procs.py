"""Processes of the gateway benchmark: start pinned to a core, wait until they answer, kill all at the end.

Also sets up the LiteLLM proxy's own virtual environment (.venv-bench), so that LiteLLM's dependency pins
never touch the project's .venv.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

# 1.82.7 and 1.82.8 were the compromised releases of March 2026 (credential stealer in a .pth file); 1.82.6 is
# the last release before them. Override with LITELLM_SPEC to measure another one.
LITELLM_SPEC = os.environ.get("LITELLM_SPEC", "litellm[proxy]==1.82.6")
EXTRA_BENCH_PACKAGES = ["httptools"]  # same HTTP parser under LiteLLM's uvicorn as under tuneloop's
MALICIOUS_PTH = "litellm_init.pth"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Processes:
    """Every process the benchmark started, each in its own session so its whole group can be killed."""

    log_dir: Path
    started: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def start(self, name: str, argv: list[str], cpu: int | None, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.Popen[bytes]:
        if cpu is not None:
            argv = ["taskset", "-c", str(cpu), *argv]
        log = (self.log_dir / f"{name}.log").open("wb")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                start_new_session=True)
        log.close()
        self.started.append((name, proc))
        return proc

    def check_alive(self) -> None:
        for name, proc in self.started:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}; see {self.log_dir / (name + '.log')}")

    def stop_all(self) -> None:
        for _name, proc in reversed(self.started):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for _name, proc in reversed(self.started):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
            # children that outlived their leader (a uvicorn reloader, a gunicorn worker) share its group
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        self.started.clear()


def wait_http(url: str, procs: Processes, timeout_s: float = 120.0) -> None:
    """Wait until GET `url` answers at all (any status), failing early if a started process died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        procs.check_alive()
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout_s:.0f}s")


def pick_cores() -> tuple[int, int]:
    """(proxy core, load core): the first two CPUs this process may use."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        raise SystemExit("the benchmark needs two CPU cores: one for the proxy, one for upstream + wrk")
    return cores[0], cores[1]


def ensure_wrk() -> str | None:
    """wrk's path; installs it from Debian when missing and we are root; None when it cannot be had."""
    found = shutil.which("wrk")
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    print("wrk not found: apt-get install wrk ...", flush=True)
    subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=False, capture_output=True)
    return shutil.which("wrk")


@dataclass
class LiteLLMEnv:
    python: Path | None
    version: str
    error: str = ""


def ensure_litellm(root: Path) -> LiteLLMEnv:
    """LiteLLM's proxy in its own venv (.venv-bench), created on first use; the reason when that fails."""
    venv = root / ".venv-bench"
    python = venv / "bin" / "python"
    marker = venv / ".bench-installed"
    if not (marker.exists() and marker.read_text() == LITELLM_SPEC and python.exists()):
        print(f"setting up {venv.name} with {LITELLM_SPEC} (first run only) ...", flush=True)
        base = shutil.which("python3") or sys.executable
        steps = [[base, "-m", "venv", str(venv)],
                 [str(python), "-m", "pip", "install", "-q", LITELLM_SPEC, *EXTRA_BENCH_PACKAGES]]
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                lines = [ln for ln in (done.stdout + done.stderr).splitlines()
                         if ln.strip() and not ln.startswith("WARNING: Location")]
                reason = f"`{' '.join(step[-3:])}` exited {done.returncode}: " + " | ".join(lines[-6:])
                return LiteLLMEnv(None, "", reason)
            if step is steps[0]:
                (venv / ".gitignore").write_text("*\n")  # keep the venv out of git (.gitignore lacks it)
        marker.write_text(LITELLM_SPEC)
    bad = list(venv.glob(f"lib/python*/site-packages/{MALICIOUS_PTH}"))
    if bad:
        return LiteLLMEnv(None, "", f"refusing to run: {bad[0]} is the known malicious file of litellm 1.82.8")
    probe = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
                           capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return LiteLLMEnv(None, "", "litellm does not import: " + probe.stderr.strip().splitlines()[-1])
    return LiteLLMEnv(python, probe.stdout.strip())
