"""API keys: only SHA-256 hashes are stored; a key is shown once, when it is made."""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime
from enum import StrEnum

from sqlalchemy import Engine, String
from sqlmodel import Field, Session, SQLModel, select

from feedback.models import utcnow

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
    created_at: datetime = Field(default_factory=utcnow)
    revoked_at: datetime | None = None


class ApiKeyPublic(ApiKeyBase):
    id: str
    created_at: datetime
    revoked_at: datetime | None


def hash_key(plain: str) -> str:
    return hashlib.sha256(plain.encode()).hexdigest()


def create_key(engine: Engine, scope: Scope, name: str = "") -> tuple[ApiKeyPublic, str]:
    """Store a new key and return it with its plain text, which is never stored."""
    plain = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(id="key_" + secrets.token_hex(6), key_hash=hash_key(plain), scope=scope, name=name)
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
