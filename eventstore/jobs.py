"""segment_jobs rows as both APIs show them (the table: migrations/0004_membership.sql)."""

from __future__ import annotations

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
