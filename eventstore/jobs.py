"""Job rows as both APIs show them: segment calculations (migrations/0004_membership.sql)
and customer imports (migrations/0012_imports.sql)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from domain.values import utc_iso

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


IMPORT_COLUMNS = (
    "id, format, mode, dry_run, state, requested_by, created_at, started_at, finished_at,"
    " bytes, bytes_done, rows_read, created, updated, skipped, failed, error"
)
GET_IMPORT = f"SELECT {IMPORT_COLUMNS} FROM import_jobs WHERE id = %s AND org_id = %s"  # noqa: S608
IMPORT_REJECTIONS = (
    "SELECT line, field, reason FROM import_rejections WHERE job_id = %s AND line > %s"
    " ORDER BY line LIMIT %s"
)


def render_import(row: tuple[Any, ...]) -> dict[str, Any]:
    """An import as the API shows it, with its rate and, from the bytes left, an ETA."""
    (jid, fmt, mode, dry, state, by, created_at, started, finished, size, done, read, *counts) = row
    created, updated, skipped, failed, error = counts
    end = finished or datetime.now(UTC)
    seconds = (end - started).total_seconds() if started else 0.0
    rate = read / seconds if seconds > 0 else None
    eta = None
    if state == "RUNNING" and done and seconds > 0:
        eta = round((size - done) / (done / seconds), 1)
    return {
        "id": str(jid),
        "format": fmt,
        "mode": mode,
        "dryRun": dry,
        "state": state,
        "requestedBy": by,
        "createdAt": utc_iso(created_at),
        "startedAt": started and utc_iso(started),
        "finishedAt": finished and utc_iso(finished),
        "bytes": size,
        "bytesDone": done,
        "rowsRead": read,
        "created": created,
        "updated": updated,
        "skipped": skipped,
        "failed": failed,
        "rowsPerSecond": rate and round(rate, 1),
        "etaSeconds": eta,
        "error": error,
    }
