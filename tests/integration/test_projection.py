"""customers_view projection on real PostgreSQL: contents per event type, exactly-once across
a SIGKILL, rebuild == incremental, erasure, unknown topics, LISTEN/NOTIFY wake-up, lag."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import orjson
import psycopg
import pytest
from eventsourcing.domain import Aggregate, event
from psycopg import sql

from domain.customer import Customer
from domain.values import CustomerStatus, Profile
from eventstore.application import Customers
from eventstore.migrate import migrate
from projections import customers as view
from projections.runner import Projector, ViewRunner, rebuild, rebuild_view
from service import embedded
from service.settings import Settings
from tests.integration.conftest import wait_listening

REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def clean(settings: Settings) -> None:
    """Empty event store, keys and view: every test starts from notification 0."""
    with psycopg.connect(str(settings.database_url), autocommit=True) as conn:
        conn.execute(
            "TRUNCATE customers_events, customer_keys, customers_view, customers_docs, positions,"
            " dead_letters RESTART IDENTITY"
        )


def profile(i: int, **over: Any) -> Profile:
    data: dict[str, Any] = {
        "email": f"user{i}@example.com",
        "name": f"User {i}",
        "age": 20 + i % 60,
        "gender": ["MALE", "FEMALE", "OTHER", "UNKNOWN"][i % 4],
        "location": {"country": "ES", "city": "Madrid", "region": "Madrid", "postalCode": "28001"},
        "tags": ["t" + str(i % 3), "all"],
        "preferences": {"marketingConsent": i % 2 == 0, "dataProcessingConsent": True},
    }
    data.update(over)
    return Profile.model_validate(data)


def register(app: Customers, count: int, *, org: str = "org-a", start: int = 0) -> list[Customer]:
    made = [Customer.register(org, profile(start + i), "tester") for i in range(count)]
    app.save(*made, new_keys=[app.keys.create(c.id, org) for c in made])
    return made


def update(c: Customer, p: Profile, **kw: Any) -> str | None:
    args: dict[str, Any] = {
        "status": None,
        "actor": "tester",
        "actor_is_admin": True,
        "now": datetime.now(UTC),
        "verification_ttl": timedelta(hours=1),
    }
    args.update(kw)
    return c.update(p, **args)


def row(settings: Settings, cid: UUID) -> dict[str, Any] | None:
    """customers_view's row plus customers_docs' doc/version/org; None if in neither table."""
    with psycopg.connect(str(settings.database_url)) as conn:
        view.use_raw_json(conn)
        cur = conn.execute(
            "SELECT v.*, d.doc, d.version AS doc_version, d.org_id AS doc_org"
            " FROM customers_view v FULL JOIN customers_docs d USING (id) WHERE id = %s",
            (cid,),
        )
        got = cur.fetchone()
        if got is None:
            return None
        assert cur.description is not None
        return dict(zip([d.name for d in cur.description], got, strict=True))


def assert_matches(settings: Settings, app: Customers, cid: UUID) -> None:
    """The row holds exactly the aggregate's public JSON, and consistent typed columns."""
    agg: Customer = app.repository.get(cid)
    r = row(settings, cid)
    assert r is not None
    assert r["doc"] == orjson.dumps(agg.public())
    p = agg.profile
    assert r["version"] == r["doc_version"] == agg.version
    assert r["org_id"] == r["doc_org"] == agg.org_id
    assert r["email"] == p["email"]
    assert r["name"] == p["name"]
    assert r["age"] == p["age"]
    assert r["gender"] == p["gender"]
    loc = p["location"] or {}
    assert r["country_code"] == loc.get("countryCode")
    assert r["city"] == loc.get("city")
    assert r["tags"] == p["tags"]
    assert r["status"] == agg.status
    assert r["marketing_consent"] == p["preferences"]["marketingConsent"]
    assert r["created_at"] == agg.created_on
    assert r["updated_at"] == agg.modified_on
    assert r["last_activity"] == agg.modified_on


def snapshot(settings: Settings) -> list[tuple[Any, ...]]:
    with psycopg.connect(str(settings.database_url)) as conn:
        view.use_raw_json(conn)
        return conn.execute(
            "SELECT * FROM customers_view v FULL JOIN customers_docs d USING (id) ORDER BY id"
        ).fetchall()


def position(settings: Settings) -> int:
    with psycopg.connect(str(settings.database_url)) as conn:
        got = conn.execute("SELECT position FROM positions WHERE name = %s", (view.VIEW,))
        r = got.fetchone()
        return int(r[0]) if r else 0


def runner(app: Customers, batch_size: int | None = None) -> ViewRunner:
    return ViewRunner(app, view.CustomersView(), batch_size=batch_size)


def max_id(app: Customers) -> int:
    return int(app.recorder.max_notification_id() or 0)


# --------------------------------------------------------------------------- contents


@pytest.mark.usefixtures("clean")
def test_every_event_type_lands_in_the_view_exactly_as_the_aggregate(
    settings: Settings, app: Customers
) -> None:
    projector = runner(app, 3)
    try:
        (c,) = register(app, 1)
        assert projector.run_once() == 1
        assert_matches(settings, app, c.id)
        assert row(settings, c.id)["segments"] == []  # type: ignore[index]

        # Updated: top-level keys merged into the profile.
        update(c, profile(0, name="Renamed", age=41, tags=["vip"], location=None))
        app.save(c)
        projector.run_once()
        assert_matches(settings, app, c.id)
        r = row(settings, c.id)
        assert r is not None
        assert (r["name"], r["age"], r["tags"], r["city"]) == ("Renamed", 41, ["vip"], None)

        # EmailChangeRequested: pendingEmail shown, e-mail unchanged; then EmailVerified.
        token = update(
            c,
            profile(
                0, name="Renamed", age=41, tags=["vip"], location=None, email="new@example.com"
            ),
        )
        assert token is not None
        app.save(c)
        projector.run_once()
        assert_matches(settings, app, c.id)
        assert orjson.loads(row(settings, c.id)["doc"])["pendingEmail"] == "new@example.com"  # type: ignore[index]
        c.verify_email(token, actor="t", now=datetime.now(UTC))
        app.save(c)
        projector.run_once()
        assert_matches(settings, app, c.id)
        r = row(settings, c.id)
        assert r is not None
        assert r["email"] == "new@example.com"
        assert orjson.loads(r["doc"])["pendingEmail"] is None

        # StatusChanged, ActiveOrdersChanged, Deleted.
        update(
            c,
            profile(
                0, name="Renamed", age=41, tags=["vip"], location=None, email="new@example.com"
            ),
            status=CustomerStatus.SUSPENDED,
        )
        app.save(c)
        c.set_active_orders(3, actor="t")
        app.save(c)
        projector.run_once()
        assert_matches(settings, app, c.id)
        assert orjson.loads(row(settings, c.id)["doc"])["activeOrders"] == 3  # type: ignore[index]
        c.set_active_orders(0, actor="t")
        c.delete(actor="tester")
        app.save(c)
        projector.run_once()
        assert_matches(settings, app, c.id)
        assert row(settings, c.id)["status"] == "DELETED"  # type: ignore[index]
        assert projector.position() == max_id(app) == position(settings)
    finally:
        projector.close()


class Widget(Aggregate):
    """Another aggregate type: its events are not the customers view's business."""

    @event("Created")
    def __init__(self, name: str) -> None:
        self.name = name


@pytest.mark.usefixtures("clean")
def test_unknown_topics_are_skipped_but_advance_the_position(
    settings: Settings, app: Customers
) -> None:
    app.save(Widget("w"))
    register(app, 2)
    app.save(Widget("x"))
    projector = runner(app)
    try:
        assert projector.run_once() == 4
        assert projector.position() == max_id(app) == 4
        assert len(snapshot(settings)) == 2
    finally:
        projector.close()


@pytest.mark.usefixtures("clean")
def test_an_unknown_customer_event_is_a_dead_letter_and_the_rest_is_projected(
    settings: Settings, app: Customers
) -> None:
    class Frobnicated(Customer.Event):
        def apply(self, aggregate: Any) -> None:
            pass

    Frobnicated.__qualname__ = "Customer.Frobnicated"
    Frobnicated.__module__ = "domain.customer"
    Customer.Frobnicated = Frobnicated  # type: ignore[attr-defined]
    try:
        (c,) = register(app, 1)
        c.trigger_event(Frobnicated)
        c.set_active_orders(1, actor="t")
        app.save(c)
        (other,) = register(app, 1, start=1)
        projector = runner(app)
        try:
            assert projector.run_once() == 4
        finally:
            projector.close()
        assert position(settings) == max_id(app) == 4
        with psycopg.connect(str(settings.database_url)) as conn:
            query = "SELECT notification_id, topic, reason FROM dead_letters"
            dead = conn.execute(query).fetchall()
        assert dead == [(2, "domain.customer:Customer.Frobnicated", dead[0][2])]
        assert dead[0][2].startswith("UnknownCustomerEvent")
        got = row(settings, c.id)
        assert got is not None and got["version"] == 3  # the event after it applied
        assert row(settings, other.id) is not None
    finally:
        del Customer.Frobnicated  # type: ignore[attr-defined]


@pytest.mark.usefixtures("clean")
def test_shredded_events_delete_the_row(settings: Settings, app: Customers) -> None:
    keep, erase = register(app, 2)
    projector = runner(app)
    projector.run_once()
    projector.close()
    erase.set_active_orders(
        2, actor="t"
    )  # a later event, not yet projected when the key is destroyed
    app.save(erase)
    with psycopg.connect(str(settings.database_url), autocommit=True) as conn:
        conn.execute(
            "UPDATE customer_keys SET wrapped_key = NULL, shredded_at = now()"
            " WHERE customer_id = %s",
            (erase.id,),
        )
    fresh = Customers(settings)  # a new process: no key cached
    try:
        p = runner(fresh)
        assert p.run_once() == 1
        assert row(settings, erase.id) is None
        assert_matches(settings, app, keep.id)
        # A replay never sees the erased customer at all, and does not crash.
        assert rebuild_view(fresh, view.CustomersView()) == 3
        assert row(settings, erase.id) is None
        assert [r[0] for r in snapshot(settings)] == [keep.id]
        p.close()
    finally:
        fresh.close()


@pytest.mark.usefixtures("clean")
def test_rebuild_equals_incremental(settings: Settings, app: Customers) -> None:
    projector = runner(app, 7)
    try:
        made = register(app, 30)
        projector.run_once()
        for i, c in enumerate(made):
            if i % 2:
                update(c, profile(i, name=f"N{i}", tags=["x", "y"]))
            if i % 3 == 0:
                c.set_active_orders(i, actor="t")
            if i % 5 == 0:
                update(c, profile(i, email=f"moved{i}@example.com"))
        app.save(*made)
        more = register(app, 5, org="org-b", start=100)
        projector.run_once()
        incremental = snapshot(settings)
        assert len(incremental) == 35
        for c in [*made, *more]:
            assert_matches(settings, app, c.id)

        assert rebuild(settings) == max_id(app)
        assert snapshot(settings) == incremental
        assert position(settings) == max_id(app)
    finally:
        projector.close()


# --------------------------------------------------------------------------- exactly-once


_CHILD = """
import logging, sys
from service.settings import get_settings
from eventstore.application import Customers
from projections.customers import CustomersView
from projections.runner import ViewRunner
app = Customers(get_settings())
p = ViewRunner(app, CustomersView(), batch_size=int(sys.argv[1]))
print("ready", flush=True)
p.run_once()
print("done", flush=True)
"""


@pytest.mark.usefixtures("clean")
def test_projection_is_exactly_once_across_a_sigkill(settings: Settings, app: Customers) -> None:
    made: list[Customer] = []
    for b in range(6):
        made += register(app, 500, start=b * 500)
    for i, c in enumerate(made):
        c.set_active_orders(1 + i % 4, actor="t")
        if i % 2:
            update(c, profile(i, name=f"Changed {i}"))
    app.save(*made)
    total = max_id(app)
    assert total >= 6000

    child_url = psycopg.conninfo.make_conninfo(
        str(settings.database_url), application_name="killed-projector"
    )
    child_env = {**os.environ, "DATABASE_URL": child_url, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, "7"],
        env=child_env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 60
        while position(settings) < total // 3 and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(10)
    # A COMMIT sent just before the kill still completes server-side: wait for the killed
    # client's backends to end before reading where it stopped.
    with psycopg.connect(str(settings.database_url), autocommit=True) as conn:
        deadline = time.monotonic() + 10
        while conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'killed-projector'"
        ).fetchone() != (0,):
            assert time.monotonic() < deadline, "the killed projector's backend lingers"
            time.sleep(0.01)
    killed_at = position(settings)
    assert 0 < killed_at < total, "the kill must land mid-stream"

    # Restart (in-process this time) and finish.
    projector = runner(app, 500)
    try:
        assert projector.position() == killed_at
        assert projector.run_once() == total - killed_at
    finally:
        projector.close()

    with psycopg.connect(str(settings.database_url)) as conn:
        versions = dict(conn.execute("SELECT id, version FROM customers_view").fetchall())
    assert versions == {c.id: app.repository.get(c.id).version for c in made}
    for c in made[::97]:
        assert_matches(settings, app, c.id)


@pytest.mark.usefixtures("clean")
def test_two_runners_of_one_view_never_apply_a_batch_twice(
    settings: Settings, app: Customers
) -> None:
    made = register(app, 300)
    for c in made:
        c.set_active_orders(5, actor="t")
    app.save(*made)
    runners = [runner(Customers(settings), 11) for _ in range(2)]
    counts: list[int] = []

    def go(p: ViewRunner) -> None:
        counts.append(p.run_once())

    threads = [threading.Thread(target=go, args=(p,)) for p in runners]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in runners:
        p.close()
        p.app.close()
    assert sum(counts) == max_id(app) == 600  # each notification consumed once in total
    for c in made[::29]:
        assert_matches(settings, app, c.id)


@pytest.mark.usefixtures("clean")
def test_a_stopped_projector_ends_after_its_current_batch(
    settings: Settings, app: Customers
) -> None:
    """SIGTERM (`customers serve projector` sets the stop event) during a long catch-up ends
    the projector at a batch boundary instead of after the whole backlog; every batch
    committed with its position, and the next run goes on from there."""
    for b in range(4):
        register(app, 500, start=b * 500)
    total = max_id(app)
    projector = Projector(settings, batch_size=10)
    stop = threading.Event()
    follower = threading.Thread(target=projector.run_forever, args=(stop,))
    follower.start()
    try:
        deadline = time.monotonic() + 30
        while position(settings) == 0:
            assert time.monotonic() < deadline, "the projector never committed a batch"
            time.sleep(0.001)
        stop.set()
        follower.join(10)
        assert not follower.is_alive()
        stopped_at = position(settings)
        assert 0 < stopped_at < total and stopped_at % 10 == 0
        with psycopg.connect(str(settings.database_url)) as conn:
            assert conn.execute("SELECT count(*) FROM customers_view").fetchone() == (stopped_at,)
        projector.run_once()
        assert position(settings) == total
    finally:
        stop.set()
        follower.join(10)
        projector.close()


# --------------------------------------------------------------------------- live follow


@pytest.mark.usefixtures("clean")
def test_runner_wakes_on_notify_and_reports_lag(settings: Settings, app: Customers) -> None:
    projector = Projector(settings, poll_interval=300.0)  # woken by NOTIFY or not at all
    projector.start()
    try:
        wait_listening(str(settings.database_url), "customers_events")
        (c,) = register(app, 1)
        deadline = time.monotonic() + 120  # well before any poll
        while row(settings, c.id) is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert row(settings, c.id) is not None
        with psycopg.connect(str(settings.database_url)) as conn:
            assert view.lag(conn) == 0
    finally:
        projector.stop()
    register(app, 3)
    with psycopg.connect(str(settings.database_url)) as conn:
        assert view.lag(conn) == 3


def test_lag_is_zero_before_anything_exists(pg_admin_url: str) -> None:
    dbname = f"projection_empty_{secrets.token_hex(4)}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    try:
        url = embedded.with_database(pg_admin_url, dbname)
        migrate(url)
        with psycopg.connect(url) as conn:
            assert view.lag(conn) == 0
    finally:
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(dbname)))
