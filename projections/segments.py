"""segments_view: one row per live segment definition (deleted segments leave the view)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg.types.json import Jsonb

from domain.segment import SegmentStatus
from domain.topics import SEGMENT_EVENTS
from projections.positions import Connection

VIEW = "segments_view"
_PREFIX = SEGMENT_EVENTS

INSERT = (
    "INSERT INTO segments_view (id, org_id, name, status, kind, rule_id, created_by,"
    " created_at, updated_at, version, definition)"
    " VALUES (%s, %s, %s, 'ACTIVE', %s, %s, %s, %s, %s, %s, %s)"
)
REDEFINE = (
    "UPDATE segments_view SET definition = definition || %s, name = %s, rule_id = %s,"
    " updated_at = %s, version = %s WHERE id = %s"
)
SELECT_DEFINITION = "SELECT definition FROM segments_view WHERE id = %s"
EXISTS = "SELECT 1 FROM segments_view WHERE org_id = %s AND id = %s"
SET_STATUS = "UPDATE segments_view SET status = %s, updated_at = %s, version = %s WHERE id = %s"
DELETE = "DELETE FROM segments_view WHERE id = %s"
TRUNCATE = "TRUNCATE segments_view"


class SegmentsView:
    """A projections.runner.View. Segment events are few: one statement per event."""

    name = VIEW

    def accepts(self, topic: str) -> bool:
        return topic.startswith(_PREFIX)

    def prepare(self, conn: Connection) -> None:
        pass

    def truncate(self, conn: Connection) -> None:
        conn.execute(TRUNCATE)

    def apply(self, conn: Connection, events: Sequence[Any]) -> None:
        for e in events:
            kind = type(e).__qualname__.removeprefix("Segment.")
            sid, ts, version = e.originator_id, e.timestamp, e.originator_version
            if kind == "Created":
                d = e.definition
                conn.execute(
                    INSERT,
                    (
                        sid,
                        e.org_id,
                        d["name"],
                        d["kind"],
                        d.get("ruleId"),
                        e.actor,
                        ts,
                        ts,
                        version,
                        Jsonb(d),
                    ),
                )
            elif kind == "Redefined":
                row = conn.execute(SELECT_DEFINITION, (sid,)).fetchone()
                merged = {**(row[0] if row else {}), **e.changes}
                conn.execute(
                    REDEFINE,
                    (Jsonb(e.changes), merged["name"], merged.get("ruleId"), ts, version, sid),
                )
            elif kind == "StatusChanged":
                conn.execute(SET_STATUS, (SegmentStatus(e.status), ts, version, sid))
            elif kind == "Deleted":
                conn.execute(DELETE, (sid,))
            else:
                raise ValueError(f"segments_view has no rule for Segment.{kind}")
