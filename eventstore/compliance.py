"""Privacy requests and the hash-chained audit trail (tables: migrations/0006_privacy.sql).

Both are written in the transaction of the operation they record when it appends events
(the recorder's side writes), else in their own. The audit chain is serialised by a
transaction-scoped advisory lock: each entry's MAC covers the previous entry's MAC, so the
chain is one line, and HMAC with a key derived from the master key (not stored in the
database) means an altered, inserted or removed entry cannot be re-sealed.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import orjson
import psycopg
from psycopg.rows import tuple_row

from domain.values import Choice

DEADLINE = timedelta(days=30)  # Art. 12(3): one month
_AUDIT_LOCK = 7_401_134  # arbitrary constant: one appender of the chain at a time


class RequestType(Choice):
    EXPORT = "EXPORT"
    ERASURE = "ERASURE"
    ANONYMIZATION = "ANONYMIZATION"
    CONSENT_CHANGE = "CONSENT_CHANGE"


@dataclass(frozen=True)
class PrivacyRecord:
    """A privacy request completed by the operation it is saved with (or rejected, or left
    open when answering it failed), and its audit entry."""

    request_id: UUID
    org_id: str
    customer_id: UUID
    type: RequestType
    actor: str
    outcome: str = "completed"
    status: str = "COMPLETED"  # REJECTED with the reason as outcome; RECEIVED: still owed
    at: datetime | None = None  # when it was received (and answered); default: now


RECORD_REQUEST = (
    "INSERT INTO privacy_requests (id, org_id, customer_id, type, status, requested_by,"
    " received_at, completed_at, due_at, outcome)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)
_LOCK = "SELECT pg_advisory_xact_lock(%s)"
_LAST = "SELECT seq, mac FROM audit_log ORDER BY seq DESC LIMIT 1"
_APPEND = (
    "INSERT INTO audit_log (seq, at, org_id, actor, action, subject_id, request_id, outcome, mac)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
)
AUDIT_COLUMNS = "seq, at, org_id, actor, action, subject_id, request_id, outcome, mac"
_ALL = f"SELECT {AUDIT_COLUMNS} FROM audit_log ORDER BY seq"  # noqa: S608


def _canonical(entry: Sequence[Any]) -> bytes:
    """(seq, at, org_id, actor, action, subject_id, request_id, outcome) as MACed bytes."""
    seq, at, org_id, actor, action, subject_id, request_id, outcome = entry
    return orjson.dumps(
        [
            seq,
            at.astimezone(UTC).isoformat(),
            org_id,
            actor,
            action,
            str(subject_id) if subject_id else None,
            str(request_id) if request_id else None,
            outcome,
        ]
    )


def _mac(key: bytes, previous: bytes, entry: bytes) -> bytes:
    return hmac.new(key, previous + entry, hashlib.sha256).digest()


@dataclass(frozen=True)
class AuditEntry:
    org_id: str
    actor: str
    action: str
    outcome: str
    subject_id: UUID | None = None
    request_id: UUID | None = None


def audit_many(conn: psycopg.Connection[Any], key: bytes, entries: Sequence[AuditEntry]) -> int:
    """Append entries, in order, inside the caller's transaction; returns the last `seq`."""
    with conn.cursor(row_factory=tuple_row) as cur:
        cur.execute(_LOCK, (_AUDIT_LOCK,))
        last = cur.execute(_LAST).fetchone()
        seq, previous = (int(last[0]), bytes(last[1])) if last else (0, b"")
        rows = []
        now = datetime.now(UTC)
        for e in entries:
            seq += 1
            entry = (seq, now, e.org_id, e.actor, e.action, e.subject_id, e.request_id, e.outcome)
            previous = _mac(key, previous, _canonical(entry))
            rows.append((*entry, previous))
        cur.executemany(_APPEND, rows)
    return seq


def audit(conn: psycopg.Connection[Any], key: bytes, entry: AuditEntry) -> int:
    """Append one entry inside the caller's transaction; returns its sequence number."""
    return audit_many(conn, key, [entry])


def record(conn: psycopg.Connection[Any], key: bytes, r: PrivacyRecord) -> None:
    """The request and its audit entry, inside the caller's transaction."""
    now = r.at or datetime.now(UTC)
    conn.execute(
        RECORD_REQUEST,
        (
            r.request_id,
            r.org_id,
            r.customer_id,
            r.type,
            r.status,
            r.actor,
            now,
            None if r.status == "RECEIVED" else now,
            now + DEADLINE,
            r.outcome,
        ),
    )
    audit(
        conn,
        key,
        AuditEntry(r.org_id, r.actor, r.type.lower(), r.outcome, r.customer_id, r.request_id),
    )


@dataclass(frozen=True)
class Verdict:
    entries: int
    broken_at: int | None  # first sequence number that does not verify
    reason: str | None

    @property
    def ok(self) -> bool:
        return self.broken_at is None


def verify(conn: psycopg.Connection[Any], key: bytes) -> Verdict:
    """Recompute the chain from the first entry: altered, inserted or removed entries show."""
    previous = b""
    expected = 1
    count = 0
    with conn.cursor(row_factory=tuple_row) as cur:
        for row in cur.stream(_ALL):
            count += 1
            seq, mac = row[0], bytes(row[-1])
            if seq != expected:
                return Verdict(count, expected, f"entry {expected} is missing")
            if not hmac.compare_digest(_mac(key, previous, _canonical(row[:-1])), mac):
                return Verdict(count, seq, f"entry {seq} was altered (or the chain before it)")
            previous = mac
            expected += 1
    return Verdict(count, None, None)
