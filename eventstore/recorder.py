"""Application recorder that writes keys and uniqueness claims in the event's transaction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from eventsourcing.persistence import IntegrityError, StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder
from psycopg import Cursor
from psycopg.rows import DictRow

from eventstore.keys import WrappedKey


@dataclass(frozen=True)
class EmailClaim:
    org_id: str
    email_hash: bytes
    customer_id: UUID


@dataclass(frozen=True)
class EmailRelease:
    org_id: str
    email_hash: bytes


@dataclass(frozen=True)
class IdempotencyRecord:
    org_id: str
    key: str
    request_hash: bytes
    customer_id: UUID
    version: int
    status: int


INSERT_KEY = "INSERT INTO customer_keys (customer_id, org_id, wrapped_key) VALUES (%s, %s, %s)"
CLAIM_EMAIL = "INSERT INTO customer_emails (org_id, email_hash, customer_id) VALUES (%s, %s, %s)"
RELEASE_EMAIL = "DELETE FROM customer_emails WHERE org_id = %s AND email_hash = %s"
RECORD_IDEMPOTENCY = (
    "INSERT INTO idempotency_keys (org_id, key, request_hash, customer_id, version, status)"
    " VALUES (%s, %s, %s, %s, %s, %s)"
)

# Unique constraints whose violation means a business conflict, not a concurrency retry.
EMAIL_CONSTRAINT = "customer_emails_pkey"
IDEMPOTENCY_CONSTRAINT = "idempotency_keys_pkey"


def violated_constraint(error: IntegrityError) -> str | None:
    diag = getattr(error.__cause__, "diag", None)
    return getattr(diag, "constraint_name", None)


class CustomerRecorder(PostgresApplicationRecorder):
    def find_idempotency(self, org_id: str, key: str, ttl_hours: int) -> IdempotencyRecord | None:
        """The live record for a key; an expired one is deleted so the key can be reused."""
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(FIND_IDEMPOTENCY, (ttl_hours, org_id, key), prepare=True)
            row = curs.fetchone()
            if row is None:
                return None
            if row["expired"]:
                curs.execute(FORGET_IDEMPOTENCY, (org_id, key))
                return None
        return IdempotencyRecord(
            org_id,
            key,
            bytes(row["request_hash"]),
            row["customer_id"],
            row["version"],
            row["status"],
        )

    def notification_id(self, originator_id: UUID, version: int) -> int:
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(NOTIFICATION_ID, (originator_id, version), prepare=True)
            row = curs.fetchone()
        assert row is not None
        return int(row["notification_id"])

    def _insert_events(
        self,
        curs: Cursor[DictRow],
        stored_events: Sequence[StoredEvent],
        *,
        new_keys: Sequence[WrappedKey] = (),
        release_emails: Sequence[EmailRelease] = (),
        claim_emails: Sequence[EmailClaim] = (),
        idempotency: IdempotencyRecord | None = None,
        **kwargs: Any,
    ) -> None:
        # The idempotency record goes first: concurrent retries of one request must meet on
        # its key (and replay) before they meet on the e-mail claim (and look like a conflict).
        if idempotency is not None:
            i = idempotency
            curs.execute(
                RECORD_IDEMPOTENCY,
                (i.org_id, i.key, i.request_hash, i.customer_id, i.version, i.status),
            )
        if new_keys:
            curs.executemany(INSERT_KEY, [(k.customer_id, k.org_id, k.wrapped) for k in new_keys])
        if release_emails:
            curs.executemany(RELEASE_EMAIL, [(r.org_id, r.email_hash) for r in release_emails])
        if claim_emails:
            curs.executemany(
                CLAIM_EMAIL, [(c.org_id, c.email_hash, c.customer_id) for c in claim_emails]
            )


FIND_IDEMPOTENCY = (
    "SELECT request_hash, customer_id, version, status,"
    " created_at < now() - make_interval(hours => %s) AS expired"
    " FROM idempotency_keys WHERE org_id = %s AND key = %s"
)
FORGET_IDEMPOTENCY = "DELETE FROM idempotency_keys WHERE org_id = %s AND key = %s"
NOTIFICATION_ID = (
    "SELECT notification_id FROM customers_events"
    " WHERE originator_id = %s AND originator_version = %s"
)
