"""Every write in the audit trail: a follower of the notification log (in the segments
process) appends one audit entry per event — who (the event's actor), what (aggregate and
event type), on which customer or segment, in which organization.

Off the write path on purpose: the audit chain is one line (serialised appends), and writes
must not queue on it. Entries and the follower's position commit together, so each event is
attributed exactly once; the delay is the follower's (about a second). Events of customers
erased before the follower reached them are attributed to "unknown (erased)".
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any
from uuid import UUID

import orjson
import psycopg
from eventsourcing.persistence import Notification

from domain.topics import CUSTOMER_MODULE, MEMBERSHIP_MODULE, SEGMENT_MODULE
from eventstore import compliance, dead_letters
from eventstore.application import EVENTS_TABLE, Customers
from eventstore.compliance import AuditEntry
from eventstore.mapper import Shredded, topic_of
from projections.positions import LOCK_POSITION, SET_POSITION, Follower, follow

log = logging.getLogger(__name__)

Connection = psycopg.Connection[Any]

CUSTOMER_ORGS = "SELECT customer_id, org_id FROM customer_keys WHERE customer_id = ANY(%s)"
SEGMENT_ORGS = (
    f"SELECT originator_id, state FROM {EVENTS_TABLE}"  # noqa: S608
    " WHERE originator_id = ANY(%s) AND originator_version = 1"
)
ENGINE = "segment-engine"  # the actor of membership changes the engine decided


class WriteAuditor(Follower):
    name = "audit_writes"

    def __init__(self, app: Customers, *, batch_size: int = 1000) -> None:
        assert app.settings.database_url
        super().__init__(app.settings.database_url)
        self.app = app
        self.batch_size = batch_size

    def run_once(self) -> int:
        """Attribute every event committed so far; returns how many."""
        total = 0
        while True:
            conn = self._connection()
            batch = self.app.recorder.select_notifications(
                self.position, self.batch_size, inclusive_of_start=False
            )
            if not batch:
                return total
            entries, failed = self._entries(conn, batch)
            with conn.transaction():
                row = conn.execute(LOCK_POSITION, (self.name,)).fetchone()
                if row is None or int(row[0]) != self.position:  # another auditor moved on
                    self.position = int(row[0]) if row else 0
                    continue
                for n, exc in failed:
                    dead_letters.record(conn, self.name, n, exc)
                dead_letters.apply_isolated(
                    conn,
                    self.name,
                    entries,
                    lambda c, items: compliance.audit_many(c, self.app.keys.audit_key, items),
                )
                conn.execute(SET_POSITION, (batch[-1].id, self.name))
            self.position = batch[-1].id
            total += len(batch)

    def _entries(
        self, conn: Connection, batch: Sequence[Notification]
    ) -> tuple[list[tuple[Notification, AuditEntry]], list[tuple[Notification, Exception]]]:
        """The batch's entries, and the notifications that could not be attributed."""
        customers = [
            UUID(str(n.originator_id)) for n in batch if n.topic.startswith(CUSTOMER_MODULE)
        ]
        segments = [UUID(str(n.originator_id)) for n in batch if n.topic.startswith(SEGMENT_MODULE)]
        orgs: dict[UUID, str] = {}
        if customers:
            orgs.update(conn.execute(CUSTOMER_ORGS, (customers,)).fetchall())
            self.app.keys.preload(customers)
        if segments:
            for sid, state in conn.execute(SEGMENT_ORGS, (segments,)):
                orgs[sid] = orjson.loads(bytes(state))["org_id"]
        return dead_letters.decode_each(batch, lambda n: self._entry(n, orgs))

    def _entry(self, n: Notification, orgs: dict[UUID, str]) -> AuditEntry:
        event: Any = self.app.mapper.to_domain_event(n)
        topic = topic_of(event)
        aggregate, _, kind = topic.partition(":")
        action = f"{aggregate.removeprefix('domain.')}.{kind.rsplit('.', 1)[-1]}"
        if topic.startswith(MEMBERSHIP_MODULE):
            subject, org = UUID(event.segment_id), event.org_id
            actor = getattr(event, "actor", None) or ENGINE
        else:
            subject = UUID(str(n.originator_id))
            org = orgs.get(subject)
            actor = (
                "unknown (erased)"
                if isinstance(event, Shredded)
                else str(getattr(event, "actor", None) or "unrecorded")
            )
        if org is None:
            log.warning("no organization for an audited event", extra={"topic": topic})
            org = "unknown"
        return AuditEntry(org, actor, action, "committed", subject)


def follow_log(auditor: WriteAuditor, url: str, stop: threading.Event) -> None:
    """Attribute new events as they are committed (NOTIFY; at the latest every second)."""
    follow(
        "write auditor",
        url,
        EVENTS_TABLE,
        auditor.run_once,
        close=auditor.close,
        stop=stop,
        gather=auditor.app.settings.follower_gather_ms / 1000,
    )
