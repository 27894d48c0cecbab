"""The customer-job worker of the segments process: claims queued imports and bulk
operations one at a time and runs each from its checkpoint (write_api/imports.py,
write_api/bulk.py). A job's every batch commits its changes with its checkpoint, so a job
interrupted anywhere — a killed process, a lost database — is queued again and resumes after
the last committed batch, counting nothing twice."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg
from eventsourcing import persistence
from psycopg.rows import tuple_row

from eventstore.application import Customers
from eventstore.jobs import UNLOCK_JOB, WorkerConnection, claim, requeue_orphans, run_worker
from service.settings import Settings

log = logging.getLogger(__name__)

Connection = psycopg.Connection[Any]

CLAIM = (
    "UPDATE customer_jobs SET state = 'RUNNING', started_at = coalesce(started_at, now())"
    " WHERE id = (SELECT id FROM customer_jobs WHERE state = 'QUEUED' ORDER BY created_at"
    " FOR UPDATE SKIP LOCKED LIMIT 1)"
    " RETURNING id, kind, org_id, format, mode, dry_run, requested_by, next_line, spec"
)
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


def connect(settings: Settings) -> Connection:
    assert settings.database_url
    return psycopg.connect(settings.database_url, autocommit=True, row_factory=tuple_row)


class JobRunner:
    """Runs queued customer jobs on its own connection (`conn`, which a job's batches use
    for what the event store does not write), each by the handler of its kind."""

    def __init__(self, app: Customers, handlers: Mapping[str, Handler]) -> None:
        self.app = app
        self.handlers = handlers
        self._worker = WorkerConnection(app.settings.database_url)

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
        self, job: Job, aggregates: Sequence[Any], statements: Sequence[Any], **side_writes: Any
    ) -> None:
        """A batch's events with its checkpoint and rejections (`statements`), as one
        transaction; a dry run, or a batch that changes nothing, writes only the latter."""
        if job.dry_run or not aggregates:
            with self.conn.transaction():
                for query, params in statements:
                    self.conn.execute(query, params)
            return
        self.app.save(*aggregates, statements=statements, **side_writes)

    def run_next(self) -> bool:
        conn = self.conn
        row = claim(conn, CLAIM, LOCK_SPACE)
        if row is None:
            return False
        job = Job(*row)
        try:
            self.handlers[job.kind](self, job)
            outcome: tuple[str, str | None] = ("SUCCEEDED", None)
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
        return True


Handler = Callable[[JobRunner, Job], None]


def drop_input(conn: Connection, job_id: UUID) -> None:
    for statement in DROP_INPUT:
        conn.execute(statement, (job_id,))


class JobFailed(Exception):
    """The job cannot go on (its message, without personal data, is the job's error)."""


def work(runner: JobRunner, stop: threading.Event, poll: float = 1.0) -> None:
    """The segments process's job thread: run queued jobs until `stop`; an idle runner gives
    its connection back (imports and bulk jobs are rare)."""
    run_worker(
        "customer-jobs",
        runner.run_next,
        runner.recover,
        runner.close,
        stop,
        poll=poll,
        close_when_idle=True,
    )
