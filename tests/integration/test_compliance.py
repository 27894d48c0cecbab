"""The audit trail on real PostgreSQL: the chain verifies, and an altered, removed or forged
entry is found; privacy records land in the operation's transaction; every write names who
made it."""

from __future__ import annotations

import secrets
import uuid

import psycopg

from domain.access import Principal
from domain.consent import ConsentChange
from domain.customer import Customer
from domain.segment import Segment, SegmentDefinition, SegmentStatus
from domain.values import CustomerStatus, Profile
from eventstore import compliance
from eventstore.application import Customers
from eventstore.keys import AUDIT_KEY_PURPOSE, Keyring
from projections.runner import Projector
from service.cli import _verify_audit
from service.rules_engine import RulesEngine
from service.settings import Settings
from write_api.background.attribution import WriteAuditor
from write_api.customers import CustomerCommands
from write_api.segments import SegmentCommands


def key(settings: Settings) -> bytes:
    with psycopg.connect(str(settings.database_url)) as conn:
        return Keyring.load(conn, settings).derive(AUDIT_KEY_PURPOSE)


def test_tampering_with_the_audit_trail_is_detected(settings: Settings) -> None:
    url = str(settings.database_url)
    org = f"org-{secrets.token_hex(3)}"
    with psycopg.connect(url) as conn:
        seqs = []
        for i in range(5):
            with conn.transaction():
                seqs.append(
                    compliance.audit(
                        conn,
                        key(settings),
                        compliance.AuditEntry(
                            org,
                            "dpo-1",
                            "export",
                            "completed",
                            uuid.uuid4(),
                            uuid.uuid4() if i % 2 else None,
                        ),
                    )
                )
        assert seqs == sorted(seqs) and compliance.verify(conn, key(settings)).ok
        assert _verify_audit(settings) == 0
        third = seqs[2]

        with conn.transaction(force_rollback=True):  # an edited outcome
            conn.execute("UPDATE audit_log SET outcome = 'rejected' WHERE seq = %s", (third,))
            verdict = compliance.verify(conn, key(settings))
            assert (verdict.ok, verdict.broken_at) == (False, third)

        with conn.transaction(force_rollback=True):  # a removed entry
            conn.execute("DELETE FROM audit_log WHERE seq = %s", (third,))
            verdict = compliance.verify(conn, key(settings))
            assert (verdict.ok, verdict.broken_at) == (False, third)

        with conn.transaction(force_rollback=True):  # re-sealed without the key
            conn.execute(
                "UPDATE audit_log SET actor = 'intruder', mac = %s WHERE seq = %s",
                (secrets.token_bytes(32), third),
            )
            assert compliance.verify(conn, key(settings)).broken_at == third

        assert compliance.verify(conn, key(settings)).ok  # all rolled back


def test_every_write_is_attributed_once(settings: Settings, app: Customers) -> None:
    org = f"org-{secrets.token_hex(3)}"
    customer = Customer.register(
        org,
        Profile.model_validate(
            {
                "email": f"a{secrets.token_hex(3)}@example.com",
                "name": "Audited Person",
                "preferences": {"marketingConsent": True, "dataProcessingConsent": True},
            }
        ),
        "clerk-1",
    )
    app.save(customer, new_keys=[app.keys.create(customer.id, org)])
    customer.delete(actor="clerk-2")
    app.save(customer)
    segment = Segment.define(
        org,
        SegmentDefinition.model_validate({"name": "audited", "ruleId": "r", "kind": "STATIC"}),
        "marketer-1",
    )
    app.save(segment)
    auditor = WriteAuditor(app)
    try:
        assert auditor.run_once() >= 3
        assert auditor.run_once() == 0  # each event once
    finally:
        auditor.close()
    with psycopg.connect(str(settings.database_url)) as conn:
        rows = conn.execute(
            "SELECT actor, action, subject_id FROM audit_log WHERE org_id = %s ORDER BY seq",
            (org,),
        ).fetchall()
        assert compliance.verify(conn, key(settings)).ok
    assert rows == [
        ("clerk-1", "customer.Created", customer.id),
        ("clerk-2", "customer.Deleted", customer.id),
        ("marketer-1", "segment.Created", segment.id),
    ]
    assert "Audited Person" not in str(rows)


def test_no_command_leaves_a_write_unattributed(settings: Settings, app: Customers) -> None:
    """Every command on customers and segments, as one caller: every audit entry names the
    caller, and every kind of event either aggregate has is among them."""
    org = f"org-{secrets.token_hex(3)}"
    caller = Principal(sub="caller-7", org=org, roles=frozenset({"admin"}))
    customers = CustomerCommands(app)

    def profile(email: str, **more: object) -> Profile:
        body = {
            "email": email,
            "name": "Audited Person",
            "preferences": {"marketingConsent": True, "dataProcessingConsent": True},
        }
        return Profile.model_validate({**body, **more})

    def create() -> uuid.UUID:
        email = f"w{secrets.token_hex(4)}@example.com"
        return uuid.UUID(str(customers.create(caller, profile(email)).body["id"]))  # type: ignore[index]

    kept = create()
    customers.update(caller, kept, profile(f"new{secrets.token_hex(4)}@example.com"), None, None)
    customers.update(
        caller, kept, profile(app.repository.get(kept).email, age=40), CustomerStatus.INACTIVE, None
    )
    customers.verify_email(caller, kept, app.repository.get(kept).pending_token)
    customers.set_active_orders(caller, kept, 2)
    customers.set_active_orders(caller, kept, 0)
    customers.change_consent(
        caller, kept, ConsentChange.model_validate({"consents": {"marketing": False}})
    )
    customers.delete(caller, kept, None)
    customers.restore(caller, kept, None)
    customers.delete(caller, kept, None)
    shredded = [create(), create()]
    auditor = WriteAuditor(app)
    auditor.run_once()  # before their earlier events become unreadable
    customers.anonymize(caller, shredded[0])
    customers.erase(caller, shredded[1])

    segments = SegmentCommands(app, RulesEngine(settings))
    member = create()
    projector = Projector(settings, app=app)
    projector.run_once()  # members are assigned from the customers view
    projector.close()
    static = {"name": f"audited {secrets.token_hex(3)}", "ruleId": "r", "kind": "STATIC"}
    created = segments.create(caller, SegmentDefinition.model_validate(static)).body
    assert created is not None
    sid = uuid.UUID(created["id"])
    segments.assign(caller, sid, [member], [])
    segments.assign(caller, sid, [], [member])
    renamed = SegmentDefinition.model_validate({**static, "name": f"{static['name']} 2"})
    segments.update(caller, sid, renamed, SegmentStatus.INACTIVE, None)
    segments.delete(caller, sid, None)
    auditor.run_once()
    auditor.close()
    with psycopg.connect(str(settings.database_url)) as conn:
        rows = conn.execute(
            "SELECT actor, action FROM audit_log WHERE org_id = %s AND outcome = 'committed'",
            (org,),
        ).fetchall()
    assert {actor for actor, _ in rows} == {"caller-7"}, rows
    kinds = {
        f"{aggregate.__name__.lower()}.{name}"
        for aggregate in (Customer, Segment)
        for name, value in vars(aggregate).items()
        if isinstance(value, type) and issubclass(value, aggregate.Event) and name != "Event"
    }
    assert kinds | {"membership.SegmentJoined", "membership.SegmentLeft"} == {a for _, a in rows}
