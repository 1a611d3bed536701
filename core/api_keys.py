"""API keys: only SHA-256 hashes are stored; a key is shown once, when it is made."""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime
from enum import Enum, StrEnum

from sqlalchemy import Engine, String
from sqlmodel import Field, Session, SQLModel, select

from core.clock import UTCDateTime, utcnow

KEY_PREFIX = "tl-"


class Scope(StrEnum):
    app = "app"
    admin = "admin"


class ApiKeyBase(SQLModel):
    name: str = ""
    scope: Scope = Field(default=Scope.app, sa_type=String(16))
    rpm: int | None = Field(default=None, ge=1, description="Requests per minute; None: unlimited.")
    tpm: int | None = Field(default=None, ge=1, description="Tokens per minute (prompt + completion); None: unlimited.")


class ApiKey(ApiKeyBase, table=True):
    __tablename__ = "api_keys"

    id: str = Field(primary_key=True)
    key_hash: str = Field(unique=True, index=True)
    created_at: datetime = Field(sa_type=UTCDateTime, default_factory=utcnow)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class ApiKeyPublic(ApiKeyBase):
    id: str
    created_at: datetime
    revoked_at: datetime | None


def hash_key(plain: str) -> str:
    return hashlib.sha256(plain.encode()).hexdigest()


class _Keep(Enum):
    KEEP = "keep"


KEEP = _Keep.KEEP  # set_limits: leave this limit as it is


def check_limit(name: str, value: int | None) -> int | None:
    """A per-minute limit is a whole number >= 1, or None for unlimited."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be a whole number >= 1, or None for unlimited; got {value!r}")
    return value


def create_key(
    engine: Engine, scope: Scope, name: str = "", rpm: int | None = None, tpm: int | None = None
) -> tuple[ApiKeyPublic, str]:
    """Store a new key and return it with its plain text, which is never stored. rpm / tpm: requests and tokens
    per minute (None: unlimited)."""
    rpm, tpm = check_limit("rpm", rpm), check_limit("tpm", tpm)
    plain = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(id="key_" + secrets.token_hex(6), key_hash=hash_key(plain), scope=scope, name=name,
                 rpm=rpm, tpm=tpm)
    with Session(engine) as session:
        session.add(row)
        session.commit()
        session.refresh(row)
        return ApiKeyPublic.model_validate(row), plain


def list_keys(engine: Engine) -> list[ApiKeyPublic]:
    with Session(engine) as session:
        return [ApiKeyPublic.model_validate(k) for k in session.exec(select(ApiKey).order_by(ApiKey.created_at))]


def revoke_key(engine: Engine, key_id: str) -> bool:
    with Session(engine) as session:
        row = session.get(ApiKey, key_id)
        if row is None or row.revoked_at is not None:
            return False
        row.revoked_at = utcnow()
        session.add(row)
        session.commit()
        return True


def set_limits(
    engine: Engine, key_id: str, rpm: int | _Keep | None = KEEP, tpm: int | _Keep | None = KEEP
) -> ApiKeyPublic | None:
    """Change a key's limits (None: unlimited, KEEP: as it is); None when there is no active key by that id.
    Gateways see the change when their key cache refreshes (gateway.auth: within 2 s)."""
    changes = {name: check_limit(name, value) for name, value in (("rpm", rpm), ("tpm", tpm))
               if not isinstance(value, _Keep)}
    with Session(engine) as session:
        row = session.get(ApiKey, key_id)
        if row is None or row.revoked_at is not None:
            return None
        for name, value in changes.items():
            setattr(row, name, value)
        session.add(row)
        session.commit()
        session.refresh(row)
        return ApiKeyPublic.model_validate(row)
