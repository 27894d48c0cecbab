"""Import and bulk jobs as the query side shows them: the organization's lists (`GET
/api/v1/customers/import`, `…/bulk`), each job (`GET /api/v1/customers/import/{id}`, `GET
/api/v1/customers/bulk/{id}`: progress, rate, ETA), and each one's `…/report`
(every rejected row or customer, streamed as JSON lines or CSV)."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from typing import Annotated, Any
from uuid import UUID

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from domain.access import Principal
from domain.errors import Code, DomainError
from domain.values import Choice
from eventstore.jobs import (
    GET_CUSTOMER_JOB,
    JOB_REJECTIONS,
    LIST_CUSTOMER_JOBS,
    render_customer_job,
)
from read_api import paging
from read_api.consistency import READ_PROBLEMS
from service.auth import CanRead
from service.problems import problem_responses

router = APIRouter(prefix="/api/v1/customers", tags=["import", "bulk"])
_ERRORS = {
    **problem_responses({404: "No such job in the caller's organization"}),
    **READ_PROBLEMS,
}
_PAGE = 5000


class ReportFormat(Choice):
    NDJSON = "ndjson"
    CSV = "csv"


_LIST = {
    200: {"description": "{items: [job, …], nextCursor, limit}: the newest first"},
    **READ_PROBLEMS,
}


@router.get("/import", responses=_LIST)
async def list_imports(
    request: Request,
    principal: CanRead,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> dict[str, Any]:
    """The organization's imports, newest first."""
    return await _jobs(request, principal, limit, cursor, imported=True)


@router.get("/bulk", responses=_LIST)
async def list_bulk_jobs(
    request: Request,
    principal: CanRead,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> dict[str, Any]:
    """The organization's bulk jobs, newest first."""
    return await _jobs(request, principal, limit, cursor, imported=False)


async def _jobs(
    request: Request, principal: Principal, limit: int, cursor: str | None, *, imported: bool
) -> dict[str, Any]:
    before_at, before_id = paging.decode(cursor) if cursor else (None, None)
    params = {
        "org": principal.org,
        "imported": imported,
        "before_at": before_at,
        "before_id": before_id,
        "fetch": limit + 1,
    }
    async with paging.pool(request).connection() as conn:
        rows = await (await conn.execute(LIST_CUSTOMER_JOBS, params)).fetchall()
    page, next_cursor = paging.cut(rows, limit, at=7, row_id=0)
    return {
        "items": [render_customer_job(row) for row in page],
        "nextCursor": next_cursor,
        "limit": limit,
    }


@router.get("/import/{job_id}", responses=_ERRORS)
async def get_import(request: Request, principal: CanRead, job_id: UUID) -> dict[str, Any]:
    return await _job(request, principal, job_id, imported=True)


@router.get("/bulk/{job_id}", responses=_ERRORS)
async def get_bulk_job(request: Request, principal: CanRead, job_id: UUID) -> dict[str, Any]:
    return await _job(request, principal, job_id, imported=False)


@router.get("/import/{job_id}/report", response_class=StreamingResponse, responses=_ERRORS)
async def import_report(
    request: Request,
    principal: CanRead,
    job_id: UUID,
    format: Annotated[ReportFormat, Query()] = ReportFormat.NDJSON,
) -> StreamingResponse:
    """Every rejected row the job kept: `line` (where the record starts in the file),
    `field`, `reason`; then, if more were rejected, one row without a line saying how many."""
    job = await _job(request, principal, job_id, imported=True)
    return _report(request, job, format, ("line", "field", "reason"), "import")


@router.get("/bulk/{job_id}/report", response_class=StreamingResponse, responses=_ERRORS)
async def bulk_report(
    request: Request,
    principal: CanRead,
    job_id: UUID,
    format: Annotated[ReportFormat, Query()] = ReportFormat.NDJSON,
) -> StreamingResponse:
    """Every customer the job could not apply to (up to the report's limit, then one row
    saying how many more): `line` (its position in the job's selection), `customerId`,
    `field`, `reason`."""
    job = await _job(request, principal, job_id, imported=False)
    return _report(request, job, format, ("line", "customerId", "field", "reason"), "bulk")


async def _job(
    request: Request, principal: Principal, job_id: UUID, *, imported: bool
) -> dict[str, Any]:
    async with paging.pool(request).connection() as conn:
        query = await conn.execute(GET_CUSTOMER_JOB, (job_id, principal.org, imported))
        row = await query.fetchone()
    if row is None:
        raise DomainError(Code.NOT_FOUND, f"{'import' if imported else 'job'} {job_id} not found")
    return render_customer_job(row)


def _report(
    request: Request, job: dict[str, Any], fmt: ReportFormat, columns: tuple[str, ...], name: str
) -> StreamingResponse:
    pool = paging.pool(request)
    job_id = job["id"]

    async def rows() -> AsyncIterator[bytes]:
        if fmt is ReportFormat.CSV:
            yield (",".join(columns) + "\r\n").encode()
        after = 0
        while True:
            async with pool.connection() as conn:
                page = await (await conn.execute(JOB_REJECTIONS, (job_id, after, _PAGE))).fetchall()
            if not page:
                break
            yield b"".join(_line(row, fmt, columns) for row in page)
            after = page[-1][0]
        if job["rejectionsNotStored"]:
            more = f"{job['rejectionsNotStored']} more rejected, not kept in the report"
            yield _line((None, None, None, more), fmt, columns)

    media = "text/csv" if fmt is ReportFormat.CSV else "application/x-ndjson"
    filename = f"{name}-{job_id}-rejected.{fmt.value}"
    return StreamingResponse(
        rows(),
        media_type=media,
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


def _line(row: tuple[Any, ...], fmt: ReportFormat, columns: tuple[str, ...]) -> bytes:
    line, customer_id, field, reason = row
    values = {
        "line": line,
        "customerId": customer_id and str(customer_id),
        "field": field,
        "reason": reason,
    }
    if fmt is ReportFormat.CSV:
        out = io.StringIO()
        csv.writer(out).writerow(["" if values[c] is None else values[c] for c in columns])
        return out.getvalue().encode()
    return orjson.dumps({c: values[c] for c in columns}) + b"\n"
