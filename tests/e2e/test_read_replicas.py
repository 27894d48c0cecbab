"""Read replicas over real streaming replication: a private primary and its replica
(service.replication; never the shared server), the replica held back by
`recovery_min_apply_delay`. A read carrying its write's consistency token sees that write
whoever answers it; the same read without the token, answered by the replica, does not:
the gate is what makes replica reads safe to follow a write."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from prometheus_client import REGISTRY

from eventstore.application import Customers
from eventstore.migrate import migrate
from projections.runner import Projector
from read_api.app import create_app as create_read_app
from service.auth import issue_token
from service.gateway import Gateway
from service.replication import StreamingPair
from service.settings import Settings
from tests.e2e.conftest import new_customer, serve_in_thread

TOKEN = "X-Consistency-Token"
APPLY_DELAY_MS = 1000
ROUNDS = 12  # concurrent create → read → update → reads


@pytest.fixture(scope="module")
def pair() -> Iterator[StreamingPair]:
    pair = StreamingPair(Path(tempfile.mkdtemp(prefix="customers-replicas-", dir="/var/tmp")))
    try:
        pair.start()
        yield pair
    finally:
        pair.stop()


@pytest.fixture(scope="module")
def replicated(env: Settings, pair: StreamingPair) -> Settings:
    """Settings of a service on the private primary, reading from its replica; untokened
    reads go to the replica within 30 s of lag (all of them, with a 1 s delay)."""
    with psycopg.connect(pair.url(), autocommit=True) as conn:
        conn.execute("CREATE DATABASE customers")
    url = pair.url("customers")
    migrate(url)
    settings = env.model_copy(
        update={
            "database_url": url,
            "read_replica_urls": [pair.url("customers", replica=True)],
            "replica_max_lag_seconds": 30.0,
            "consistency_wait_seconds": 5.0,
        }
    )
    Customers(settings, create_table=True).close()
    pair.wait_replayed()  # the schema is there before the replica is held back
    pair.set_apply_delay(APPLY_DELAY_MS)
    return settings


@pytest.fixture(scope="module")
def service(replicated: Settings) -> Iterator[str]:
    projector = Projector(replicated)
    projector.start()
    try:
        yield from serve_in_thread(Gateway(replicated))
    finally:
        projector.stop()


@pytest.fixture
def headers(replicated: Settings, org: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_token(replicated, sub='t', org=org, roles=['admin'])}"}


def served() -> dict[tuple[str, str], float]:
    """customers_reads_served_total by (target, token)."""
    return {
        (target, token): REGISTRY.get_sample_value(
            "customers_reads_served_total", {"target": target, "token": token}
        )
        or 0.0
        for target in ("primary", "replica")
        for token in ("true", "false")
    }


def token_waits(target: str) -> float:
    labels = {"target": target}
    return REGISTRY.get_sample_value("customers_replica_token_wait_seconds_count", labels) or 0.0


@dataclass
class Round:
    followed: bool  # the untokened read of the Location right after the create found it
    created_seen: bool  # the token read right after the create found the customer
    updated_seen: bool  # the token read right after the update showed it
    naive_stale: bool  # the untokened read right after the update showed the version before


def round_trip(base: str, headers: dict[str, str]) -> Round:
    with httpx.Client(base_url=base, timeout=30) as http:
        created = http.post("/api/v1/customers", json=new_customer(), headers=headers)
        assert created.status_code == 201, created.text
        url = created.headers["Location"]
        # Following the Location without the token: the replica has not replayed the create
        # (a 404 there), so the read waits until it has, and reads there again.
        followed = http.get(url, headers=headers)
        first = http.get(url, headers={**headers, TOKEN: created.headers[TOKEN]})
        body = new_customer(email=created.json()["email"], name="Rename")
        updated = http.put(url, json=body, headers={**headers, "If-Match": '"1"'})
        assert updated.status_code == 200, updated.text
        naive = http.get(url, headers=headers)
        fresh = http.get(url, headers={**headers, TOKEN: updated.headers[TOKEN]})
    assert naive.status_code == 200, naive.text
    return Round(
        followed=followed.status_code == 200,
        created_seen=first.status_code == 200 and first.json()["version"] == 1,
        updated_seen=fresh.status_code == 200 and fresh.json()["version"] == 2,
        naive_stale=naive.json()["version"] < 2,
    )


def test_token_reads_see_their_write_naive_replica_reads_do_not(
    service: str, headers: dict[str, str]
) -> None:
    before, waited_before = served(), token_waits("replica")
    with ThreadPoolExecutor(ROUNDS) as pool:
        rounds = list(pool.map(lambda _: round_trip(service, headers), range(ROUNDS)))
    after = served()

    # 0 stale reads with a token, whoever answered them ...
    assert all(r.created_seen for r in rounds), rounds
    assert all(r.followed for r in rounds), rounds
    assert all(r.updated_seen for r in rounds), rounds
    # ... while the same read without it, on the held-back replica, was stale: the gate matters.
    assert sum(r.naive_stale for r in rounds) > 0, rounds
    # Untokened reads went to the replica (within the lag bound) ...
    assert after["replica", "false"] - before["replica", "false"] == 2 * ROUNDS
    assert after["primary", "false"] == before["primary", "false"]
    # ... and token reads to the replica too, once it had replayed their write.
    assert after["replica", "true"] - before["replica", "true"] > 0
    assert token_waits("replica") > waited_before


def ready(base: str) -> dict[str, Any]:
    answer = httpx.get(f"{base}/ready", timeout=10)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def test_a_replica_behind_the_lag_bound_hands_reads_to_the_primary(
    replicated: Settings, pair: StreamingPair, service: str, headers: dict[str, str]
) -> None:
    strict = replicated.model_copy(update={"replica_max_lag_seconds": 0.5})
    for base in serve_in_thread(create_read_app(strict)):
        pair.pause_replay()
        try:
            created = httpx.post(
                f"{service}/api/v1/customers", json=new_customer(), headers=headers, timeout=30
            )
            assert created.status_code == 201, created.text
            deadline = time.monotonic() + 20
            while (ready(base)["replicas"][0]["lagSeconds"] or 0) <= 0.5:
                assert time.monotonic() < deadline, "the replica's lag never showed"
                time.sleep(0.1)
            before = served()
            url = f"{base}{created.headers['Location']}"
            naive = httpx.get(url, headers=headers, timeout=30)
            tokened = httpx.get(url, headers={**headers, TOKEN: created.headers[TOKEN]})
            after = served()
        finally:
            pair.pause_replay(False)
    # The paused replica never has this customer: both reads were the primary's.
    assert naive.status_code == 200 and tokened.status_code == 200, (naive.text, tokened.text)
    assert after["primary", "false"] - before["primary", "false"] == 1
    assert after["primary", "true"] - before["primary", "true"] == 1
    assert after["replica", "false"] == before["replica", "false"]
    assert after["replica", "true"] == before["replica", "true"]
