"""Whole-base segment calculation as background jobs.

A job (a `segment_jobs` row) is queued by `POST .../segments/{id}/calculate` or, in the same
transaction as the events, by a definition change. A worker claims it, waits until the
customers projection has caught up with every change acknowledged before the job started,
runs the segment's compiled SQL diffed against the current members in one snapshot, and
appends all resulting SegmentLeft / SegmentJoined events plus one SegmentCalculated in ONE
transaction: a calculation lands whole or not at all. Cancelling or failing before that
commit changes no membership; a failed job ends FAILED with its reason (the segment shows
ERROR), never stuck.

Claimed jobs are guarded by a session advisory lock held by the worker's connection; a job
left RUNNING by a dead worker (its lock gone with its connection) is queued again.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import psycopg
from eventsourcing.application import AggregateNotFoundError
from eventsourcing.domain import DomainEvent
from eventsourcing.persistence import IntegrityError
from psycopg import sql
from psycopg.rows import tuple_row

from domain.criteria import SegmentCriteria
from domain.errors import Code, DomainError
from domain.membership import Change, Reason, SegmentCalculated, events, stream_id
from domain.segment import Segment, effective_criteria
from eventstore.application import Customers
from eventstore.connections import OwnConnection
from eventstore.jobs import (
    JOB_COLUMNS,
    UNLOCK_JOB,
    claim,
    render_job,
    requeue_orphans,
    run_worker,
)
from projections.customers import VIEW as CUSTOMERS_VIEW
from projections.positions import max_notification_id, read_position
from projections.segment_sql import compile_where
from service.metrics import SEGMENT_JOBS
from write_api.background.membership import append, stream_versions

log = logging.getLogger(__name__)

Connection = psycopg.Connection[Any]

QUEUE = (
    "INSERT INTO segment_jobs (id, org_id, segment_id, reason, state, requested_by)"  # noqa: S608
    " VALUES (%s, %s, %s, %s, 'QUEUED', %s) RETURNING " + JOB_COLUMNS
)
CANCEL = (
    "UPDATE segment_jobs SET cancel_requested = true,"  # noqa: S608
    " state = CASE WHEN state = 'QUEUED' THEN 'CANCELLED' ELSE state END,"
    " finished_at = CASE WHEN state = 'QUEUED' THEN clock_timestamp() ELSE finished_at END"
    " WHERE org_id = %s AND segment_id = %s AND id = %s RETURNING " + JOB_COLUMNS
)
CLAIM = (
    "UPDATE segment_jobs SET state = 'RUNNING', phase = 'starting', started_at = clock_timestamp()"
    " WHERE id = (SELECT q.id FROM segment_jobs q WHERE q.state = 'QUEUED' AND NOT EXISTS"
    "   (SELECT 1 FROM segment_jobs r WHERE r.segment_id = q.segment_id AND r.state = 'RUNNING')"
    "   ORDER BY q.created_at FOR UPDATE SKIP LOCKED LIMIT 1)"
    " RETURNING id, org_id, segment_id, reason, requested_by"
)
SET_PHASE = "UPDATE segment_jobs SET phase = %s WHERE id = %s RETURNING cancel_requested"
FINISH = (
    "UPDATE segment_jobs SET state = %s, phase = NULL, finished_at = clock_timestamp(),"
    " member_count = %s, joined = %s, left_count = %s, error = %s WHERE id = %s"
)
RUNNING = "SELECT id FROM segment_jobs WHERE state = 'RUNNING'"
REQUEUE = (
    "UPDATE segment_jobs SET state = 'QUEUED', phase = NULL WHERE id = %s AND state = 'RUNNING'"
)
LOCK_SPACE = 0  # of eventstore.jobs.LOCK_JOB
# Time-relative criteria ("last purchase within 30 days") drift with the clock, unseen by
# the incremental path: active dynamic segments are recalculated when their last
# calculation is older than the configured interval.
SCHEDULE = """
INSERT INTO segment_jobs (id, org_id, segment_id, reason, state, requested_by)
SELECT gen_random_uuid(), s.org_id, s.id, 'calculation', 'QUEUED', 'scheduler'
FROM segments_view s JOIN segment_stats st ON st.segment_id = s.id
WHERE s.status = 'ACTIVE' AND s.kind = 'DYNAMIC'
  AND st.last_calculated < now() - make_interval(secs => %s)
  AND NOT EXISTS (SELECT 1 FROM segment_jobs j
                  WHERE j.segment_id = s.id AND j.state IN ('QUEUED', 'RUNNING'))
"""
MEMBER_COUNT = "SELECT count(*) FROM segment_members WHERE segment_id = %s"
# Joins (matched, not a member) and leaves (a member, no longer matched) in one pass.
DIFF = """
SELECT coalesce(m.id, s.customer_id)::text, m.id IS NOT NULL
FROM (SELECT f.id FROM customer_facts f WHERE f.org_id = %s AND {where}) m
FULL JOIN (SELECT customer_id FROM segment_members WHERE segment_id = %s) s
  ON s.customer_id = m.id
WHERE m.id IS NULL OR s.customer_id IS NULL
"""

PROJECTION_WAIT_SECONDS = 60.0
_RETRIES = 5


class Cancelled(Exception):
    pass


@dataclass(frozen=True)
class Job:
    id: UUID
    org_id: str
    segment_id: UUID
    reason: str
    requested_by: str


class Calculator:
    """Claims and runs queued jobs, one at a time, on its own connection."""

    def __init__(self, app: Customers) -> None:
        self.app = app
        self._worker = OwnConnection(app.settings.database_url)

    def close(self) -> None:
        self._worker.close()

    def recover(self) -> int:
        """Queue again the RUNNING jobs whose worker is gone (its advisory lock with it)."""
        requeued = requeue_orphans(self._worker.get(), RUNNING, REQUEUE, LOCK_SPACE)
        if requeued:
            log.warning("requeued jobs of a vanished worker", extra={"jobs": requeued})
        return requeued

    def schedule(self, interval_seconds: float) -> int:
        """Queue recalculations of segments last calculated over `interval_seconds` ago."""
        queued = self._worker.get().execute(SCHEDULE, (interval_seconds,)).rowcount
        if queued:
            log.info("scheduled recalculations", extra={"jobs": queued})
        return queued

    def run_next(self) -> bool:
        """Run the oldest runnable queued job, if any; False when there was none."""
        conn = self._worker.get()
        row = claim(conn, CLAIM, LOCK_SPACE)
        if row is None:
            return False
        job = Job(*row)
        try:
            self._run(conn, job)
        finally:
            conn.execute(UNLOCK_JOB, (job.id, LOCK_SPACE))
        return True

    def _phase(self, conn: Connection, job: Job, phase: str) -> None:
        row = conn.execute(SET_PHASE, (phase, job.id)).fetchone()
        if row and row[0]:
            raise Cancelled

    def _finish(
        self,
        conn: Connection,
        job: Job,
        state: str,
        counts: tuple[int, int, int] | None = None,
        error: str | None = None,
    ) -> None:
        count, joined, left = counts or (None, None, None)
        conn.execute(FINISH, (state, count, joined, left, error, job.id))

    def _run(self, conn: Connection, job: Job) -> None:
        started = time.monotonic()
        try:
            counts = self._calculate(conn, job)
        except Cancelled:
            self._finish(conn, job, "CANCELLED")
            log.info("calculation cancelled", extra={"job": str(job.id)})
            SEGMENT_JOBS.labels("cancelled").observe(time.monotonic() - started)
        except DomainError as e:
            self._finish(conn, job, "FAILED", error=e.detail)
            log.warning("calculation failed", extra={"job": str(job.id), "error": e.detail})
            SEGMENT_JOBS.labels("failed").observe(time.monotonic() - started)
        except Exception as e:
            # The reason, without data: exception type and message of our own code / driver.
            reason = f"{type(e).__name__}: {e}"[:500]
            log.exception("calculation failed", extra={"job": str(job.id)})
            try:
                self._finish(self._worker.get(), job, "FAILED", error=reason)
            except psycopg.Error:
                log.exception("could not record the failure; the job will be requeued")
            SEGMENT_JOBS.labels("failed").observe(time.monotonic() - started)
        else:
            self._finish(conn, job, "SUCCEEDED", counts)
            SEGMENT_JOBS.labels("succeeded").observe(time.monotonic() - started)
            log.info(
                "calculation done",
                extra={
                    "job": str(job.id),
                    "members": counts[0],
                    "joined": counts[1],
                    "left": counts[2],
                    "seconds": round(time.monotonic() - started, 3),
                },
            )

    def _calculate(self, conn: Connection, job: Job) -> tuple[int, int, int]:
        try:
            segment: object = self.app.repository.get(job.segment_id)
        except AggregateNotFoundError:
            raise DomainError(Code.NOT_FOUND, "the segment does not exist") from None
        if not isinstance(segment, Segment) or segment.org_id != job.org_id:
            raise DomainError(Code.NOT_FOUND, "the segment does not exist")
        if segment.deleted:
            raise DomainError(Code.NOT_FOUND, "the segment was deleted")
        criteria = effective_criteria(segment.definition)
        self._phase(conn, job, "waiting_for_projection")
        self._wait_for_projection(conn, job)
        reason = Reason(job.reason)
        for _ in range(_RETRIES):
            self._phase(conn, job, "evaluating")
            at = datetime.now(UTC)
            change, version, before = self._diff(conn, job, criteria, reason, at)
            self._phase(conn, job, "appending")
            count = before + len(change.joined) - len(change.left)
            new: list[DomainEvent] = list(events(change, version, at))
            new.append(
                SegmentCalculated(
                    originator_id=stream_id(job.segment_id),
                    originator_version=version + len(new) + 1,
                    timestamp=at,
                    org_id=job.org_id,
                    segment_id=str(job.segment_id),
                    job_id=str(job.id),
                    member_count=count,
                    joined=len(change.joined),
                    left=len(change.left),
                )
            )
            try:
                append(self.app, [change], new)
            except IntegrityError:
                continue  # an incremental change landed meanwhile: diff again
            return count, len(change.joined), len(change.left)
        raise DomainError(Code.CONFLICT, "membership kept changing during the calculation")

    def _wait_for_projection(self, conn: Connection, job: Job) -> None:
        """Until customers_view covers every event committed before now."""
        head = max_notification_id(conn)
        deadline = time.monotonic() + PROJECTION_WAIT_SECONDS
        while read_position(conn, CUSTOMERS_VIEW) < head:
            if time.monotonic() > deadline:
                raise DomainError(
                    Code.UNAVAILABLE, "the customers projection is too far behind; retry later"
                )
            self._phase(conn, job, "waiting_for_projection")
            time.sleep(0.05)

    def _diff(
        self,
        conn: Connection,
        job: Job,
        criteria: SegmentCriteria | None,
        reason: Reason,
        at: datetime,
    ) -> tuple[Change, int, int]:
        """(joins and leaves, stream version, members before), read in one snapshot."""
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            version = stream_versions(conn, [job.segment_id])[job.segment_id]
            row = conn.execute(MEMBER_COUNT, (job.segment_id,)).fetchone()
            before = int(row[0]) if row else 0
            joined: list[str] = []
            left: list[str] = []
            if criteria is not None:  # STATIC segments: members change by hand only
                where, params = compile_where(criteria, at)
                query = sql.SQL(DIFF).format(where=where)
                with conn.cursor() as cur:
                    cur.execute(query, [job.org_id, *params, job.segment_id])
                    for cid, joins in cur:
                        (joined if joins else left).append(cid)
        return Change(job.org_id, job.segment_id, joined, left, reason), version, before


def queue(app: Customers, org_id: str, segment_id: UUID, reason: Reason, by: str) -> dict[str, Any]:
    """A new QUEUED job (as the API shows it)."""
    with app.datastore.get_connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
        row = cur.execute(QUEUE, (uuid.uuid4(), org_id, segment_id, reason.value, by)).fetchone()
    assert row is not None
    return render_job(row)


def work(
    calculator: Calculator, stop: threading.Event, recalculate_every: float, poll: float = 0.2
) -> None:
    """Run queued jobs until `stop`, scheduling recalculations every `recalculate_every`
    seconds (0: never); survive outages with backoff."""

    def housekeeping() -> None:
        calculator.recover()
        if recalculate_every > 0:
            calculator.schedule(recalculate_every)

    run_worker(
        "calculator",
        calculator.run_next,
        housekeeping,
        calculator.close,
        stop,
        poll=poll,
        close_when_idle=False,
    )
