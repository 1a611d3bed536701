"""Routing from the registry: an alias goes to its production version, or for `canary_weight` percent of its
traffic to its canary, each at the server the deployments table says runs it.

The table (alias pointers + active deployments, two small queries in a thread) is cached for
`routing_cache_s`, so every gateway process sees a pointer change within that time and the database is not
read per request. The arm:
- a request with a `user` (end user): a stable hash of (alias, canary version, user) into 100 buckets, the
  same in every gateway process, so an end user keeps their arm for the whole canary and raising the weight
  only moves production users onto the canary (never back): a user's experience changes at most once;
- a request without `user`: an independent draw per request against the weight (the router's `rng`), so the
  observed split matches the weight for any app. (Hashing the API key instead would put an app that sends no
  `user` entirely on one arm: 0 % or 100 % of its traffic on the canary.)
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from core.deployments_table import ACTIVE_STATUSES, Deployment
from gateway.errors import bad_gateway, store_unavailable
from gateway.routing import Route, Router
from registry.models import ModelAlias

log = logging.getLogger("tuneloop.gateway")


def canary_bucket(alias: str, canary_id: str, sticky_key: str) -> int:
    """0-99, the same for the same (alias, canary, user) in every gateway process (no per-process salt)."""
    digest = hashlib.sha256(f"{alias}\x00{canary_id}\x00{sticky_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 100


def in_canary(alias: str, canary_id: str, sticky_key: str, weight: int) -> bool:
    return canary_bucket(alias, canary_id, sticky_key) < weight


def choose_canary(alias: str, canary_id: str, user: str | None, weight: int, rng: random.Random) -> bool:
    """Sticky per end user when there is one; otherwise one draw from `rng` per request (0-99 < weight).
    An empty `user` is no user (else every such request would share one bucket)."""
    if user:
        return in_canary(alias, canary_id, user, weight)
    return rng.randrange(100) < weight


@dataclass(frozen=True)
class AliasRoutes:
    alias: str
    production: Route | None  # None: the production version has no running server
    canary: Route | None  # None: no canary, or its server is not running (its share goes to production)
    canary_weight: int
    production_id: str | None


RoutingTable = dict[str, AliasRoutes]


def load_routing_table(engine: Engine) -> RoutingTable:
    """Alias pointers joined with the servers that run the versions, in one short transaction."""
    with Session(engine) as session:
        aliases = list(session.exec(select(ModelAlias)))
        deployments = list(session.exec(
            select(Deployment).where(col(Deployment.status).in_([str(s) for s in ACTIVE_STATUSES]))
            .order_by(col(Deployment.id))
        ))
    servers: dict[str, list[Deployment]] = {}
    for deployment in deployments:  # a version may run on several replicas; the newest rows come last
        servers.setdefault(deployment.version_id, []).append(deployment)

    def route(alias: str, version_id: str | None, arm: str) -> Route | None:
        replicas = servers.get(version_id or "")
        if not replicas:
            return None
        return Route(alias=alias, version=version_id or "", served_name=replicas[-1].served_name,
                     base_urls=tuple(dict.fromkeys(d.base_url for d in replicas)), arm=arm)

    return {
        row.alias: AliasRoutes(row.alias, route(row.alias, row.production_id, "production"),
                               route(row.alias, row.canary_id, "canary") if row.canary_weight > 0 else None,
                               row.canary_weight, row.production_id)
        for row in aliases
    }


class RegistryRouter:
    """gateway.routing.Router over the registry and the deployments table."""

    def __init__(self, engine: Engine, cache_s: float, clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None) -> None:
        self.engine = engine
        self.cache_s = cache_s
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()  # the arm of requests without `user`
        self._table: RoutingTable | None = None
        self._loaded_at = float("-inf")
        self._lock = asyncio.Lock()

    async def table(self) -> RoutingTable:
        if self._table is not None and self._clock() - self._loaded_at < self.cache_s:
            return self._table
        async with self._lock:  # one reload at a time; the others wait for it instead of stampeding the store
            if self._table is not None and self._clock() - self._loaded_at < self.cache_s:
                return self._table
            try:
                self._table = await asyncio.to_thread(load_routing_table, self.engine)
            except Exception as exc:  # the store is down: a stale table beats refusing every request
                if self._table is None:
                    raise store_unavailable() from None
                log.warning("routing table reload failed, keeping the previous one: %s", exc)
            self._loaded_at = self._clock()
            return self._table

    async def resolve(self, model: str, user: str | None) -> Route | None:
        entry = (await self.table()).get(model)
        if entry is None:
            return None
        if entry.canary is not None and choose_canary(model, entry.canary.version, user, entry.canary_weight,
                                                      self._rng):
            return entry.canary
        if entry.production is None:
            raise bad_gateway(f"The production version of '{model}' ({entry.production_id}) has no running server.",
                              code="upstream_unavailable")
        return entry.production

    async def model_names(self) -> list[str]:
        try:
            table = await self.table()
        except Exception:
            return []
        return sorted(name for name, entry in table.items() if entry.production is not None)


class CompositeRouter:
    """Tries routers in order: static routes from the settings first, then the registry."""

    def __init__(self, routers: Sequence[Router]) -> None:
        self.routers = list(routers)

    async def resolve(self, model: str, user: str | None) -> Route | None:
        for router in self.routers:
            route = await router.resolve(model, user)
            if route is not None:
                return route
        return None

    async def model_names(self) -> list[str]:
        names: set[str] = set()
        for router in self.routers:
            names.update(await router.model_names())
        return sorted(names)
