"""The audit trail on real PostgreSQL: the chain verifies, and an altered, removed or forged
entry is found; privacy records land in the operation's transaction."""

from __future__ import annotations

import secrets
import uuid

import psycopg

from domain.customer import Customer
from domain.segment import Segment, SegmentDefinition
from domain.values import Profile
from eventstore import compliance
from eventstore.application import Customers
from eventstore.keys import AUDIT_KEY_PURPOSE, Keyring
from service.cli import _verify_audit
from service.settings import Settings
from write_api.attribution import WriteAuditor


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
