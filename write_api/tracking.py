"""Tracking: validated activity events appended to `customer_events` with group commit.

Every request hands its events to one writer thread per process, which stores everything
queued meanwhile in ONE transaction: COPY into a staging table, then one statement that
inserts the new events into the partitioned log (a redelivered event is a no-op), adds them to
the customers' running totals and queues the customers for segment re-evaluation. The
requests are answered after the commit, so a 202 is durable, and a burst of single events
costs one commit instead of one each. The Customer aggregate is never loaded: the customer's
organization, status and analytics consent come from the read model.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid4, uuid5

import orjson
import psycopg
from psycopg import sql
from psycopg.rows import tuple_row
from psycopg.types.json import Jsonb

from domain.activity import BEHAVIORAL, EventType, check_times, occurred
from domain.errors import Code, DomainError, invalid
from domain.segment_facts import cents, fold
from eventstore.connections import OwnConnection
from service.metrics import TRACKING_EVENTS
from service.settings import Settings

log = logging.getLogger(__name__)

CHANGES_CHANNEL = "activity_changes"
GROUP_LIMIT = 10_000  # events per transaction
_RETRIES = 3

# Existence and organization from the write side (a live data key), locked until the commit:
# an erasure (which shreds the key and deletes the customer's activity) waits for this batch,
# or this batch sees the key shredded; either way no event outlives the erasure. Status and
# analytics consent from the read model; no status = not projected yet.
CUSTOMERS = (
    "SELECT k.customer_id, k.org_id, v.status,"
    " (d.doc #>> '{preferences,privacySettings,analyticsTracking}') = 'true'"
    " FROM customer_keys k"
    " LEFT JOIN customers_view v ON v.id = k.customer_id"
    " LEFT JOIN customers_docs d ON d.id = k.customer_id"
    " WHERE k.customer_id = ANY(%s) AND k.wrapped_key IS NOT NULL FOR SHARE OF k"
)
STAGE = (
    "CREATE TEMP TABLE IF NOT EXISTS staged_events ("
    " id uuid, customer_id uuid, org_id text, event_type text, event_data jsonb, channel text,"
    " occurred_at timestamptz, received_at timestamptz, session_id uuid, device_info jsonb,"
    " amount_cents bigint, currency text, category text, submission int)"
    " ON COMMIT DELETE ROWS"
)
COPY = "COPY staged_events FROM STDIN (FORMAT BINARY)"
_TYPES = (
    "uuid", "uuid", "text", "text", "jsonb", "text", "timestamptz", "timestamptz", "uuid",
    "jsonb", "int8", "text", "text", "int4",
)  # fmt: skip
PARTITIONS = (
    "SELECT DISTINCT date_trunc('month', occurred_at AT TIME ZONE 'UTC') FROM staged_events"
)
CREATE_PARTITION = sql.SQL(
    "CREATE TABLE IF NOT EXISTS {} PARTITION OF customer_events FOR VALUES FROM ({}) TO ({})"
)
# New events only; their totals merged into customer_activity; customers queued for the
# segments process. Currencies and categories are folded like segment_facts'.
STORE = """
WITH new AS (
    INSERT INTO customer_events (id, customer_id, org_id, event_type, event_data, channel,
        occurred_at, received_at, session_id, device_info)
    SELECT id, customer_id, org_id, event_type, event_data, channel, occurred_at, received_at,
        session_id, device_info
    FROM staged_events
    ON CONFLICT DO NOTHING
    RETURNING id, customer_id, occurred_at
), added AS (  -- one staged row per new event, though a group may hold an event twice
    SELECT DISTINCT ON (s.id, s.customer_id, s.occurred_at) s.* FROM new JOIN staged_events s
        ON s.id = new.id AND s.customer_id = new.customer_id AND s.occurred_at = new.occurred_at
    ORDER BY s.id, s.customer_id, s.occurred_at, s.submission
), totals AS (
    SELECT customer_id, min(org_id) AS org_id, count(*) AS event_count,
        count(*) FILTER (WHERE event_type = 'PURCHASE') AS purchase_count,
        min(currency) FILTER (WHERE event_type = 'PURCHASE') AS spend_currency,
        count(DISTINCT currency) FILTER (WHERE event_type = 'PURCHASE') > 1 AS mixed,
        coalesce(sum(amount_cents) FILTER (WHERE event_type = 'PURCHASE'), 0) AS spent,
        min(occurred_at) FILTER (WHERE event_type = 'PURCHASE') AS first_purchase_at,
        max(occurred_at) FILTER (WHERE event_type = 'PURCHASE') AS last_purchase_at,
        coalesce(array_agg(DISTINCT category) FILTER (
            WHERE event_type = 'PURCHASE' AND category IS NOT NULL), '{}') AS categories,
        count(*) FILTER (WHERE event_type = 'LOGIN') AS login_count,
        max(occurred_at) FILTER (WHERE event_type = 'LOGIN') AS last_login_at,
        min(occurred_at) AS first_event_at, max(occurred_at) AS last_activity_at
    FROM added GROUP BY customer_id
), merged AS (
    INSERT INTO customer_activity AS a (customer_id, org_id, event_count, purchase_count,
        spend_currency, mixed_currencies, total_spent_cents, first_purchase_at,
        last_purchase_at, categories, login_count, last_login_at, first_event_at,
        last_activity_at)
    SELECT customer_id, org_id, event_count, purchase_count, spend_currency, mixed, spent,
        first_purchase_at, last_purchase_at, categories, login_count, last_login_at,
        first_event_at, last_activity_at
    FROM totals
    ORDER BY customer_id  -- writers of other processes lock the same rows in the same order
    ON CONFLICT (customer_id) DO UPDATE SET
        event_count = a.event_count + excluded.event_count,
        purchase_count = a.purchase_count + excluded.purchase_count,
        spend_currency = coalesce(a.spend_currency, excluded.spend_currency),
        mixed_currencies = a.mixed_currencies OR excluded.mixed_currencies
            OR coalesce(a.spend_currency <> excluded.spend_currency, false),
        total_spent_cents = a.total_spent_cents + excluded.total_spent_cents,
        first_purchase_at = least(a.first_purchase_at, excluded.first_purchase_at),
        last_purchase_at = greatest(a.last_purchase_at, excluded.last_purchase_at),
        categories = CASE WHEN excluded.categories <@ a.categories THEN a.categories
            ELSE ARRAY(SELECT DISTINCT unnest(a.categories || excluded.categories)) END,
        login_count = a.login_count + excluded.login_count,
        last_login_at = greatest(a.last_login_at, excluded.last_login_at),
        first_event_at = least(a.first_event_at, excluded.first_event_at),
        last_activity_at = greatest(a.last_activity_at, excluded.last_activity_at)
    RETURNING customer_id
), queued AS (
    INSERT INTO activity_changes SELECT customer_id FROM merged ORDER BY 1
    ON CONFLICT DO NOTHING
)
SELECT submission, count(*) FROM added GROUP BY submission
"""
NOTIFY = f"NOTIFY {CHANGES_CHANNEL}"


@dataclass(frozen=True)
class Customer:
    org_id: str
    status: str | None
    analytics: bool


@dataclass
class Submission:
    """One request's events, all for customers of `org_id`."""

    org_id: str
    events: Sequence[Any]  # domain.activity events, customer_id set
    received: datetime
    # Events without an id get one derived from this and their index (redeliveries of a
    # message are then the same events); without it, random ones.
    id_seed: str | None = None
    future: Future[Result] = field(default_factory=Future)


@dataclass(frozen=True)
class Result:
    accepted: int  # stored now
    duplicates: int  # stored before (same id, customer and time)
    skipped: list[int]  # indexes not stored: behavioral, and analytics tracking is off
    unknown: list[int]  # indexes naming no customer of the organization
    pending: list[int]  # indexes whose customer is not in the read model yet
    ids: list[str]


class ActivityWriter:
    """The process's one writer thread (group commit)."""

    def __init__(self, settings: Settings) -> None:
        assert settings.database_url
        self._url = settings.database_url
        self._queue: queue.Queue[Submission | None] = queue.Queue()
        self._partitions: set[datetime] = set()
        self._thread = threading.Thread(target=self._run, name="activity-writer", daemon=True)
        self._thread.start()

    def enqueue(self, submission: Submission) -> Future[Result]:
        self._queue.put(submission)
        return submission.future

    def submit(self, submission: Submission) -> Result:
        return self.enqueue(submission).result()

    def submit_many(self, submissions: list[Submission]) -> list[Result]:
        """Queued together, so stored in as few transactions as the group limit allows."""
        for s in submissions:
            self._queue.put(s)
        return [s.future.result() for s in submissions]

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _staged(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute(STAGE)
        conn.commit()

    def _run(self) -> None:
        own = OwnConnection(self._url, self._staged, autocommit=False, row_factory=tuple_row)
        while True:
            first = self._queue.get()
            if first is None:
                break
            group, size = [first], len(first.events)
            while size < GROUP_LIMIT:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)
                    break
                group.append(more)
                size += len(more.events)
            try:
                results = self._store_retrying(own.get(), group)
            except Exception as e:
                log.exception("storing tracked events failed")
                self._partitions.clear()  # one may have been dropped by retention
                own.close()
                for s in group:
                    if not s.future.done():
                        s.future.set_exception(e)
                continue
            for s, r in zip(group, results, strict=True):
                s.future.set_result(r)
            _count(results)
        own.close()

    def _store_retrying(
        self, conn: psycopg.Connection[Any], group: list[Submission]
    ) -> list[Result]:
        """A group that lost a deadlock or serialization race (writers of other processes)
        is stored again: nothing of it was committed."""
        for _ in range(_RETRIES - 1):
            try:
                return self._store(conn, group)
            except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
                conn.rollback()
        return self._store(conn, group)

    def _store(self, conn: psycopg.Connection[Any], group: list[Submission]) -> list[Result]:
        ids = list({e.customer_id for s in group for e in s.events})
        customers = {
            cid: Customer(org, status, bool(analytics))
            for cid, org, status, analytics in conn.execute(CUSTOMERS, (ids,))
        }
        plans: list[tuple[list[int], list[int], list[int], list[tuple[Any, ...]]]] = []
        for n, s in enumerate(group):
            skipped: list[int] = []
            unknown: list[int] = []
            pending: list[int] = []
            rows: list[tuple[Any, ...]] = []
            for i, e in enumerate(s.events):
                c = customers.get(e.customer_id)
                if c is None or c.org_id != s.org_id or c.status == "DELETED":
                    unknown.append(i)
                elif c.status is None:
                    pending.append(i)
                elif e.type in BEHAVIORAL and not c.analytics:
                    skipped.append(i)
                else:
                    event_id = e.event_id or (
                        uuid5(NAMESPACE_URL, f"{s.id_seed}:{i}") if s.id_seed else uuid4()
                    )
                    rows.append(_row(s.org_id, event_id, e, s.received, n))
            # A request that cannot be stored whole stores nothing (no partial state).
            plans.append((skipped, unknown, pending, [] if unknown or pending else rows))
        staged = [r for *_, rows in plans for r in rows]
        stored: dict[int, int] = {}  # new events per submission (the rest were stored before)
        if staged:
            with conn.cursor() as cur, cur.copy(COPY) as copy:
                copy.set_types(_TYPES)
                for r in staged:
                    copy.write_row(r)
            self._ensure_partitions(conn)
            stored = dict(conn.execute(STORE).fetchall())
            conn.execute(NOTIFY)
        conn.commit()
        results = []
        for n, (skipped, unknown, pending, rows) in enumerate(plans):
            new = stored.get(n, 0)
            ids = [str(r[0]) for r in rows]
            results.append(Result(new, len(rows) - new, skipped, unknown, pending, ids))
        return results

    def _ensure_partitions(self, conn: psycopg.Connection[Any]) -> None:
        months = {m.replace(tzinfo=UTC) for (m,) in conn.execute(PARTITIONS)}
        for month in months - self._partitions:
            end = month.replace(year=month.year + month.month // 12, month=month.month % 12 + 1)
            name = f"customer_events_y{month.year:04d}m{month.month:02d}"
            # Concurrent writers (other processes) may create it first: IF NOT EXISTS, in a
            # savepoint so that a lost race does not abort the batch. IF NOT EXISTS alone is
            # not enough: a writer whose check ran before the other's commit waits for the
            # parent's lock, then fails with DuplicateTable (or a unique violation in the
            # catalog); the partition exists then, so that failure is the race lost.
            query = CREATE_PARTITION.format(
                sql.Identifier(name), sql.Literal(month), sql.Literal(end)
            )
            try:
                with conn.transaction():
                    conn.execute(query)
            except (psycopg.errors.DuplicateTable, psycopg.errors.UniqueViolation):
                log.debug("partition created by another writer", extra={"partition": name})
            self._partitions.add(month)


def _count(results: list[Result]) -> None:
    stored = sum(r.accepted for r in results)
    duplicates = sum(len(r.ids) - r.accepted for r in results)
    # A submission with pending or unknown customers stored nothing (it may come again).
    skipped = sum(len(r.skipped) for r in results if not (r.pending or r.unknown))
    for result, n in (("stored", stored), ("duplicate", duplicates), ("skipped", skipped)):
        if n:
            TRACKING_EVENTS.labels(result).inc(n)


def _row(
    org_id: str, event_id: UUID, e: Any, received: datetime, submission: int
) -> tuple[Any, ...]:
    data = e.data.dump()
    purchase = e.type == EventType.PURCHASE
    return (
        event_id,
        e.customer_id,
        org_id,
        e.type.value,
        Jsonb(data, dumps=orjson.dumps),
        e.channel or (data.get("channel") if purchase else None) or None,
        occurred(e, received),
        received,
        e.session_id,
        Jsonb(e.device.dump(), dumps=orjson.dumps) if e.device else None,
        cents(e.data.amount) if purchase else None,
        fold(data["currency"]) if purchase else None,
        fold(data.get("category")) if purchase else None,
        submission,
    )


async def track(
    writer: ActivityWriter, org_id: str, events: Sequence[Any], settings: Settings, *, batch: bool
) -> Result:
    """Store a request's events (REST or gRPC): dated neither in the future nor before what
    the log keeps; a customer created a moment ago (not in the read model yet) is waited for
    up to the consistency wait. NOT_FOUND names the first unknown customer. Awaited on the
    event loop: no worker thread is held while the writer commits."""
    received = datetime.now(UTC)
    late = check_times(list(events), received, settings.activity_retention_months)
    if late:
        field, message = late[0]
        raise invalid(field if batch else "timestamp", message)
    submission = Submission(org_id, events, received)
    deadline = time.monotonic() + settings.consistency_wait_seconds
    while True:
        result = await asyncio.wrap_future(writer.enqueue(submission))
        if result.unknown:
            i = result.unknown[0]
            raise DomainError(
                Code.NOT_FOUND,
                f"customer {submission.events[i].customer_id} not found",
                field=f"events.{i}.customerId" if batch else None,
            )
        if not result.pending:
            return result
        if time.monotonic() > deadline:
            raise DomainError(Code.UNAVAILABLE, "the customer is not readable yet; retry")
        await asyncio.sleep(0.05)
        submission = Submission(
            submission.org_id, submission.events, submission.received, submission.id_seed
        )


PARTITIONS_OF_LOG = (
    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
    " WHERE i.inhparent = 'customer_events'::regclass"
)


def drop_expired(conn: psycopg.Connection[Any], retention_months: int, now: datetime) -> list[str]:
    """Drop the monthly partitions wholly older than `retention_months` before this month
    (0 = keep everything). Running totals keep counting what was dropped."""
    if retention_months <= 0:
        return []
    months = now.year * 12 + now.month - 1 - retention_months  # first month kept
    dropped = []
    for (name,) in conn.execute(PARTITIONS_OF_LOG).fetchall():
        year, month = int(name[-7:-3]), int(name[-2:])
        if year * 12 + month - 1 < months:
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))
            dropped.append(name)
    return dropped
