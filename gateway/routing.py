"""Which upstream serves a request: a model alias resolves to a version and that version's replicas.

`StaticRouter` reads `settings.upstreams` (model name -> base URLs). The registry-backed router of the canary
rollout implements the same `Router` protocol, so the routes never know where the table came from.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Route:
    alias: str  # what the client asked for
    version: str  # the model version that serves it (x-tuneloop-version)
    served_name: str  # the upstream's model name (vLLM --served-model-name)
    base_urls: tuple[str, ...]
    arm: str = "production"  # production or canary


class Router(Protocol):
    async def resolve(self, model: str, user: str | None) -> Route | None:
        """The route for `model`; `user` is the request's end user (its `user` field), None when it sent none."""
        ...

    async def model_names(self) -> list[str]: ...


@dataclass
class StaticRouter:
    upstreams: dict[str, list[str]]
    _routes: dict[str, Route] = field(init=False)

    def __post_init__(self) -> None:
        self._routes = {
            name: Route(alias=name, version=name, served_name=name, base_urls=tuple(urls))
            for name, urls in self.upstreams.items()
        }

    async def resolve(self, model: str, user: str | None) -> Route | None:
        return self._routes.get(model)

    async def model_names(self) -> list[str]:
        return sorted(self._routes)


@dataclass
class ReplicaPicker:
    """Round-robin over a route's replicas; `order` yields each replica once, starting at the next one."""

    _counter: itertools.count = field(default_factory=itertools.count)

    def order(self, base_urls: tuple[str, ...]) -> list[str]:
        start = next(self._counter) % len(base_urls)
        return list(base_urls[start:] + base_urls[:start])
