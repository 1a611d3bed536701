"""Run ASGI apps under real uvicorn on loopback, in a background thread, for tests."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import httpx
import uvicorn

from deploy.vllm import free_port


@contextlib.contextmanager
def serve(app, port: int | None = None, health_path: str | None = None) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """Serve `app` on 127.0.0.1 and yield its base URL; the lifespan runs as in production."""
    port = port or free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.02)
    base = f"http://127.0.0.1:{port}"
    if health_path:
        httpx.get(base + health_path, timeout=5)
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=20)
