"""Shared setup for gateway tests: a gateway under uvicorn with keys, in front of a given upstream."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
from sqlalchemy import Engine, func
from sqlmodel import Session, select

from core.api_keys import Scope, create_key
from core.db import make_engine
from core.settings import Settings
from deploy.vllm import free_port
from feedback.models import Interaction, InteractionStatus
from tests.servers import serve
from tuneloop.compose import gateway_app


@dataclass
class RunningGateway:
    url: str
    engine: Engine
    app_key: str
    other_key: str
    admin_key: str
    app_key_id: str

    def client(self, key: str | None = None, **kwargs) -> openai.OpenAI:  # type: ignore[no-untyped-def]
        kwargs.setdefault("max_retries", 0)
        kwargs.setdefault("timeout", 30)
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key or self.app_key, **kwargs)

    def async_client(self, key: str | None = None, **kwargs) -> openai.AsyncOpenAI:  # type: ignore[no-untyped-def]
        kwargs.setdefault("max_retries", 0)
        return openai.AsyncOpenAI(base_url=self.url + "/v1", api_key=key or self.app_key, **kwargs)

    def rows(self) -> list[Interaction]:
        with Session(self.engine) as session:
            return list(session.exec(select(Interaction).order_by(Interaction.created_at)))

    def count(self) -> int:
        with Session(self.engine) as session:
            return session.exec(select(func.count()).select_from(Interaction)).one()

    def wait_for_row(self, response_id: str, timeout_s: float = 10.0) -> Interaction:
        """A streamed row is final once the stream ended (it is `in_progress` from its first byte until then; a
        client that left mid-stream does not wait for it)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for row in self.rows():
                if response_id in (row.response_id, row.id) and row.status != InteractionStatus.in_progress:
                    return row
            time.sleep(0.05)
        raise AssertionError(f"no interaction row for {response_id}")

    def wait_for_rows(self, n: int, timeout_s: float = 10.0) -> list[Interaction]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            rows = self.rows()
            if len(rows) >= n and all(row.status != InteractionStatus.in_progress for row in rows):
                return rows
            time.sleep(0.05)
        raise AssertionError(f"expected {n} interaction rows, found {len(self.rows())}")


@contextlib.contextmanager
def running_gateway(db_url: str, home: Path, upstreams: dict[str, list[str]], **overrides) -> Iterator[RunningGateway]:  # type: ignore[no-untyped-def]
    engine = make_engine(db_url)
    app_public, app_key = create_key(engine, Scope.app, "test-app")
    _other, other_key = create_key(engine, Scope.app, "other-app")
    _admin, admin_key = create_key(engine, Scope.admin, "test-admin")
    settings = Settings(home=home, database_url=db_url, upstreams=upstreams, **overrides)
    with serve(gateway_app(settings)) as url:  # as every entry point builds it
        yield RunningGateway(url, engine, app_key, other_key, admin_key, app_public.id)
    engine.dispose()


def closed_port_url() -> str:
    return f"http://127.0.0.1:{free_port()}"
