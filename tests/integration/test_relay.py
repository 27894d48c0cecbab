"""The NATS relay against real PostgreSQL and real NATS JetStream.

Each test has its own scratch database and its own stream; the fault test has its own
nats-server (`private_nats`) that it kills and restarts while events keep coming.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import nats
import orjson
import psycopg
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from domain.customer import Customer
from domain.membership import Change, Reason, events, stream_id
from domain.topics import CUSTOMER_MODULE
from domain.values import CustomerStatus, Profile
from eventstore.application import Customers
from eventstore.relay import MSG_ID_HEADER, NOTIFICATION_HEADER, POSITION_NAME, Relay
from service import embedded
from service.settings import Settings
from tests.integration.conftest import Env, make_env, wait_listening
from write_api.background.membership import append

ORGS = ("acme", "globex.eu")  # the second one is not a valid subject token: hashed


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def private(
    monkeypatch: pytest.MonkeyPatch, scratch_db: str, private_nats: embedded.EmbeddedNats
) -> Iterator[Env]:
    yield from make_env(monkeypatch, scratch_db, private_nats.url)


# --------------------------------------------------------------------------- helpers


def profile(i: int, email: str | None = None) -> Profile:
    return Profile.model_validate(
        {
            "email": email or f"person{i}.secret@example.org",
            "name": f"Person Number{i} Secretname",
            "location": {"country": "ES", "city": "Valladolid"},
            "preferences": {"marketingConsent": True, "dataProcessingConsent": True},
        }
    )


def register(app: Customers, start: int, count: int, org: str = "acme") -> list[Customer]:
    """`count` new customers, saved 200 per transaction: bigger saves can hang in psycopg's
    pipeline mode over a unix socket (embedded PostgreSQL; psycopg issue #685)."""
    customers = [Customer.register(org, profile(start + i), "writer") for i in range(count)]
    for i in range(0, count, 200):
        chunk = customers[i : i + 200]
        app.save(*chunk, new_keys=[app.keys.create(c.id, org) for c in chunk])
    return customers


def full_lifecycle(app: Customers, i: int, org: str) -> Customer:
    """Every public event type of one customer, one save per command."""
    now = datetime.now(UTC)
    (c,) = register(app, i, 1, org)
    c.update(
        Profile.model_validate(
            {**profile(i, f"renamed{i}@example.net").dump(), "name": f"Renamed Secret{i}"}
        ),
        status=CustomerStatus.INACTIVE,
        actor="writer",
        actor_is_admin=False,
        now=now,
        verification_ttl=timedelta(hours=1),
    )
    app.save(c)
    c.verify_email(c.pending_token or "", actor="t", now=now)
    app.save(c)
    c.set_active_orders(2, actor="t")
    app.save(c)
    c.set_active_orders(0, actor="t")
    c.delete(actor="writer")
    app.save(c)
    return c


def expected_ids(
    settings: Settings, shredded: frozenset[str] | set[str] = frozenset()
) -> list[str]:
    """Public event ids of every customer notification, in notification order."""
    assert settings.database_url
    with psycopg.connect(settings.database_url) as conn:
        rows = conn.execute(
            "SELECT originator_id, originator_version, topic FROM customers_events"
            " ORDER BY notification_id"
        ).fetchall()
    return [
        f"{oid}:{version}"
        for oid, version, topic in rows
        if topic.startswith(CUSTOMER_MODULE) and str(oid) not in shredded
    ]


def stored_position(settings: Settings) -> tuple[int, int]:
    """(relay position, max notification id)."""
    assert settings.database_url
    with psycopg.connect(settings.database_url) as conn:
        row = conn.execute(
            "SELECT (SELECT position FROM positions WHERE name = %s),"
            " (SELECT COALESCE(max(notification_id), 0) FROM customers_events)",
            (POSITION_NAME,),
        ).fetchone()
    assert row is not None
    return row[0] or 0, row[1]


@dataclass
class Message:
    subject: str
    headers: dict[str, str]
    data: dict[str, Any]
    seq: int


async def read_stream(settings: Settings) -> list[Message]:
    """Every message of the stream, in stream order."""
    assert settings.nats_url
    nc = await nats.connect(settings.nats_url, connect_timeout=2)
    try:
        js = nc.jetstream(timeout=5)
        total = (await js.stream_info(settings.nats_stream)).state.messages
        out: list[Message] = []
        if total == 0:
            return out
        sub = await js.pull_subscribe(
            f"{settings.nats_subject_prefix}.>",
            stream=settings.nats_stream,
            config=ConsumerConfig(
                ack_policy=AckPolicy.NONE,
                deliver_policy=DeliverPolicy.ALL,
                inactive_threshold=30,
            ),
        )
        while len(out) < total:
            for m in await sub.fetch(min(1000, total - len(out)), timeout=5):
                out.append(
                    Message(
                        m.subject,
                        dict(m.headers or {}),
                        orjson.loads(m.data),
                        m.metadata.sequence.stream,
                    )
                )
        await sub.unsubscribe()
        return out
    finally:
        await nc.close()


def assert_exactly_once_in_order(messages: list[Message], expected: list[str]) -> None:
    ids = [m.headers[MSG_ID_HEADER] for m in messages]
    assert len(ids) == len(set(ids)), "duplicates in the stream"
    assert set(ids) == set(expected), (
        f"missing {len(set(expected) - set(ids))}, unexpected {len(set(ids) - set(expected))}"
    )
    assert ids == expected, "stream order differs from the notification order"
    positions = [int(m.headers[NOTIFICATION_HEADER]) for m in messages]
    assert positions == sorted(positions)
    assert [m.data["id"] for m in messages] == ids


# --------------------------------------------------------------------------- tests


def test_relays_every_event_once_in_order_without_personal_data(shared: Env) -> None:
    settings, app = shared.settings, shared.app
    lifecycles = [full_lifecycle(app, i, ORGS[i % 2]) for i in range(6)]
    register(app, 100, 450, "acme")  # more than two batches of 200
    (erased,) = register(app, 900, 1)
    # Erasure stand-in: the key is destroyed, so the event decodes to a Shredded placeholder.
    assert settings.database_url
    with psycopg.connect(settings.database_url) as conn:
        conn.execute(
            "UPDATE customer_keys SET wrapped_key = NULL, shredded_at = now()"
            " WHERE customer_id = %s",
            (erased.id,),
        )

    relay_app = Customers(settings, pool_size=2)  # its own key cache, as in production
    relay = Relay(settings, relay_app)

    async def scenario() -> int:
        try:
            first = await relay.run_once()
            assert await relay.run_once() == 0  # caught up: nothing to do
            return first
        finally:
            await relay.close()

    try:
        processed = asyncio.run(scenario())
        assert relay.lag() == 0
    finally:
        relay_app.close()

    expected = expected_ids(settings, shredded={str(erased.id)})
    assert processed == len(expected) + 1  # + the shredded one, skipped
    assert relay.published == len(expected) and relay.duplicates == 0 and relay.skipped == 1
    position, head = stored_position(settings)
    assert position == head

    messages = asyncio.run(read_stream(settings))
    assert_exactly_once_in_order(messages, expected)

    # Subjects and payloads.
    prefix = settings.nats_subject_prefix
    first = [m for m in messages if m.data["customerId"] == str(lifecycles[0].id)]
    assert [m.subject for m in first] == [
        f"{prefix}.acme.customer.created",
        f"{prefix}.acme.customer.email_change_requested",
        f"{prefix}.acme.customer.updated",
        f"{prefix}.acme.customer.status_changed",
        f"{prefix}.acme.customer.email_verified",
        f"{prefix}.acme.customer.active_orders_changed",
        f"{prefix}.acme.customer.active_orders_changed",
        f"{prefix}.acme.customer.deleted",
    ]
    assert [m.data["version"] for m in first] == list(range(1, 9))
    assert first[2].data["fields"] == ["name"]
    assert (first[3].data["from"], first[3].data["to"]) == ("ACTIVE", "INACTIVE")
    assert first[1].data["verificationToken"]
    second = [m for m in messages if m.data["customerId"] == str(lifecycles[1].id)]
    assert {m.data["orgId"] for m in second} == {"globex.eu"}
    assert all(m.subject.split(".")[1].startswith("_") for m in second)

    raw = b"".join(orjson.dumps(m.data) for m in messages).decode()
    for fragment in ("secret@", "example.org", "example.net", "Secretname", "Valladolid"):
        assert fragment not in raw


def test_membership_changes_are_published_as_thin_events(shared: Env) -> None:
    settings, app = shared.settings, shared.app
    people = register(app, 700, 3)
    segment_id = uuid.uuid4()
    joined = [str(c.id) for c in people]
    change = Change("acme", segment_id, joined, [], Reason.CUSTOMER_CHANGE)
    append(app, [change], list(events(change, 0, datetime.now(UTC))))
    leave = Change("acme", segment_id, [], joined[:1], Reason.CALCULATION)
    append(app, [leave], list(events(leave, 1, datetime.now(UTC))))

    relay = Relay(settings, app)

    async def scenario() -> None:
        try:
            await relay.run_once()
        finally:
            await relay.close()

    asyncio.run(scenario())
    messages = [m for m in asyncio.run(read_stream(settings)) if "segment" in m.subject]
    prefix = settings.nats_subject_prefix
    assert [m.subject for m in messages] == [
        f"{prefix}.acme.segment.joined",
        f"{prefix}.acme.segment.left",
    ]
    assert [m.data["customerIds"] for m in messages] == [joined, joined[:1]]
    assert [m.data["reason"] for m in messages] == ["customer_change", "calculation"]
    assert {m.data["segmentId"] for m in messages} == {str(segment_id)}
    stream = stream_id(segment_id)
    assert [m.headers[MSG_ID_HEADER] for m in messages] == [f"{stream}:1", f"{stream}:2"]
    payloads = b"".join(orjson.dumps(m.data) for m in messages)
    assert not any(c.email.encode() in payloads for c in people)


def test_crash_between_publish_and_position_is_deduplicated(shared: Env) -> None:
    settings, app = shared.settings, shared.app
    register(app, 0, 300)

    class Crash(Exception):
        pass

    def crash(position: int) -> None:
        raise Crash(position)

    crashing = Relay(settings, app)
    crashing._save_position = crash  # type: ignore[method-assign]

    async def first_run() -> None:
        try:
            with pytest.raises(Crash):
                await crashing.run_once()
        finally:
            await crashing.close()

    asyncio.run(first_run())
    assert crashing.published == settings.relay_batch_size  # first batch made it to NATS
    assert stored_position(settings)[0] == 0  # … but its position was never recorded
    count_after_crash = len(asyncio.run(read_stream(settings)))
    assert count_after_crash == settings.relay_batch_size

    restarted = Relay(settings, app)

    async def second_run() -> None:
        try:
            await restarted.run_once()
        finally:
            await restarted.close()

    asyncio.run(second_run())
    assert restarted.duplicates == count_after_crash  # republished, dropped by JetStream
    assert restarted.published == 300 - count_after_crash
    position, head = stored_position(settings)
    assert position == head
    assert_exactly_once_in_order(asyncio.run(read_stream(settings)), expected_ids(settings))


def test_survives_nats_crashes_while_events_keep_coming(
    private: Env, private_nats: embedded.EmbeddedNats
) -> None:
    settings, app = private.settings, private.app
    stop_writing = threading.Event()
    written = [0]
    errors: list[BaseException] = []

    def writer() -> None:
        i = 0
        try:
            while not stop_writing.is_set():
                customers = register(app, i, 20, ORGS[i % 2])
                for c in customers[:5]:
                    c.set_active_orders(1, actor="t")
                app.save(*customers[:5])
                i += 20
                written[0] += 25
                time.sleep(0.01)
        except BaseException as exc:
            errors.append(exc)

    relay_app = Customers(settings, pool_size=2)
    relay = Relay(settings, relay_app, ack_timeout=2.0, poll_interval=0.2, max_retry_delay=0.5)

    # The first crash hits a batch in flight: published, PubAcks outstanding.
    in_flight_crash = asyncio.Event()
    await_acks = relay._await_acks

    async def crash_once_in_flight(futures: list[Any], lost: asyncio.Event) -> None:
        if not in_flight_crash.is_set() and relay.published >= 1000:
            for _ in range(1000):  # until the first PubAcks of the batch come back
                if any(f.done() for f in futures):
                    break
                await asyncio.sleep(0)
            private_nats.kill()  # SIGKILL: no goodbye
            in_flight_crash.set()
        await await_acks(futures, lost)

    relay._await_acks = crash_once_in_flight  # type: ignore[method-assign]

    async def scenario() -> None:
        register(app, 10_000_000, 4000)  # a backlog, so that the first crash hits a burst
        task = asyncio.create_task(relay.run())
        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        try:
            await asyncio.wait_for(in_flight_crash.wait(), 10)
            await asyncio.sleep(0.5)
            await asyncio.to_thread(private_nats.start)
            await asyncio.sleep(1.5)
            await asyncio.to_thread(private_nats.kill)  # and once more under steady traffic
            await asyncio.sleep(1.0)
            await asyncio.to_thread(private_nats.start)
            await asyncio.sleep(1.0)
        finally:
            stop_writing.set()
            await asyncio.to_thread(thread.join)
        deadline = time.monotonic() + 20
        while await asyncio.to_thread(relay.lag) > 0:
            assert time.monotonic() < deadline, "relay did not catch up"
            await asyncio.sleep(0.1)
        relay.stop()
        await asyncio.wait_for(task, 10)

    try:
        asyncio.run(scenario())
    finally:
        relay_app.close()
    assert not errors
    assert written[0] > 500
    assert relay.connects >= 3  # first connect + one per restart

    position, head = stored_position(settings)
    assert position == head
    assert_exactly_once_in_order(asyncio.run(read_stream(settings)), expected_ids(settings))


def test_run_wakes_on_notify(shared: Env) -> None:
    settings, app = shared.settings, shared.app
    relay = Relay(settings, app, poll_interval=300)  # the poll would come minutes later
    assert settings.database_url

    async def scenario() -> None:
        task = asyncio.create_task(relay.run())
        try:
            await asyncio.to_thread(wait_listening, settings.database_url, "customers_events")
            await asyncio.to_thread(register, app, 0, 3)
            started = time.monotonic()
            while relay.published < 3:
                await asyncio.sleep(0.01)
                # Well before any poll: only the NOTIFY can have woken it.
                assert time.monotonic() - started < 120, "not woken by the NOTIFY"
        finally:
            relay.stop()
            await asyncio.wait_for(task, 10)

    asyncio.run(scenario())
    assert_exactly_once_in_order(asyncio.run(read_stream(settings)), expected_ids(settings))


def test_serve_process_relays_and_stops_on_sigterm(shared: Env) -> None:
    """`customers serve relay` (eventstore.relay.run_forever): a process that stops on SIGTERM."""
    settings, app = shared.settings, shared.app
    register(app, 0, 50)
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "relay"],
        env=dict(os.environ),
    )
    try:
        deadline = time.monotonic() + 15
        while stored_position(settings)[0] < stored_position(settings)[1]:
            assert process.poll() is None, "relay process died"
            assert time.monotonic() < deadline, "relay process did not catch up"
            time.sleep(0.05)
        register(app, 100, 5)  # woken by NOTIFY while running
        while stored_position(settings)[0] < stored_position(settings)[1]:
            assert time.monotonic() < deadline, "relay process did not catch up"
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert_exactly_once_in_order(asyncio.run(read_stream(settings)), expected_ids(settings))


def test_a_relay_process_killed_mid_stream_publishes_everything_once_after_restart(
    shared: Env,
) -> None:
    """SIGKILL of a real `customers serve relay` between its publishes and its position: the
    next process re-publishes from the recorded position and JetStream's de-duplication by
    Nats-Msg-Id keeps each event once, in log order."""
    settings, app = shared.settings, shared.app
    register(app, 0, 3000)  # batches of 200: many publishes and positions to land between

    def relay() -> subprocess.Popen[bytes]:
        return subprocess.Popen(  # our own interpreter and module
            [sys.executable, "-m", "service.cli", "serve", "relay"], env=dict(os.environ)
        )

    first = relay()
    try:
        deadline = time.monotonic() + 60
        while stored_position(settings)[0] < 400:  # at least two batches recorded
            assert first.poll() is None and time.monotonic() < deadline, "relay never started"
            time.sleep(0.01)
        first.kill()
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    killed_at, head = stored_position(settings)
    assert killed_at < head, "the relay finished before the kill: nothing was cut short"
    second = relay()
    try:
        deadline = time.monotonic() + 120
        while stored_position(settings)[0] < head:
            assert second.poll() is None and time.monotonic() < deadline, "no catch-up"
            time.sleep(0.05)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(10)
    assert_exactly_once_in_order(asyncio.run(read_stream(settings)), expected_ids(settings))
