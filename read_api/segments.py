"""Reading segments: definitions (segments_view), members and their history
(segment_membership), explanations, previews, calculation jobs."""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

import orjson
from fastapi import APIRouter, Query, Request, Response
from psycopg import AsyncConnection, sql
from psycopg_pool import AsyncConnectionPool
from pydantic import Field, model_validator
from pydantic.alias_generators import to_camel

from domain.access import Permission, Principal
from domain.criteria import criteria_reads, explain, measured, operand
from domain.errors import Code, DomainError, invalid
from domain.masking import MASK, hidden
from domain.segment import (
    SegmentDefinition,
    SegmentKind,
    SegmentName,
    SegmentPublic,
    SegmentStatus,
    effective_criteria,
    representation,
)
from domain.segment_facts import FACT_SOURCES
from domain.values import Instant, utc_iso
from eventstore.jobs import GET_JOB, render_job
from projections.membership import VIEW as MEMBERSHIP
from projections.segment_sql import LOAD_FACTS, compile_where, facts_from_row
from projections.segments import VIEW
from read_api import paging
from read_api.consistency import READ_PROBLEMS, consistent_with, not_found, once_settled
from read_api.customers import MASKED_FIELD_PROBLEMS, shown
from service.auth import CanRead
from service.problems import problem_responses

# The shown status: CALCULATING while a job is open, ERROR when the last finished job failed,
# else the definition's ACTIVE / INACTIVE.
_SELECT = """
SELECT s.id,
       CASE WHEN EXISTS (SELECT 1 FROM segment_jobs j
                         WHERE j.segment_id = s.id AND j.state IN ('QUEUED', 'RUNNING'))
            THEN 'CALCULATING'
            WHEN (SELECT j.state FROM segment_jobs j
                  WHERE j.segment_id = s.id AND j.state IN ('SUCCEEDED', 'FAILED')
                  ORDER BY j.created_at DESC LIMIT 1) = 'FAILED'
            THEN 'ERROR'
            ELSE s.status END AS status,
       s.created_by, s.created_at, s.updated_at, s.version, s.definition,
       coalesce(st.customer_count, 0), st.last_calculated
FROM segments_view s LEFT JOIN segment_stats st ON st.segment_id = s.id
WHERE s.org_id = %(org)s
"""
GET = _SELECT + " AND s.id = %(id)s"
LIST = (
    f"SELECT * FROM ({_SELECT}) x"  # noqa: S608
    " WHERE (%(status)s::text IS NULL OR status = %(status)s)"
    " AND (%(after_at)s::timestamptz IS NULL OR (created_at, id) > (%(after_at)s, %(after_id)s))"
    " ORDER BY created_at, id LIMIT %(fetch)s"
)
DEFINITION = "SELECT kind, definition FROM segments_view WHERE org_id = %s AND id = %s"
MEMBERS_NOW = """
SELECT m.customer_id, m.joined_at, m.join_reason, d.doc
FROM segment_membership m JOIN customers_docs d ON d.id = m.customer_id
WHERE m.segment_id = %(id)s AND m.left_at IS NULL
  AND (%(after)s::uuid IS NULL OR m.customer_id > %(after)s)
ORDER BY m.customer_id LIMIT %(fetch)s
"""
MEMBERS_AS_OF = """
SELECT m.customer_id, m.joined_at, m.join_reason, d.doc
FROM segment_membership m JOIN customers_docs d ON d.id = m.customer_id
WHERE m.segment_id = %(id)s AND m.joined_at <= %(at)s AND (m.left_at IS NULL OR m.left_at > %(at)s)
  AND (%(after)s::uuid IS NULL OR m.customer_id > %(after)s)
ORDER BY m.customer_id LIMIT %(fetch)s
"""
IS_MEMBER = (
    "SELECT joined_at FROM segment_membership"
    " WHERE segment_id = %s AND customer_id = %s AND left_at IS NULL"
)
PREVIEW_SAMPLE = (
    "SELECT d.doc FROM customer_facts f JOIN customers_docs d ON d.id = f.id"
    " WHERE f.org_id = %s AND {where} ORDER BY f.id LIMIT %s"
)
PREVIEW_COUNT = "SELECT count(*) FROM customer_facts f WHERE f.org_id = %s AND {where}"

router = APIRouter(
    prefix="/api/v1/customers/segments",
    tags=["segments"],
    dependencies=[consistent_with(VIEW, MEMBERSHIP)],
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
    principal: CanRead,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    status: SegmentStatus | None = None,
) -> Response:
    """Segments of the caller's organization, oldest first (keyset paginated)."""
    page = await segment_page(
        paging.pool(request), principal, limit=limit, cursor=cursor, status=status
    )
    return Response(orjson.dumps(page), media_type="application/json")


async def segment_page(
    pool: AsyncConnectionPool[Any],
    principal: Principal,
    *,
    limit: int,
    cursor: str | None,
    status: SegmentStatus | None,
) -> dict[str, Any]:
    """`{"items", "nextCursor", "limit"}` of the validated listing parameters."""
    after_at, after_id = paging.decode(cursor) if cursor else (None, None)
    params = {
        "org": principal.org,
        "status": status.value if status else None,
        "after_at": after_at,
        "after_id": after_id,
        "fetch": limit + 1,
    }
    async with pool.connection() as conn:
        rows = await (await conn.execute(LIST, params)).fetchall()
    page, next_cursor = paging.cut(rows, limit, at=3, row_id=0)
    return {"items": [_render(r) for r in page], "nextCursor": next_cursor, "limit": limit}


@router.get(
    "/{segment_id}",
    response_class=Response,
    responses={
        200: {"model": SegmentPublic, "description": "The segment; ETag is its version."},
        **problem_responses({404: "No such segment in the caller's organization"}),
        **READ_PROBLEMS,
    },
)
async def get_segment(request: Request, segment_id: UUID, principal: CanRead) -> Response:
    pool = paging.pool(request)
    found = await once_settled(
        request, VIEW, segment_id, lambda: segment(pool, principal, segment_id)
    )
    return Response(
        orjson.dumps(found),
        media_type="application/json",
        headers={"ETag": f'"{found["version"]}"'},
    )


async def segment(
    pool: AsyncConnectionPool[Any], principal: Principal, segment_id: UUID
) -> dict[str, Any]:
    async with pool.connection() as conn:
        row = await (await conn.execute(GET, {"org": principal.org, "id": segment_id})).fetchone()
    if row is None:
        raise not_found("segment", segment_id)
    return _render(row)


def _member_cursor(customer_id: UUID) -> str:
    return base64.urlsafe_b64encode(customer_id.bytes).decode().rstrip("=")


def _decode_member_cursor(cursor: str) -> UUID:
    try:
        return UUID(bytes=base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, binascii.Error):
        raise invalid("cursor", "not a cursor this endpoint returned") from None


async def _definition(
    conn: AsyncConnection[Any], org: str, segment_id: UUID
) -> tuple[str, dict[str, Any]]:
    row = await (await conn.execute(DEFINITION, (org, segment_id))).fetchone()
    if row is None:
        raise DomainError(Code.NOT_FOUND, f"segment {segment_id} not found")
    return row[0], row[1]


@router.get(
    "/{segment_id}/customers",
    response_class=Response,
    responses={
        200: {
            "description": "{items: [{customerId, joinedAt, joinReason, customer}], nextCursor,"
            " limit, asOf}; members now, or as of `asOf`"
        },
        **problem_responses({404: "No such segment in the caller's organization"}),
        **READ_PROBLEMS,
    },
)
async def segment_customers(
    *,
    request: Request,
    segment_id: UUID,
    principal: CanRead,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=100)] = None,
    as_of: Annotated[
        Instant | None,
        Query(alias="asOf", description="RFC 3339: the members at that moment (history)"),
    ] = None,
) -> Response:
    """The segment's members in customer id order (keyset paginated), each with when and why
    they joined and the customer's current profile (erased customers are not shown)."""
    page = await member_page(
        paging.pool(request), principal, segment_id, limit=limit, cursor=cursor, as_of=as_of
    )
    return Response(page, media_type="application/json")


async def member_page(
    pool: AsyncConnectionPool[Any],
    principal: Principal,
    segment_id: UUID,
    *,
    limit: int,
    cursor: str | None,
    as_of: datetime | None,
) -> bytes:
    """`{"items", "nextCursor", "limit", "asOf"}` of the validated parameters, as JSON."""
    params = {
        "id": segment_id,
        "after": _decode_member_cursor(cursor) if cursor else None,
        "at": as_of,
        "fetch": limit + 1,
    }
    async with pool.connection() as conn:
        await _definition(conn, principal.org, segment_id)
        query = MEMBERS_NOW if as_of is None else MEMBERS_AS_OF
        rows = await (await conn.execute(query, params)).fetchall()
    page = rows[:limit]
    items = b",".join(
        b'{"customerId":"%s","joinedAt":"%s","joinReason":%s,"customer":%s}'
        % (str(cid).encode(), utc_iso(at).encode(), orjson.dumps(reason), shown(doc, principal))
        for cid, at, reason, doc in page
    )
    next_cursor = _member_cursor(page[-1][0]) if len(rows) > limit else None
    return b'{"items":[%s],"nextCursor":%s,"limit":%d,"asOf":%s}' % (
        items,
        orjson.dumps(next_cursor),
        limit,
        orjson.dumps(utc_iso(as_of) if as_of else None),
    )


@router.get(
    "/{segment_id}/explain/{customer_id}",
    responses={
        200: {"description": "Criterion by criterion, whether the customer meets it"},
        **problem_responses({404: "No such segment or customer in the caller's organization"}),
        **READ_PROBLEMS,
    },
)
async def explain_membership(
    request: Request, segment_id: UUID, customer_id: UUID, principal: CanRead
) -> dict[str, Any]:
    """Why the customer is or is not a member: each criterion (first: not DELETED) with
    whether it holds now, whether all hold (`matches`), and the recorded membership."""
    async with paging.pool(request).connection() as conn:
        kind, definition = await _definition(conn, principal.org, segment_id)
        row = await (await conn.execute(LOAD_FACTS, ([customer_id],))).fetchone()
        if row is None or row[1] != principal.org:
            raise DomainError(Code.NOT_FOUND, f"customer {customer_id} not found")
        member = await (await conn.execute(IS_MEMBER, (segment_id, customer_id))).fetchone()
    facts = facts_from_row(row[2:])
    now = datetime.now(UTC)
    criteria = effective_criteria(definition)
    verdicts = explain(criteria, facts, now) if criteria is not None else []
    shown_criteria: list[dict[str, Any]] = []
    if criteria is not None:
        (status_path, status_holds), *rest = verdicts
        shown_criteria.append(
            {
                "criterion": status_path,
                "holds": status_holds,
                "operand": "not DELETED",
                "values": _values({"status": facts.status}, principal),
            }
        )
        for (path, holds), values in zip(rest, measured(criteria, facts), strict=True):
            shown_criteria.append(
                {
                    "criterion": path,
                    "holds": holds,
                    "operand": operand(criteria, path),
                    "values": _values(values, principal),
                }
            )
    return {
        "segmentId": str(segment_id),
        "customerId": str(customer_id),
        "kind": kind,
        "asOf": utc_iso(now),
        "matches": all(holds for _, holds in verdicts) if criteria is not None else None,
        "member": member is not None,
        "memberSince": utc_iso(member[0]) if member else None,
        "criteria": shown_criteria,
    }


def _values(facts: dict[str, Any], principal: Principal) -> dict[str, Any]:
    """The customer's values a criterion read, by camelCase fact name, as JSON values; masked
    where the caller sees the customer field masked."""
    personal = principal.can(Permission.PERSONAL_DATA)
    out: dict[str, Any] = {}
    for fact, value in facts.items():
        shown = value
        if not personal and hidden(FACT_SOURCES[fact]):
            shown = MASK if value is not None else None
        elif isinstance(value, datetime):
            shown = utc_iso(value)
        elif isinstance(value, frozenset):
            shown = sorted(value)
        out[to_camel(fact)] = shown
    return out


class Preview(SegmentDefinition):
    """The body of `POST /customers/segments` (name optional: nothing is saved), and how many
    matching customers to show. Matches what creating it would calculate, `purpose` included."""

    name: SegmentName | None = None  # type: ignore[assignment]
    sample_size: Annotated[int, Field(ge=0, le=100)] = 10

    @model_validator(mode="after")
    def _dynamic(self) -> Preview:
        if self.kind is not SegmentKind.DYNAMIC:
            raise ValueError("only a DYNAMIC segment has criteria to preview")
        return self


def preview_where(body: Preview, as_of: datetime) -> tuple[sql.Composed, list[Any]]:
    """The condition over `customer_facts f` a calculation of the segment `body` defines
    would apply (its criteria, and marketing consent for a `purpose: marketing` segment)."""
    criteria = effective_criteria(body.dump())
    assert criteria is not None  # a DYNAMIC segment has criteria
    return compile_where(criteria, as_of)


@router.post(
    "/preview",
    response_class=Response,
    responses={
        200: {"description": "{count, sample: [customer...], asOf}; nothing is saved"},
        **problem_responses({422: "Invalid criteria; `errors[].field` names the criterion"}),
        **READ_PROBLEMS,
        **MASKED_FIELD_PROBLEMS,
    },
)
async def preview(request: Request, body: Preview, principal: CanRead) -> Response:
    """How many of the organization's customers the segment this body would create holds now
    (`purpose: marketing` included), and a sample of them (in id order), evaluated by the
    same SQL a calculation runs."""
    assert body.criteria is not None
    principal.require_visible(criteria_reads(body.criteria, "criteria"))
    now = datetime.now(UTC)
    where, params = preview_where(body, now)
    count_sql = sql.SQL(PREVIEW_COUNT).format(where=where)
    sample_sql = sql.SQL(PREVIEW_SAMPLE).format(where=where)
    # Never prepared: after a few runs PostgreSQL would switch a prepared statement to a
    # generic plan, which for these ad-hoc criteria was measured 25 times slower (876 ms
    # against 35) and then held a pooled connection on every later preview.
    count_args = [principal.org, *params]
    async with paging.pool(request).connection() as conn:
        count_row = await (await conn.execute(count_sql, count_args, prepare=False)).fetchone()
        sample: list[tuple[bytes]] = []
        if body.sample_size:
            sample_args = [*count_args, body.sample_size]
            cur = await conn.execute(sample_sql, sample_args, prepare=False)
            sample = await cur.fetchall()
    assert count_row is not None
    payload = b'{"count":%d,"sample":[%s],"asOf":"%s"}' % (
        count_row[0],
        b",".join(shown(doc, principal) for (doc,) in sample),
        utc_iso(now).encode(),
    )
    return Response(payload, media_type="application/json")


@router.get(
    "/{segment_id}/jobs/{job_id}",
    responses={
        200: {"description": "A calculation job: state, phase, counts, error"},
        **problem_responses({404: "No such job of this segment"}),
        **READ_PROBLEMS,
    },
)
async def get_job(
    request: Request, segment_id: UUID, job_id: UUID, principal: CanRead
) -> dict[str, Any]:
    """Poll a calculation: QUEUED -> RUNNING (phase) -> SUCCEEDED | FAILED | CANCELLED."""
    async with paging.primary(request).connection() as conn:
        row = await (await conn.execute(GET_JOB, (principal.org, segment_id, job_id))).fetchone()
    if row is None:
        raise DomainError(Code.NOT_FOUND, f"job {job_id} not found")
    return render_job(row)
