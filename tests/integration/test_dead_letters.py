"""A poisoned event stops no follower: each records it as a dead letter and serves everyone else.

The poisons are the real ones: a registration whose actor holds a NUL byte (what a token's
`sub` carried before claims were checked; PostgreSQL text refuses it), and an event whose
ciphertext was altered in the store (it cannot be decrypted). A customer of another
organization, written after both, must still reach every read model, the audit trail and NATS.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from domain.customer import Customer
from eventstore.application import Customers
from eventstore.keys import MasterKeyUnavailable
from eventstore.relay import POSITION_NAME, Relay
from projections.runner import Projector, rebuild_view, views
from read_api import figures
from service.settings import Settings
from tests.integration.conftest import Env
from tests.integration.test_relay import profile, read_stream, register
from write_api.background.attribution import WriteAuditor


def rows(settings: Settings, query: str, *args: Any) -> list[tuple[Any, ...]]:
    assert settings.database_url
    with psycopg.connect(settings.database_url) as conn:
        return conn.execute(query, args).fetchall()


def run_every_follower(settings: Settings) -> None:
    """Projector views, write auditor and relay, each with its own application (key cache)."""
    app = Customers(settings, pool_size=2)
    projector = Projector(settings, app=app)
    auditor = WriteAuditor(app)
    relay = Relay(settings, app)

    async def relay_once() -> None:
        try:
            await relay.run_once()
        finally:
            await relay.close()

    try:
        projector.run_once()
        auditor.run_once()
        asyncio.run(relay_once())
    finally:
        auditor.close()
        projector.close()
        app.close()


@pytest.fixture
def poisoned(shared: Env) -> Iterator[tuple[Env, Customer, Customer, Customer]]:
    app = shared.app
    nul = Customer.register("evil", profile(1), "evil\x00sub")
    app.save(nul, new_keys=[app.keys.create(nul.id, "evil")])
    (tampered,) = register(app, 2, 1, "acme")
    with psycopg.connect(str(shared.settings.database_url), autocommit=True) as conn:
        # Flip the last byte of the sealed state: the AES-GCM tag no longer verifies.
        conn.execute(
            "UPDATE customers_events SET state = overlay(state placing"
            " set_byte(substr(state, length(state), 1), 0,"
            " get_byte(substr(state, length(state), 1), 0) # 1)"
            " from length(state) for 1) WHERE originator_id = %s",
            (tampered.id,),
        )
    (innocent,) = register(app, 3, 1, "globex")
    yield shared, nul, tampered, innocent


def test_every_follower_passes_the_poison_over_and_serves_the_other_organization(
    poisoned: tuple[Env, Customer, Customer, Customer],
) -> None:
    env, nul, tampered, innocent = poisoned
    settings = env.settings
    run_every_follower(settings)

    (head,) = rows(settings, "SELECT max(notification_id) FROM customers_events")[0]
    followers = [v.name for v in views()] + [WriteAuditor.name, POSITION_NAME]
    positions = dict(
        rows(settings, "SELECT name, position FROM positions WHERE name = ANY(%s)", followers)
    )
    assert positions == dict.fromkeys(followers, head), "a follower stopped at the poison"

    dead = {
        (follower, oid): reason
        for follower, oid, reason in rows(
            settings, "SELECT follower, originator_id, reason FROM dead_letters"
        )
    }
    # The NUL actor poisons what stores the actor; the altered ciphertext whatever decodes.
    assert set(dead) == {
        ("consent_ledger", nul.id),
        ("audit_writes", nul.id),
        ("customers_view", tampered.id),
        ("consent_ledger", tampered.id),
        ("audit_writes", tampered.id),
        (POSITION_NAME, tampered.id),
    }
    assert all(dead[(f, tampered.id)].startswith("InvalidTag") for f, o in dead if o == tampered.id)
    assert "0x00" in dead[("consent_ledger", nul.id)]
    assert not any("evil" in reason for reason in dead.values()), "event data in a reason"

    # The innocent customer of another organization is everywhere.
    assert rows(settings, "SELECT org_id FROM customers_view WHERE id = %s", innocent.id) == [
        ("globex",)
    ]
    ledger = "SELECT count(*) FROM consent_ledger WHERE customer_id = %s"
    assert rows(settings, ledger, innocent.id)[0][0] > 0
    assert rows(settings, "SELECT actor FROM audit_log WHERE subject_id = %s", innocent.id) == [
        ("writer",)
    ]
    published = [m.data["customerId"] for m in asyncio.run(read_stream(settings))]
    assert str(innocent.id) in published and str(tampered.id) not in published
    assert str(nul.id) in published  # the relay has no use for the actor

    # /ready and /metrics read the counts per follower.
    async def read_lags() -> list[tuple[str, int, int]]:
        assert settings.database_url
        async with await psycopg.AsyncConnection.connect(settings.database_url) as conn:
            return await figures.lags(conn)

    reported = {name: (lag, count) for name, lag, count in asyncio.run(read_lags())}
    assert reported["audit_writes"] == (0, 2)
    assert reported["customers_view"] == (0, 1)
    assert reported[POSITION_NAME] == (0, 1)


def test_a_rebuild_meets_the_dead_letters_again_without_counting_them_twice(
    poisoned: tuple[Env, Customer, Customer, Customer],
) -> None:
    env, _, tampered, innocent = poisoned
    settings = env.settings
    run_every_follower(settings)
    query = "SELECT originator_id FROM dead_letters WHERE follower = 'customers_view'"
    assert rows(settings, query) == [(tampered.id,)]

    app = Customers(settings, pool_size=2)
    try:
        (customers_view,) = [v for v in views() if v.name == "customers_view"]
        rebuild_view(app, customers_view)
    finally:
        app.close()
    assert rows(settings, query) == [(tampered.id,)]
    ids = {r[0] for r in rows(settings, "SELECT id FROM customers_view")}
    assert innocent.id in ids and tampered.id not in ids


def test_a_master_key_this_process_lacks_stops_the_follower_instead_of_dead_lettering(
    shared: Env,
) -> None:
    """Mid-rotation, a writer already on the new master key creates a customer; a follower
    still configured with the old key alone cannot open the new data key. That is this
    process's configuration, not the event: the follower stops (and retries) without passing
    anything over."""
    old = shared.settings
    new_key = base64.b64encode(secrets.token_bytes(32)).decode()
    rotated = old.model_copy(update={"master_key": new_key, "previous_master_keys": old.master_key})
    writer = Customers(rotated, pool_size=2)
    try:
        register(writer, 10, 3, "acme")
    finally:
        writer.close()
    app = Customers(old, pool_size=2)
    projector = Projector(old, app=app)
    try:
        with pytest.raises(MasterKeyUnavailable):
            projector.run_once()
    finally:
        projector.close()
        app.close()
    assert rows(old, "SELECT count(*) FROM dead_letters") == [(0,)]
    assert rows(old, "SELECT position FROM positions WHERE name = 'customers_view'") == [(0,)]
