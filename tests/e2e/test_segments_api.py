"""Segment definitions through the REST gateway, and ruleId checks against a rules-engine fake."""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from service.settings import Settings
from tests.e2e.conftest import TokenFactory, serve_in_thread
from tests.e2e.test_customers_api import assert_problem
from write_api.app import create_app as create_write_app

SEGMENTS = "/api/v1/customers/segments"


def segment(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": f"High Value {uuid.uuid4().hex[:6]}",
        "description": "Customers with lifetime value > 1000",
        "ruleId": "rule-123",
        "criteria": {
            "demographics": {"ageRange": {"min": 25, "max": 65}, "gender": ["MALE", "FEMALE"]},
            "geographic": {"countries": ["Spain", "France", "Italy"]},
        },
    }
    body.update(overrides)
    return body


DERIVED = {"status", "customerCount", "lastCalculated"}  # change as calculations run


def without_derived(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in DERIVED}


def create(http: httpx.Client, headers: dict[str, str], **overrides: Any) -> httpx.Response:
    response = http.post(SEGMENTS, json=segment(**overrides), headers=headers)
    assert response.status_code == 201, response.text
    return response


def test_create_get_list(http: httpx.Client, auth: TokenFactory) -> None:
    created = create(http, auth())
    body = created.json()
    assert created.headers["Location"] == f"{SEGMENTS}/{body['id']}"
    assert created.headers["ETag"] == '"1"'
    # A dynamic segment's first calculation is queued with its creation.
    assert body["status"] == "CALCULATING" and body["kind"] == "DYNAMIC"
    assert body["customerCount"] == 0 and body["lastCalculated"] is None
    assert body["criteria"]["geographic"]["countries"] == ["ES", "FR", "IT"]
    token = {"X-Consistency-Token": created.headers["X-Consistency-Token"]}
    fetched = http.get(created.headers["Location"], headers={**auth(), **token})
    assert fetched.status_code == 200, fetched.text
    assert without_derived(fetched.json()) == without_derived(body)
    listed = http.get(SEGMENTS, headers={**auth(), **token}).json()
    assert [s["id"] for s in listed["items"]] == [body["id"]]


def test_list_pages_through_all(http: httpx.Client, auth: TokenFactory) -> None:
    created = [create(http, auth()) for _ in range(5)]
    ids = [c.json()["id"] for c in created]
    headers = {**auth(), "X-Consistency-Token": created[-1].headers["X-Consistency-Token"]}
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = http.get(SEGMENTS, params=params, headers=headers).json()
        seen += [s["id"] for s in page["items"]]
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert seen == ids
    assert_problem(http.get(SEGMENTS, params={"cursor": "garbage"}, headers=auth()), 422, "cursor")


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"criteria": {}}, "criteria"),
        ({"criteria": None}, "criteria"),
        ({"kind": "STATIC"}, "criteria"),
        ({"name": ""}, "name"),
        ({"ruleId": ""}, "ruleId"),
        (
            {"criteria": {"demographics": {"ageRange": {"min": 70, "max": 20}}}},
            "criteria.demographics.ageRange",
        ),
        (
            {"criteria": {"geographic": {"countries": ["Atlantis"]}}},
            "criteria.geographic.countries",
        ),
        (
            {
                "criteria": {
                    "customRules": [{"field": "password", "operator": "equals", "value": "x"}]
                }
            },
            "criteria.customRules.0.field",
        ),
    ],
)
def test_invalid_definitions_name_the_field(
    http: httpx.Client, auth: TokenFactory, overrides: dict[str, Any], field: str
) -> None:
    response = http.post(SEGMENTS, json=segment(**overrides), headers=auth())
    assert_problem(response, 422)
    fields = {e["field"] for e in response.json()["errors"]}
    assert any(f.startswith(field) for f in fields), fields


def test_static_segment_has_no_criteria(http: httpx.Client, auth: TokenFactory) -> None:
    created = create(http, auth(), kind="STATIC", criteria=None)
    assert created.json()["kind"] == "STATIC" and created.json()["criteria"] is None


def test_name_unique_per_org_case_and_space_insensitive(
    http: httpx.Client, auth: TokenFactory
) -> None:
    name = f"VIP Buyers {uuid.uuid4().hex[:6]}"
    create(http, auth(), name=name)
    clash = http.post(
        SEGMENTS, json=segment(name="  " + name.upper().replace(" ", "  ")), headers=auth()
    )
    assert_problem(clash, 409, "name")
    assert (
        http.post(
            SEGMENTS, json=segment(name=name), headers=auth(org_id=f"o-{uuid.uuid4().hex[:6]}")
        ).status_code
        == 201
    )


def test_concurrent_duplicate_names_one_wins(http: httpx.Client, auth: TokenFactory) -> None:
    body, headers = segment(), auth()
    with ThreadPoolExecutor(max_workers=10) as pool:
        statuses = list(
            pool.map(
                lambda _: http.post(SEGMENTS, json=body, headers=headers).status_code, range(20)
            )
        )
    assert statuses.count(201) == 1 and statuses.count(409) == 19, statuses


def test_update_rename_status_and_if_match(http: httpx.Client, auth: TokenFactory) -> None:
    first = create(http, auth())
    url, old_name = first.headers["Location"], first.json()["name"]
    new_name = f"Renamed {uuid.uuid4().hex[:6]}"
    updated = http.put(
        url, json=segment(name=new_name, status="INACTIVE"), headers={**auth(), "If-Match": '"1"'}
    )
    assert updated.status_code == 200, updated.text
    assert (updated.json()["name"], updated.json()["status"]) == (new_name, "INACTIVE")
    assert_problem(
        http.put(url, json=segment(name=new_name), headers={**auth(), "If-Match": '"1"'}), 412
    )
    assert_problem(http.put(url, json=segment(status="CALCULATING"), headers=auth()), 422, "status")
    assert_problem(
        http.put(url, json=segment(kind="STATIC", criteria=None), headers=auth()), 409, "kind"
    )
    # The old name is free again; the new one is taken.
    assert http.post(SEGMENTS, json=segment(name=old_name), headers=auth()).status_code == 201
    assert_problem(http.post(SEGMENTS, json=segment(name=new_name), headers=auth()), 409, "name")


def test_delete_frees_the_name(http: httpx.Client, auth: TokenFactory) -> None:
    created = create(http, auth())
    url, name = created.headers["Location"], created.json()["name"]
    deleted = http.delete(url, headers=auth())
    assert deleted.status_code == 204
    gone = http.get(
        url, headers={**auth(), "X-Consistency-Token": deleted.headers["X-Consistency-Token"]}
    )
    assert_problem(gone, 404)
    assert_problem(http.delete(url, headers=auth()), 404)
    assert http.post(SEGMENTS, json=segment(name=name), headers=auth()).status_code == 201


def test_segments_are_scoped_and_role_checked(http: httpx.Client, auth: TokenFactory) -> None:
    created = create(http, auth("manager"))
    stranger = auth(org_id=f"s-{uuid.uuid4().hex[:6]}")
    token = {"X-Consistency-Token": created.headers["X-Consistency-Token"]}
    assert_problem(http.get(created.headers["Location"], headers={**stranger, **token}), 404)
    assert_problem(http.put(created.headers["Location"], json=segment(), headers=stranger), 404)
    assert_problem(http.post(SEGMENTS, json=segment(), headers=auth("analyst")), 403)
    assert_problem(http.post(SEGMENTS, json=segment(), headers=auth("support")), 403)


# --- rules engine ------------------------------------------------------------------------


class RulesEngineFake:
    """A real HTTP server standing in for the rules engine."""

    def __init__(self) -> None:
        self.rules = {"rule-123", "rule-456"}
        self.mode = "ok"  # "ok" | "error" | "slow"
        self.hits = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake.hits += 1
                if fake.mode == "slow":
                    threading.Event().wait(1.0)
                rule = self.path.rsplit("/", 1)[-1]
                if fake.mode == "error":
                    status = 500
                else:
                    status = (
                        200
                        if self.path.startswith("/api/v1/rules/") and rule in fake.rules
                        else 404
                    )
                with contextlib.suppress(BrokenPipeError):  # the client gave up: a timeout
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def engine() -> Iterator[RulesEngineFake]:
    fake = RulesEngineFake()
    yield fake
    fake.server.shutdown()


@pytest.fixture
def checked_http(migrated: Settings, engine: RulesEngineFake) -> Iterator[httpx.Client]:
    settings = migrated.model_copy(
        update={
            "rules_engine_url": engine.url,
            "rules_engine_timeout_seconds": 0.3,
            "rules_engine_retries": 1,
            "rules_engine_breaker_failures": 2,
            "rules_engine_breaker_reset_seconds": 60.0,
        }
    )
    for url in serve_in_thread(create_write_app(settings)):
        with httpx.Client(base_url=url, timeout=30) as client:
            yield client


def test_rule_must_exist_in_the_rules_engine(
    checked_http: httpx.Client, auth: TokenFactory
) -> None:
    assert (
        checked_http.post(SEGMENTS, json=segment(ruleId="rule-456"), headers=auth()).status_code
        == 201
    )
    assert_problem(
        checked_http.post(SEGMENTS, json=segment(ruleId="rule-nope"), headers=auth()), 422, "ruleId"
    )


def test_rules_engine_down_is_503_then_the_breaker_opens(
    checked_http: httpx.Client, auth: TokenFactory, engine: RulesEngineFake
) -> None:
    engine.mode = "error"
    for _ in range(2):  # two failed checks (each with its retry) open the breaker
        response = checked_http.post(SEGMENTS, json=segment(), headers=auth())
        assert_problem(response, 503)
        assert response.headers["Retry-After"]
    hits = engine.hits
    engine.mode = "ok"
    assert_problem(checked_http.post(SEGMENTS, json=segment(), headers=auth()), 503)
    assert engine.hits == hits  # open breaker: the engine was not even asked


def test_slow_rules_engine_times_out_as_503(
    checked_http: httpx.Client, auth: TokenFactory, engine: RulesEngineFake
) -> None:
    engine.mode = "slow"
    assert_problem(checked_http.post(SEGMENTS, json=segment(), headers=auth()), 503)
