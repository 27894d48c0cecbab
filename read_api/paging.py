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
from fastapi import Request
from psycopg_pool import AsyncConnectionPool

from domain.errors import invalid


def encode(at: datetime, row_id: UUID) -> str:
    raw = orjson.dumps([at.isoformat(), str(row_id)])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(cursor: str) -> tuple[datetime, UUID]:
    """422 naming `cursor` for anything `encode` did not make."""
    try:
        at, row_id = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return datetime.fromisoformat(at), UUID(row_id)
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError):
        raise invalid("cursor", "not a cursor this endpoint returned") from None


def pool(request: Request) -> AsyncConnectionPool[Any]:
    """The read app's pool (opened by its lifespan)."""
    found: AsyncConnectionPool[Any] = request.app.state.pool
    return found
