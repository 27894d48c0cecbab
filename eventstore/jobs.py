"""Job rows as both APIs show them, and the SQL both sides share: segment calculations
(migrations/0004_membership.sql), customer imports and bulk operations (0012, 0013)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import astuple, dataclass
from dataclasses import field as dataclass_field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from domain.values import utc_iso

log = logging.getLogger(__name__)

JOB_COLUMNS = (
    "id, segment_id, reason, state, phase, requested_by, created_at, started_at,"
    " finished_at, member_count, joined, left_count, error"
)
GET_JOB = (
    f"SELECT {JOB_COLUMNS} FROM segment_jobs"  # noqa: S608
    " WHERE org_id = %s AND segment_id = %s AND id = %s"
)


def render_job(row: tuple[Any, ...]) -> dict[str, Any]:
    jid, sid, reason, state, phase, by, created, started, finished, count, joined, left, error = row
    return {
        "id": str(jid),
        "segmentId": str(sid),
        "reason": reason,
        "state": state,
        "phase": phase,
        "requestedBy": by,
        "createdAt": utc_iso(created),
        "startedAt": utc_iso(started) if started else None,
        "finishedAt": utc_iso(finished) if finished else None,
        "memberCount": count,
        "joined": joined,
        "left": left,
        "error": error,
    }


# A worker holds a session advisory lock per job it runs (keys per kind of job: `space`); a
# RUNNING job whose lock can be taken has lost its worker.
LOCK_JOB = "SELECT pg_try_advisory_lock(hashtextextended(%s::text, %s))"
UNLOCK_JOB = "SELECT pg_advisory_unlock(hashtextextended(%s::text, %s))"


# Claims of one kind of job one at a time, when a claim decides from what other workers run.
SERIALIZE_CLAIMS = "SELECT pg_advisory_xact_lock(hashtextextended('claims', %s))"


def claim(
    conn: Any, query: str, space: int, params: Any = None, *, serialized: bool = False
) -> Any:
    """The row of the job `query` claims (id first), its worker lock taken; None if none.
    The lock is the session's: it outlives the claim's transaction, and the worker.
    `serialized`: no other claim of this kind runs meanwhile."""
    with conn.transaction():
        if serialized:
            conn.execute(SERIALIZE_CLAIMS, (space,))
        row = conn.execute(query, params).fetchone()
        if row is not None:
            conn.execute(LOCK_JOB, (row[0], space))
    return row


def run_worker(
    name: str,
    run_next: Callable[[], bool],
    housekeeping: Callable[[], object],
    close: Callable[[], None],
    stop: threading.Event,
    *,
    poll: float,
    close_when_idle: bool,
) -> None:
    """A job worker's thread until `stop`: `housekeeping` every 10 s (requeueing orphans,
    scheduling), `run_next` while it finds jobs, a `poll` pause when it does not (closing the
    connection first when jobs are rare), errors retried with backoff."""
    backoff = 0.1
    next_housekeeping = 0.0
    while not stop.is_set():
        try:
            if time.monotonic() >= next_housekeeping:
                housekeeping()
                next_housekeeping = time.monotonic() + 10.0
            if not run_next():
                if close_when_idle:
                    close()
                stop.wait(poll)
            backoff = 0.1
        except Exception:
            log.exception("job worker error; retrying", extra={"worker": name})
            close()
            stop.wait(backoff)
            backoff = min(backoff * 2, 5.0)


def requeue_orphans(conn: Any, running: str, requeue: str, space: int) -> int:
    """Run `requeue` for every job `running` lists whose worker is gone; how many."""
    requeued = 0
    for (jid,) in conn.execute(running).fetchall():
        row = conn.execute(LOCK_JOB, (jid, space)).fetchone()
        if row and row[0]:
            try:
                requeued += conn.execute(requeue, (jid,)).rowcount
            finally:
                conn.execute(UNLOCK_JOB, (jid, space))
    return requeued


# Imports and bulk operations: one table of customer jobs (0012_imports.sql, 0013_bulk_jobs.sql).
CUSTOMER_JOB_COLUMNS = (
    "id, kind, format, mode, dry_run, state, requested_by, created_at, started_at,"
    " finished_at, bytes, bytes_done, rows_read, created, updated, skipped, failed, error,"
    " total, spec, rejections_stored"
)
GET_CUSTOMER_JOB = (
    f"SELECT {CUSTOMER_JOB_COLUMNS} FROM customer_jobs"  # noqa: S608
    " WHERE id = %s AND org_id = %s AND (kind = 'import') = %s"
)
# The organization's imports (or bulk jobs), newest first, after a keyset cursor.
LIST_CUSTOMER_JOBS = (
    f"SELECT {CUSTOMER_JOB_COLUMNS} FROM customer_jobs"  # noqa: S608
    " WHERE org_id = %(org)s AND (kind = 'import') = %(imported)s"
    " AND (%(before_at)s::timestamptz IS NULL OR (created_at, id) < (%(before_at)s, %(before_id)s))"
    " ORDER BY created_at DESC, id DESC LIMIT %(fetch)s"
)
JOB_REJECTIONS = (
    "SELECT line, customer_id, field, reason FROM job_rejections WHERE job_id = %s AND line > %s"
    " ORDER BY line LIMIT %s"
)
# A batch's progress and its rejected rows, written in the transaction of its changes.
CHECKPOINT = (
    "UPDATE customer_jobs SET next_line = %s, bytes_done = %s, resume_offset = %s,"
    " rows_read = rows_read + %s, created = created + %s, updated = updated + %s,"
    " skipped = skipped + %s, failed = failed + %s WHERE id = %s"
)
# The report keeps the first `keep` rejected rows of a job; `failed` counts them all.
REJECT = (
    "WITH room AS (SELECT greatest(%(keep)s - rejections_stored, 0) AS n FROM customer_jobs"
    " WHERE id = %(job)s),"
    " kept AS (INSERT INTO job_rejections (job_id, line, customer_id, field, reason)"
    " SELECT %(job)s, r.line, r.customer_id, r.field, r.reason"
    " FROM unnest(%(lines)s::int[], %(ids)s::uuid[], %(fields)s::text[], %(reasons)s::text[])"
    " AS r(line, customer_id, field, reason) ORDER BY r.line LIMIT (SELECT n FROM room)"
    " ON CONFLICT DO NOTHING RETURNING 1)"
    " UPDATE customer_jobs SET rejections_stored = rejections_stored + (SELECT count(*) FROM kept)"
    " WHERE id = %(job)s"
)


@dataclass(frozen=True)
class Rejection:
    line: int  # where the record starts in the file; a bulk job's target position
    customer_id: UUID | None
    field: str | None
    reason: str


@dataclass
class Tally:
    """A batch's outcome, up to its commit."""

    read: int = 0
    created: int = 0
    updated: int = 0
    skipped: int = 0
    rejected: list[Rejection] = dataclass_field(default_factory=list)

    def statements(
        self, job_id: UUID, next_line: int, position: int, keep: int
    ) -> list[tuple[Any, Any]]:
        """The checkpoint (resume at `next_line`, which starts at byte `position` of an
        import's file) and the rejections, of which the job's report keeps the first `keep`."""
        counts = (self.read, self.created, self.updated, self.skipped, len(self.rejected))
        out: list[tuple[Any, Any]] = [
            (CHECKPOINT, (next_line, position, position, *counts, job_id))
        ]
        if self.rejected:
            lines, ids, fields, reasons = map(list, zip(*map(astuple, self.rejected), strict=True))
            params = {"job": job_id, "keep": keep, "lines": lines, "ids": ids}
            out.append((REJECT, params | {"fields": fields, "reasons": reasons}))
        return out


def render_customer_job(row: tuple[Any, ...]) -> dict[str, Any]:
    """An import or bulk job as the API shows it, with its rate and an ETA (from the bytes
    left of an import's file, from the customers left of a bulk job)."""
    (jid, kind, fmt, mode, dry, state, by, created_at, started, finished, size, done, read,
     created, updated, skipped, failed, error, total, spec, stored) = row  # fmt: skip
    end = finished or datetime.now(UTC)
    seconds = (end - started).total_seconds() if started else 0.0
    rate = read / seconds if seconds > 0 else None
    eta = None
    running = state == "RUNNING" and seconds > 0
    shown: dict[str, Any] = {"id": str(jid), "kind": kind}
    if kind == "import":
        if running and done:
            eta = round((size - done) / (done / seconds), 1)
        # Which field each CSV column fills (write_api/columns.py); null: skipped.
        mapping = (spec or {}).get("mapping")
        shown |= {"format": fmt, "mode": mode, "mapping": mapping and dict(mapping)}
    else:
        if running and read and total is not None:
            eta = round((total - read) / (read / seconds), 1)
        shown |= {k: v for k, v in spec.items() if k != "admin"}
    shown |= {
        "dryRun": dry,
        "state": state,
        "requestedBy": by,
        "createdAt": utc_iso(created_at),
        "startedAt": started and utc_iso(started),
        "finishedAt": finished and utc_iso(finished),
    }
    if kind == "import":
        shown |= {"bytes": size, "bytesDone": done, "rowsRead": read, "created": created}
    else:
        shown |= {"total": total, "processed": read}
    return shown | {
        "updated": updated,
        "skipped": skipped,
        "failed": failed,
        "rejectionsNotStored": failed - stored,  # counted in `failed`, not in the report
        "rowsPerSecond": rate and round(rate, 1),
        "etaSeconds": eta,
        "error": error,
    }
