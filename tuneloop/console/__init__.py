"""The ops console: server-rendered pages at /console on the gateway, for admin keys.

`mount_console(app, settings)` is called by the composition root on the gateway's app; the console reads the
gateway's engine and key cache from the app's state once its lifespan has started.
"""

from __future__ import annotations

from fastapi import FastAPI

from core.settings import Settings
from tuneloop.console.routes import (
    ConsoleContext,
    SignInRequired,
    launcher_factory,
    router,
    session_lifetime,
    to_signin,
)
from tuneloop.console.session import SessionCodec, load_or_create_secret


def mount_console(app: FastAPI, settings: Settings) -> FastAPI:
    if not settings.console.enabled:
        return app
    secret = settings.console.secret.get_secret_value() or load_or_create_secret(settings.home / "console-secret")
    app.state.console = ConsoleContext(
        codec=SessionCodec(secret, session_lifetime(settings.console.session_hours)),
        policy=settings.cycle.canary,
        launcher_for=launcher_factory(settings.home),
        bootstrap_admin=bool(settings.admin_key),
    )
    app.add_exception_handler(SignInRequired, to_signin)
    app.include_router(router)
    return app
