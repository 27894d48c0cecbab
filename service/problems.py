"""RFC 9457 problem+json: the one place errors become HTTP answers (and gRPC statuses)."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
import orjson
import psycopg
from eventsourcing import persistence
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.routing import APIRoute
from psycopg_pool import PoolTimeout
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from domain.activity import UNTYPED, EventType
from domain.errors import Code, DomainError, invalid
from domain.values import storable_json, unstorable_field

log = logging.getLogger(__name__)

STATUS = {
    Code.INVALID: 422,
    Code.NOT_FOUND: 404,
    Code.CONFLICT: 409,
    Code.FORBIDDEN: 403,
    Code.UNAUTHORIZED: 401,
    Code.PRECONDITION_FAILED: 412,
    Code.UNAVAILABLE: 503,
    Code.RATE_LIMITED: 429,
    Code.TOO_LARGE: 413,
    Code.UNSUPPORTED: 415,
}
# The same codes as gRPC status codes (grpc_api answers with these, HTTP with STATUS).
GRPC_STATUS = {
    Code.INVALID: grpc.StatusCode.INVALID_ARGUMENT,
    Code.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Code.CONFLICT: grpc.StatusCode.FAILED_PRECONDITION,
    Code.FORBIDDEN: grpc.StatusCode.PERMISSION_DENIED,
    Code.UNAUTHORIZED: grpc.StatusCode.UNAUTHENTICATED,
    Code.PRECONDITION_FAILED: grpc.StatusCode.FAILED_PRECONDITION,
    Code.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    Code.RATE_LIMITED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Code.TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Code.UNSUPPORTED: grpc.StatusCode.INVALID_ARGUMENT,
}
# A conflict over a value that another customer or segment holds (the fields with
# organization-wide uniqueness claims) is ALREADY_EXISTS; any other conflict is about the
# state of what is changed (deleted, active orders, a kind that cannot change).
_CLAIMED_FIELDS = frozenset({"email", "name"})


def grpc_status(error: DomainError) -> grpc.StatusCode:
    if error.code == Code.CONFLICT and error.field in _CLAIMED_FIELDS:
        return grpc.StatusCode.ALREADY_EXISTS
    return GRPC_STATUS[error.code]


TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    412: "Precondition Failed",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    428: "Precondition Required",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["field", "message"],
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
}


def problem_responses(descriptions: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for problem+json answers."""
    return {
        status: {
            "description": description,
            "content": {"application/problem+json": {"schema": PROBLEM_SCHEMA}},
        }
        for status, description in descriptions.items()
    }


def problem(
    status: int,
    detail: str,
    *,
    errors: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
    instance: str | None = None,
) -> Response:
    body: dict[str, Any] = {
        "type": f"https://customers.example/problems/{status}",
        "title": TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    if errors:
        body["errors"] = errors
    hdrs = dict(headers or {})
    if status == 401:
        hdrs.setdefault("WWW-Authenticate", "Bearer")
    return Response(
        orjson.dumps(body), status_code=status, media_type="application/problem+json", headers=hdrs
    )


_UNION_TAGS = frozenset({*EventType, UNTYPED})


def field_path(loc: tuple[int | str, ...]) -> str:
    """('body', 'location', 'country') → 'location.country'; query/path keep the name."""
    # A bad key of a map is reported by pydantic as (..., key, "[key]"): the key names it.
    # A member of a tagged union (tracked events) as (..., index, tag, field): the tag is the
    # `type` the client sent, not a field.
    parts = [str(p) for p in loc if p != "[key]" and p not in _UNION_TAGS]
    if parts and parts[0] in {"body", "query", "path", "header"}:
        parts = parts[1:]
    return ".".join(parts) or "body"


async def _domain_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DomainError)
    status = STATUS[exc.code]
    errors = [{"field": exc.field, "message": exc.detail}] if exc.field else None
    headers = None
    if status in {429, 503}:
        headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after or 1)))}
    return problem(status, exc.detail, errors=errors, headers=headers, instance=request.url.path)


def invalid_input(
    errors: Sequence[Mapping[str, Any]], prefix: tuple[str, ...] = ()
) -> tuple[str, list[dict[str, str]]]:
    """pydantic's errors as a detail naming the fields and `[{field, message}]`: messages
    only, never the offending input (it may be personal data). `prefix` names what was
    validated when pydantic's location does not (a gRPC request's id field)."""
    found = [
        {
            "field": field_path((*prefix, *e.get("loc", ()))),
            "message": str(e.get("msg", "invalid")),
        }
        for e in errors
    ]
    fields = ", ".join(sorted({e["field"] for e in found}))
    return f"invalid input: {fields}", found


async def _validation_error(request: Request, exc: Exception) -> Response:
    """A request that did not validate, and a body a use case validates itself (a customer
    merge-patched into shape): 422 naming the fields, as gRPC answers both."""
    assert isinstance(exc, RequestValidationError | ValidationError)
    found = exc.errors(include_input=False) if isinstance(exc, ValidationError) else exc.errors()
    detail, errors = invalid_input(found)
    return problem(422, detail, errors=errors, instance=request.url.path)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return problem(
        exc.status_code,
        str(exc.detail),
        headers=dict(exc.headers or {}),
        instance=request.url.path,
    )


# The database refused or lost a connection (or every pooled one is busy): 503, retry.
DATABASE_UNAVAILABLE: tuple[type[Exception], ...] = (
    psycopg.OperationalError,
    PoolTimeout,
    persistence.OperationalError,
    persistence.InterfaceError,
)


async def _database_unavailable(request: Request, exc: Exception) -> Response:
    log.warning("database unavailable", extra={"error": type(exc).__name__})
    return problem(
        503,
        "the database is unavailable; retry later",
        headers={"Retry-After": "1"},
        instance=request.url.path,
    )


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error", extra={"path": request.url.path})
    return problem(500, "internal error; it has been logged", instance=request.url.path)


def _accepted(route: APIRoute) -> frozenset[str]:
    """The query parameters `route` takes (its own and its dependencies'), as clients name
    them; remembered on the route."""
    accepted: frozenset[str] | None = getattr(route, "_accepted_query", None)
    if accepted is None:
        names: set[str] = set()
        dependants = [route.dependant]
        while dependants:
            dependant = dependants.pop()
            names.update(p.alias for p in dependant.query_params)
            dependants.extend(dependant.dependencies)
        accepted = frozenset(names)
        route._accepted_query = accepted  # type: ignore[attr-defined]
    return accepted


async def _checked_query(request: Request) -> None:
    """A query parameter the route does not take is a 422 naming it (a misspelt filter must
    not answer as if there were none: `?tags=vip` listing everyone); PostgreSQL text cannot
    hold NUL, so a parameter with one is a 422 naming it too."""
    route = request.scope.get("route")
    items = request.query_params.multi_items()
    if items and isinstance(route, APIRoute):
        accepted = _accepted(route)
        unknown = sorted({name for name, _ in items if name not in accepted})
        if unknown:
            takes = ", ".join(sorted(accepted)) or "none"
            message = f"unknown query parameter; this endpoint takes: {takes}"
            raise RequestValidationError(
                [{"loc": ("query", name), "msg": message} for name in unknown]
            )
    for name, value in items:
        if "\x00" in value:
            raise invalid(name, "must not contain NUL characters")


async def storable_body(request: Request) -> None:
    """For routes whose models skip the per-field storability check (tracked events): the raw
    body is checked once, and only a refused one is walked to name the field."""
    raw = await request.body()
    if storable_json(raw):
        return
    try:
        parsed = json.loads(raw)
    except ValueError:
        return  # not JSON at all: the body's own validation says so
    field = unstorable_field(parsed) or "body"
    raise invalid(field, "must not contain NUL characters or lone surrogates")


def install(app: FastAPI) -> None:
    """Problem answers for every error; call before adding routes (adds a check to each)."""
    app.router.dependencies.append(Depends(_checked_query))
    app.add_exception_handler(DomainError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(ValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    for unavailable in DATABASE_UNAVAILABLE:
        app.add_exception_handler(unavailable, _database_unavailable)
    app.add_exception_handler(Exception, _unexpected)
