"""Application recorder that writes keys, uniqueness claims, segment members and queued
calculations in the event's transaction."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from eventsourcing.persistence import (
    IntegrityError,
    InterfaceError,
    Notification,
    OperationalError,
    StoredEvent,
)
from eventsourcing.postgres import PostgresApplicationRecorder
from eventsourcing.utils import retry
from psycopg import Connection, Cursor
from psycopg.rows import DictRow, tuple_row
from psycopg.sql import SQL, Composable, Identifier

from domain.membership import Change
from eventstore import compliance
from eventstore.compliance import PrivacyRecord, RequestType
from eventstore.keys import StoredKey, WrappedKey
from service import logs


@dataclass(frozen=True)
class Claim:
    """`owner_id` takes the unique name `key_hash` within (`scope`, `org_id`)."""

    scope: str
    org_id: str
    key_hash: bytes
    owner_id: UUID


@dataclass(frozen=True)
class Release:
    scope: str
    org_id: str
    key_hash: bytes


@dataclass(frozen=True)
class IdempotencyRecord:
    org_id: str
    key: str
    request_hash: bytes
    customer_id: UUID
    version: int
    status: int


@dataclass(frozen=True)
class JobRequest:
    """Queue a calculation of a segment (coalesced with one already queued)."""

    job_id: UUID
    org_id: str
    segment_id: UUID
    reason: str
    requested_by: str


# Keys and claims of a save, however many, as one statement each (binary arrays: no
# per-row round trip or text escaping).
INSERT_KEYS = (
    "INSERT INTO customer_keys (customer_id, org_id, kek_id, wrapped_key)"
    " SELECT * FROM unnest(%b::uuid[], %b::text[], %b::bytea[], %b::bytea[])"
)
CLAIM = (
    "INSERT INTO unique_claims (scope, org_id, key_hash, owner_id)"
    " SELECT * FROM unnest(%b::text[], %b::text[], %b::bytea[], %b::uuid[])"
)
RELEASE = "DELETE FROM unique_claims WHERE scope = %s AND org_id = %s AND key_hash = %s"
# Who holds which of the given keys of a scope (key_hash, owner_id): one primary-key probe per
# key. OFFSET 0 keeps the planner from turning it into a scan of the organization's claims,
# which it does while the statistics lag a fast-growing table (an import: 40 ms a batch at
# 30,000 claims, and growing, instead of a constant 2 ms).
OWNERS = (
    "SELECT k.key_hash, c.owner_id FROM unnest(%s::bytea[]) AS k(key_hash) CROSS JOIN LATERAL"
    " (SELECT owner_id FROM unique_claims"
    " WHERE scope = %s AND org_id = %s AND key_hash = k.key_hash OFFSET 0) AS c"
)
RECORD_CORRELATIONS = (
    "INSERT INTO event_correlations (notification_id, correlation_id) SELECT unnest(%b::int8[]), %s"
)
RECORD_IDEMPOTENCY = (
    "INSERT INTO idempotency_keys (org_id, key, request_hash, customer_id, version, status)"
    " VALUES (%s, %s, %s, %s, %s, %s)"
)
ADD_MEMBERS = "INSERT INTO segment_members (segment_id, customer_id) SELECT %s, unnest(%s::uuid[])"
REMOVE_MEMBERS = (
    "DELETE FROM segment_members WHERE segment_id = %s AND customer_id = ANY(%s::uuid[])"
)
# Erasure: the data key, uniqueness claims (keyed hashes of the e-mail) and idempotency
# records (keyed hashes of request bodies) of the customer go with the Erased event.
SHRED_KEY = (
    "UPDATE customer_keys SET wrapped_key = NULL, shredded_at = now()"
    " WHERE customer_id = %s AND wrapped_key IS NOT NULL"
)
DROP_CLAIMS = "DELETE FROM unique_claims WHERE owner_id = %s"
DROP_IDEMPOTENCY = "DELETE FROM idempotency_keys WHERE customer_id = %s"
# Tracked activity: the events (device, session: personal) go with erasure and anonymization;
# the running totals only with erasure (anonymization keeps the analytics).
DROP_ACTIVITY_EVENTS = "DELETE FROM customer_events WHERE customer_id = %s"
DROP_ACTIVITY_TOTALS = "DELETE FROM customer_activity WHERE customer_id = %s"
QUEUE_JOB = (
    "INSERT INTO segment_jobs (id, org_id, segment_id, reason, state, requested_by)"
    " SELECT %(id)s, %(org)s, %(segment)s, %(reason)s, 'QUEUED', %(by)s WHERE NOT EXISTS"
    " (SELECT 1 FROM segment_jobs WHERE segment_id = %(segment)s AND state = 'QUEUED')"
)

_NO_STOP = 2**63 - 1  # notification ids are bigint
PIPELINE_LIMIT = 1_000_000  # bytes; well below where the pipeline was seen to hang


def _bytes_in_flight(stored_events: Sequence[StoredEvent], membership: Sequence[Change]) -> int:
    ids = sum(len(c.joined) + len(c.left) for c in membership)
    return sum(len(e.state) for e in stored_events) + 40 * ids  # a uuid as text, quoted


# Unique constraints whose violation means a business conflict, not a concurrency retry.
CLAIM_CONSTRAINT = "unique_claims_pkey"
IDEMPOTENCY_CONSTRAINT = "idempotency_keys_pkey"


def violated_constraint(error: IntegrityError) -> str | None:
    """The unique constraint a save violated: PostgreSQL's diagnostics, or the name the
    in-memory recorder gives."""
    named: str | None = getattr(error, "constraint", None)
    if named is not None:
        return named
    diag = getattr(error.__cause__, "diag", None)
    return getattr(diag, "constraint_name", None)


# Side writes a grouped save may carry: each is a statement of its own in the group's
# transaction. Saves with others (erasure, privacy records, membership, a job's bookkeeping)
# are saved alone, as they were.
GROUPABLE = frozenset({"new_keys", "claims", "releases", "idempotency", "jobs"})
GROUP_MAX_SAVES = 256


@dataclass
class _Save:
    """A save waiting for the group committer, and what became of it."""

    events: Sequence[StoredEvent]
    kwargs: dict[str, Any]
    correlation: str
    size: int
    done: threading.Event = field(default_factory=threading.Event)
    ids: Sequence[int] | None = None
    error: BaseException | None = None


class GroupCommitter:
    """Group commit: one writer thread per process saves, in ONE transaction (one table lock,
    one NOTIFY, one fsync), every small save that arrived while it was committing the previous
    group. Each save keeps its own outcome: when the group's transaction fails (a version
    conflict, a taken e-mail, an idempotency key met twice, a lost connection) every save of
    it is made again alone, exactly as an ungrouped save, so only the offender fails and a
    commit whose reply was lost is still recognised as made."""

    def __init__(self, recorder: CustomerRecorder) -> None:
        self._recorder = recorder
        self._queue: queue.SimpleQueue[_Save | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="group-commit", daemon=True)
        self._thread.start()

    def submit(self, events: Sequence[StoredEvent], kwargs: dict[str, Any]) -> Sequence[int] | None:
        save = _Save(events, kwargs, logs.correlation_id.get(), _bytes_in_flight(events, ()))
        self._queue.put(save)
        save.done.wait()
        if save.error is not None:
            raise save.error
        return save.ids

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while (first := self._queue.get()) is not None:
            group, size = [first], first.size
            while len(group) < GROUP_MAX_SAVES and size < PIPELINE_LIMIT:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)  # stop after this group
                    break
                group.append(more)
                size += more.size
            self._commit(group)

    def _commit(self, group: list[_Save]) -> None:
        if len(group) > 1:
            try:
                ids = self._recorder.insert_group(group)
            except Exception:  # noqa: S110 — each save is made again alone, below
                pass
            else:
                start = 0
                for save in group:
                    save.ids = ids[start : start + len(save.events)]
                    start += len(save.events)
                    save.done.set()
                return
        for save in group:
            token = logs.correlation_id.set(save.correlation)
            try:
                save.ids = self._recorder.insert_alone(save.events, **save.kwargs)
            except BaseException as e:
                save.error = e
            finally:
                logs.correlation_id.reset(token)
                save.done.set()


class CustomerRecorder(PostgresApplicationRecorder):
    audit_key = b""  # set by the application (derived from the master key)
    # Set by the application when a relay publishes the log (NATS configured): only then are
    # correlation ids recorded, since only the relay reads and deletes them.
    relayed = False
    # Set by the application (processes that serve commands): small saves are group-committed.
    committer: GroupCommitter | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Statements rendered once: a composed one is rendered again at every execution,
        # and these run for every save and every follower's wake.
        table = SQL("{schema}.{table}").format(
            schema=Identifier(self.datastore.schema), table=Identifier(self.events_table_name)
        )
        self._insert_columns = (
            SQL(
                "INSERT INTO {table} (originator_id, originator_version, topic, state)"
                " SELECT * FROM unnest(%b::uuid[], %b::int8[], %b::text[], %b::bytea[])"
                " RETURNING notification_id"
            )
            .format(table=table)
            .as_bytes()
        )
        self._select_stored = (
            SQL(
                "SELECT originator_id, originator_version, state, notification_id FROM {table}"
                " WHERE originator_id = ANY(%s::uuid[]) AND originator_version = ANY(%s::int8[])"
            )
            .format(table=table)
            .as_bytes()
        )
        self.lock_table_statements = [
            q.as_bytes() if isinstance(q, Composable) else q for q in self.lock_table_statements
        ]
        self._notify = SQL("NOTIFY {}").format(Identifier(self.channel_name)).as_bytes()
        self._notifications = (
            SQL(
                "SELECT * FROM {table} WHERE notification_id > %s AND notification_id <= %s"
                " ORDER BY notification_id LIMIT %s"
            )
            .format(table=table)
            .as_bytes()
        )

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> Sequence[Notification]:
        """The followers' read of the log after a position, with a statement prepared once;
        other forms go to the library's."""
        if start is None or topics or inclusive_of_start:
            found: Sequence[Notification] = super().select_notifications(
                start, limit, stop, topics, inclusive_of_start=inclusive_of_start
            )
            return found
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(
                self._notifications,
                (start, stop if stop is not None else _NO_STOP, limit),
                prepare=True,
            )
            notifications: list[Notification] = [
                Notification(
                    id=row["notification_id"],
                    originator_id=row["originator_id"],
                    originator_version=row["originator_version"],
                    topic=row["topic"],
                    state=bytes(row["state"]),
                )
                for row in curs.fetchall()
            ]
        return notifications

    def _notify_channel(self, curs: Cursor[DictRow]) -> None:
        curs.execute(self._notify, prepare=False)

    def _lock_table(self, curs: Cursor[DictRow]) -> None:
        for statement in self.lock_table_statements:
            curs.execute(statement, prepare=False)

    @staticmethod
    def _unprepared(conn: Connection[DictRow]) -> None:
        """Nothing sent in a write's pipeline is prepared: when the pipeline aborts (a unique
        violation, a conflicting group), psycopg still counts the statements queued after the
        error as prepared, and their next use on the connection fails ("prepared statement
        does not exist")."""
        conn.prepare_threshold = None

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

    def stored_keys(self, customer_ids: list[UUID]) -> list[StoredKey]:
        with self.datastore.get_connection() as conn, conn.cursor(row_factory=tuple_row) as curs:
            curs.execute(SELECT_KEYS, (customer_ids,), prepare=True)
            return [(r[0], r[1], r[2]) for r in curs.fetchall()]

    def notification_id(self, originator_id: UUID, version: int) -> int:
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(NOTIFICATION_ID, (originator_id, version), prepare=True)
            row = curs.fetchone()
        assert row is not None
        return int(row["notification_id"])

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        if (
            self.committer is not None
            and stored_events
            and GROUPABLE.issuperset(k for k, v in kwargs.items() if v)
            and _bytes_in_flight(stored_events, ()) < PIPELINE_LIMIT
        ):
            return self.committer.submit(stored_events, kwargs)
        return self.insert_alone(stored_events, **kwargs)

    def insert_alone(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        """One save in a transaction of its own."""
        try:
            return self._insert_events_once(stored_events, **kwargs)
        except IntegrityError:
            # The library retries a save whose connection failed (OperationalError), also
            # when it failed after the COMMIT had become durable (e.g. PostgreSQL stopped
            # between the commit and its reply). The retry then collides with its own rows.
            # When exactly these events are stored (same bytes: customer events are sealed
            # with a random nonce, the others carry their timestamp), the save succeeded:
            # answer it as such, not as a conflict (a 412 or 409 for a write that was made).
            ids = self._stored_already(stored_events)
            if ids is None:
                raise
            return ids

    def _stored_already(self, stored_events: Sequence[StoredEvent]) -> list[int] | None:
        """The notification ids of `stored_events` if all of them are stored as they are."""
        if not stored_events:
            return None
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(
                self._select_stored,
                (
                    list({e.originator_id for e in stored_events}),
                    list({e.originator_version for e in stored_events}),
                ),
            )
            rows = {
                (row["originator_id"], row["originator_version"]): row for row in curs.fetchall()
            }
        ids = []
        for e in stored_events:
            row = rows.get((e.originator_id, e.originator_version))
            if row is None or bytes(row["state"]) != bytes(e.state):
                return None
            ids.append(int(row["notification_id"]))
        return ids

    def _insert_events_once(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        # psycopg's pipeline mode can deadlock with megabytes in flight (psycopg issue 685,
        # still seen with 3.3 at ~5 MB): big saves (calculations carry thousands of ids) run
        # as plain statements in one transaction instead: side writes, then the events.
        if _bytes_in_flight(stored_events, kwargs.get("membership", ())) < PIPELINE_LIMIT:
            pipelined: Sequence[int] | None = super().insert_events(stored_events, **kwargs)
            return pipelined
        with (
            self.datastore.get_connection() as conn,
            conn.transaction(),
            conn.cursor() as curs,
        ):
            self._side_writes(curs, **kwargs)
            self._insert_stored_events(curs, stored_events, **kwargs)
            ids: Sequence[int] | None = self._fetch_ids_after_insert_events(
                curs, stored_events, **kwargs
            )
        return ids

    def insert_group(self, group: Sequence[_Save]) -> list[int]:
        """The saves' side writes and events in one pipelined transaction; the notification
        ids of all their events, in order. Raises whatever fails, having written nothing."""
        events = [e for save in group for e in save.events]
        error: Exception | None = None
        ids: list[int] = []
        with self.datastore.get_connection() as conn:
            self._unprepared(conn)
            with conn.pipeline() as pipeline, conn.transaction():
                with conn.cursor() as curs:
                    for save in group:
                        self._side_writes(curs, **save.kwargs)
                with conn.cursor() as curs:
                    try:
                        self._insert_stored_events(curs, events)
                        pipeline.sync()
                        ids = [row["notification_id"] for row in curs.fetchall()]
                        if len(ids) != len(events):
                            raise RuntimeError("the group's insert returned too few ids")
                        if self.relayed:
                            start = 0
                            for save in group:
                                span = ids[start : start + len(save.events)]
                                start += len(save.events)
                                if save.correlation:
                                    curs.execute(RECORD_CORRELATIONS, (span, save.correlation))
                    except Exception as e:  # raised once the pipeline is closed (no warning)
                        error = e
            if error is not None:
                raise error
        return ids

    def _insert_stored_events(
        self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> None:
        # The library sends a batch as one array of a composite type, which psycopg dumps as
        # text in Python (every state hex-escaped): four binary arrays are 15 times faster
        # (500 events of 1.2 kB: 4 ms instead of 64). Same statement otherwise, same locking.
        self._lock_table(curs)
        self._notify_channel(curs)
        curs.execute(
            self._insert_columns,
            _columns(
                (e.originator_id, e.originator_version, e.topic, e.state) for e in stored_events
            ),
        )

    def _fetch_ids_after_insert_events(
        self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        """The events' notification ids; the request's correlation id is recorded for each,
        still in their transaction, for the relay to publish with them."""
        ids = super()._fetch_ids_after_insert_events(curs, stored_events, **kwargs)
        correlation = logs.correlation_id.get()
        if ids and correlation and self.relayed:
            curs.execute(RECORD_CORRELATIONS, (list(ids), correlation))
        return ids

    def _insert_events(
        self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> None:
        # A nested pipeline block syncs on exit: a unique violation surfaces here as the
        # IntegrityError it is. Left to the outer pipeline it can come back as "pipeline
        # aborted" (an OperationalError, which the library retries, then answers as a 500).
        self._unprepared(curs.connection)
        with curs.connection.pipeline():
            self._side_writes(curs, **kwargs)

    def _side_writes(
        self,
        curs: Cursor[DictRow],
        *,
        new_keys: Sequence[WrappedKey] = (),
        releases: Sequence[Release] = (),
        claims: Sequence[Claim] = (),
        idempotency: IdempotencyRecord | None = None,
        membership: Sequence[Change] = (),
        jobs: Sequence[JobRequest] = (),
        erase: UUID | None = None,
        privacy: PrivacyRecord | None = None,
        statements: Sequence[tuple[Any, Any]] = (),
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
            curs.execute(
                INSERT_KEYS,
                _columns((k.customer_id, k.org_id, k.kek_id, k.wrapped) for k in new_keys),
            )
        if erase is not None:
            curs.execute(SHRED_KEY, (erase,))
            curs.execute(DROP_CLAIMS, (erase,))
            curs.execute(DROP_IDEMPOTENCY, (erase,))
            curs.execute(DROP_ACTIVITY_EVENTS, (erase,))
            if privacy is None or privacy.type == RequestType.ERASURE:
                curs.execute(DROP_ACTIVITY_TOTALS, (erase,))
        if privacy is not None:
            assert self.audit_key, "the audit key is not set"
            compliance.record(curs.connection, self.audit_key, privacy)
        # Releases first: a rename within one save frees the old name before taking the new.
        if releases:
            curs.executemany(RELEASE, [(r.scope, r.org_id, r.key_hash) for r in releases])
        if claims:
            curs.execute(
                CLAIM, _columns((c.scope, c.org_id, c.key_hash, c.owner_id) for c in claims)
            )
        # Members change with the events that say so; a stale diff fails here (primary key)
        # or on the stream's version, and the caller decides again.
        for change in membership:
            if change.left:
                curs.execute(REMOVE_MEMBERS, (change.segment_id, list(change.left)))
            if change.joined:
                curs.execute(ADD_MEMBERS, (change.segment_id, list(change.joined)))
        # Bookkeeping of the caller's that must commit with the events (an import's checkpoint).
        for query, params in statements:
            curs.execute(query, params)
        for job in jobs:
            curs.execute(
                QUEUE_JOB,
                {
                    "id": job.job_id,
                    "org": job.org_id,
                    "segment": job.segment_id,
                    "reason": job.reason,
                    "by": job.requested_by,
                },
            )


def _columns(rows: Iterable[tuple[Any, ...]]) -> list[list[Any]]:
    """Rows as the column arrays of an `unnest(...)` insert."""
    return [list(column) for column in zip(*rows, strict=True)]


SELECT_KEYS = (
    "SELECT customer_id, kek_id, wrapped_key FROM customer_keys WHERE customer_id = ANY(%s)"
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
