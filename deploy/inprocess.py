"""Run an ASGI app under real uvicorn in a background thread (the demo's gateway, and the tests' servers)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import uvicorn


@contextlib.contextmanager
def serve_in_thread(app, host: str = "127.0.0.1", port: int = 0, start_timeout_s: float = 20.0) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """Serve `app` (lifespan included) and yield its base URL; stops the server on exit."""
    if port == 0:
        from deploy.vllm import free_port

        port = free_port(host)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            server.should_exit = True
            raise RuntimeError(f"server on {host}:{port} did not start")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
