"""The customer-job workers of the segments process: claim queued imports and bulk
operations and run each from its checkpoint (write_api/imports.py, write_api/bulk.py). A job's
every batch commits its changes with its checkpoint, so a job interrupted anywhere — a killed
process, a lost database — is queued again and resumes after the last committed batch,
counting nothing twice.

Organizations share the workers (any number, in any number of processes): one runs at most
`jobs_per_org` jobs at once; the next job claimed is the oldest of the organization with the
fewest running, then of the one whose last turn began longest ago; and a job that has run
`job_turn_seconds` gives its worker up between two batches when another organization's job
waits (queued again, it resumes from that batch's checkpoint). Claims are serialised by a
transaction-scoped advisory lock, so that two workers never both find an organization below
its share."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg
from eventsourcing import persistence
from psycopg.rows import tuple_row

from eventstore.application import Customers
from eventstore.connections import OwnConnection
from eventstore.jobs import (
    UNLOCK_JOB,
    Tally,
    claim,
    requeue_orphans,
    run_worker,
)
from service.settings import Settings

log = logging.getLogger(__name__)

Connection = psycopg.Connection[Any]

# The job to run next: of the organizations below their share of running jobs (`share`),
# the one with the fewest running, then the one whose last turn began longest ago (never:
# first); its oldest queued job. `besides` leaves one organization out (NULL: none).
NEXT = (
    "SELECT q.id FROM customer_jobs q,"
    " LATERAL (SELECT count(*) AS n FROM customer_jobs r"
    " WHERE r.org_id = q.org_id AND r.state = 'RUNNING') AS running,"
    " LATERAL (SELECT max(t.claimed_at) AS at FROM customer_jobs t"
    " WHERE t.org_id = q.org_id) AS turn"
    " WHERE q.state = 'QUEUED' AND q.org_id IS DISTINCT FROM %(besides)s::text"
    " AND running.n < %(share)s"
    " ORDER BY running.n, turn.at NULLS FIRST, q.created_at LIMIT 1"
)
CLAIM = (
    "UPDATE customer_jobs SET state = 'RUNNING', started_at = coalesce(started_at, now()),"  # noqa: S608
    f" claimed_at = now() WHERE id = ({NEXT})"
    " RETURNING id, kind, org_id, format, mode, dry_run, requested_by, next_line, spec,"
    " resume_offset, rows_read, failed"
)
WAITING = f"SELECT EXISTS ({NEXT})"
RUNNING = "SELECT id FROM customer_jobs WHERE state = 'RUNNING'"
REQUEUE = "UPDATE customer_jobs SET state = 'QUEUED' WHERE id = %s AND state = 'RUNNING'"
FINISH = "UPDATE customer_jobs SET state = %s, error = %s, finished_at = now() WHERE id = %s"
# An import's file holds personal data and a bulk job's targets are done with: both go when
# the job ends (the report keeps what was rejected).
DROP_INPUT = (
    "DELETE FROM import_chunks WHERE job_id = %s",
    "DELETE FROM job_targets WHERE job_id = %s",
)
# Uploads whose process died while receiving: their chunks are all there is.
STALE_UPLOADS = (
    "UPDATE customer_jobs SET state = 'FAILED', error = 'upload interrupted',"
    " finished_at = now() WHERE state = 'RECEIVING' AND created_at < now() - interval '1 hour'"
    " RETURNING id"
)
LOCK_SPACE = 1  # of eventstore.jobs.LOCK_JOB


@dataclass(frozen=True)
class Job:
    id: UUID
    kind: str
    org_id: str
    fmt: str | None
    mode: str | None
    dry_run: bool
    requested_by: str
    next_line: int  # records (bulk: targets) before this one are done
    spec: dict[str, Any] | None = None
    resume_offset: int | None = None  # the byte of an import's file where next_line starts
    rows_read: int = 0  # by earlier turns
    failed: int = 0  # by earlier turns


def connect(settings: Settings) -> Connection:
    assert settings.database_url
    return psycopg.connect(settings.database_url, autocommit=True, row_factory=tuple_row)


class JobRunner:
    """Runs queued customer jobs on its own connection (`conn`, which a job's batches use
    for what the event store does not write), each by the handler of its kind."""

    def __init__(self, app: Customers, handlers: Mapping[str, Handler]) -> None:
        self.app = app
        self.handlers = handlers
        self._worker = OwnConnection(app.settings.database_url)
        self._turn_began = 0.0

    @property
    def conn(self) -> Connection:
        return self._worker.get()

    def close(self) -> None:
        self._worker.close()

    def recover(self) -> None:
        """Queue again the RUNNING jobs whose worker is gone (its advisory lock with it)."""
        requeue_orphans(self.conn, RUNNING, REQUEUE, LOCK_SPACE)
        for (jid,) in self.conn.execute(STALE_UPLOADS).fetchall():
            drop_input(self.conn, jid)

    def commit(
        self,
        job: Job,
        aggregates: Sequence[Any],
        tally: Tally,
        next_line: int,
        position: int = 0,
        **side_writes: Any,
    ) -> None:
        """A batch's events with the job's checkpoint (resume at `next_line`, at byte
        `position` of an import's file) and its rejections, as one transaction; a dry run, or
        a batch that changes nothing, writes only the latter."""
        keep = self.app.settings.job_report_max_rows
        statements = tally.statements(job.id, next_line, position, keep)
        if job.dry_run or not aggregates:
            with self.conn.transaction():
                for query, params in statements:
                    self.conn.execute(query, params)
            return
        self.app.save(*aggregates, statements=statements, **side_writes)

    def claim(self) -> Job | None:
        """The next job by the organizations' shares and turns, now RUNNING here; None if
        no organization below its share has one queued."""
        params = {"besides": None, "share": self.app.settings.jobs_per_org}
        row = claim(self.conn, CLAIM, LOCK_SPACE, params, serialized=True)
        if row is None:
            return None
        self._turn_began = time.monotonic()
        return Job(*row)

    def between_batches(self, job: Job) -> None:
        """Called by a handler after each committed batch but its last: ends the job's turn
        (JobYielded) once it has had `job_turn_seconds` and another organization's job waits.
        Nothing is lost: the batch's checkpoint is committed, and the job is queued again."""
        settings = self.app.settings
        if time.monotonic() - self._turn_began < settings.job_turn_seconds:
            return
        params = {"besides": job.org_id, "share": settings.jobs_per_org}
        row = self.conn.execute(WAITING, params).fetchone()
        if row is not None and row[0]:
            raise JobYielded

    def run_next(self) -> bool:
        """Claim a job and run it until it ends or yields its turn; False if none waits."""
        job = self.claim()
        if job is None:
            return False
        self.run(job)
        return True

    def run(self, job: Job) -> None:
        """Run a claimed job until it ends (SUCCEEDED or FAILED) or yields (QUEUED again)."""
        conn = self.conn
        try:
            self.handlers[job.kind](self, job)
            outcome: tuple[str, str | None] = ("SUCCEEDED", None)
        except JobYielded:
            conn.execute(REQUEUE, (job.id,))
            conn.execute(UNLOCK_JOB, (job.id, LOCK_SPACE))
            return
        except (psycopg.OperationalError, persistence.OperationalError):
            # The database refused or lost a connection: nothing is wrong with the job. It
            # runs again from its checkpoint, here or (if this connection is gone too, taking
            # the lock with it) after another worker's recovery.
            log.warning("job interrupted; it will resume", extra={"job": str(job.id)})
            with contextlib.suppress(psycopg.Error):
                conn.execute(REQUEUE, (job.id,))
                conn.execute(UNLOCK_JOB, (job.id, LOCK_SPACE))
            raise
        except JobFailed as e:
            outcome = ("FAILED", str(e))
        except Exception as e:
            log.exception("job failed", extra={"job": str(job.id)})
            outcome = ("FAILED", type(e).__name__)
        conn.execute(FINISH, (*outcome, job.id))
        drop_input(conn, job.id)
        conn.execute(UNLOCK_JOB, (job.id, LOCK_SPACE))


Handler = Callable[[JobRunner, Job], None]


def drop_input(conn: Connection, job_id: UUID) -> None:
    for statement in DROP_INPUT:
        conn.execute(statement, (job_id,))


class JobFailed(Exception):
    """The job cannot go on (its message, without personal data, is the job's error)."""


class JobYielded(Exception):
    """The job gives its worker to another organization's job, after a committed batch."""


def work(runner: JobRunner, stop: threading.Event, poll: float = 1.0) -> None:
    """A job thread of the segments process: run queued jobs until `stop`; an idle runner
    gives its connection back (imports and bulk jobs are rare)."""
    run_worker(
        "customer-jobs",
        runner.run_next,
        runner.recover,
        runner.close,
        stop,
        poll=poll,
        close_when_idle=True,
    )
