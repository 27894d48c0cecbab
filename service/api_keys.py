"""API keys for service integrations: `X-API-Key: cmk_…` instead of a bearer token.

A key is 32 random bytes (base64url) behind a readable prefix; the table keeps only
HMAC-SHA256(pepper, key), the pepper derived from the HMAC root secret (a stolen table is
useless without it). A key belongs to one organization and carries a role set; one made with
another key records it as its parent, and is accepted only while its whole chain is live
(revoking a key revokes its descendants too). Lookups are cached for `CACHE_SECONDS`: a
revocation is refused at once by every store of the revoking process (the gateway has one per
app) and within that time by other processes. `last_used_at` is written at most once a minute
per key.
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

from domain.errors import Code, DomainError
from domain.values import utc_iso
from eventstore.keys import LazyKeyring
from service.metrics import API_KEY_LOOKUPS
from service.settings import Settings

PREFIX = "cmk_"
CACHE_SECONDS = 10.0
_TOUCH_SECONDS = 60.0

# Serialises the creations of one organization, so the cap on live keys is exact.
LOCK_ORG = "SELECT pg_advisory_xact_lock(hashtextextended('api-keys:' || %s, 0))"
LIVE = "SELECT count(*) AS n FROM api_keys WHERE org_id = %s AND revoked_at IS NULL"
CREATE = (
    "INSERT INTO api_keys (id, org_id, name, roles, key_hash, prefix, created_by, parent_id)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id, name, roles, prefix, created_by,"
    " created_at, last_used_at, revoked_at"
)
LIST = (
    "SELECT id, name, roles, prefix, created_by, created_at, last_used_at, revoked_at"
    " FROM api_keys WHERE org_id = %s ORDER BY created_at, id"
)
# The key and every key made with it, at any depth.
REVOKE = (
    "WITH RECURSIVE doomed AS ("
    " SELECT id FROM api_keys WHERE org_id = %s AND id = %s"
    " UNION ALL SELECT k.id FROM api_keys k JOIN doomed d ON k.parent_id = d.id)"
    " UPDATE api_keys SET revoked_at = coalesce(revoked_at, now())"
    " WHERE id IN (SELECT id FROM doomed) RETURNING id"
)
# The key, if neither it nor any key up its chain is revoked: a child made while its parent
# was being revoked (and so missed by REVOKE) is refused all the same.
FIND = (
    "WITH RECURSIVE chain AS ("
    " SELECT id, org_id, roles, parent_id, revoked_at, 0 AS depth"
    " FROM api_keys WHERE key_hash = %s"
    " UNION ALL SELECT p.id, p.org_id, p.roles, p.parent_id, p.revoked_at, c.depth + 1"
    " FROM api_keys p JOIN chain c ON p.id = c.parent_id)"
    " SELECT id, org_id, roles FROM chain WHERE depth = 0"
    " AND NOT EXISTS (SELECT 1 FROM chain WHERE revoked_at IS NOT NULL)"
)
TOUCH = "UPDATE api_keys SET last_used_at = now() WHERE id = %s"


class _Revocations:
    """How many revocations this process has made. Every store of the process compares its
    cached lookups with it, so none serves a key revoked through another store."""

    def __init__(self) -> None:
        self._count = 0
        self._lock = threading.Lock()

    @property
    def count(self) -> int:
        return self._count

    def add(self) -> None:
        with self._lock:
            self._count += 1


_REVOCATIONS = _Revocations()

Found = tuple[UUID, str, frozenset[str]]


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
        self._per_org = settings.api_keys_per_organization
        # digest → (when looked up, revocations of the process then, what was found)
        self._cache: dict[bytes, tuple[float, int, Found | None]] = {}
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
        self,
        org_id: str,
        name: str,
        roles: list[str],
        created_by: str,
        parent: UUID | None = None,
    ) -> tuple[dict[str, Any], str]:
        """A new key (its row as the API shows it, and the key itself, shown once); 409 when
        the organization already has its cap of live keys. `parent`: the key that asked."""
        key = PREFIX + secrets.token_urlsafe(32)
        with self._connection() as conn, conn.transaction():
            conn.execute(LOCK_ORG, (org_id,))
            if conn.execute(LIVE, (org_id,)).fetchone()["n"] >= self._per_org:
                raise DomainError(
                    Code.CONFLICT,
                    f"the organization has {self._per_org} live API keys, the most allowed"
                    " (CUSTOMERS_API_KEYS_PER_ORGANIZATION); revoke one first",
                )
            row = conn.execute(
                CREATE,
                (uuid.uuid4(), org_id, name, roles, self._hash(key), key[:12], created_by, parent),
            ).fetchone()
        return render(row), key

    def list(self, org_id: str) -> list[dict[str, Any]]:
        with self._connection() as conn:
            return [render(r) for r in conn.execute(LIST, (org_id,))]

    def revoke(self, org_id: str, key_id: UUID) -> bool:
        """Revoke the key and the keys made with it; False when the organization has no such
        key."""
        with self._connection() as conn:
            found = conn.execute(REVOKE, (org_id, key_id)).fetchone() is not None
        _REVOCATIONS.add()
        return found

    def identify(self, key: str) -> Found | None:
        """(key id, org, roles) of a live key, else None."""
        if not key.startswith(PREFIX) or len(key) > 100:
            return None
        digest = self._hash(key)
        now, revocations = time.monotonic(), _REVOCATIONS.count
        with self._lock:
            cached = self._cache.get(digest)
        if cached is not None and cached[1] == revocations and now - cached[0] < CACHE_SECONDS:
            found = cached[2]
        else:
            with self._connection() as conn:
                row = conn.execute(FIND, (digest,)).fetchone()
            found = (row["id"], row["org_id"], frozenset(row["roles"])) if row else None
            API_KEY_LOOKUPS.labels("found" if found else "unknown").inc()
            with self._lock:
                if len(self._cache) > 10_000:
                    self._cache.clear()
                self._cache[digest] = (now, revocations, found)
        if (
            found is not None
            and now - self._touched.get(found[0], -_TOUCH_SECONDS) >= _TOUCH_SECONDS
        ):
            self._touched[found[0]] = now
            with self._connection() as conn:
                conn.execute(TOUCH, (found[0],))
        return found
