"""The console's sign-in session: a signed cookie that names the admin key's id, never the key itself.

The cookie value is an itsdangerous timed signature over {key id, CSRF token}; its max age bounds the session
(the browser is told the same through Max-Age). Each request checks the key is still an admin key, so revoking
the key ends its sessions within the key cache's revocation bound. State-changing requests carry the session's
CSRF token in a form field; a cross-site form cannot read it, and SameSite=Strict keeps the cookie off
cross-site requests in the first place.
"""

from __future__ import annotations

import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

COOKIE_NAME = "tuneloop_console"
SALT = "tuneloop.console.session"


@dataclass(frozen=True)
class ConsoleSession:
    key_id: str
    csrf: str

    def csrf_matches(self, sent: str | None) -> bool:
        return bool(sent) and hmac.compare_digest(self.csrf.encode(), (sent or "").encode())


class SessionCodec:
    """Signs and reads session cookies with one secret (shared by every gateway process of a deployment)."""

    def __init__(self, secret: str, max_age_s: int) -> None:
        self._serializer = URLSafeTimedSerializer(secret, salt=SALT)
        self.max_age_s = max_age_s

    def issue(self, key_id: str) -> tuple[str, ConsoleSession]:
        session = ConsoleSession(key_id=key_id, csrf=secrets.token_urlsafe(32))
        return self._serializer.dumps({"k": session.key_id, "c": session.csrf}), session

    def read(self, cookie: str | None) -> ConsoleSession | None:
        """The session a cookie holds; None when absent, tampered with, signed with another secret or expired."""
        if not cookie:
            return None
        try:
            data = self._serializer.loads(cookie, max_age=self.max_age_s)
        except (SignatureExpired, BadSignature):
            return None
        if not isinstance(data, dict) or not isinstance(data.get("k"), str) or not isinstance(data.get("c"), str):
            return None
        return ConsoleSession(key_id=data["k"], csrf=data["c"])


def load_or_create_secret(path: Path) -> str:
    """The secret in `path`, made (random, mode 0600) on first use: gateway processes sharing a home share it.

    Several machines need the same value set explicitly (TUNELOOP_CONSOLE_SECRET)."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another gateway process made it first: use theirs
        return path.read_text().strip()
    with os.fdopen(fd, "w") as handle:
        handle.write(secret)
    return secret
