"""Import jobs as the query side shows them: `GET /api/v1/customers/import/{id}` (progress,
rate, ETA) and `GET …/{id}/report` (every rejected row, streamed as JSON lines or CSV)."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from enum import StrEnum
from typing import Annotated, Any
from uuid import UUID

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from domain.errors import Code, DomainError
from eventstore.jobs import GET_IMPORT, IMPORT_REJECTIONS, render_import
from read_api import paging
from read_api.consistency import READ_PROBLEMS
from service.auth import CanRead
from service.problems import problem_responses

router = APIRouter(prefix="/api/v1/customers/import", tags=["import"])
_ERRORS = {
    **problem_responses({404: "No such import in the caller's organization"}),
    **READ_PROBLEMS,
}
_PAGE = 5000


class ReportFormat(StrEnum):
    NDJSON = "ndjson"
    CSV = "csv"


@router.get("/{job_id}", responses=_ERRORS)
async def get_import(request: Request, principal: CanRead, job_id: UUID) -> dict[str, Any]:
    async with paging.pool(request).connection() as conn:
        row = await (await conn.execute(GET_IMPORT, (job_id, principal.org))).fetchone()
    if row is None:
        raise DomainError(Code.NOT_FOUND, f"import {job_id} not found")
    return render_import(row)


@router.get("/{job_id}/report", response_class=StreamingResponse, responses=_ERRORS)
async def import_report(
    request: Request,
    principal: CanRead,
    job_id: UUID,
    format: Annotated[ReportFormat, Query()] = ReportFormat.NDJSON,
) -> StreamingResponse:
    """Every rejected row: `line` (where the record starts in the file), `field`, `reason`."""
    pool = paging.pool(request)
    async with pool.connection() as conn:
        if await (await conn.execute(GET_IMPORT, (job_id, principal.org))).fetchone() is None:
            raise DomainError(Code.NOT_FOUND, f"import {job_id} not found")

    async def rows() -> AsyncIterator[bytes]:
        if format is ReportFormat.CSV:
            yield b"line,field,reason\r\n"
        after = 0
        while True:
            async with pool.connection() as conn:
                page = await (
                    await conn.execute(IMPORT_REJECTIONS, (job_id, after, _PAGE))
                ).fetchall()
            if not page:
                return
            yield b"".join(_line(row, format) for row in page)
            after = page[-1][0]

    media = "text/csv" if format is ReportFormat.CSV else "application/x-ndjson"
    name = f"import-{job_id}-rejected.{format.value}"
    return StreamingResponse(
        rows(), media_type=media, headers={"Content-Disposition": f'attachment; filename="{name}"'}
    )


def _line(row: tuple[Any, ...], fmt: ReportFormat) -> bytes:
    line, field, reason = row
    if fmt is ReportFormat.CSV:
        out = io.StringIO()
        csv.writer(out).writerow([line, field or "", reason])
        return out.getvalue().encode()
    return orjson.dumps({"line": line, "field": field, "reason": reason}) + b"\n"
