"""Everything held about one person: the Art. 15/20 export (`GET /customers/{id}/data`, JSON or
a ZIP of CSV files) and the decrypted event history with point-in-time reconstruction
(`GET /customers/{id}/history`). Both need the customer's data key, so they read the event
store (through a small event-sourced application of this process) besides the read models.
Every call is a privacy request (exports) or an audit entry (history reads)."""

from __future__ import annotations

import csv
import io
import threading
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

import orjson
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from psycopg.rows import tuple_row
from pydantic.alias_generators import to_camel
from starlette.concurrency import run_in_threadpool

from domain.access import Principal
from domain.customer import Customer
from domain.errors import Code, DomainError
from domain.values import Choice, Instant, utc_iso
from eventstore import compliance
from eventstore.application import Customers
from eventstore.compliance import AuditEntry, PrivacyRecord, RequestType
from eventstore.mapper import SHREDDING_TOPICS, Shredded, topic_of
from projections.consent import origins
from read_api.consistency import READ_PROBLEMS
from read_api.customers import STINTS_ALL, render_stint
from read_api.export import CSV_COLUMNS, cell, csv_row
from service.auth import CanPrivacy
from service.contract import CustomerId
from service.limits import RouteClass, limited_as
from service.problems import problem_responses
from service.settings import Settings

router = APIRouter(prefix="/api/v1/customers", tags=["privacy"])
_ERRORS = {
    **problem_responses({403: "Needs the dpo or admin role", 404: "No such customer"}),
    **READ_PROBLEMS,
}

DOC = "SELECT doc::text FROM customers_docs WHERE id = %s AND org_id = %s"
CONSENT = (
    "SELECT at, consents::text, actor, source, policy_version, version"
    " FROM consent_ledger WHERE customer_id = %s ORDER BY id"
)
ACTIVITY = (
    "SELECT id, event_type, occurred_at, channel, session_id, device_info, event_data"
    " FROM customer_events WHERE customer_id = %s ORDER BY occurred_at, id"
)
REQUESTS = (
    "SELECT id, type, status, received_at, completed_at FROM privacy_requests"
    " WHERE customer_id = %s ORDER BY received_at"
)

# Art. 15(1) facts, the same for every customer of this deployment.
FACTS = {
    "controller": "the organization that holds the customer record (tenant `orgId`)",
    "purposes": {
        "customer management": "keeping the profile the organization was given (Art. 6(1)(b))",
        "segmentation": "rule-based grouping for the purposes the customer consented to",
        "marketing": "only with marketing consent; withdrawal takes effect immediately",
        "analytics": "only with analytics-tracking consent",
    },
    "recipients": (
        "the organization's users of this service; event consumers of the organization's"
        " NATS subjects receive ids, event types and changed field names, never profile values"
    ),
    "retention": (
        "until erasure (DELETE /customers/{id}/data); a deleted customer is erased after the"
        " configured grace period"
    ),
    "rights": "access, rectification, erasure, restriction, portability, objection, complaint",
}


class ExportFormat(Choice):
    JSON = "json"
    ZIP = "zip"


class EventStore:
    """This process's event-sourced application, opened on first use."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._app: Customers | None = None
        self._lock = threading.Lock()

    def get(self) -> Customers:
        with self._lock:
            if self._app is None:
                self._app = Customers(self._settings, pool_size=2)
            return self._app

    def close(self) -> None:
        if self._app is not None:
            self._app.close()


def event_store(request: Request) -> Customers:
    store: EventStore = request.app.state.event_store
    return store.get()


def customer_events(app: Customers, principal: Principal, customer_id: UUID) -> list[Any]:
    """The customer's decoded events; 404 for another org's, unknown or erased customers."""
    if app.keys.cipher(customer_id) is None:
        raise DomainError(Code.NOT_FOUND, f"customer {customer_id} not found")
    events = list(app.events.get(customer_id))
    if not events or getattr(events[0], "org_id", None) != principal.org:
        raise DomainError(Code.NOT_FOUND, f"customer {customer_id} not found")
    if any(isinstance(e, Shredded) or topic_of(e) in SHREDDING_TOPICS for e in events):
        # Erased or anonymized by another process while this one still had the key cached.
        app.keys.forget(customer_id)
        raise DomainError(Code.NOT_FOUND, f"customer {customer_id} not found")
    return events


def _render_event(event: Any) -> dict[str, Any]:
    # Named like the rest of the API (camelCase); nested profile values already are.
    state = {
        to_camel(k): v
        for k, v in vars(event).items()
        if k not in {"originator_id", "originator_version", "originator_topic", "timestamp"}
    }
    return {
        "version": event.originator_version,
        "type": topic_of(event).rsplit(".", 1)[-1],
        "occurredAt": utc_iso(event.timestamp),
        "data": state,
    }


def _audit(
    app: Customers, principal: Principal, customer_id: UUID, action: str, outcome: str
) -> None:
    with app.datastore.get_connection() as conn, conn.transaction():
        compliance.audit(
            conn,
            app.keys.audit_key,
            AuditEntry(principal.org, principal.sub, action, outcome, customer_id),
        )


def _record(app: Customers, request: PrivacyRecord) -> None:
    with app.datastore.get_connection() as conn, conn.transaction():
        compliance.record(conn, app.keys.audit_key, request)


# What a privileged read that failed after its checks is recorded as (never "completed").
FAILED = "failed"


def _collect(app: Customers, principal: Principal, request: PrivacyRecord) -> dict[str, Any]:
    """Everything about the customer; `request` (this export) is listed as completed, which
    it is once the caller has recorded it after the answer is ready."""
    customer_id = request.customer_id
    events = customer_events(app, principal, customer_id)
    origin = origins(events)
    with app.datastore.get_connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
        row = cur.execute(DOC, (customer_id, principal.org)).fetchone()
        profile = orjson.loads(row[0]) if row else None
        consent = [
            {
                "at": utc_iso(at),
                "consents": orjson.loads(stated),
                "actor": actor,
                "source": source,
                "policyVersion": policy,
                **origin.get(version, {"ipAddress": None, "userAgent": None}),
            }
            for at, stated, actor, source, policy, version in cur.execute(
                CONSENT, (customer_id,)
            ).fetchall()
        ]
        cur.execute(STINTS_ALL, {"id": customer_id, "org": principal.org})
        segments = [render_stint(row) for row in cur]
        requests = [
            {
                "id": str(rid),
                "type": rtype,
                "status": status,
                "receivedAt": utc_iso(received),
                "completedAt": utc_iso(completed) if completed else None,
            }
            for rid, rtype, status, received, completed in cur.execute(
                REQUESTS, (customer_id,)
            ).fetchall()
        ]
        activity = [
            {
                "eventId": str(eid),
                "type": kind,
                "occurredAt": utc_iso(at),
                "channel": channel,
                "sessionId": session and str(session),
                "device": device,
                "data": data,
            }
            for eid, kind, at, channel, session, device, data in cur.execute(
                ACTIVITY, (customer_id,)
            ).fetchall()
        ]
    assert request.at is not None
    at = utc_iso(request.at)
    requests.append(
        {
            "id": str(request.request_id),
            "type": request.type,
            "status": request.status,
            "receivedAt": at,
            "completedAt": at,
        }
    )
    source = (profile or {}).get("metadata", {}).get("source")
    return {
        "exportedAt": at,
        "requestId": str(request.request_id),
        "customerId": str(customer_id),
        "profile": profile,
        "consentHistory": consent,
        "segmentHistory": segments,
        "activity": activity,
        "privacyRequests": requests,
        "events": [_render_event(e) for e in events],
        "processing": {**FACTS, "source": source or "not recorded"},
    }


def _export(app: Customers, principal: Principal, customer_id: UUID, fmt: ExportFormat) -> bytes:
    """The export as the answer's bytes, recorded as a completed EXPORT request only once
    they exist; if producing them fails, the request is recorded as received and failed
    (still owed: it turns overdue) and the failure goes on to the caller."""
    request = PrivacyRecord(
        uuid.uuid4(),
        principal.org,
        customer_id,
        RequestType.EXPORT,
        principal.sub,
        at=datetime.now(UTC),
    )
    try:
        export = _collect(app, principal, request)
        data = _zip(export) if fmt == ExportFormat.ZIP else orjson.dumps(export)
    except DomainError:
        raise  # refused before anything was read (unknown or erased customer)
    except Exception:
        _record(app, replace(request, status="RECEIVED", outcome=FAILED))
        raise
    _record(app, request)
    return data


# The columns of each section's CSV file: the same whether or not the section has rows.
_SECTIONS = {
    "consent_history.csv": (
        "consentHistory",
        ("at", "consents", "actor", "source", "policyVersion", "ipAddress", "userAgent"),
    ),
    "segment_history.csv": (
        "segmentHistory",
        ("segmentId", "name", "joinedAt", "joinReason", "leftAt", "leaveReason", "active"),
    ),
    "activity.csv": (
        "activity",
        ("eventId", "type", "occurredAt", "channel", "sessionId", "device", "data"),
    ),
    "privacy_requests.csv": (
        "privacyRequests",
        ("id", "type", "status", "receivedAt", "completedAt"),
    ),
    "events.csv": ("events", ("version", "type", "occurredAt", "data")),
}


def _csv(columns: tuple[str, ...], rows: list[list[str]]) -> bytes:
    """RFC 4180 with a header, cells as the customer export writes them (`cell`)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return out.getvalue().encode()


def _zip(export: dict[str, Any]) -> bytes:
    profile = export["profile"]
    files = {
        # The profile as GET /customers/export?format=csv writes a customer: one row.
        "profile.csv": _csv(CSV_COLUMNS, [csv_row(profile)] if profile else []),
        **{
            name: _csv(columns, [[cell(row.get(c)) for c in columns] for row in export[key]])
            for name, (key, columns) in _SECTIONS.items()
        },
        "processing.json": orjson.dumps(export["processing"], option=orjson.OPT_INDENT_2),
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _chunks(data: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@router.get(
    "/{id}/data",
    response_class=Response,
    openapi_extra=limited_as(RouteClass.EXPORTS),
    responses={200: {"description": "The export (JSON, or a ZIP of CSV files)"}, **_ERRORS},
)
async def export_data(
    request: Request,
    customer_id: CustomerId,
    principal: CanPrivacy,
    format: ExportFormat = ExportFormat.JSON,
) -> Response:
    """Everything held about the customer (GDPR Art. 15 and 20): profile, consent history,
    segment membership history, activity, privacy requests, the decrypted event history and
    the processing facts. Recorded as a completed EXPORT request and audited."""
    app = event_store(request)
    data = await run_in_threadpool(_export, app, principal, customer_id, format)
    if format == ExportFormat.ZIP:
        name = f"customer-{customer_id}.zip"
        return StreamingResponse(
            _chunks(data),
            media_type="application/zip",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )
    return StreamingResponse(_chunks(data), media_type="application/json")


@router.get(
    "/{id}/history",
    response_class=Response,
    openapi_extra=limited_as(RouteClass.EXPORTS),
    responses={
        200: {
            "description": "The decrypted events, or the customer as of `asOf`",
            "content": {"application/json": {"schema": {"type": "object"}}},
        },
        **_ERRORS,
    },
)
async def history(
    request: Request,
    customer_id: CustomerId,
    principal: CanPrivacy,
    as_of: Annotated[
        Instant | None,
        Query(alias="asOf", description="RFC 3339: the customer as it was at that moment"),
    ] = None,
) -> Response:
    """The customer's events, decrypted, oldest first; with `asOf`, the customer as the
    service answered about it at that moment. Audited."""
    app = event_store(request)

    def read() -> dict[str, Any]:
        events = customer_events(app, principal, customer_id)
        if as_of is None:
            return {"customerId": str(customer_id), "events": [_render_event(e) for e in events]}
        version = max((e.originator_version for e in events if e.timestamp <= as_of), default=0)
        if version == 0:
            raise DomainError(Code.NOT_FOUND, f"customer {customer_id} did not exist at {as_of}")
        customer: object = app.repository.get(customer_id, version=version)
        assert isinstance(customer, Customer)
        return {
            "customerId": str(customer_id),
            "asOf": utc_iso(as_of),
            "customer": customer.public(),
        }

    def audited() -> bytes:
        """The answer's bytes, audited as completed only once they exist."""
        action = "history" if as_of is None else "history_as_of"
        try:
            data = orjson.dumps(read())
        except DomainError as e:
            _audit(app, principal, customer_id, action, e.code.value)
            raise
        except Exception:
            _audit(app, principal, customer_id, action, FAILED)
            raise
        _audit(app, principal, customer_id, action, "completed")
        return data

    return Response(await run_in_threadpool(audited), media_type="application/json")
