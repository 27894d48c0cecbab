"""API keys for service integrations: `X-API-Key: cmk_…` instead of a bearer token.

A key is 32 random bytes (base64url) behind a readable prefix; the table keeps only
HMAC-SHA256(pepper, key), the pepper derived from the HMAC root secret (a stolen table is
useless without it). A key belongs to one organization and carries a role set. Lookups are
cached for `CACHE_SECONDS`, so a revocation takes effect within that time in every process;
`last_used_at` is written at most once a minute per key.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
import uuid
from datetime import datetime
from functools import cached_property
from typing import Any
from uuid import UUID

from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from domain.values import utc_iso
from eventstore.keys import LazyKeyring
from service.settings import Settings

PREFIX = "cmk_"
CACHE_SECONDS = 10.0
_TOUCH_SECONDS = 60.0

CREATE = (
    "INSERT INTO api_keys (id, org_id, name, roles, key_hash, prefix, created_by)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id, name, roles, prefix, created_by,"
    " created_at, last_used_at, revoked_at"
)
LIST = (
    "SELECT id, name, roles, prefix, created_by, created_at, last_used_at, revoked_at"
    " FROM api_keys WHERE org_id = %s ORDER BY created_at, id"
)
REVOKE = (
    "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now())"
    " WHERE org_id = %s AND id = %s RETURNING id"
)
FIND = "SELECT id, org_id, roles FROM api_keys WHERE key_hash = %s AND revoked_at IS NULL"
TOUCH = "UPDATE api_keys SET last_used_at = now() WHERE id = %s"


def render(row: dict[str, Any]) -> dict[str, Any]:
    def iso(t: datetime | None) -> str | None:
        return utc_iso(t) if t else None

    return {
        "id": str(row["id"]),
        "name": row["name"],
        "roles": list(row["roles"]),
        "prefix": row["prefix"],
        "createdBy": row["created_by"],
        "createdAt": iso(row["created_at"]),
        "lastUsedAt": iso(row["last_used_at"]),
        "revokedAt": iso(row["revoked_at"]),
    }


class ApiKeyStore:
    def __init__(self, settings: Settings, keyring: LazyKeyring) -> None:
        assert settings.database_url
        self._keyring = keyring
        self._pool = ConnectionPool(
            settings.database_url,
            min_size=0,
            max_size=2,
            open=False,
            kwargs={"autocommit": True, "row_factory": dict_row},
            name="api-keys",
        )
        self._opened = False
        self._lock = threading.Lock()
        self._cache: dict[bytes, tuple[float, tuple[UUID, str, frozenset[str]] | None]] = {}
        self._touched: dict[UUID, float] = {}

    def _connection(self) -> Any:
        with self._lock:
            if not self._opened:
                self._pool.open(wait=False)
                self._opened = True
        return self._pool.connection(timeout=5.0)

    def close(self) -> None:
        if self._opened:
            self._pool.close()

    def _hash(self, key: str) -> bytes:
        return hmac.new(self._pepper, key.encode(), hashlib.sha256).digest()

    @cached_property
    def _pepper(self) -> bytes:
        return self._keyring.get().derive("api-key-pepper")

    def create(
        self, org_id: str, name: str, roles: list[str], created_by: str
    ) -> tuple[dict[str, Any], str]:
        """A new key (its row as the API shows it, and the key itself, shown once)."""
        key = PREFIX + secrets.token_urlsafe(32)
        with self._connection() as conn:
            row = conn.execute(
                CREATE,
                (uuid.uuid4(), org_id, name, roles, self._hash(key), key[:12], created_by),
            ).fetchone()
        return render(row), key

    def list(self, org_id: str) -> list[dict[str, Any]]:
        with self._connection() as conn:
            return [render(r) for r in conn.execute(LIST, (org_id,))]

    def revoke(self, org_id: str, key_id: UUID) -> bool:
        with self._connection() as conn:
            found = conn.execute(REVOKE, (org_id, key_id)).fetchone() is not None
        with self._lock:
            self._cache.clear()  # at once in this process; others within CACHE_SECONDS
        return found

    def identify(self, key: str) -> tuple[UUID, str, frozenset[str]] | None:
        """(key id, org, roles) of a live key, else None."""
        if not key.startswith(PREFIX) or len(key) > 100:
            return None
        digest = self._hash(key)
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(digest)
        if cached is not None and now - cached[0] < CACHE_SECONDS:
            found = cached[1]
        else:
            with self._connection() as conn:
                row = conn.execute(FIND, (digest,)).fetchone()
            found = (row["id"], row["org_id"], frozenset(row["roles"])) if row else None
            with self._lock:
                if len(self._cache) > 10_000:
                    self._cache.clear()
                self._cache[digest] = (now, found)
        if (
            found is not None
            and now - self._touched.get(found[0], -_TOUCH_SECONDS) >= _TOUCH_SECONDS
        ):
            self._touched[found[0]] = now
            with self._connection() as conn:
                conn.execute(TOUCH, (found[0],))
        return found
