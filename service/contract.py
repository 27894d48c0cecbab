"""What the REST contract states beside the apps' own models: the syntax of the headers the
service parses itself (declared where the parameters are, so the schema and the parser share
one pattern), the customer id every `/customers/{id}…` path names, and what every operation
may answer whatever it does (malformed bodies, limits, response headers, examples), added to
the merged OpenAPI document in one pass."""

from __future__ import annotations

import copy
from typing import Annotated, Any
from uuid import UUID

from fastapi import Header, Path

from service import etags
from service.problems import problem_responses

CONSISTENCY_HEADER = "X-Consistency-Token"
# A notification id: digits only, at most 18 of them (a bigint the log will not reach).
CONSISTENCY_PATTERN = "^[0-9]{1,18}$"

CustomerId = Annotated[
    UUID, Path(alias="id", description="The customer's id (as `POST /customers` returned it)")
]

IfMatchHeader = Annotated[
    str | None,
    Header(
        alias="If-Match",
        description='The ETag a read returned (`"3"`; `3` and `W/"3"` are taken too) or `*`:'
        " the write applies only to that version, else 412.",
        json_schema_extra={"pattern": etags.IF_MATCH_PATTERN, "examples": ['"1"']},
    ),
]
IfNoneMatchHeader = Annotated[
    str | None,
    Header(
        alias="If-None-Match",
        description="ETags already held (comma-separated) or `*`: 304 when the customer is"
        " still at one of them.",
        json_schema_extra={"pattern": etags.IF_NONE_MATCH_PATTERN, "examples": ['"1"']},
    ),
]
ConsistencyTokenHeader = Annotated[
    str | None,
    Header(
        alias=CONSISTENCY_HEADER,
        description="The X-Consistency-Token of a write response: the read waits (a few"
        " seconds at most, then 503) until it reflects that write (a number beyond the last"
        " write: until it reflects every write so far).",
        json_schema_extra={"pattern": CONSISTENCY_PATTERN, "examples": ["1"]},
    ),
]

_TOKEN_HEADER = {
    "description": "Pass it as the X-Consistency-Token of a later read to read this write",
    "schema": {"type": "string", "pattern": CONSISTENCY_PATTERN},
}
_ETAG_HEADER = {
    "description": "The version this answer shows, for If-Match / If-None-Match",
    "schema": {"type": "string", "pattern": '^"[0-9]+"$'},
}
_LOCATION_HEADER = {
    "description": "Where the created resource (or the accepted job) is read",
    "schema": {"type": "string", "format": "uri-reference"},
}
_RETRY_AFTER = {
    "description": "Seconds to wait before retrying",
    "schema": {"type": "string", "pattern": "^[0-9]+$"},
}
_BODY_PROBLEMS = problem_responses(
    {
        400: "The body is not well-formed (not JSON, or not in its declared encoding)",
        413: "The body is larger than the service accepts",
        415: "The body's Content-Type is not one this operation takes",
    }
)
_INVALID = problem_responses({422: "Invalid input; `errors[].field` names it"})
UNAUTHENTICATED = ("/health", "/ready", "/metrics")


_CUSTOMERS = "/api/v1/customers"
_SEGMENT = _CUSTOMERS + "/segments/{segment_id}"
# The writes whose answers carry the version (ETag) and the consistency token: those of a
# customer or a segment itself (jobs, tracking and imports answer 202 with a Location).
_VERSIONED = (_CUSTOMERS, _CUSTOMERS + "/segments", _SEGMENT)
_PRECONDITION = problem_responses({412: "If-Match names a version that is not the current one"})


def _non_blank(node: Any) -> None:
    """Bodies' texts are stripped before their length is checked (domain.values.Model), so a
    required text must hold a non-space character: said as a pattern beside minLength."""
    if isinstance(node, list):
        for item in node:
            _non_blank(item)
        return
    if not isinstance(node, dict):
        return
    if (
        node.get("type") == "string"
        and node.get("minLength", 0) >= 1
        and not {"pattern", "format", "enum", "const"} & node.keys()
    ):
        node["pattern"] = r"\S"
    for value in node.values():
        _non_blank(value)


def complete(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` stating, for every operation, the answers the service gives whatever the
    operation (400/413/415 to a body, 422 to an unknown query parameter, 412 exactly where
    If-Match is taken) and the headers of its answers."""
    _non_blank(schema.get("components", {}).get("schemas", {}))
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            for parameter in operation.get("parameters", ()):
                parameter["schema"] = _not_null(parameter.get("schema", {}))
            responses = operation.setdefault("responses", {})
            if path not in UNAUTHENTICATED:
                # Replaces FastAPI's own 422 (application/json): errors are problem+json.
                for status, answer in _INVALID.items():
                    given = _described(responses, status)
                    responses[str(status)] = {**copy.deepcopy(answer), **given}
            if "requestBody" in operation:
                for status, answer in _BODY_PROBLEMS.items():
                    responses.setdefault(str(status), copy.deepcopy(answer))
            conditional = any(
                p.get("in") == "header" and p.get("name", "").lower() == "if-match"
                for p in operation.get("parameters", ())
            )
            if conditional:
                responses.update({str(k): copy.deepcopy(v) for k, v in _PRECONDITION.items()})
            else:
                responses.pop("412", None)
            _headers(path, method, responses)
    return schema


def _described(responses: dict[str, Any], status: int | str) -> dict[str, Any]:
    """The description an operation gave its answer `status`, unless it is FastAPI's."""
    description = responses.get(str(status), {}).get("description")
    if description and description != "Validation Error":
        return {"description": description}
    return {}


def _not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """An optional parameter's schema without its `null` branch: a parameter is omitted, not
    null (a client sending the text `null` sends a value the server refuses)."""
    branches = schema.get("anyOf")
    if not branches:
        return schema
    kept = [b for b in branches if b.get("type") != "null"]
    rest = {k: v for k, v in schema.items() if k != "anyOf"}
    if len(kept) == 1:
        return {**kept[0], **rest}
    return {**rest, "anyOf": kept}


def _headers(path: str, method: str, responses: dict[str, Any]) -> None:
    versioned = method in {"post", "put", "patch", "delete"} and (
        path in _VERSIONED or path.startswith(_CUSTOMERS + "/{id}")
    )
    for status, answer in responses.items():
        headers: dict[str, Any] = {}
        if status in {"429", "503"}:
            headers["Retry-After"] = _RETRY_AFTER
        if versioned and status in {"200", "201", "204"}:
            headers["ETag"] = _ETAG_HEADER
            headers[CONSISTENCY_HEADER] = _TOKEN_HEADER
        if status == "201" or (status == "202" and method == "post"):
            headers["Location"] = _LOCATION_HEADER
        if headers:
            answer["headers"] = {**answer.get("headers", {}), **headers}
