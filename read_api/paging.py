"""The query side's connection pool, and the opaque keyset cursors of lists ordered by
(time, id). Unsealed: they hold no personal data (customer lists, whose sort keys can be
names, use read_api.customers.CursorCodec)."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Any
from uuid import UUID

import orjson
import psycopg
from fastapi import Request
from psycopg_pool import AsyncConnectionPool

from domain.errors import invalid
from projections.customers import use_raw_json
from service.settings import Settings


def encode(at: datetime, row_id: UUID) -> str:
    raw = orjson.dumps([at.isoformat(), str(row_id)])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def cut(rows: list[Any], limit: int, at: int, row_id: int) -> tuple[list[Any], str | None]:
    """The page of `rows` (fetched with one more than `limit`) and the next page's cursor,
    from the last row's columns `at` and `row_id`, when that extra row came back."""
    page = rows[:limit]
    more = len(rows) > limit
    return page, encode(page[-1][at], page[-1][row_id]) if more else None


def decode(cursor: str) -> tuple[datetime, UUID]:
    """422 naming `cursor` for anything `encode` did not make."""
    try:
        at, row_id = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return datetime.fromisoformat(at), UUID(row_id)
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError):
        raise invalid("cursor", "not a cursor this endpoint returned") from None


def new_pool(settings: Settings, name: str, url: str | None = None) -> AsyncConnectionPool[Any]:
    """A query-side pool (not opened yet) of autocommit connections to `url` (a replica's)
    or DATABASE_URL: `doc`s and json_agg come back as bytes, sent untouched."""
    url = url or settings.database_url
    assert url

    async def configure(conn: psycopg.AsyncConnection[Any]) -> None:
        use_raw_json(conn)

    # Autocommit: a read is one round trip, not BEGIN + query + the ROLLBACK of the pool's
    # return; what needs one snapshot (reports, exports' server-side cursors) opens a
    # transaction itself.
    return AsyncConnectionPool(
        url,
        min_size=min(2, settings.db_pool_size),
        max_size=settings.db_pool_size,
        open=False,
        timeout=5.0,
        kwargs={"autocommit": True},
        configure=configure,
        name=name,
    )


def pool(request: Request) -> AsyncConnectionPool[Any]:
    """The pool of whoever answers this read: the replica or primary its route's
    `consistent_with` chose (read_api.replicas); the primary for routes that declare no
    views (what they read is written outside the projectors, which tokens do not follow)."""
    target = getattr(request.state, "read_target", None)
    found: AsyncConnectionPool[Any] = request.app.state.pool if target is None else target.pool
    return found


def primary(request: Request) -> AsyncConnectionPool[Any]:
    """The primary's pool, for a route that replicas may answer reading a table written
    outside the projectors (a job's row), which consistency tokens do not follow: a poll
    right after the write must find it. (The route's `consistent_with` has still waited for
    its token and counted the read as its choice.)"""
    found: AsyncConnectionPool[Any] = request.app.state.pool
    return found
