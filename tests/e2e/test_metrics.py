"""Metrics and correlation ids over real HTTP, PostgreSQL and NATS.

The module runs its own gateway on a scratch database with no projector, relay or segments
process beside it: the tests drive those one step at a time, so lag figures can be compared
with the positions they describe. Figures are not cached (CUSTOMERS_METRICS_CACHE_SECONDS=0).
"""

from __future__ import annotations

import asyncio
import io
import logging
import re
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import nats
import orjson
import psycopg
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from eventstore.application import Customers
from eventstore.relay import CORRELATION_HEADER, NOTIFICATION_HEADER, POSITION_NAME, Relay
from projections.customers import VIEW
from projections.positions import max_notification_id, read_position
from projections.runner import Projector
from service.auth import issue_token
from service.gateway import Gateway
from service.http_metrics import HttpMetrics
from service.logs import JsonFormatter
from service.settings import Settings
from tests.e2e.conftest import new_customer, serve_in_thread
from tests.e2e.test_segments_api import segment
from tests.integration.conftest import _delete_stream
from tests.integration.test_relay import read_stream
from write_api.background.calculation import Calculator
from write_api.background.ingest import Ingester, ensure_stream, names

CUSTOMERS = "/api/v1/customers"
SEGMENTS = "/api/v1/customers/segments"
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class RulesEngine:
    """A rules engine that remembers the correlation ids it was sent; rule "r-down" fails."""

    def __init__(self) -> None:
        self.correlation_ids: list[str | None] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake.correlation_ids.append(self.headers.get("X-Correlation-ID"))
                self.send_response(500 if self.path.endswith("/r-down") else 200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def rules_engine() -> Iterator[RulesEngine]:
    fake = RulesEngine()
    yield fake
    fake.server.shutdown()


@pytest.fixture(scope="module")
def settings(scratch_settings: Settings, rules_engine: RulesEngine) -> Iterator[Settings]:
    suffix = secrets.token_hex(4)
    settings = scratch_settings.model_copy(
        update={
            "metrics_cache_seconds": 0.0,
            "nats_stream": f"METRICS_TEST_{suffix.upper()}",
            "nats_subject_prefix": f"metricstest{suffix}",
            "rules_engine_url": rules_engine.url,
            "rules_engine_retries": 0,
            "rules_engine_breaker_failures": 1,
            "rules_engine_breaker_reset_seconds": 0.01,
        }
    )
    yield settings
    assert settings.nats_url
    for stream in (settings.nats_stream, names(settings)[0]):
        asyncio.run(_delete_stream(settings.nats_url, stream))


@pytest.fixture(scope="module")
def service(settings: Settings) -> Iterator[httpx.Client]:
    for url in serve_in_thread(Gateway(settings)):
        with httpx.Client(base_url=url, timeout=30) as client:
            yield client


@pytest.fixture
def headers(settings: Settings) -> dict[str, str]:
    org = f"org-{uuid.uuid4().hex[:10]}"
    token = issue_token(settings, sub="tester", org=org, roles=["admin"])
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """The JSON lines every logger writes meanwhile."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield stream
    finally:
        root.removeHandler(handler)


def logged(stream: io.StringIO, correlation_id: str, msg: str) -> list[dict[str, Any]]:
    """The log lines with `correlation_id`, once one of them is `msg` (a request's line is
    written after its answer went out, so it may come a moment after the answer)."""
    deadline = time.monotonic() + 60
    while True:
        lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
        found = [x for x in lines if x.get("correlationId") == correlation_id]
        if any(msg in x["msg"] for x in found):
            return found
        assert time.monotonic() < deadline, f"no {msg!r} line with {correlation_id}"
        time.sleep(0.05)


def scrape(http: httpx.Client) -> Samples:
    answer = http.get("/metrics")
    assert answer.status_code == 200, answer.text
    assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(answer.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def figures(http: httpx.Client, name: str, expected: float, **labels: str) -> Samples:
    """A scrape whose database figure `name` is `expected`: figures are reused for up to 20
    times what their last refresh cost, even with no cache time configured."""
    deadline = time.monotonic() + 10
    while value(samples := scrape(http), name, **labels) != expected:
        assert time.monotonic() < deadline, f"{name} {labels} = {value(samples, name, **labels)}"
        time.sleep(0.05)
    return samples


def project(settings: Settings) -> None:
    projector = Projector(settings)
    try:
        projector.run_once()
    finally:
        projector.close()


def relay(settings: Settings) -> int:
    async def once() -> int:
        app = Customers(settings, pool_size=1)
        relay = Relay(settings, app)
        try:
            return await relay.run_once()
        finally:
            await relay.close()
            app.close()

    return asyncio.run(once())


def positions(settings: Settings) -> tuple[int, int, int]:
    """(max notification id, customers_view position, relay position)."""
    assert settings.database_url
    with psycopg.connect(settings.database_url) as conn:
        return (
            max_notification_id(conn),
            read_position(conn, VIEW),
            read_position(conn, POSITION_NAME),
        )


def create_customer(http: httpx.Client, headers: dict[str, str], **extra: str) -> httpx.Response:
    created = http.post(CUSTOMERS, json=new_customer(), headers={**headers, **extra})
    assert created.status_code == 201, created.text
    return created


# --------------------------------------------------------------------------- HTTP


def test_requests_are_counted_by_route_template_never_by_path(
    service: httpx.Client, settings: Settings, headers: dict[str, str]
) -> None:
    before = scrape(service)
    cid = create_customer(service, headers).json()["id"]
    project(settings)
    assert service.get(f"{CUSTOMERS}/{uuid.uuid4()}", headers=headers).status_code == 404
    assert service.get(f"{CUSTOMERS}/{cid}", headers=headers).status_code == 200
    assert service.get(f"{CUSTOMERS}/{uuid.uuid4()}", headers=headers).status_code == 404
    assert service.post(CUSTOMERS, json={"name": 1}, headers=headers).status_code == 422
    assert service.get(f"/no/such/{uuid.uuid4()}").status_code == 404
    after = scrape(service)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    requests = "customers_http_requests_total"
    one = f"{CUSTOMERS}/{{id}}"
    assert delta(requests, method="POST", route=CUSTOMERS, status="201") == 1
    assert delta(requests, method="POST", route=CUSTOMERS, status="422") == 1
    assert delta(requests, method="GET", route=one, status="404") == 2
    assert delta(requests, method="GET", route=one, status="200") == 1
    assert delta(requests, method="GET", route="unmatched", status="404") == 1
    duration = "customers_http_request_duration_seconds_count"
    assert delta(duration, method="GET", route=one) == 3
    assert value(after, "customers_http_requests_in_flight") >= 1  # the scrape itself
    routes = {dict(labels).get("route", "") for _, labels in after}
    assert not [r for r in routes if UUID.search(r)], "a path with an id became a label"


def test_unhandled_errors_are_counted_as_500_by_route() -> None:
    app = FastAPI()
    app.add_middleware(HttpMetrics)

    @app.get("/boom/{thing}")
    def boom(thing: str) -> None:
        raise RuntimeError("boom")

    async def get(paths: list[str]) -> list[int]:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return [(await client.get(path)).status_code for path in paths]

    labels = {"method": "GET", "route": "/boom/{thing}", "status": "500"}
    before = REGISTRY.get_sample_value("customers_http_requests_total", labels) or 0.0
    assert asyncio.run(get(["/boom/x", "/boom/y"])) == [500, 500]
    assert REGISTRY.get_sample_value("customers_http_requests_total", labels) == before + 2


def test_pools_are_reported(service: httpx.Client) -> None:
    samples = scrape(service)
    for pool in ("read-api", "write-api"):
        assert value(samples, "customers_db_pool_max_connections", pool=pool) >= 2
        open_connections = value(
            samples, "customers_db_pool_connections", pool=pool, state="in_use"
        ) + value(samples, "customers_db_pool_connections", pool=pool, state="idle")
        assert open_connections >= 1
        assert ("customers_db_pool_requests_waiting", frozenset({("pool", pool)})) in samples


# --------------------------------------------------------------------------- figures


def test_lag_figures_are_the_positions_behind_the_log(
    service: httpx.Client, settings: Settings, headers: dict[str, str]
) -> None:
    project(settings)
    relay(settings)
    caught_up = figures(service, "customers_relay_lag_events", 0)
    assert value(caught_up, "customers_figures_up") == 1
    assert value(caught_up, "customers_projection_lag_events", projection=VIEW) == 0

    for _ in range(3):
        create_customer(service, headers)
    top, view, relayed = positions(settings)
    assert top >= view + 3 and view == relayed
    behind = figures(service, "customers_relay_lag_events", top - relayed)
    assert value(behind, "customers_projection_lag_events", projection=VIEW) == top - view

    project(settings)
    projected = figures(service, "customers_projection_lag_events", 0, projection=VIEW)
    assert value(projected, "customers_relay_lag_events") == top - relayed
    lags = {
        dict(labels)["projection"]: v
        for (name, labels), v in projected.items()
        if name == "customers_projection_lag_events"
    }
    assert set(lags) >= {VIEW, "segments_view", "segment_membership", "consent_ledger"}
    assert POSITION_NAME not in lags  # the relay has a figure of its own

    published = value(projected, "customers_relay_messages_total", result="published")
    assert relay(settings) == top - relayed
    relayed_all = figures(service, "customers_relay_lag_events", 0)
    assert value(relayed_all, "customers_relay_position") == top
    assert value(relayed_all, "customers_relay_messages_total", result="published") >= (
        published + 3
    )


def test_business_figures_match_the_read_models(
    service: httpx.Client, settings: Settings, headers: dict[str, str]
) -> None:
    created = [create_customer(service, headers).json()["id"] for _ in range(2)]
    project(settings)
    assert settings.database_url
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        conn.execute(  # two open export requests, one of them past its deadline
            "INSERT INTO privacy_requests (id, org_id, customer_id, type, status, requested_by,"
            " due_at) VALUES (%s, 'org-x', %s, 'EXPORT', 'RECEIVED', 'dpo', now() - interval"
            " '1 day'), (%s, 'org-x', %s, 'EXPORT', 'IN_PROGRESS', 'dpo', now() + interval"
            " '29 days')",
            (uuid.uuid4(), created[0], uuid.uuid4(), created[1]),
        )
        by_status = dict(
            conn.execute("SELECT status, count(*) FROM customers_view GROUP BY status").fetchall()
        )
        (new,) = conn.execute(
            "SELECT count(*) FROM customers_view WHERE created_at > now() - interval '1 day'"
        ).fetchone() or (0,)
        (open_requests, overdue, due) = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE due_at < now()),"
            " count(*) FILTER (WHERE due_at < now() + interval '7 days') FROM privacy_requests"
            " WHERE status IN ('RECEIVED', 'IN_PROGRESS')"
        ).fetchone() or (0, 0, 0)
        (exports,) = conn.execute(
            "SELECT count(*) FROM privacy_requests WHERE type = 'EXPORT'"
            " AND received_at > now() - interval '1 day'"
        ).fetchone() or (0,)
    samples = figures(service, "customers_privacy_requests_open", open_requests)
    assert by_status["ACTIVE"] >= 2
    for status in ("ACTIVE", "INACTIVE", "SUSPENDED", "DELETED", "ANONYMIZED"):
        assert value(samples, "customers_profiles", status=status) == by_status.get(status, 0)
    assert value(samples, "customers_profiles_created_24h") == new
    assert value(samples, "customers_privacy_requests_open") == open_requests >= 2
    assert value(samples, "customers_privacy_requests_overdue") == overdue >= 1
    assert value(samples, "customers_privacy_requests_due_7d") == due == overdue
    assert value(samples, "customers_privacy_requests_received_24h", type="EXPORT") == exports
    assert value(samples, "customers_privacy_requests_received_24h", type="ERASURE") == 0


def test_tracking_and_segment_jobs_are_counted(
    service: httpx.Client, settings: Settings, headers: dict[str, str]
) -> None:
    cid = create_customer(service, headers).json()["id"]
    project(settings)
    before = scrape(service)
    event = {
        "type": "PAGE_VIEW",
        "eventId": str(uuid.uuid4()),
        "timestamp": datetime.now(UTC).isoformat(),
        "data": {"url": "https://shop.example/"},
    }
    for _ in range(2):  # the second is a duplicate
        tracked = service.post(f"{CUSTOMERS}/{cid}/track", json=event, headers=headers)
        assert tracked.status_code == 202, tracked.text
    created = service.post(SEGMENTS, json=segment(ruleId="r-ok"), headers=headers)
    assert created.status_code == 201, created.text
    project(settings)
    app = Customers(settings, pool_size=1)
    calculator = Calculator(app)
    try:
        while calculator.run_next():
            pass
    finally:
        calculator.close()
        app.close()
    after = scrape(service)
    tracked_events = "customers_tracking_events_total"
    assert value(after, tracked_events, result="stored") == (
        value(before, tracked_events, result="stored") + 1
    )
    assert value(after, tracked_events, result="duplicate") == (
        value(before, tracked_events, result="duplicate") + 1
    )
    jobs = "customers_segment_job_duration_seconds_count"
    assert value(after, jobs, outcome="succeeded") >= value(before, jobs, outcome="succeeded") + 1


def test_metrics_hold_no_personal_data(
    service: httpx.Client, settings: Settings, headers: dict[str, str]
) -> None:
    body = new_customer(name="Zelda Quxworth")
    created = service.post(CUSTOMERS, json=body, headers=headers)
    assert created.status_code == 201, created.text
    project(settings)
    assert service.get(f"{CUSTOMERS}/{created.json()['id']}", headers=headers).status_code == 200
    text = service.get("/metrics").text
    assert "@" not in text
    assert "Zelda" not in text and "Quxworth" not in text
    assert not UUID.search(text), "an id reached the metrics"
    assert "org-" not in text  # nor an organization


# --------------------------------------------------------------------------- correlation


def test_correlation_id_is_taken_validated_and_echoed(
    service: httpx.Client, headers: dict[str, str]
) -> None:
    given = service.get("/health", headers={"X-Correlation-ID": "order-7f3a:checkout.2"})
    assert given.headers["X-Correlation-ID"] == "order-7f3a:checkout.2"
    for bad in ("two words", "someone@example.com", "x" * 65, "../etc", ""):
        answer = service.get("/health", headers={"X-Correlation-ID": bad})
        replaced = answer.headers["X-Correlation-ID"]
        assert replaced != bad and re.fullmatch(r"[0-9a-f]{32}", replaced)
    absent = service.get("/health")
    assert absent.headers["X-Correlation-ID"] == absent.headers["X-Request-Id"]
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    traced = service.get("/health", headers={"traceparent": f"00-{trace}-00f067aa0ba902b7-01"})
    assert traced.headers["X-Correlation-ID"] == trace


def test_correlation_id_reaches_every_log_line_and_the_rules_engine(
    service: httpx.Client,
    headers: dict[str, str],
    rules_engine: RulesEngine,
    log_lines: io.StringIO,
) -> None:
    ok = service.post(
        SEGMENTS, json=segment(ruleId="r-ok"), headers={**headers, "X-Correlation-ID": "corr-ok"}
    )
    assert ok.status_code == 201, ok.text
    assert rules_engine.correlation_ids[-1] == "corr-ok"
    # The engine fails: the breaker opens, logged inside the request (a worker thread).
    down = service.post(
        SEGMENTS, json=segment(ruleId="r-down"), headers={**headers, "X-Correlation-ID": "corr-2"}
    )
    assert down.status_code == 503, down.text
    assert rules_engine.correlation_ids[-1] == "corr-2"
    time.sleep(0.05)  # the breaker closes again
    of_request = logged(log_lines, "corr-2", "request")
    assert {line["msg"] for line in of_request} >= {"rules engine circuit opened", "request"}
    (request_line,) = [line for line in of_request if line["msg"] == "request"]
    assert request_line["route"] == SEGMENTS and request_line["status"] == 503
    assert request_line["requestId"] == down.headers["X-Request-Id"]


def test_a_writes_correlation_id_reaches_its_nats_message(
    service: httpx.Client, settings: Settings, headers: dict[str, str], log_lines: io.StringIO
) -> None:
    """The request's correlation id is recorded with its events and published in their
    messages' headers; its log line also names the notification id of its last event (its
    consistency token), which the message carries too."""
    created = create_customer(service, headers, **{"X-Correlation-ID": "corr-nats"})
    token = created.headers["X-Consistency-Token"]
    (request_line,) = [
        x for x in logged(log_lines, "corr-nats", "request") if x["msg"] == "request"
    ]
    assert request_line["consistencyToken"] == token
    relay(settings)
    messages = asyncio.run(read_stream(settings))
    (message,) = [m for m in messages if m.headers[NOTIFICATION_HEADER] == token]
    assert message.data["customerId"] == created.json()["id"]
    assert message.headers[CORRELATION_HEADER] == "corr-nats"
    with psycopg.connect(str(settings.database_url)) as conn:  # published: not kept
        left = conn.execute(
            "SELECT count(*) FROM event_correlations WHERE notification_id <= %s", (int(token),)
        ).fetchone()
    assert left == (0,)


def test_ingest_logs_the_producers_correlation_id(
    settings: Settings, log_lines: io.StringIO
) -> None:
    unknown = {"outcome": "unknown_customer"}
    before = REGISTRY.get_sample_value("customers_ingest_messages_total", unknown) or 0.0
    ingester = Ingester(settings)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(ingester.run(),))
    thread.start()
    try:

        async def publish() -> None:
            assert settings.nats_url
            nc = await nats.connect(settings.nats_url)
            try:
                js = nc.jetstream()
                await ensure_stream(js, settings)
                event = {"customerId": str(uuid.uuid4()), "type": "LOGOUT"}
                _, prefix = names(settings)
                await js.publish(
                    f"{prefix}.org-x",
                    orjson.dumps(event),
                    headers={"X-Correlation-ID": "corr-ingest"},
                )
            finally:
                await nc.close()

        asyncio.run(publish())
        (line,) = logged(log_lines, "corr-ingest", "unknown customer")
    finally:
        loop.call_soon_threadsafe(ingester.stop)
        thread.join(timeout=10)
        loop.close()
    assert line["level"] == "WARNING"
    assert REGISTRY.get_sample_value("customers_ingest_messages_total", unknown) == before + 1


def test_metrics_token(settings: Settings) -> None:
    """With CUSTOMERS_METRICS_TOKEN set, /metrics on an HTTP port answers
    only a scraper that sends it; API tokens do not open it."""
    secret = secrets.token_urlsafe(32)
    guarded = settings.model_copy(update={"metrics_token": secret})
    api_token = issue_token(settings, sub="tester", org="org-metrics", roles=["admin"])
    for url in serve_in_thread(Gateway(guarded)):
        with httpx.Client(base_url=url, timeout=30) as http:
            for h in ({}, {"Authorization": f"Bearer {api_token}"}, {"Authorization": "Bearer x"}):
                assert http.get("/metrics", headers=h).status_code == 401
            scraped = http.get("/metrics", headers={"Authorization": f"Bearer {secret}"})
            assert scraped.status_code == 200 and "customers_http_requests" in scraped.text
