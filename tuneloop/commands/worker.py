"""`tuneloop worker`: the scheduler, the cycle and the vLLM servers, in a process of their own (never the gateway's).

Run any number of them on one store: one leads (runs every job), the others stand by and take over when it dies.
Training and merging run in child processes of the leader, with their own memory and a time limit.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

import typer
from rich.console import Console

from core.db import migrate
from core.settings import SettingsError, load_settings

console = Console()


def worker_command(
    stop_servers_on_exit: bool = typer.Option(
        False, "--stop-servers-on-exit",
        help="Stop this machine's vLLM servers when the worker stops (`tuneloop up` does; a production worker "
             "leaves them serving for the next leader)."),
    log_level: str = typer.Option("info", help="debug also logs each job's start and end."),
) -> None:
    """Run the scheduler and the improvement cycle: as the leader of the workers sharing the store, or on standby."""
    from deploy.scheduler import start_scheduler
    from deploy.worker import LeaderPolicy, Leadership
    from deploy.worker_metrics import WorkerMetrics, serve_worker_metrics
    from tuneloop.compose import job_context, tracing

    settings = load_settings()
    _configure_logging(log_level)
    settings.home.mkdir(parents=True, exist_ok=True)
    migrate(settings.resolved_database_url)  # on purpose, under the migration lock
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # SIGHUP: the terminal or ssh session closed
        signal.signal(signum, lambda *_: stop.set())
    # The curation step loads a tokenizer (transformers, torch) in a job thread. A first import of torch there
    # was seen to stall the whole process for many minutes (inside MKL's start-up, holding the GIL, on a worker
    # started while another worker's training ran); imported here, in the main thread, before any job runs,
    # it takes seconds.
    import torch  # noqa: F401
    metrics = WorkerMetrics()
    try:
        metrics_server = serve_worker_metrics(metrics, settings.host, settings.worker.metrics_port)
    except OSError as exc:
        raise SettingsError(f"TUNELOOP_WORKER__METRICS_PORT: cannot serve on {settings.host}:"
                            f"{settings.worker.metrics_port}: {exc.strerror or exc}") from None
    if settings.worker.metrics_port:
        console.print(f"worker metrics at http://{settings.host}:{settings.worker.metrics_port}/metrics")
    policy = LeaderPolicy(ttl_s=settings.worker.leader_ttl_s)
    leadership: Leadership
    traces = tracing(settings, "worker")  # a span per cycle and per step; None: off
    context = job_context(settings, leading=lambda: leadership.leading(), metrics=metrics,
                          tracer=traces.tracer if traces is not None else None)
    leadership = Leadership(
        context.engine, policy, lambda: start_scheduler(context, supervise_s=settings.worker.supervise_s),
        announce=lambda line: console.print(line, markup=False, highlight=False, soft_wrap=True))
    code = 0
    try:
        leadership.run(stop)
    except Exception:  # the leader loop itself failed: say so, stop what this worker runs, exit non-zero
        logging.getLogger("tuneloop.worker").exception("the worker's leader loop failed")
        code = 1
    try:
        if stop_servers_on_exit:
            for deployment in context.launcher.stop_all("tuneloop worker stopped"):
                console.print(f"stopped {deployment.served_name}")
        if metrics_server is not None:
            metrics_server.stop()
        context.engine.dispose()
    except Exception:
        logging.getLogger("tuneloop.worker").exception("stopping the worker's servers failed")
        code = 1
    if traces is not None:
        traces.shutdown()  # export the spans still batched: os._exit runs no atexit hook
    # A cycle still running in a job thread would keep the process alive until it ends (hours of training):
    # stop now instead. Its training or merge child dies with this process, and the next leader cleans the
    # cycle up as it does after a crash (deploy/supervise.py).
    logging.shutdown()
    sys.stdout.flush()
    os._exit(code)


def _configure_logging(level: str) -> None:
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise typer.BadParameter(f"--log-level {level!r}: one of debug, info, warning, error")
    logging.basicConfig(level=logging.WARNING, stream=sys.stdout,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("tuneloop").setLevel(numeric)
    logging.getLogger("apscheduler.scheduler").addFilter(_BusyJobFilter())


class _BusyJobFilter(logging.Filter):
    """A supervision round that is still starting a server makes APScheduler skip the next ones with a warning
    every few seconds: expected (max_instances=1 on purpose), so not worth a line each."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "maximum number of running instances reached" not in record.getMessage()
