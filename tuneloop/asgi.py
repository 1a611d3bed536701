"""The gateway as an ASGI factory for `uvicorn --factory` with several worker processes: each worker reads the
settings and builds its app here, at the composition root."""

from __future__ import annotations

from fastapi import FastAPI

from core.settings import load_settings
from gateway.app import create_app


def gateway_app() -> FastAPI:
    return create_app(load_settings())
