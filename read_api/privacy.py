"""GET /api/v1/privacy/requests and /api/v1/audit (dpo, admin). Both tables are written
transactionally with the operations (no projection lag); their figures in /metrics come from
read_api/figures.py."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

import orjson
from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool

from domain.access import Permission
from domain.consent import consents
from domain.errors import Code, DomainError
from domain.values import utc_iso
from eventstore.compliance import AUDIT_COLUMNS, RequestType
from projections.consent import VIEW as CONSENT_VIEW
from projections.consent import origins
from projections.customers import VIEW as CUSTOMERS_VIEW
from read_api import paging, personal_data
from read_api.consistency import READ_PROBLEMS, consistent_with, once_settled
from service.api_keys import ApiKeyStore
from service.auth import CanManageKeys, CanPrivacy, CanRead
from service.contract import CustomerId
from service.problems import problem_responses

_OPEN = "status IN ('RECEIVED', 'IN_PROGRESS')"
REQUESTS = (
    "SELECT id, customer_id, type, status, requested_by, received_at, completed_at, due_at,"  # noqa: S608
    f" outcome, {_OPEN} AND due_at < now() AS overdue FROM privacy_requests"
    " WHERE org_id = %(org)s"
    " AND (%(status)s::text IS NULL OR status = %(status)s)"
    " AND (%(type)s::text IS NULL OR type = %(type)s)"
    " AND (%(customer)s::uuid IS NULL OR customer_id = %(customer)s)"
    f" AND (NOT %(overdue)s OR ({_OPEN} AND due_at < now()))"
    " AND (%(after_at)s::timestamptz IS NULL OR (received_at, id) > (%(after_at)s, %(after_id)s))"
    " ORDER BY received_at, id LIMIT %(fetch)s"
)
AUDIT = (
    f"SELECT {AUDIT_COLUMNS} FROM audit_log WHERE org_id = %(org)s"  # noqa: S608
    " AND (%(subject)s::uuid IS NULL OR subject_id = %(subject)s)"
    " AND seq > %(after)s ORDER BY seq LIMIT %(fetch)s"
)
CURRENT_PREFERENCES = (
    "SELECT (doc->'preferences')::text FROM customers_docs WHERE id = %s AND org_id = %s"
)
LEDGER = (
    "SELECT at, consents, actor, source, policy_version, version"
    " FROM consent_ledger WHERE customer_id = %s ORDER BY id"
)

router = APIRouter(tags=["privacy"])
_ERRORS = {**problem_responses({403: "Needs the dpo or admin role"}), **READ_PROBLEMS}


@router.get("/api/v1/privacy/requests", responses=_ERRORS)
async def list_requests(
    *,
    request: Request,
    principal: CanPrivacy,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    status: Annotated[
        str | None, Query(pattern="^(RECEIVED|IN_PROGRESS|COMPLETED|REJECTED)$")
    ] = None,
    type: RequestType | None = None,
    customer_id: Annotated[UUID | None, Query(alias="customerId")] = None,
    overdue: bool = False,
) -> dict[str, Any]:
    """Export, erasure, anonymization and consent-change requests, oldest first; each has
    its 30-day deadline (`dueAt`) and `overdue` while open past it."""
    after_at, after_id = paging.decode(cursor) if cursor else (None, None)
    params = {
        "org": principal.org,
        "status": status,
        "type": type.value if type else None,
        "customer": customer_id,
        "overdue": overdue,
        "after_at": after_at,
        "after_id": after_id,
        "fetch": limit + 1,
    }
    async with paging.pool(request).connection() as conn:
        rows = await (await conn.execute(REQUESTS, params)).fetchall()
    page, next_cursor = paging.cut(rows, limit, at=5, row_id=0)
    items = [
        {
            "id": str(rid),
            "customerId": str(cid),
            "type": rtype,
            "status": rstatus,
            "requestedBy": by,
            "receivedAt": utc_iso(received),
            "completedAt": utc_iso(completed) if completed else None,
            "dueAt": utc_iso(due),
            "outcome": outcome,
            "overdue": late,
        }
        for rid, cid, rtype, rstatus, by, received, completed, due, outcome, late in page
    ]
    return {"items": items, "nextCursor": next_cursor, "limit": limit}


@router.get(
    "/api/v1/customers/{id}/consent",
    responses={**problem_responses({404: "No such customer"}), **READ_PROBLEMS},
    dependencies=[consistent_with(CUSTOMERS_VIEW, CONSENT_VIEW)],
)
async def get_consent(
    request: Request, customer_id: CustomerId, principal: CanRead
) -> dict[str, Any]:
    """Current consent per purpose and every statement that led to it, oldest first. The
    client's IP address and user agent are shown to the dpo and admin roles only."""

    async def read() -> tuple[Any, list[Any]]:
        async with paging.pool(request).connection() as conn:
            cur = await conn.execute(CURRENT_PREFERENCES, (customer_id, principal.org))
            found = await cur.fetchone()
            if found is None:
                raise DomainError(Code.NOT_FOUND, f"customer {customer_id} not found")
            return found, await (await conn.execute(LEDGER, (customer_id,))).fetchall()

    found, rows = await once_settled(request, (CUSTOMERS_VIEW, CONSENT_VIEW), customer_id, read)
    origin: dict[int, dict[str, str | None]] | None = None
    if principal.can(Permission.PRIVACY):
        app = personal_data.event_store(request)
        events = await run_in_threadpool(personal_data.customer_events, app, principal, customer_id)
        origin = origins(events)
    history = [
        {
            "at": utc_iso(at),
            "consents": stated,
            "actor": actor,
            "source": source,
            "policyVersion": policy,
            "version": version,
            **(
                origin.get(version, {"ipAddress": None, "userAgent": None})
                if origin is not None
                else {}
            ),
        }
        for at, stated, actor, source, policy, version in rows
    ]
    return {
        "customerId": str(customer_id),
        "consents": consents(orjson.loads(found[0])),
        "history": history,
    }


@router.get("/api/v1/audit", responses=_ERRORS)
async def list_audit(
    *,
    request: Request,
    principal: CanPrivacy,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after: Annotated[int, Query(ge=0, description="last `seq` of the previous page")] = 0,
    subject_id: Annotated[
        UUID | None, Query(alias="subjectId", description="a customer or segment id")
    ] = None,
) -> dict[str, Any]:
    """The organization's audit entries in chain order, with each entry's MAC (hex)."""
    params = {"org": principal.org, "subject": subject_id, "after": after, "fetch": limit}
    async with paging.pool(request).connection() as conn:
        rows = await (await conn.execute(AUDIT, params)).fetchall()
    items = [
        {
            "seq": seq,
            "at": utc_iso(at),
            "actor": actor,
            "action": action,
            "subjectId": str(cid) if cid else None,
            "requestId": str(rid) if rid else None,
            "outcome": outcome,
            "mac": bytes(mac).hex(),
        }
        for seq, at, _org, actor, action, cid, rid, outcome, mac in rows
    ]
    return {"items": items, "next": items[-1]["seq"] if len(items) == limit else None}


@router.get("/api/v1/api-keys", responses=_ERRORS)
def list_api_keys(principal: CanManageKeys, request: Request) -> dict[str, Any]:
    """The organization's API keys (never the keys themselves), revoked ones included."""
    store: ApiKeyStore = request.app.state.api_keys
    return {"items": store.list(principal.org)}
