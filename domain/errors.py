"""The one error type of the service; entrypoints map its code to HTTP in one place."""

from __future__ import annotations

from enum import StrEnum


class Code(StrEnum):
    INVALID = "invalid"  # 422: input breaks a rule; `field` names the culprit
    NOT_FOUND = "not_found"  # 404
    CONFLICT = "conflict"  # 409: state or uniqueness forbids the change
    FORBIDDEN = "forbidden"  # 403: the actor lacks the role
    UNAUTHORIZED = "unauthorized"  # 401
    PRECONDITION_FAILED = "precondition_failed"  # 412: stale If-Match
    UNAVAILABLE = "unavailable"  # 503: a dependency or consistency wait timed out
    RATE_LIMITED = "rate_limited"  # 429: retry after `retry_after` seconds
    TOO_LARGE = "too_large"  # 413: the request (an import's file) exceeds the caller's limit
    UNSUPPORTED = "unsupported"  # 415: a body in a media type the endpoint does not take


class DomainError(Exception):
    def __init__(
        self,
        code: Code,
        detail: str,
        *,
        field: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.field = field
        self.retry_after = retry_after


def invalid(field: str, detail: str) -> DomainError:
    return DomainError(Code.INVALID, detail, field=field)
