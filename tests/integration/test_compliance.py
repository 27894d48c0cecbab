"""The audit trail on real PostgreSQL: the chain verifies, and an altered, removed or forged
entry is found; privacy records land in the operation's transaction."""

from __future__ import annotations

import secrets
import uuid

import psycopg

from eventstore import compliance
from eventstore.keys import AUDIT_KEY_PURPOSE, derive_key
from service.cli import _verify_audit
from service.settings import Settings


def key(settings: Settings) -> bytes:
    return derive_key(settings.master_key_bytes(), AUDIT_KEY_PURPOSE)


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
                        org_id=org,
                        actor="dpo-1",
                        action="export",
                        outcome="completed",
                        customer_id=uuid.uuid4(),
                        request_id=uuid.uuid4() if i % 2 else None,
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
