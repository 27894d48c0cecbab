"""Appending membership changes, and the incremental re-evaluation of changed customers.

Every membership decision is a diff between what should be and `segment_members` (the write
side's current members, changed only together with the events). The diff and the membership
stream's version are read in ONE snapshot; the events are appended at the next versions, so a
concurrent decision about the same segment (a calculation, another evaluator) makes this save
fail on the version and it decides again. Re-deciding is always safe: a diff against the
current state never repeats a join or a leave.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import psycopg
from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import IntegrityError, Notification, OperationalError
from psycopg.rows import tuple_row

from domain.criteria import SegmentCriteria, matches
from domain.membership import Change, Reason, events, stream_id
from domain.segment import effective_criteria
from domain.segment_facts import CustomerFacts
from domain.topics import CUSTOMER_MODULE
from eventstore import dead_letters
from eventstore.application import EVENTS_TABLE, Customers
from eventstore.connections import OwnConnection
from projections import segment_sql
from projections.customers import VIEW as CUSTOMERS_VIEW
from projections.positions import (
    POSITIONS_CHANNEL,
    SET_POSITION,
    Follower,
    follow,
    read_position,
)
from write_api.tracking import CHANGES_CHANNEL

log = logging.getLogger(__name__)

Connection = psycopg.Connection[Any]

STREAM_VERSIONS = (
    f"SELECT originator_id, max(originator_version) FROM {EVENTS_TABLE}"  # noqa: S608
    " WHERE originator_id = ANY(%s) GROUP BY originator_id"
)
MEMBERS_OF_CUSTOMERS = (
    "SELECT segment_id, customer_id FROM segment_members WHERE customer_id = ANY(%s)"
)
# The organizations' live dynamic segments, and any segment the customers are in now.
SEGMENTS_TO_CHECK = (
    "SELECT id, org_id, kind, status, version, definition FROM segments_view"
    " WHERE (org_id = ANY(%s) AND status = 'ACTIVE' AND kind = 'DYNAMIC') OR id = ANY(%s)"
)
_RETRIES = 10


def stream_versions(conn: Connection, segment_ids: Iterable[UUID]) -> dict[UUID, int]:
    """The current version of each segment's membership stream (0 = no events yet)."""
    streams = {stream_id(s): s for s in segment_ids}
    with conn.cursor(row_factory=tuple_row) as cur:
        found: dict[UUID, int] = dict(cur.execute(STREAM_VERSIONS, (list(streams),)).fetchall())
    return {s: int(found.get(stream, 0)) for stream, s in streams.items()}


def append(
    app: Customers, changes: Sequence[Change], new_events: Sequence[DomainEventProtocol[UUID]]
) -> int:
    """Append membership events in one transaction with the changes' effect on
    segment_members. Returns the last notification id (0 when nothing was appended). Raises
    IntegrityError when a stream moved past the versions the events were built on: the
    caller decides again."""
    if not new_events:
        return 0
    recordings = app.save(*new_events, membership=[c for c in changes if c])
    return recordings[-1].notification.id if recordings else 0


class _Segment:
    """A segment as the evaluator sees it; `criteria` None for a STATIC one."""

    __slots__ = ("criteria", "id", "live", "org_id")

    def __init__(self, row: Sequence[Any], criteria: SegmentCriteria | None) -> None:
        self.id: UUID = row[0]
        self.org_id: str = row[1]
        self.live = row[3] == "ACTIVE"
        self.criteria = criteria


class Reevaluator(Follower):
    """Incremental membership: follows the customers projection and re-evaluates exactly the
    customers whose facts changed against their organization's active dynamic segments.

    It trails `customers_view` (whose commit also wrote segment_facts) by reading the log up
    to that view's position, so the facts it reads are at least as new as the events it
    handles. Its own position is saved after the appends; a crash in between re-handles
    those customers, which the diff makes harmless.
    """

    name = "segment_membership_evaluator"

    def __init__(self, app: Customers, *, batch_size: int = 2000) -> None:
        assert app.settings.database_url
        super().__init__(app.settings.database_url)
        self.app = app
        self.batch_size = batch_size
        self._criteria: dict[tuple[UUID, int], SegmentCriteria | None] = {}

    def run_once(self) -> int:
        """Handle every customer change the customers projection has committed; return the
        number of customers re-evaluated."""
        conn = self._connection()
        target = read_position(conn, CUSTOMERS_VIEW)
        total = 0
        while self.position < target:
            batch = self.app.recorder.select_notifications(
                self.position, self.batch_size, stop=target, inclusive_of_start=False
            )
            if not batch:
                break
            # The customer's last notification names them if they end as a dead letter.
            changed = {
                n.originator_id: n
                for n in batch
                if n.topic.startswith(CUSTOMER_MODULE) and isinstance(n.originator_id, UUID)
            }
            if changed:
                self._reevaluate_isolated(conn, changed)
                total += len(changed)
            self.position = batch[-1].id
            conn.execute(SET_POSITION, (self.position, self.name))
        return total

    def _reevaluate_isolated(self, conn: Connection, changed: dict[UUID, Notification]) -> None:
        """All at once; if that fails because of a customer, one by one, and a customer that
        still fails becomes a dead letter (nothing of theirs was appended)."""
        try:
            self.reevaluate(changed)
            return
        except Exception as exc:
            if not dead_letters.poisoned(exc):
                raise
        for cid, notification in changed.items():
            try:
                self.reevaluate([cid])
            except Exception as exc:
                if not dead_letters.poisoned(exc):
                    raise
                dead_letters.record(conn, self.name, notification, exc)

    def reevaluate(self, customer_ids: Iterable[UUID], *, as_of: datetime | None = None) -> int:
        """Bring the customers' memberships in line with their current facts; returns the
        last notification id appended (0 when nothing changed)."""
        ids = list(customer_ids)
        for _ in range(_RETRIES):
            changes, versions = self._decide(ids, as_of or datetime.now(UTC))
            if not changes:
                return 0
            at = datetime.now(UTC)
            new = [e for c in changes for e in events(c, versions[c.segment_id], at)]
            try:
                return append(self.app, changes, new)
            except IntegrityError:
                continue  # a calculation or another evaluator moved a stream: decide again
        # Contention, not a fault of these customers: the follower retries the batch later.
        raise OperationalError("membership kept changing under the evaluator")

    def _decide(self, ids: list[UUID], as_of: datetime) -> tuple[list[Change], dict[UUID, int]]:
        conn = self._connection()
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            facts: dict[UUID, tuple[str, CustomerFacts]] = {
                row[0]: (row[1], segment_sql.facts_from_row(row[2:]))
                for row in conn.execute(segment_sql.LOAD_FACTS, (ids,))
            }
            current: dict[UUID, set[UUID]] = {}
            for segment_id, customer_id in conn.execute(MEMBERS_OF_CUSTOMERS, (ids,)):
                current.setdefault(segment_id, set()).add(customer_id)
            orgs = sorted({org for org, _ in facts.values()})
            segments = [
                _Segment(row, self._parse(row))
                for row in conn.execute(SEGMENTS_TO_CHECK, (orgs, list(current)))
            ]
            joined: dict[UUID, list[str]] = {}
            left: dict[UUID, list[str]] = {}
            for segment in segments:
                members = current.get(segment.id, set())
                for cid in ids:
                    found = facts.get(cid)
                    is_member = cid in members
                    if found is None:  # erased: leaves every segment
                        should = False
                    elif found[0] != segment.org_id:
                        continue
                    elif found[1].status == "DELETED":
                        should = False
                    elif segment.criteria is not None and segment.live:
                        should = matches(segment.criteria, found[1], as_of)
                    else:  # STATIC or INACTIVE: members change only by hand / calculation
                        should = is_member
                    if should and not is_member:
                        joined.setdefault(segment.id, []).append(str(cid))
                    elif is_member and not should:
                        left.setdefault(segment.id, []).append(str(cid))
            by_id = {s.id: s for s in segments}
            changes = [
                Change(
                    by_id[sid].org_id,
                    sid,
                    joined.get(sid, []),
                    left.get(sid, []),
                    Reason.CUSTOMER_CHANGE,
                )
                for sid in sorted(joined.keys() | left.keys())
            ]
            versions = stream_versions(conn, [c.segment_id for c in changes]) if changes else {}
        return changes, versions

    def _parse(self, row: Sequence[Any]) -> SegmentCriteria | None:
        key = (row[0], row[4])
        if key not in self._criteria:
            if len(self._criteria) > 10_000:
                self._criteria.clear()
            self._criteria[key] = effective_criteria(row[5])
        return self._criteria[key]


def follow_customers(reevaluator: Reevaluator, url: str, stop: threading.Event) -> None:
    """Run `reevaluator` whenever the customers projection commits (at the latest every
    second); survive outages with backoff."""
    follow(
        "membership evaluator",
        url,
        POSITIONS_CHANNEL,
        reevaluator.run_once,
        close=reevaluator.close,
        stop=stop,
        gather=reevaluator.app.settings.follower_gather_ms / 1000,
        wakes=lambda payload: payload.startswith(CUSTOMERS_VIEW + ":"),
    )


# Claimed rows stay locked (and in the queue) until the re-evaluation commits.
CLAIM_ACTIVITY_CHANGES = (
    "DELETE FROM activity_changes WHERE customer_id IN"
    " (SELECT customer_id FROM activity_changes LIMIT %s FOR UPDATE SKIP LOCKED)"
    " RETURNING customer_id"
)


class ActivityReevaluator:
    """Incremental membership for tracked activity: re-evaluates the customers the activity
    writer queued (their purchases, logins, last activity changed the facts criteria read).
    A crash before the commit leaves them queued; re-deciding is harmless."""

    def __init__(self, reevaluator: Reevaluator, database_url: str, batch_size: int = 2000):
        self._reevaluator = reevaluator
        self._url = database_url
        self._batch_size = batch_size
        self._conn = OwnConnection(database_url)

    def run_once(self) -> int:
        conn = self._conn.get()
        total = 0
        while True:
            with conn.transaction():
                claimed = conn.execute(CLAIM_ACTIVITY_CHANGES, (self._batch_size,))
                ids = [row[0] for row in claimed]
                if not ids:
                    return total
                self._reevaluator.reevaluate(ids)
                total += len(ids)

    def close(self) -> None:
        self._conn.close()

    def follow(self, stop: threading.Event) -> None:
        follow(
            "activity evaluator",
            self._url,
            CHANGES_CHANNEL,
            self.run_once,
            close=self.close,
            stop=stop,
            gather=self._reevaluator.app.settings.follower_gather_ms / 1000,
        )
