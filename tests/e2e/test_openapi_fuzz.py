"""Schemathesis over the published OpenAPI of both apps: no 5xx, answers match the schema."""

from __future__ import annotations

import os
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.e2e.conftest import TokenFactory

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def test_no_server_errors_and_schema_conformance(service_url: str, auth: TokenFactory) -> None:
    schema = schemathesis.openapi.from_url(f"{service_url}/openapi.json")
    headers = auth()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 7
    calls: list[str] = []

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=30,
            deadline=None,
            database=None,
            # Deterministic in CI (a landing must not depend on luck); random locally.
            derandomize=bool(os.environ.get("CI")),
            suppress_health_check=list(HealthCheck),
        )
        def exercise(case: Any) -> None:
            # A token beyond the log must answer 503 after the bounded wait (by design, and
            # tested in test_read_api); here it would only slow the run and trip the 5xx check.
            if case.headers:
                case.headers.pop("X-Consistency-Token", None)
            case.call_and_validate(base_url=service_url, headers=headers, checks=CHECKS)
            calls.append(case.method)

        exercise()

    # Every operation was really exercised, not skipped by the generator.
    assert {c.upper() for c in calls} >= {"GET", "POST", "PUT", "DELETE"}
    assert len(calls) >= 5 * len(operations)
