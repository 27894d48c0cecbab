"""Bulk exports: `GET /customers/export` streams an organization's customers (all, those the
listing's filters select, or a segment's current members) as NDJSON or CSV, and
`GET /customers/segments/export` answers its segment definitions as the create endpoint takes
them (an importer POSTs each one to recreate them in another organization).

Customers are read through a server-side cursor in chunks of CHUNK rows and sent as each chunk
is rendered: memory stays constant whatever the size, and nothing is counted up front. Each
customer is exactly what `GET /customers/{id}` shows (read_api.customers.shown: current
segments, tracked activity, masked without the personal-data permission).

CSV: one column per leaf of the customer schema (domain.values.CustomerPublic), nested objects
flattened with dotted names, in CSV_COLUMNS order; see `cell` for how values are written.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import re
import types
import typing
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any
from uuid import UUID

import orjson
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse
from psycopg import AsyncConnection, sql
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from domain.access import Permission, Principal
from domain.errors import Code, DomainError, invalid
from domain.masking import EMPTIED, LOCATION_SHOWN, MASK, REPLACED
from domain.segment import SegmentDefinition
from domain.values import Choice, CustomerPublic, utc_iso
from projections.customers import DOCS, FILTERS, VIEW
from projections.membership import VIEW as MEMBERSHIP
from projections.segments import VIEW as SEGMENTS
from read_api import paging
from read_api.consistency import READ_PROBLEMS, consistent_with
from read_api.customers import MASKED_FIELD_PROBLEMS, customer_filters, listing_reads, shown
from service.auth import CanRead
from service.limits import RouteClass, limited_as
from service.problems import problem_responses

CHUNK = 2000  # rows per FETCH from the server-side cursor, rendered and sent together

router = APIRouter(prefix="/api/v1/customers")


class ExportFormat(Choice):
    NDJSON = "ndjson"
    CSV = "csv"


_MEDIA = {
    ExportFormat.NDJSON: "application/x-ndjson",
    ExportFormat.CSV: "text/csv; charset=utf-8",
}


# --------------------------------------------------------------------------- CSV columns


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The model of a field typed `Model` or `Model | None`; None for a leaf (scalars, lists,
    free-form maps)."""
    union = typing.get_origin(annotation) in {typing.Union, types.UnionType}
    candidates = typing.get_args(annotation) if union else (annotation,)
    models = [
        c
        for c in candidates
        if typing.get_origin(c) is None and isinstance(c, type) and issubclass(c, BaseModel)
    ]
    return models[0] if len(models) == 1 else None


def _paths(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, field in model.model_fields.items():
        path = (*prefix, field.alias or name)
        nested = _model_of(field.annotation)
        if nested is None:
            yield path
        else:
            yield from _paths(nested, path)


_PATHS = tuple(_paths(CustomerPublic))
CSV_COLUMNS = tuple(".".join(path) for path in _PATHS)
"""The CSV header, in schema order: `id`, `email`, …, `location.city`, …,
`preferences.privacySettings.analyticsTracking`, …, `metadata.lifetimeValue.amount`, …"""

# A text cell starting with one of these is prefixed with "'" (no formula runs when the file
# is opened in a spreadsheet). "'" itself is in the set, so the escape is reversible: an
# importer drops one leading "'" of any cell (no other cell starts with one).
_ESCAPED_START = frozenset("=+-@\t\r'")


def cell(value: Any) -> str:
    """A value as its CSV cell: null -> empty; text as it is (formula-escaped, see above);
    anything else (numbers, booleans, lists, free-form maps) as its JSON text."""
    if value is None:
        return ""
    if isinstance(value, str):
        return "'" + value if value[:1] in _ESCAPED_START else value
    return orjson.dumps(value).decode()


def _leaf(customer: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = customer
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def csv_row(customer: dict[str, Any]) -> list[str]:
    """The cells of a customer (its public JSON) in CSV_COLUMNS order."""
    return [cell(_leaf(customer, path)) for path in _PATHS]


def _csv(rows: Sequence[Sequence[str | None]]) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows(rows)  # RFC 4180: CRLF, quotes doubled
    return out.getvalue().encode()


# --------------------------------------------------------------------------- CSV in SQL
#
# The doc is `json` (the bytes representation() wrote). json_to_record parses each object of it
# once: into text columns for the leaves (a string unescaped; a number, boolean, list or map
# as its JSON text exactly as stored, i.e. as `cell` writes it: orjson's, compact, keys in
# order) and json columns for the nested objects it reads next. The server does the per-row
# work in C; Python puts the formula guard on text cells (_guarded) and quotes them into CSV.


def _is_text(annotation: Any) -> bool:
    """Whether a leaf of the schema holds a JSON string (text, enums, timestamps): those are
    the cells `cell` formula-escapes; numbers, booleans, lists and maps are written as JSON."""
    options = [a for a in typing.get_args(annotation) if a is not type(None)]
    union = typing.get_origin(annotation) in {typing.Union, types.UnionType}
    inner = options[0] if union and len(options) == 1 else annotation
    if typing.get_origin(inner) is typing.Annotated:
        inner = typing.get_args(inner)[0]
    if typing.get_origin(inner) in {list, dict} or inner in {list, dict}:
        return False
    return not (isinstance(inner, type) and issubclass(inner, int | float | Decimal))


def _leaf_annotations(
    model: type[BaseModel], prefix: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], Any]]:
    for name, field in model.model_fields.items():
        path = (*prefix, field.alias or name)
        nested = _model_of(field.annotation)
        if nested is None:
            yield path, field.annotation
        else:
            yield from _leaf_annotations(nested, path)


_TEXT = frozenset(
    path for path, annotation in _leaf_annotations(CustomerPublic) if _is_text(annotation)
)
# Where the text leaves are in a row of csv_cells: the formula guard is put on in Python,
# where it costs less than in the expression of each cell (the server is the slower side).
_TEXT_CELLS = tuple(i for i, path in enumerate(_PATHS) if path in _TEXT)


def _guarded(row: tuple[str | None, ...]) -> list[str | None]:
    """A row of csv_cells as `cell` writes it: text leaves formula-escaped."""
    cells = list(row)
    for i in _TEXT_CELLS:
        value = cells[i]
        if value and value[0] in _ESCAPED_START:
            cells[i] = "'" + value
    return cells


def _utc_iso(moment: str) -> str:
    """SQL for utc_iso() of a timestamptz: microseconds only when there are some."""
    utc = f"{moment} AT TIME ZONE 'UTC'"
    return (
        f"to_char({utc}, 'YYYY-MM-DD\"T\"HH24:MI:SS')"
        f" || CASE WHEN mod(extract(microseconds FROM {moment})::bigint, 1000000) <> 0"
        f" THEN to_char({utc}, '.US') ELSE '' END || 'Z'"
    )


def _later_sql(value: str, tracked: str) -> str:
    """SQL for `_later`: the stored time when it is not before the tracked one."""
    return f"CASE WHEN {value}::timestamptz >= {tracked} THEN {value} ELSE {_utc_iso(tracked)} END"


def csv_cells(personal: bool) -> tuple[str, str]:
    """The CSV cells in SQL (CSV_COLUMNS order) and the LATERAL joins they read, over `d`
    (customers_docs), `a` (customer_activity, left joined) and `s.segments` (the current
    segments' ids, ordered): `cell` of each leaf of what `shown` gives, masked unless
    `personal`, but for the formula guard (_guarded)."""
    joins: list[str] = []
    aliases: dict[tuple[str, ...], str] = {}

    def members(path: tuple[str, ...]) -> str:
        """The alias whose columns are the members of the object at `path`."""
        if path not in aliases:
            source = "d.doc" if not path else f'{members(path[:-1])}."{path[-1]}"'
            alias = aliases[path] = f"j{len(aliases)}"
            below = [p for p in _PATHS if p[: len(path)] == path]
            names = dict.fromkeys(p[len(path)] for p in below)
            objects = {p[len(path)] for p in below if len(p) > len(path) + 1}
            typed = ", ".join(f'"{n}" {"json" if n in objects else "text"}' for n in names)
            joins.append(f"CROSS JOIN LATERAL json_to_record({source}) AS {alias}({typed})")
        return aliases[path]

    tracked = "a.last_activity_at IS NOT NULL"
    metadata = f'{members(())}."metadata"'
    cells = []
    for path in _PATHS:
        value = f'{members(path[:-1])}."{path[-1]}"'
        cell_sql = value
        column = ".".join(path)
        if column == "segments":
            current = "array_to_json(s.segments)::text"
            cell_sql = f"CASE WHEN cardinality(s.segments) > 0 THEN {current} ELSE {value} END"
        elif column == "lastActivity":
            later = _later_sql(value, "a.last_activity_at")
            cell_sql = f"CASE WHEN {tracked} THEN {later} ELSE {cell_sql} END"
        elif column == "metadata.loginCount":
            added = f"(coalesce({value}::bigint, 0) + a.login_count)::text"
            cell_sql = f"CASE WHEN {tracked} THEN {added} ELSE {cell_sql} END"
        elif column == "metadata.lastLogin":
            later = _later_sql(value, "a.last_login_at")
            logged = f"{tracked} AND a.last_login_at IS NOT NULL"
            cell_sql = f"CASE WHEN {logged} THEN {later} ELSE {cell_sql} END"
        if not personal:
            cell_sql = _masked_sql(column, value, cell_sql, metadata, tracked)
        cells.append(cell_sql)
    return ", ".join(cells), " ".join(joins)


def _masked_sql(column: str, value: str, cell_sql: str, metadata: str, tracked: str) -> str:
    """SQL for a cell of `masked(customer)` (domain.masking): replaced fields as MASK when
    they hold something, location below the country left out, device details emptied."""
    head, _, rest = column.partition(".")
    if head in REPLACED:
        return f"CASE WHEN {value} <> '' THEN '{MASK}' END"
    if head == "location" and rest not in LOCATION_SHOWN:
        return "NULL"
    if column == ".".join(EMPTIED):
        # `masked` empties the list of a metadata holding anything (tracked activity adds some).
        held = f"json_typeof({metadata}) = 'object' AND {metadata}::text <> '{{}}'"
        return f"CASE WHEN {held} OR {tracked} THEN '[]' END"
    return cell_sql


# --------------------------------------------------------------------------- selection


# What GET /customers/{id} reads besides the doc (read_api.customers.GET_ONE): the current
# segments and the tracked activity.
_SEGMENTS = (
    "ARRAY(SELECT s.segment_id::text FROM segment_membership s"
    " WHERE s.customer_id = d.id AND s.left_at IS NULL ORDER BY 1)"
)
_SHOWN = f"SELECT d.doc, {_SEGMENTS}, a.last_activity_at, a.login_count, a.last_login_at"
# Creation order, (created_at, id): every filter's index ends with (created_at, id), so the
# cursor walks an index from its first row instead of sorting the selection.
_BY_FILTERS = (
    "{shown} FROM (SELECT id, created_at FROM {view} WHERE {where}) v"
    " JOIN {docs} d ON d.id = v.id LEFT JOIN customer_activity a ON a.customer_id = v.id"
    " {flattened} ORDER BY v.created_at, v.id"
)
# Customer id order, as GET /customers/segments/{id}/customers (segment_membership's index).
_BY_SEGMENT = (
    "{shown} FROM segment_membership m JOIN {view} v ON v.id = m.customer_id"
    " JOIN {docs} d ON d.id = m.customer_id LEFT JOIN customer_activity a"
    " ON a.customer_id = m.customer_id {flattened}"
    " WHERE m.segment_id = %(segment)s AND m.org_id = %(org)s AND m.left_at IS NULL"
    " AND v.status <> 'DELETED' ORDER BY m.customer_id"
)
SEGMENT_EXISTS = "SELECT 1 FROM segments_view WHERE org_id = %s AND id = %s"
NOT_DELETED = "status <> 'DELETED'"


def _select(
    template: str, fmt: ExportFormat, personal: bool, **parts: sql.Composable
) -> sql.Composed:
    """The export statement: NDJSON reads the docs to show; CSV their cells (csv_cells)."""
    if fmt == ExportFormat.CSV:
        cells, joins = csv_cells(personal)
        shown_sql = sql.SQL("SELECT " + cells)
        flattened = sql.SQL(joins + f" CROSS JOIN LATERAL (SELECT {_SEGMENTS} AS segments) s")
    else:
        shown_sql, flattened = sql.SQL(_SHOWN), sql.SQL("")
    return sql.SQL(template).format(
        shown=shown_sql,
        flattened=flattened,
        view=sql.Identifier(VIEW),
        docs=sql.Identifier(DOCS),
        **parts,
    )


def by_segment(fmt: ExportFormat = ExportFormat.NDJSON, personal: bool = True) -> sql.Composed:
    """The export statement for a segment's current members."""
    return _select(_BY_SEGMENT, fmt, personal)


def by_filters(
    filters: tuple[str, ...], fmt: ExportFormat = ExportFormat.NDJSON, personal: bool = True
) -> sql.Composed:
    """The export statement for the given FILTERS keys; DELETED customers only when `status`
    asks for them."""
    where = [sql.SQL("org_id = %(org)s"), *(sql.SQL(FILTERS[f]) for f in filters)]
    if "status" not in filters:
        where.append(sql.SQL(NOT_DELETED))
    return _select(_BY_FILTERS, fmt, personal, where=sql.SQL(" AND ").join(where))


# --------------------------------------------------------------------------- streaming


def _render(rows: list[Any], principal: Principal, fmt: ExportFormat) -> bytes:
    if fmt == ExportFormat.CSV:
        return _csv([_guarded(row) for row in rows])  # the cells, made by the server
    docs = (
        shown(doc, principal, segments, (last, logins, login) if last is not None else None)
        for doc, segments, last, logins, login in rows
    )
    # A stored doc is compact JSON (orjson); re-encoded should one ever hold a line break.
    return b"".join((d if b"\n" not in d else orjson.dumps(orjson.loads(d))) + b"\n" for d in docs)


async def _chunks(
    request: Request,
    principal: Principal,
    fmt: ExportFormat,
    query: sql.Composed,
    params: dict[str, Any],
) -> AsyncGenerator[bytes, None]:
    """The export's bytes, a chunk per FETCH; the first one (CSV: with the header) is yielded
    even when nothing is selected. A server-side cursor inside the pool connection's
    transaction; leaving early (client gone) rolls back and gives the connection back.

    The server makes the next chunk while this process renders the last one (in a worker
    thread, off the event loop): the two run on two cores instead of taking turns."""
    async with paging.pool(request).connection() as conn, conn.transaction():
        if "segment" in params:
            await _segment_exists(conn, principal, params["segment"])
        async with conn.cursor(name="customers_export") as cur:
            cur.itersize = CHUNK
            await cur.execute(query, params)
            rows = await cur.fetchmany(CHUNK)
            head = _csv([list(CSV_COLUMNS)]) if fmt == ExportFormat.CSV else b""
            following: asyncio.Future[list[Any]] | None = None
            first = True
            try:
                while True:
                    if len(rows) == CHUNK:
                        following = asyncio.ensure_future(cur.fetchmany(CHUNK))
                    chunk = await run_in_threadpool(_render, rows, principal, fmt)
                    if first or chunk:  # the first even when empty: _started waits for it
                        yield head + chunk
                    first, head = False, b""
                    if following is None:
                        return
                    rows, following = await following, None
                    if not rows:
                        return
            finally:
                if following is not None:  # left early: the fetch ends before the cursor
                    with contextlib.suppress(Exception):
                        await following


async def _segment_exists(conn: AsyncConnection[Any], principal: Principal, segment: Any) -> None:
    if await (await conn.execute(SEGMENT_EXISTS, (principal.org, segment))).fetchone() is None:
        raise DomainError(Code.NOT_FOUND, f"segment {segment} not found")


async def _started(chunks: AsyncGenerator[bytes, None]) -> AsyncIterator[bytes]:
    """`chunks` with its first chunk already made, so that what fails before any byte is
    sent (unknown segment, database unavailable) still answers as a problem, not as a 200
    cut short."""
    first = await anext(chunks)

    async def rest() -> AsyncIterator[bytes]:
        try:
            yield first
            async for chunk in chunks:
                yield chunk
        finally:
            await chunks.aclose()

    return rest()


def _attachment(kind: str, org: str, extension: str) -> str:
    safe_org = re.sub(r"[^A-Za-z0-9._-]", "_", org)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f'attachment; filename="{kind}-{safe_org}-{stamp}.{extension}"'


_CUSTOMERS_EXPORT: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The customers, streamed: NDJSON (one customer JSON per line) or CSV"
        " (header row, one column per schema leaf with dotted names); as an attachment.",
        "content": {
            _MEDIA[ExportFormat.NDJSON]: {"schema": {"type": "string"}},
            "text/csv": {"schema": {"type": "string"}},
        },
    },
    **problem_responses({404: "No such segment in the caller's organization"}),
    **READ_PROBLEMS,
    **MASKED_FIELD_PROBLEMS,
}


@router.get(
    "/export",
    tags=["customers"],
    openapi_extra=limited_as(RouteClass.EXPORTS),
    response_class=Response,
    responses=_CUSTOMERS_EXPORT,
    # The primary's: a long read on a replica can be cancelled by what it replays.
    dependencies=[consistent_with(VIEW, MEMBERSHIP, replicas=False)],
)
async def export_customers(
    *,
    request: Request,
    principal: CanRead,
    filters: Annotated[dict[str, Any], Depends(customer_filters)],
    segment_id: Annotated[
        UUID | None,
        Query(alias="segmentId", description="the segment's current members (not with filters)"),
    ] = None,
    format: ExportFormat = ExportFormat.NDJSON,
) -> Response:
    """Every customer of the organization (DELETED ones only with `status=DELETED`), those
    the listing's filters select, or a segment's current members; each as `GET
    /customers/{id}` shows it (masked without the personal-data permission). Filters: in
    creation order (createdAt, id); a segment: in customer id order."""
    principal.require_visible(listing_reads(filters))
    personal = principal.can(Permission.PERSONAL_DATA)
    params: dict[str, Any] = {"org": principal.org}
    if segment_id is not None:
        if filters:
            raise invalid("segmentId", "cannot be combined with filters")
        params["segment"] = segment_id
        query = by_segment(format, personal)
    else:
        params |= request.app.state.emails.resolve(principal.org, filters)
        query = by_filters(tuple(f for f in FILTERS if f in filters), format, personal)
    body = await _started(_chunks(request, principal, format, query, params))
    return StreamingResponse(
        body,
        media_type=_MEDIA[format],
        headers={
            "Content-Disposition": _attachment("customers", principal.org, format.value),
            "Cache-Control": "no-store",
        },
    )


# --------------------------------------------------------------------------- segments

EXPORT_VERSION = 1
DEFINITIONS = "SELECT definition FROM segments_view WHERE org_id = %s ORDER BY created_at, id"
DEFINITION_FIELDS = tuple(f.alias or n for n, f in SegmentDefinition.model_fields.items())
"""name, description, ruleId, kind, purpose, criteria: exactly what the create endpoint takes
(it refuses anything else, status included)."""


@router.get(
    "/segments/export",
    tags=["segments"],
    openapi_extra=limited_as(RouteClass.EXPORTS),
    response_class=Response,
    responses={
        200: {
            "description": '{"version": 1, "exportedAt", "segments": [definition…]}: each'
            " definition a body for POST /customers/segments"
        },
        **READ_PROBLEMS,
    },
    dependencies=[consistent_with(SEGMENTS)],
)
async def export_segments(request: Request, principal: CanRead) -> Response:
    """The organization's segment definitions, oldest first, without ids, organization,
    status, counts or timestamps: POSTing each to /customers/segments of another
    organization recreates it (STATIC segments without their members)."""
    async with paging.pool(request).connection() as conn:
        rows = await (await conn.execute(DEFINITIONS, (principal.org,))).fetchall()
    body = {
        "version": EXPORT_VERSION,
        "exportedAt": utc_iso(datetime.now(UTC)),
        "segments": [{k: d[k] for k in DEFINITION_FIELDS if k in d} for (d,) in rows],
    }
    return Response(
        orjson.dumps(body),
        media_type="application/json",
        headers={
            "Content-Disposition": _attachment("segments", principal.org, "json"),
            "Cache-Control": "no-store",
        },
    )
