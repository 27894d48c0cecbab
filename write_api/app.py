"""Command-side HTTP API: translates requests into use-case calls, nothing more."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID, uuid4

import orjson
from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request, Response
from psycopg.types.json import Jsonb
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from domain.access import Permission, Principal
from domain.activity import Batch, TrackedEvent
from domain.consent import ConsentChange
from domain.errors import Code, DomainError, invalid
from domain.segment import SegmentDefinition, SegmentPublic
from domain.selection import filter_params, filter_reads
from domain.values import CustomerPublic
from eventstore.application import Customers
from eventstore.keys import LazyKeyring
from projections import purchase_models
from projections import segments as segments_view
from service import edge, etags, problems, tracing
from service.api_keys import ApiKeyStore
from service.auth import (
    CanConsent,
    CanDelete,
    CanManageKeys,
    CanOrders,
    CanPrivacy,
    CanSegments,
    CanTrack,
    CanWrite,
)
from service.contract import CustomerId, IfMatchHeader
from service.http_metrics import require_scraper, scrape
from service.limits import RouteClass, limited_as
from service.metrics import unwatch_pool, watch_pool
from service.rules_engine import RulesEngine
from service.settings import Settings, get_settings
from write_api import bulk, columns, forms, imports, jobs, tracking
from write_api.commands import Outcome
from write_api.customers import MAX_IDEMPOTENCY_KEY, CustomerCommands
from write_api.schemas import (
    ActiveOrders,
    ApiKeyCreate,
    BulkDelete,
    BulkSegments,
    BulkUpdate,
    CustomerCreate,
    CustomerUpdate,
    EmailVerification,
    MemberAssignment,
    ModelFitRequest,
    SegmentCreate,
    SegmentImport,
    SegmentUpdate,
)
from write_api.segments import SegmentCommands, check_assignable

PREFIX = "/api/v1/customers"
SEGMENTS = PREFIX + "/segments"
_ERRORS = problems.problem_responses(
    {
        401: "Missing or invalid bearer token",
        403: "The token's roles lack the permission",
        404: "No such customer in the caller's organization",
        409: "The customer's state or another customer forbids the change",
        422: "Invalid input; `errors[].field` names it",
        503: "A dependency is unavailable",
    }
)


# Dependencies are `async`: FastAPI runs a plain `def` one in its threadpool, a thread hop
# per request for a field access.
async def _commands(request: Request) -> CustomerCommands:
    commands: CustomerCommands = request.app.state.commands
    return commands


Commands = Annotated[CustomerCommands, Depends(_commands)]


async def _segment_commands(request: Request) -> SegmentCommands:
    commands: SegmentCommands = request.app.state.segments
    return commands


Segments = Annotated[SegmentCommands, Depends(_segment_commands)]


async def _if_match(if_match: IfMatchHeader = None) -> int | None:
    return etags.if_match(if_match)


IfMatch = Annotated[int | None, Depends(_if_match)]


def _answer(outcome: Outcome, *, location: str | None = None) -> Response:
    headers = {
        "ETag": f'"{outcome.version}"',
        "X-Consistency-Token": str(outcome.consistency_token),
    }
    if location:
        headers["Location"] = location
    if outcome.body is None:
        return Response(status_code=204, headers=headers)
    return Response(
        orjson.dumps(outcome.body),
        status_code=201 if outcome.created else 200,
        media_type="application/json",
        headers=headers,
    )


async def _track(
    request: Request, principal: Principal, events: Sequence[Any], *, batch: bool
) -> tracking.Result:
    settings: Settings = request.app.state.settings
    activity = request.app.state.activity
    return await tracking.track(activity, principal.org, events, settings, batch=batch)


def _job(job: dict[str, object], status: int) -> Response:
    location = f"{SEGMENTS}/{job['segmentId']}/jobs/{job['id']}"
    return Response(
        orjson.dumps(job),
        status_code=status,
        media_type="application/json",
        headers={"Location": location},
    )


segment_routes = APIRouter(tags=["segments"])


@segment_routes.post(
    SEGMENTS,
    status_code=201,
    response_model=None,
    responses={201: {"model": SegmentPublic}, **_ERRORS},
)
def create_segment(body: SegmentCreate, principal: CanSegments, segments: Segments) -> Response:
    outcome = segments.create(principal, body)
    assert outcome.body is not None
    return _answer(outcome, location=f"{SEGMENTS}/{outcome.body['id']}")


@segment_routes.post(
    SEGMENTS + "/import",
    responses={
        200: {"description": "Counts by outcome and segments: [{name, outcome, id}]"},
        **_ERRORS,
    },
)
def import_segments(
    body: SegmentImport,
    principal: CanSegments,
    segments: Segments,
    mode: imports.Mode = imports.Mode.CREATE,
) -> dict[str, Any]:
    """Recreate segment definitions exported from another organization or installation
    (`GET /customers/segments/export`); STATIC segments come without members. A name the
    organization already uses: skipped (`mode=create`) or redefined (`mode=upsert`)."""
    results = segments.import_definitions(
        principal, body.segments, upsert=mode is imports.Mode.UPSERT
    )
    counts = {o: sum(r["outcome"] == o for r in results) for o in _IMPORT_OUTCOMES}
    return {**counts, "segments": results}


_IMPORT_OUTCOMES = ("created", "updated", "unchanged", "skipped")


@segment_routes.put(
    SEGMENTS + "/{segment_id}",
    response_model=None,
    responses={200: {"model": SegmentPublic}, **_ERRORS},
)
def update_segment(
    segment_id: UUID,
    body: SegmentUpdate,
    principal: CanSegments,
    segments: Segments,
    if_match: IfMatch,
) -> Response:
    definition = SegmentDefinition.model_validate(body.model_dump(exclude={"status"}))
    return _answer(segments.update(principal, segment_id, definition, body.status, if_match))


@segment_routes.delete(
    SEGMENTS + "/{segment_id}", status_code=204, response_model=None, responses=_ERRORS
)
def delete_segment(
    segment_id: UUID, principal: CanSegments, segments: Segments, if_match: IfMatch
) -> Response:
    outcome = segments.delete(principal, segment_id, if_match)
    return _answer(Outcome(None, outcome.version, outcome.consistency_token))


@segment_routes.post(
    SEGMENTS + "/{segment_id}/calculate",
    status_code=202,
    responses={202: {"description": "The queued job; poll its Location"}, **_ERRORS},
)
def calculate_segment(segment_id: UUID, principal: CanSegments, segments: Segments) -> Response:
    """Recalculate the segment over the whole customer base, in the background."""
    job = segments.calculate(principal, segment_id)
    return _job(job, 202)


@segment_routes.delete(
    SEGMENTS + "/{segment_id}/jobs/{job_id}",
    responses={200: {"description": "The job after the cancellation request"}, **_ERRORS},
)
def cancel_calculation(
    segment_id: UUID, job_id: UUID, principal: CanSegments, segments: Segments
) -> Response:
    """Cancel a calculation: a queued job ends CANCELLED now; a running one ends
    CANCELLED before it commits anything (poll the job)."""
    return _job(segments.cancel(principal, segment_id, job_id), 200)


@segment_routes.post(
    SEGMENTS + "/{segment_id}/members",
    responses={200: {"description": "{joined, left}: how many changed"}, **_ERRORS},
)
def assign_members(
    segment_id: UUID, body: MemberAssignment, principal: CanSegments, segments: Segments
) -> dict[str, int]:
    """Add / remove members of a STATIC segment."""
    return segments.assign(principal, segment_id, body.add, body.remove)


key_routes = APIRouter(tags=["api keys"])


@key_routes.post(
    "/api/v1/api-keys",
    status_code=201,
    responses={201: {"description": "The key's record plus `key`, shown this once"}, **_ERRORS},
)
def create_api_key(
    body: ApiKeyCreate, principal: CanManageKeys, request: Request
) -> dict[str, Any]:
    """A key for a service integration of the caller's organization, with a role set."""
    store: ApiKeyStore = request.app.state.api_keys
    record, key = store.create(
        principal.org, body.name, [r.value for r in body.roles], principal.sub, principal.key_id
    )
    return {**record, "key": key}


@key_routes.delete("/api/v1/api-keys/{key_id}", status_code=204, responses=_ERRORS)
def revoke_api_key(key_id: UUID, principal: CanManageKeys, request: Request) -> Response:
    """Revoke a key and the keys made with it: refused at once by this process, by every
    other within 10 seconds."""
    store: ApiKeyStore = request.app.state.api_keys
    if not store.revoke(principal.org, key_id):
        raise DomainError(Code.NOT_FOUND, f"API key {key_id} not found")
    return Response(status_code=204)


customer_routes = APIRouter()
MERGE_PATCH = "application/merge-patch+json"


@customer_routes.patch(
    PREFIX + "/{id}",
    response_model=None,
    dependencies=[Depends(problems.storable_body)],
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {MERGE_PATCH: {"schema": {"type": "object"}}},
            "description": "RFC 7396: members to set, objects merged, null removes",
        }
    },
    responses={200: {"model": CustomerPublic}, **_ERRORS},
)
async def patch_customer(
    customer_id: CustomerId,
    request: Request,
    principal: CanWrite,
    commands: Commands,
    if_match: IfMatch,
) -> Response:
    """Partial update by JSON Merge Patch (`Content-Type: application/merge-patch+json`,
    RFC 7396) of the customer as GET shows it; the result is checked like a PUT body."""
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media not in {MERGE_PATCH, "application/json"}:
        raise DomainError(Code.UNSUPPORTED, f"send the patch as {MERGE_PATCH}")
    try:
        patch = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        raise invalid("body", "not JSON") from None
    if not isinstance(patch, dict):
        raise invalid("body", "a merge patch of a customer is a JSON object")
    outcome = await run_in_threadpool(commands.patch, principal, customer_id, patch, if_match)
    return _answer(outcome)


@customer_routes.post(
    PREFIX + "/{id}/restore",
    response_model=None,
    responses={200: {"model": CustomerPublic}, **_ERRORS},
)
def restore_customer(
    customer_id: CustomerId, principal: CanDelete, commands: Commands, if_match: IfMatch
) -> Response:
    """Undo a lifecycle deletion within CUSTOMERS_ERASURE_GRACE_HOURS (30 days by
    default): the customer gets back the status it had and its e-mail address. 409 when
    it is not deleted, the grace period is over, or the address was registered meanwhile."""
    return _answer(commands.restore(principal, customer_id, if_match))


tracking_routes = APIRouter(tags=["tracking"])
import_routes = APIRouter(tags=["import"])


@import_routes.post(
    PREFIX + "/import",
    status_code=202,
    openapi_extra={
        "requestBody": {
            "content": {
                "text/csv": {},
                "application/x-ndjson": {},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {
                            "mapping": {
                                "type": "string",
                                "description": "as the query parameter; before the file",
                            },
                            "file": {"type": "string", "format": "binary"},
                        },
                    }
                },
            },
            "description": "the file, streamed: the body itself, or a form's `file` field",
        }
    },
    responses={202: {"description": "The queued job; poll the Location"}, **_ERRORS},
)
async def start_import(
    request: Request,
    principal: CanWrite,
    *,
    format: imports.Format = imports.Format.CSV,
    mode: imports.Mode = imports.Mode.CREATE,
    dry_run: Annotated[bool, Query(alias="dryRun")] = False,
    mapping: Annotated[
        str | None,
        Query(
            description='CSV: which field each column fills, a JSON object {"column": "field"}'
            ' ("-" or null skips a column); other columns by their names or aliases'
        ),
    ] = None,
) -> Response:
    """Import customers from a CSV or NDJSON file as a job (docs/api.md "Import"): the body
    is the file, or a multipart/form-data form with the file as its `file` field."""
    settings: Settings = request.app.state.settings
    limit = imports.size_limit(settings, principal)
    declared = request.headers.get("content-length", "")
    form_boundary = forms.boundary(request.headers.get("content-type", ""))
    # A form's envelope is a few hundred bytes beyond its file: the file is what is limited.
    slack = forms.FIELD_BYTES * 2 if form_boundary else 0
    if declared.isdigit() and int(declared) > limit + slack:
        raise imports.too_large(limit)
    explicit = columns.parse_explicit(mapping)
    job = imports.new_job(principal.org, format, mode, dry_run, principal.sub)
    conn = await run_in_threadpool(jobs.connect, settings)
    upload = imports.Upload(conn, job, limit, explicit)

    def form_field(name: str, text: str) -> None:
        if mapping is not None:
            raise invalid(name, "the mapping is given twice (query and form): give it once")
        upload.explicit = columns.parse_explicit(text)

    form = forms.FormReader(form_boundary, upload.feed, form_field) if form_boundary else None
    feed = form.feed if form else upload.feed
    try:
        async for piece in request.stream():
            await run_in_threadpool(feed, piece)
        if form:
            form.finish()
        answer = await run_in_threadpool(upload.finish)
    except BaseException as e:
        reason = e.detail if isinstance(e, DomainError) else "upload interrupted"
        await run_in_threadpool(upload.abandon, reason)
        if isinstance(e, ClientDisconnect):
            return Response(status_code=499)  # "client closed request": nobody reads it
        raise
    finally:
        await run_in_threadpool(conn.close)
    return Response(
        orjson.dumps(answer),
        status_code=202,
        media_type="application/json",
        headers={"Location": f"{PREFIX}/import/{job.id}"},
    )


bulk_routes = APIRouter(tags=["bulk"])
_BULK = {202: {"description": "The queued job; poll the Location"}, **_ERRORS}


def _bulk(
    request: Request,
    principal: Principal,
    kind: bulk.Kind,
    body: BulkDelete,
    details: dict[str, Any],
) -> Response:
    commands: CustomerCommands = request.app.state.commands
    with commands.app.datastore.get_connection() as conn:
        job = bulk.queue(conn, principal, kind, body.selection, details, dry_run=body.dry_run)
    return Response(
        orjson.dumps(job),
        status_code=202,
        media_type="application/json",
        headers={"Location": f"{PREFIX}/bulk/{job['id']}"},
    )


@bulk_routes.post(PREFIX + "/bulk/update", status_code=202, responses=_BULK)
def bulk_update(body: BulkUpdate, principal: CanWrite, request: Request) -> Response:
    """Apply a patch (tags added/removed, status, preferences, source) to the selected
    customers as a job, each under the rules of a single update (docs/api.md "Bulk")."""
    patch = body.patch.model_dump(mode="json", by_alias=True, exclude_none=True)
    details = {"patch": patch, "admin": principal.can(Permission.SUSPEND)}
    return _bulk(request, principal, bulk.Kind.UPDATE, body, details)


@bulk_routes.post(PREFIX + "/bulk/delete", status_code=202, responses=_BULK)
def bulk_delete(body: BulkDelete, principal: CanDelete, request: Request) -> Response:
    """Lifecycle-delete the selected customers as a job (as `DELETE /customers/{id}`;
    customers with active orders are reported, not deleted)."""
    return _bulk(request, principal, bulk.Kind.DELETE, body, {})


@bulk_routes.post(PREFIX + "/bulk/segments", status_code=202, responses=_BULK)
def bulk_segments(
    body: BulkSegments, principal: CanSegments, segments: Segments, request: Request
) -> Response:
    """Add the selected customers to a STATIC segment, or remove them, as a job."""
    check_assignable(segments.load(principal, body.segment_id))
    details = {"segmentId": str(body.segment_id), "action": body.action.value}
    return _bulk(request, principal, bulk.Kind.SEGMENTS, body, details)


@tracking_routes.post(
    PREFIX + "/analytics/models",
    status_code=202,
    responses={202: {"description": "The queued fit; poll the Location"}, **_ERRORS},
)
def fit_models(body: ModelFitRequest, principal: CanSegments, request: Request) -> Response:
    """Fit the purchase and spend models as of `calibrationEnd` (default now), optionally
    validated on a holdout up to `holdoutEnd`, for every customer or a selection; the
    segments process runs it within seconds. A whole-base fit becomes the model insights use."""
    now = datetime.now(UTC)
    if body.calibration_end is not None and body.calibration_end > now:
        raise invalid("calibrationEnd", "must not be in the future")
    if body.holdout_end is not None:
        if body.holdout_end > now:
            raise invalid("holdoutEnd", "must not be in the future: actuals are needed")
        if body.holdout_end <= (body.calibration_end or now):
            raise invalid("holdoutEnd", "must be after calibrationEnd")
    commands: CustomerCommands = request.app.state.commands
    with commands.app.datastore.get_connection() as conn, conn.transaction():
        selection = _selection(conn, principal, body)
        row = conn.execute(
            purchase_models.QUEUE,
            (
                uuid4(),
                principal.org,
                principal.sub,
                body.calibration_end,
                body.holdout_end,
                selection and Jsonb(selection),
            ),
            prepare=False,
        ).fetchone()
    fit = purchase_models.load(tuple(row.values()))
    assert fit is not None
    return Response(
        orjson.dumps(fit.public()),
        status_code=202,
        media_type="application/json",
        headers={"Location": f"{PREFIX}/analytics/models/{fit.id}"},
    )


def _selection(conn: Any, principal: Principal, body: ModelFitRequest) -> dict[str, Any] | None:
    if body.segment_id is not None and body.filters is not None:
        raise invalid("filters", "segmentId and filters are mutually exclusive")
    if body.segment_id is not None:
        found = conn.execute(segments_view.EXISTS, (principal.org, body.segment_id)).fetchone()
        if found is None:
            raise DomainError(Code.NOT_FOUND, f"segment {body.segment_id} not found")
        return {"segmentId": str(body.segment_id)}
    if body.filters is not None:
        principal.require_visible(filter_reads(body.filters, "filters"))
        return {"filters": filter_params(body.filters, "filters")}
    return None


@tracking_routes.post(
    PREFIX + "/{id}/track",
    status_code=202,
    openapi_extra=limited_as(RouteClass.TRACKING),
    dependencies=[Depends(problems.storable_body)],
    responses={202: {"description": "Stored (durable), or skipped for consent"}, **_ERRORS},
)
async def track_event(
    customer_id: CustomerId, body: TrackedEvent, principal: CanTrack, request: Request
) -> dict[str, Any]:
    """One activity event. 202 once it is durable; behavioral events of a customer
    without analytics-tracking consent are not stored (`stored: false`)."""
    if body.customer_id not in (None, customer_id):
        raise invalid("customerId", "differs from the customer in the path")
    event = body.model_copy(update={"customer_id": customer_id})
    result = await _track(request, principal, [event], batch=False)
    return {
        "eventId": result.ids[0] if result.ids else None,
        "stored": not result.skipped,
        "duplicate": result.duplicates > 0,
        **({"reason": "analytics_tracking_off"} if result.skipped else {}),
    }


@tracking_routes.post(
    PREFIX + "/track/batch",
    status_code=202,
    openapi_extra=limited_as(RouteClass.TRACKING),
    dependencies=[Depends(problems.storable_body)],
    responses={202: {"description": "Stored (durable), but for the skipped"}, **_ERRORS},
)
async def track_batch(body: Batch, principal: CanTrack, request: Request) -> dict[str, Any]:
    """Up to 1,000 events, each naming its customer; all stored or none (an unknown
    customer is a 404 naming `events.N.customerId`), except behavioral events of
    customers without analytics-tracking consent, listed in `skipped`."""
    missing = [i for i, e in enumerate(body.events) if e.customer_id is None]
    if missing:
        raise invalid(f"events.{missing[0]}.customerId", "required in a batch")
    result = await _track(request, principal, body.events, batch=True)
    return {
        "accepted": result.accepted,
        "duplicates": result.duplicates,
        "skipped": [{"index": i, "reason": "analytics_tracking_off"} for i in result.skipped],
    }


def create_app(settings: Settings | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        es = Customers(
            app.state.settings, pool_size=app.state.settings.db_pool_size, group_commit=True
        )
        rules = RulesEngine(es.settings)
        app.state.commands = CustomerCommands(es)
        app.state.segments = SegmentCommands(es, rules)
        app.state.api_keys = ApiKeyStore(app.state.settings, LazyKeyring(app.state.settings))
        app.state.activity = tracking.ActivityWriter(app.state.settings)
        watch_pool("write-api", es.datastore.pool)
        try:
            yield
        finally:
            unwatch_pool("write-api", es.datastore.pool)
            app.state.activity.close()
            app.state.api_keys.close()
            rules.close()
            es.close()

    app = FastAPI(
        title="Customer Management — commands",
        docs_url=None,  # service.docs: Swagger UI served without a CDN
        redoc_url=None,
        version="1",
        lifespan=lifespan,
        telemetry=tracing.FASTAPI_TELEMETRY,
    )
    app.state.settings = settings or get_settings()
    app.state.route_class = RouteClass.WRITES
    edge.install(app, app.state.settings)

    @app.post(
        PREFIX,
        status_code=201,
        response_model=None,
        responses={201: {"model": CustomerPublic}, **_ERRORS},
    )
    def create_customer(
        body: CustomerCreate,
        principal: CanWrite,
        commands: Commands,
        idempotency_key: Annotated[
            str | None, Header(min_length=1, max_length=MAX_IDEMPOTENCY_KEY)
        ] = None,
    ) -> Response:
        outcome = commands.create(principal, body, idempotency_key)
        assert outcome.body is not None
        return _answer(outcome, location=f"{PREFIX}/{outcome.body['id']}")

    @app.put(
        PREFIX + "/{id}",
        response_model=None,
        responses={200: {"model": CustomerPublic}, **_ERRORS},
    )
    def update_customer(
        customer_id: CustomerId,
        body: CustomerUpdate,
        principal: CanWrite,
        commands: Commands,
        if_match: IfMatch,
    ) -> Response:
        expected = if_match if if_match is not None else body.version
        return _answer(
            commands.update(
                principal,
                customer_id,
                body.profile(),
                body.status,
                expected,
                echoed=body.echoed(),
            )
        )

    @app.delete(PREFIX + "/{id}", status_code=204, response_model=None, responses=_ERRORS)
    def delete_customer(
        customer_id: CustomerId, principal: CanDelete, commands: Commands, if_match: IfMatch
    ) -> Response:
        """Lifecycle (soft) deletion, not erasure (`DELETE /customers/{id}/data`): the
        customer leaves listings, segments and exports. For CUSTOMERS_ERASURE_GRACE_HOURS
        (30 days by default) `GET /customers/{id}` still answers 200 with `status: DELETED`
        and `POST /customers/{id}/restore` undoes the deletion; then the customer is erased
        and reads answer 404."""
        outcome = commands.delete(principal, customer_id, if_match)
        return _answer(Outcome(None, outcome.version, outcome.consistency_token))

    @app.put(
        PREFIX + "/{id}/consent",
        responses={
            200: {"description": "{customerId, consents: {purpose: bool}, requestId, version}"},
            **_ERRORS,
        },
    )
    def change_consent(
        customer_id: CustomerId, body: ConsentChange, principal: CanConsent, commands: Commands
    ) -> Response:
        """Grant or withdraw consent per purpose (GDPR Art. 7), recorded with source, policy
        version, IP address and user agent; effective immediately."""
        return _answer(commands.change_consent(principal, customer_id, body))

    @app.post(
        PREFIX + "/{id}/anonymize",
        responses={200: {"model": CustomerPublic}, **_ERRORS},
    )
    def anonymize_customer(
        customer_id: CustomerId, principal: CanPrivacy, commands: Commands
    ) -> Response:
        """Irreversibly replace everything identifying (name, e-mail, exact age, address,
        tags, devices, history) and keep the analytics: country, age band, language,
        currency, acquisition, purchases. The record becomes read-only (status ANONYMIZED)."""
        return _answer(commands.anonymize(principal, customer_id))

    @app.delete(
        PREFIX + "/{id}/data",
        responses={
            200: {"description": "{id, status: ERASED, erasedAt, version}"},
            **_ERRORS,
        },
    )
    def erase_customer(
        customer_id: CustomerId, principal: CanPrivacy, commands: Commands
    ) -> Response:
        """Erase everything held about the customer (GDPR Art. 17): its data key is destroyed
        with the Erased event, every read model drops it, and `customer.erased` is published.
        Irreversible. 409 while the customer has active orders."""
        return _answer(commands.erase(principal, customer_id))

    @app.post(
        PREFIX + "/{id}/email/verify",
        response_model=None,
        responses={200: {"model": CustomerPublic}, **_ERRORS},
    )
    def verify_email(
        customer_id: CustomerId, body: EmailVerification, principal: CanWrite, commands: Commands
    ) -> Response:
        return _answer(commands.verify_email(principal, customer_id, body.token))

    @app.put(
        PREFIX + "/{id}/active-orders",
        response_model=None,
        responses={200: {"model": CustomerPublic}, **_ERRORS},
    )
    def set_active_orders(
        customer_id: CustomerId, body: ActiveOrders, principal: CanOrders, commands: Commands
    ) -> Response:
        return _answer(commands.set_active_orders(principal, customer_id, body.active_orders))

    edge.add_routes(
        app,
        customer_routes,
        segment_routes,
        tracking_routes,
        import_routes,
        bulk_routes,
        key_routes,
    )

    @app.get("/health", include_in_schema=False)
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", include_in_schema=False, dependencies=[Depends(require_scraper)])
    async def metrics() -> Response:
        return await scrape()

    @app.get("/ready", include_in_schema=False)
    def ready(commands: Commands) -> Response:
        try:
            commands.app.recorder.max_notification_id()
        except Exception:  # any failure to reach the store means not ready
            return problems.problem(503, "event store unreachable", headers={"Retry-After": "5"})
        return Response(orjson.dumps({"status": "ready"}), media_type="application/json")

    return app
