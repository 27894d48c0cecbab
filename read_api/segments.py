"""GET /api/v1/customers/segments[/{id}]: SQL over segments_view."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

import orjson
from fastapi import APIRouter, Query, Request, Response
from psycopg_pool import AsyncConnectionPool

from domain.errors import Code, DomainError, invalid
from domain.segment import SegmentPublic, SegmentStatus, representation
from domain.values import utc_iso
from projections.segments import VIEW
from read_api.consistency import READ_PROBLEMS, consistent_with
from service.auth import CurrentPrincipal, Permission
from service.problems import problem_responses

_COLUMNS = (
    "id, status, created_by, created_at, updated_at, version, definition,"
    " customer_count, last_calculated"
)
GET = f"SELECT {_COLUMNS} FROM segments_view WHERE org_id = %(org)s AND id = %(id)s"  # noqa: S608
LIST = (
    f"SELECT {_COLUMNS} FROM segments_view WHERE org_id = %(org)s"  # noqa: S608
    " AND (%(status)s::text IS NULL OR status = %(status)s)"
    " AND (%(after_at)s::timestamptz IS NULL OR (created_at, id) > (%(after_at)s, %(after_id)s))"
    " ORDER BY created_at, id LIMIT %(fetch)s"
)

router = APIRouter(
    prefix="/api/v1/customers/segments",
    tags=["segments"],
    dependencies=[consistent_with(VIEW)],
)


def _render(row: tuple[Any, ...]) -> dict[str, Any]:
    sid, status, created_by, created_at, updated_at, version, definition, count, calc = row
    return representation(
        segment_id=str(sid),
        definition=definition,
        status=status,
        created_by=created_by,
        created_at=utc_iso(created_at),
        updated_at=utc_iso(updated_at),
        version=version,
        customer_count=count,
        last_calculated=utc_iso(calc) if calc else None,
    )


def _cursor(created_at: datetime, sid: UUID) -> str:
    raw = orjson.dumps([created_at.isoformat(), str(sid)])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, sid = orjson.loads(raw)
        return datetime.fromisoformat(at), UUID(sid)
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError):
        raise invalid("cursor", "not a cursor this endpoint returned") from None


def _pool(request: Request) -> AsyncConnectionPool[Any]:
    pool: AsyncConnectionPool[Any] = request.app.state.pool
    return pool


@router.get(
    "",
    response_class=Response,
    responses={
        200: {"description": "{items: [segment...], nextCursor, limit}"},
        **READ_PROBLEMS,
    },
)
async def list_segments(
    request: Request,
    principal: CurrentPrincipal,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    status: SegmentStatus | None = None,
) -> Response:
    """Segments of the caller's organization, oldest first (keyset paginated)."""
    principal.require(Permission.READ)
    after_at, after_id = _decode_cursor(cursor) if cursor else (None, None)
    params = {
        "org": principal.org,
        "status": status.value if status else None,
        "after_at": after_at,
        "after_id": after_id,
        "fetch": limit + 1,
    }
    async with _pool(request).connection() as conn:
        rows = await (await conn.execute(LIST, params)).fetchall()
    page = rows[:limit]
    next_cursor = _cursor(page[-1][3], page[-1][0]) if len(rows) > limit else None
    body = {"items": [_render(r) for r in page], "nextCursor": next_cursor, "limit": limit}
    return Response(orjson.dumps(body), media_type="application/json")


@router.get(
    "/{segment_id}",
    response_class=Response,
    responses={
        200: {"model": SegmentPublic, "description": "The segment; ETag is its version."},
        **problem_responses({404: "No such segment in the caller's organization"}),
        **READ_PROBLEMS,
    },
)
async def get_segment(request: Request, segment_id: UUID, principal: CurrentPrincipal) -> Response:
    principal.require(Permission.READ)
    async with _pool(request).connection() as conn:
        row = await (await conn.execute(GET, {"org": principal.org, "id": segment_id})).fetchone()
    if row is None:
        raise DomainError(Code.NOT_FOUND, f"segment {segment_id} not found")
    return Response(
        orjson.dumps(_render(row)),
        media_type="application/json",
        headers={"ETag": f'"{row[5]}"'},
    )
