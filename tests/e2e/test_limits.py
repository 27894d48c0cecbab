"""Rate limits per principal and per client address, per route class, failed
authentications per address, and the body size limit, on service instances configured with
small limits; client addresses from X-Forwarded-For only behind trusted proxies."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import httpx
import pytest
from prometheus_client import REGISTRY

from service.gateway import Gateway
from service.settings import Settings
from tests.e2e.conftest import TokenFactory, new_customer, serve_in_thread
from tests.e2e.test_customers_api import assert_problem

CUSTOMERS = "/api/v1/customers"
IMPORT = f"{CUSTOMERS}/import"


@pytest.fixture(scope="module")
def limited(migrated: Settings) -> Iterator[str]:
    settings = migrated.model_copy(
        update={
            "rate_limit_reads_per_minute": 6,
            "rate_limit_writes_per_minute": 3,
            "rate_limit_exports_per_minute": 2,
            "rate_limit_tracking_per_minute": 2,
            "max_body_bytes": 20_000,
        }
    )
    yield from serve_in_thread(Gateway(settings))


def test_rate_limits(limited: str, auth: TokenFactory) -> None:
    with httpx.Client(base_url=limited, timeout=10) as http:
        one, two = auth(sub="one"), auth(sub="two")
        statuses = [http.get(CUSTOMERS, headers=one).status_code for _ in range(4)]
        statuses += [http.get(CUSTOMERS, headers=two).status_code for _ in range(2)]
        assert statuses == [200] * 6
        # The address's bucket is empty now, whoever asks.
        limited_answer = http.get(CUSTOMERS, headers=two)
        assert_problem(limited_answer, 429)
        assert int(limited_answer.headers["Retry-After"]) >= 1
        # A query sent as a POST is a read, as its route declares (the read app's class).
        assert_problem(http.post(f"{CUSTOMERS}/reports", json={}, headers=one), 429)
        # Other classes have buckets of their own.
        writes = [
            http.post(CUSTOMERS, json=new_customer(), headers=one).status_code for _ in range(4)
        ]
        assert writes == [201, 201, 201, 429]
        # Tracking too (the budget is spent before the body is read).
        track = f"{CUSTOMERS}/track/batch"
        tracked = [http.post(track, json={}, headers=one).status_code for _ in range(3)]
        assert tracked == [422, 422, 429]
        export = f"{CUSTOMERS}/00000000-0000-0000-0000-000000000000/data"
        exports = [http.get(export, headers=auth("dpo")).status_code for _ in range(3)]
        assert exports == [404, 404, 429]


def test_body_size_limit(limited: str, auth: TokenFactory) -> None:
    with httpx.Client(base_url=limited, timeout=10) as http:
        big = new_customer(metadata={"source": "x" * 30_000})
        assert_problem(http.post(CUSTOMERS, json=big, headers=auth()), 413)

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
            yield b'{"email": "a@example.com", "name": "'
            for _ in range(30):
                yield b"y" * 1000
            yield b'"}'

        streamed = http.post(
            CUSTOMERS,
            content=chunks(),
            headers={**auth(), "Content-Type": "application/json"},
        )
        assert_problem(streamed, 413)


FAILURES_PER_MINUTE = 10


@pytest.fixture(scope="module")
def guarded(migrated: Settings) -> Iterator[str]:
    settings = migrated.model_copy(
        update={"auth_failures_per_minute": FAILURES_PER_MINUTE, "rate_limit_writes_per_minute": 3}
    )
    yield from serve_in_thread(Gateway(settings), settings)


def unknown_key_lookups() -> float:
    return REGISTRY.get_sample_value("customers_api_key_lookups_total", {"result": "unknown"}) or 0


def test_failed_authentications_are_limited_before_any_lookup(
    guarded: str, auth: TokenFactory
) -> None:
    """1,000 guessed API keys from one address: the first few are looked up and refused
    (401); then the address gets 429 with Retry-After, and no more lookups are made. Bad
    tokens from the address are refused the same way; a missing token is not a failure."""
    looked_up = unknown_key_lookups()
    with httpx.Client(base_url=guarded, timeout=10) as http:
        answers = [
            http.get(CUSTOMERS, headers={"X-API-Key": f"cmk_{secrets.token_urlsafe(32)}"})
            for _ in range(1000)
        ]
        statuses = [a.status_code for a in answers]
        assert statuses[:FAILURES_PER_MINUTE] == [401] * FAILURES_PER_MINUTE
        limited = answers[FAILURES_PER_MINUTE]
        assert_problem(limited, 429)
        assert int(limited.headers["Retry-After"]) >= 1
        assert statuses.count(429) >= 900 and set(statuses) <= {401, 429}
        # Each 401 cost one lookup; no 429 cost any.
        assert unknown_key_lookups() - looked_up == statuses.count(401)

        # Bad tokens wait too, and so does whoever else calls from the address meanwhile.
        for h in ({"Authorization": "Bearer x.y.z"}, auth()):
            assert_problem(http.get(CUSTOMERS, headers=h), 429)
        assert_problem(http.get(CUSTOMERS), 401)  # no credentials: nothing to look up


def test_forbidden_calls_spend_the_budget(guarded: str, auth: TokenFactory) -> None:
    """Rate limits come before authorization: a caller refused with 403 still spends."""
    analyst = auth("analyst", sub="forbidden")
    with httpx.Client(base_url=guarded, timeout=10) as http:
        statuses = [
            http.post(CUSTOMERS, json=new_customer(), headers=analyst).status_code for _ in range(4)
        ]
    assert statuses == [403, 403, 403, 429]


def exports_of(url: str, auth: TokenFactory) -> list[int]:
    """Three exports, each by another principal and with another X-Forwarded-For."""
    export = f"{CUSTOMERS}/00000000-0000-0000-0000-000000000000/data"
    with httpx.Client(base_url=url, timeout=10) as http:
        return [
            http.get(
                export,
                headers={**auth("dpo", sub=f"dpo-{i}"), "X-Forwarded-For": f"203.0.113.{i}"},
            ).status_code
            for i in range(3)
        ]


def test_forwarded_addresses_count_only_from_trusted_proxies(
    migrated: Settings, auth: TokenFactory
) -> None:
    """A fresh X-Forwarded-For per request must not buy a fresh per-address budget: the
    header counts only from CUSTOMERS_TRUSTED_PROXIES (none by default)."""
    exports = {"rate_limit_exports_per_minute": 2}
    untrusting = migrated.model_copy(update=exports)
    for url in serve_in_thread(Gateway(untrusting), untrusting):
        assert exports_of(url, auth) == [404, 404, 429]
    trusting = migrated.model_copy(update={**exports, "trusted_proxies": "127.0.0.1"})
    for url in serve_in_thread(Gateway(trusting), trusting):
        assert exports_of(url, auth) == [404, 404, 404]


@pytest.fixture(scope="module")
def import_limits(migrated: Settings) -> Iterator[str]:
    settings = migrated.model_copy(
        update={"max_import_bytes": {"admin": 100_000, "manager": 100_000, "support": 2_000}}
    )
    yield from serve_in_thread(Gateway(settings))


def test_import_size_limit_by_role(import_limits: str, auth: TokenFactory) -> None:
    header = "email,name,preferences.marketingConsent,preferences.dataProcessingConsent\r\n"
    body = "".join(f"size{i}@example.com,Size {i},false,true\r\n" for i in range(80))
    content = (header + body).encode()
    assert 2_000 < len(content) < 100_000
    url, params = f"{CUSTOMERS}/import", {"dryRun": "true"}
    csv = {"Content-Type": "text/csv"}
    support, admin = {**auth("support"), **csv}, {**auth("admin"), **csv}
    with httpx.Client(base_url=import_limits, timeout=10) as http:
        refused = http.post(url, content=content, params=params, headers=support)
        assert_problem(refused, 413)
        assert "2000 bytes" in refused.json()["detail"]
        assert http.post(url, content=content, params=params, headers=admin).status_code == 202
        # A role without a limit of its own cannot import at all.
        assert_problem(http.post(url, content=content, headers={**auth("service"), **csv}), 413)

    def pieces() -> Iterator[bytes]:  # no Content-Length: refused once past the limit
        yield content[:1_500]
        yield content[1_500:]

    with httpx.Client(base_url=import_limits, timeout=10) as http:
        streamed = http.post(url, content=pieces(), params=params, headers=support)
        assert_problem(streamed, 413)


def _in_flight() -> float:
    return REGISTRY.get_sample_value("customers_http_requests_in_flight") or 0.0


def test_requests_beyond_the_admission_cap_are_refused_at_once(
    migrated: Settings, auth: TokenFactory
) -> None:
    """Two imports whose files are still arriving hold the write app; a third write is
    refused with 503 + Retry-After while they are held, reads (the read app's own cap),
    health and readiness are still answered, and once they are done the app admits again."""
    settings = migrated.model_copy(update={"max_concurrent_requests": 2})
    release = threading.Event()

    def arriving() -> Iterator[bytes]:
        yield b"email,name\n"
        release.wait(30)

    upload = {**auth(), "Content-Type": "text/csv"}
    for url in serve_in_thread(Gateway(settings), settings):
        with httpx.Client(base_url=url, timeout=30) as http, ThreadPoolExecutor(2) as pool:
            # One at a time, each seen in flight before the next: two sent together can race
            # a third and be the one refused.
            held: list[Future[httpx.Response]] = []
            deadline = time.monotonic() + 10
            for _ in range(2):
                before = _in_flight()
                held.append(pool.submit(http.post, IMPORT, content=arriving(), headers=upload))
                while _in_flight() <= before:
                    assert time.monotonic() < deadline, "a held request never arrived"
            try:
                refused = http.post(CUSTOMERS, json=new_customer(), headers=auth())
                assert not any(h.done() for h in held), "refused only while both were held"
                assert_problem(refused, 503)
                assert "capacity" in refused.json()["detail"]
                assert refused.headers["Retry-After"] == "1"
                assert http.get(CUSTOMERS, headers=auth()).status_code == 200
                assert http.get("/health").status_code == 200
                assert http.get("/ready").status_code == 200
            finally:
                release.set()
            assert [h.result().status_code for h in held] == [202, 202]
            created = http.post(CUSTOMERS, json=new_customer(), headers=auth())
            assert created.status_code == 201
