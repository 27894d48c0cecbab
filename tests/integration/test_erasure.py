"""Erasure on real PostgreSQL: the key is destroyed with the Erased event, replays decode to
tombstones, rebuilt read models do not bring the customer back, caches forget the key, and
lifecycle-deleted customers are erased after the grace period."""

from __future__ import annotations

import secrets

import psycopg
import pytest

from domain.access import Principal
from domain.customer import Customer
from domain.errors import DomainError
from domain.values import Profile
from eventstore.application import Customers
from eventstore.mapper import Shredded
from projections.runner import Projector, rebuild_view, views
from service.settings import Settings
from write_api.background.erasure import sweep
from write_api.customers import CustomerCommands


def people(app: Customers, org: str, count: int) -> list[Customer]:
    made = [
        Customer.register(
            org,
            Profile.model_validate(
                {
                    "email": f"erase{i}.{secrets.token_hex(3)}@example.com",
                    "name": f"Erase Me{i}",
                    "age": 30,
                    "preferences": {"marketingConsent": True, "dataProcessingConsent": True},
                }
            ),
            "tester",
        )
        for i in range(count)
    ]
    app.save(*made, new_keys=[app.keys.create(c.id, org) for c in made])
    return made


def admin(org: str) -> Principal:
    return Principal(sub="dpo-1", org=org, roles=frozenset({"dpo"}))


def view_ids(settings: Settings) -> set[object]:
    with psycopg.connect(str(settings.database_url)) as conn:
        rows = conn.execute("SELECT id FROM customers_view UNION SELECT id FROM segment_facts")
        return {r[0] for r in rows}


def test_replay_and_rebuild_after_erasure(settings: Settings, app: Customers) -> None:
    org = f"org-{secrets.token_hex(3)}"
    keep, gone = people(app, org, 2)
    projector = Projector(settings, app=app)
    try:
        projector.run_once()  # the projector's key cache now holds both keys
        CustomerCommands(app).erase(admin(org), gone.id)
        projector.run_once()
        assert app.keys.cipher(gone.id) is None
        assert gone.id not in view_ids(settings) and keep.id in view_ids(settings)

        # A process that never saw the key: old events are tombstones, the last one says why.
        fresh = Customers(settings, pool_size=1)
        try:
            events = list(fresh.events.get(gone.id))
        finally:
            fresh.close()
        assert all(isinstance(e, Shredded) for e in events[:-1])
        assert type(events[-1]).__qualname__ == "Customer.Erased"
        assert "Erase Me" not in str(vars(events[-1]))

        for view in views():
            rebuild_view(app, view)
        assert gone.id not in view_ids(settings) and keep.id in view_ids(settings)
    finally:
        projector.close()


def test_erasure_is_refused_with_active_orders(settings: Settings, app: Customers) -> None:
    org = f"org-{secrets.token_hex(3)}"
    (busy,) = people(app, org, 1)
    busy.set_active_orders(1, actor="t")
    app.save(busy)
    with pytest.raises(DomainError, match="active order"):
        CustomerCommands(app).erase(admin(org), busy.id)
    assert app.keys.cipher(busy.id) is not None
    with psycopg.connect(str(settings.database_url)) as conn:
        rows = conn.execute(
            "SELECT r.type, r.status, r.outcome, a.outcome FROM privacy_requests r"
            " JOIN audit_log a ON a.request_id = r.id WHERE r.customer_id = %s",
            (busy.id,),
        ).fetchall()
    assert [(t, s) for t, s, _, _ in rows] == [("ERASURE", "REJECTED")]
    assert "active order" in rows[0][2] and rows[0][2] == rows[0][3]


def test_deleted_customers_are_erased_after_the_grace_period(
    settings: Settings, app: Customers
) -> None:
    org = f"org-{secrets.token_hex(3)}"
    deleted, alive = people(app, org, 2)
    deleted.delete(actor="tester")
    app.save(deleted)
    projector = Projector(settings, app=app)
    try:
        projector.run_once()
        commands = CustomerCommands(app)
        assert sweep(commands, grace_seconds=3600) == 0  # deleted just now
        assert sweep(commands, grace_seconds=0) == 1
        projector.run_once()
    finally:
        projector.close()
    assert app.keys.cipher(deleted.id) is None
    assert app.keys.cipher(alive.id) is not None
    assert deleted.id not in view_ids(settings)


def test_anonymized_record_survives_replay_and_rebuild(settings: Settings, app: Customers) -> None:
    org = f"org-{secrets.token_hex(3)}"
    (person,) = people(app, org, 1)
    projector = Projector(settings, app=app)
    try:
        projector.run_once()
        CustomerCommands(app).anonymize(admin(org), person.id)
        projector.run_once()
        for view in views():
            rebuild_view(app, view)
        with psycopg.connect(str(settings.database_url)) as conn:
            row = conn.execute(
                "SELECT v.status, v.name, d.doc::text FROM customers_view v"
                " JOIN customers_docs d ON d.id = v.id WHERE v.id = %s",
                (person.id,),
            ).fetchone()
    finally:
        projector.close()
    assert row is not None
    status, name, doc = row
    assert (status, name) == ("ANONYMIZED", "Anonymized customer")
    assert "Erase Me" not in doc and '"ageBand":"30-39"' in doc
    assert app.keys.cipher(person.id) is None
