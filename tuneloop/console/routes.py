"""The console's routes: sign-in, the pages, the actions. Thin: data from `pages`, changes through `actions`.

Every page answers a request without a valid session with a 303 to the sign-in page; every POST but sign-in
needs the session's CSRF token. Responses are never cached and may not be framed (clickjacking), and the
Content-Security-Policy allows this origin's own script and style only.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path as FilePath
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy import Engine

from core.policies import CanaryPolicy
from deploy.launcher import Launcher
from feedback.browse import InteractionQuery
from gateway.errors import GatewayError
from registry.errors import RegistryError
from tuneloop.console import actions, pages
from tuneloop.console.auth import SignedIn, signed_in
from tuneloop.console.session import COOKIE_NAME, SessionCodec

HERE = FilePath(__file__).parent
PAGE_SIZE = 50
MAX_PAGE = 100_000  # offsets stay within a 64-bit integer, whatever a URL says
MAX_ID = 2**63 - 1
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
}


@dataclass(frozen=True)
class ConsoleContext:
    """What the console runs with, built by the composition root."""

    codec: SessionCodec
    policy: CanaryPolicy
    launcher_for: Any  # Callable[[Engine], Launcher]: drains servers (books only; the worker stops them)
    bootstrap_admin: bool


templates = Jinja2Templates(directory=str(HERE / "templates"))
templates.env.filters["pct"] = lambda v: "-" if v is None else f"{v:.1%}"
templates.env.filters["ms"] = lambda v: "-" if v is None else f"{v:.0f} ms"
templates.env.filters["when"] = lambda v: "" if v is None else v.strftime("%Y-%m-%d %H:%M:%S")
router = APIRouter(prefix="/console", include_in_schema=False)


def _context(request: Request) -> tuple[ConsoleContext, Engine]:
    return request.app.state.console, request.app.state.gateway.engine


def _render(request: Request, name: str, status_code: int = 200, **values: Any) -> HTMLResponse:
    response = templates.TemplateResponse(request, name, values, status_code=status_code)
    response.headers.update(SECURITY_HEADERS)
    return response


def _to_signin(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    response = RedirectResponse(f"/console/signin?next={quote(target, safe='')}", status_code=303)
    response.headers.update(SECURITY_HEADERS)
    return response


async def _who(request: Request) -> SignedIn | None:
    context, engine = _context(request)
    return await signed_in(request, context.codec, engine, context.bootstrap_admin)


class SignInRequired(Exception):
    """Raised by a page without a valid session; answered with a 303 to the sign-in page (`mount_console`)."""


async def _required(request: Request) -> SignedIn:
    if (who := await _who(request)) is None:
        raise SignInRequired
    return who


Who = Annotated[SignedIn, Depends(_required)]


async def to_signin(request: Request, _exc: Exception) -> Response:
    return _to_signin(request)


def _not_found(request: Request, who: SignedIn, message: str) -> HTMLResponse:
    return _render(request, "message.html", status_code=404, who=who, title="Not found", message=message)


def _safe_next(target: str | None) -> str:
    """Only a path of this console (never another site) after sign-in."""
    if target and target.startswith("/console") and not target.startswith("//") and "\\" not in target:
        return target
    return "/console"


@router.get("/static/{name}")
async def static(name: str) -> Response:
    if name not in ("console.css", "console.js"):
        return Response(status_code=404)
    return FileResponse(HERE / "static" / name, headers={"Cache-Control": "max-age=300"})


@router.get("/signin")
async def signin_page(request: Request, next: str | None = None) -> Response:
    return _render(request, "signin.html", next=_safe_next(next), error=None, who=None)


@router.post("/signin")
async def signin(request: Request) -> Response:
    context, _engine = _context(request)
    form = await request.form()
    key, target = str(form.get("key", "")).strip(), _safe_next(str(form.get("next", "")))
    error = None
    status = 200
    try:
        principal = await request.app.state.gateway.keys.authenticate(f"Bearer {key}")
    except GatewayError as exc:  # 401 for a wrong key; 503 when the store cannot be read
        principal, status = None, exc.status
        error = "That key is not valid." if exc.status == 401 else f"Cannot check the key now: {exc.detail.message}"
    if principal is not None and not principal.is_admin:
        principal, status, error = None, 403, "That is an app key: the console needs an admin key."
    if principal is None:
        return _render(request, "signin.html", status_code=status, next=target, error=error, who=None)
    cookie, _session = context.codec.issue(principal.key_id)
    response = RedirectResponse(target, status_code=303)
    response.headers.update(SECURITY_HEADERS)
    response.set_cookie(COOKIE_NAME, cookie, max_age=context.codec.max_age_s, path="/console", httponly=True,
                        samesite="strict", secure=request.url.scheme == "https")
    return response


@router.post("/signout")
async def signout(request: Request) -> Response:
    who = await _who(request)
    form = await request.form()
    if who is not None and not who.session.csrf_matches(str(form.get("csrf_token", ""))):
        return _render(request, "message.html", status_code=403, who=who, title="Refused",
                       message="The form had no valid CSRF token; reload the page and try again.")
    response = RedirectResponse("/console/signin", status_code=303)
    response.headers.update(SECURITY_HEADERS)
    response.delete_cookie(COOKIE_NAME, path="/console", httponly=True, samesite="strict")
    return response


@router.get("")
async def overview(request: Request, who: Who, window: str = "1h", notice: str = "") -> Response:
    context, engine = _context(request)
    window = window if window in pages.WINDOWS else "1h"
    aliases = await asyncio.to_thread(pages.overview, engine, context.policy, window)
    return _render(request, "overview.html", who=who, aliases=aliases, window=window, windows=list(pages.WINDOWS),
                   notice=actions.NOTICES.get(notice), error=None)


@router.get("/cycles")
async def cycles(request: Request, who: Who, alias: str = "") -> Response:
    _c, engine = _context(request)
    runs = await asyncio.to_thread(pages.cycles, engine, alias or None)
    return _render(request, "cycles.html", who=who, runs=runs, alias=alias)


@router.get("/cycles/{run_id}")
async def cycle(request: Request, who: Who, run_id: Annotated[int, Path(ge=1, le=MAX_ID)]) -> Response:
    _c, engine = _context(request)
    run = await asyncio.to_thread(pages.cycle, engine, run_id)
    if run is None:
        return _not_found(request, who, f"No cycle run {run_id}.")
    durations = {step.id: (step.finished_at - step.started_at).total_seconds() if step.finished_at else None
                 for step in run.steps}
    return _render(request, "cycle.html", who=who, run=run, durations=durations)


@router.get("/versions")
async def versions(request: Request, who: Who, alias: str = "") -> Response:
    _c, engine = _context(request)
    page = await asyncio.to_thread(pages.versions, engine, alias or None)
    return _render(request, "versions.html", who=who, page=page, alias=alias)


@router.get("/versions/{version_id}")
async def version(request: Request, who: Who, version_id: str) -> Response:
    _c, engine = _context(request)
    try:
        found, audit = await asyncio.to_thread(pages.version, engine, version_id)
    except RegistryError as exc:
        return _not_found(request, who, str(exc))
    return _render(request, "version.html", who=who, version=found, audit=audit)


@router.get("/interactions")
async def interactions(request: Request, who: Who, alias: str = "", version: str = "", status: str = "",
                       rating: str = "", q: str = "", page: int = 1) -> Response:
    _c, engine = _context(request)
    page = min(max(page, 1), MAX_PAGE)
    query = InteractionQuery(alias=alias, version=version, status=status,
                             rating=rating if rating in ("up", "down", "none") else "",  # type: ignore[arg-type]
                             text=q[:200], limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE)
    found = await asyncio.to_thread(pages.interactions, engine, query)
    last_page = max((found.total + PAGE_SIZE - 1) // PAGE_SIZE, 1)
    return _render(request, "interactions.html", who=who, page=found, number=page, last_page=last_page,
                   filters={"alias": alias, "version": version, "status": status, "rating": rating, "q": q})


@router.get("/interactions/{interaction_id}")
async def interaction(request: Request, who: Who, interaction_id: str) -> Response:
    _c, engine = _context(request)
    found = await asyncio.to_thread(pages.interaction, engine, interaction_id)
    if found is None:
        return _not_found(request, who, f"No interaction {interaction_id}.")
    return _render(request, "interaction.html", who=who, item=found)


@router.post("/actions")
async def act(request: Request, who: Who) -> Response:
    context, engine = _context(request)
    form = {k: str(v) for k, v in (await request.form()).items()}
    if not who.session.csrf_matches(form.get("csrf_token")):
        return _render(request, "message.html", status_code=403, who=who, title="Refused",
                       message="The form had no valid CSRF token; reload the page and try again.")
    outcome = await asyncio.to_thread(actions.perform, engine, context.launcher_for(engine), form,
                                      f"console:{who.key_id}")
    if outcome.refused:
        aliases = await asyncio.to_thread(pages.overview, engine, context.policy, "1h")
        return _render(request, "overview.html", status_code=409, who=who, aliases=aliases, window="1h",
                       windows=list(pages.WINDOWS), notice=None, error=outcome.message)
    response = RedirectResponse(f"/console?notice={outcome.notice}", status_code=303)
    response.headers.update(SECURITY_HEADERS)
    return response


def session_lifetime(hours: float) -> int:
    return int(timedelta(hours=hours).total_seconds())


def launcher_factory(work_dir: FilePath) -> Any:
    """Launchers for the console's promotions and rollbacks: they only mark servers draining (the books);
    the worker's supervision stops them once their requests are done."""
    return lambda engine: Launcher(engine, work_dir)
