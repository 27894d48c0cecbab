"""NATS ingestion on real PostgreSQL and JetStream: the ingester process is killed (SIGKILL)
mid-stream and restarted; every published event ends up stored exactly once and the running
totals are exact. Invalid messages and unknown customers are terminated, not retried forever."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import nats
import orjson
import psycopg
import pytest
from nats.js.errors import NotFoundError

from domain.customer import Customer
from eventstore.application import Customers
from projections.runner import Projector
from service.settings import Settings
from tests.integration.test_erasure import people
from write_api.background.ingest import DURABLE, names

MESSAGES = 200
PER_MESSAGE = 100


@pytest.fixture
def tracking_stream(settings: Settings) -> Iterator[tuple[str, str]]:
    stream, prefix = names(settings)
    yield stream, prefix

    async def delete() -> None:
        nc = await nats.connect(str(settings.nats_url))
        try:
            await nc.jetstream().delete_stream(stream)
        finally:
            await nc.close()

    asyncio.run(delete())


def ingester(settings: Settings) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DATABASE_URL": str(settings.database_url)}
    return subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "ingest"], env=env)


def stored(settings: Settings, customers: list[Customer]) -> int:
    with psycopg.connect(str(settings.database_url)) as conn:
        row = conn.execute(
            "SELECT count(*) FROM customer_events WHERE customer_id = ANY(%s)",
            ([c.id for c in customers],),
        ).fetchone()
    return int(row[0]) if row else 0


async def publish(settings: Settings, subject: str, payloads: list[bytes]) -> None:
    from write_api.background.ingest import ensure_stream

    nc = await nats.connect(str(settings.nats_url))
    try:
        js = nc.jetstream()
        await ensure_stream(js, settings)
        for payload in payloads:
            await js.publish(subject, payload)
    finally:
        await nc.close()


async def outstanding(settings: Settings) -> int:
    """Messages not yet delivered, or delivered and neither acknowledged nor terminated."""
    stream, _ = names(settings)
    nc = await nats.connect(str(settings.nats_url))
    try:
        info = await nc.jetstream().consumer_info(stream, DURABLE)
    except NotFoundError:
        return 1  # not subscribed yet
    finally:
        await nc.close()
    return int(info.num_pending or 0) + int(info.num_ack_pending or 0)


def test_killed_ingester_loses_nothing_and_counts_nothing_twice(
    settings: Settings, app: Customers, tracking_stream: tuple[str, str]
) -> None:
    org = f"org-{uuid.uuid4().hex[:6]}"
    customers = people(app, org, 5)
    Projector(settings, app=app).run_once()
    _, prefix = tracking_stream
    batches = [
        {
            "events": [
                {
                    "customerId": str(customers[(m + i) % 5].id),
                    "type": "PURCHASE",
                    "data": {
                        "orderId": f"{m}-{i}",
                        "amount": 1.25,
                        "currency": "EUR",
                        "product": "Socks",
                    },
                }
                for i in range(PER_MESSAGE)
            ]
        }
        for m in range(MESSAGES)
    ]
    invalid = {"events": [{"customerId": str(customers[0].id), "type": "PURCHASE", "data": {}}]}
    unknown = {"customerId": str(uuid.uuid4()), "type": "LOGOUT"}
    payloads = [orjson.dumps(b) for b in (invalid, unknown, *batches)]
    asyncio.run(publish(settings, f"{prefix}.{org}", payloads))
    total = MESSAGES * PER_MESSAGE

    first = ingester(settings)
    try:
        deadline = time.monotonic() + 60
        while (seen := stored(settings, customers)) == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        first.send_signal(signal.SIGKILL)
        first.wait()
    finally:
        if first.poll() is None:
            first.kill()
    assert 0 < seen < total, "the kill should land mid-stream"

    second = ingester(settings)
    try:
        # Done when every message is acknowledged or terminated, redeliveries of what the
        # killed process had fetched (after the ack wait) included.
        deadline = time.monotonic() + 90
        while asyncio.run(outstanding(settings)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert asyncio.run(outstanding(settings)) == 0
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=15)
    assert stored(settings, customers) == total
    with psycopg.connect(str(settings.database_url)) as conn:
        purchases, spent = conn.execute(
            "SELECT sum(purchase_count), sum(total_spent_cents) FROM customer_activity"
            " WHERE customer_id = ANY(%s)",
            ([c.id for c in customers],),
        ).fetchone() or (0, 0)
    assert (purchases, spent) == (total, total * 125)


def test_ingesters_starting_together_share_one_stream(
    settings: Settings, tracking_stream: tuple[str, str]
) -> None:
    """Ingesters that start together each end up with the one tracking stream, whoever
    created it (a CI run once saw an ingester's creation refused as overlapping subjects,
    which ensure_stream now takes as "created meanwhile" when the stream is there)."""
    from write_api.background.ingest import ensure_stream

    async def one() -> None:
        nc = await nats.connect(str(settings.nats_url))
        try:
            await ensure_stream(nc.jetstream(), settings)
        finally:
            await nc.close()

    async def together() -> list[str]:
        await asyncio.gather(*(one() for _ in range(8)))
        nc = await nats.connect(str(settings.nats_url))
        try:
            return [s.config.name for s in await nc.jetstream().streams_info()]
        finally:
            await nc.close()

    assert tracking_stream[0] in asyncio.run(together())
