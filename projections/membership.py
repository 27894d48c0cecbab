"""segment_membership (history of stints) + segment_stats (count, last calculation).

Consecutive joins (or leaves) of one segment at one moment — the batches of one decision —
are written as one statement.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from domain.topics import CUSTOMER_ERASED, MEMBERSHIP_MODULE, SEGMENT_DELETED
from projections.positions import Connection

VIEW = "segment_membership"

JOIN = (
    "INSERT INTO segment_membership (segment_id, customer_id, org_id, joined_at, join_reason)"
    " SELECT %s, unnest(%s::uuid[]), %s, %s, %s"
)
LEAVE = (
    "UPDATE segment_membership SET left_at = %s, leave_reason = %s"
    " WHERE segment_id = %s AND customer_id = ANY(%s::uuid[]) AND left_at IS NULL"
)
END_ALL = (
    "UPDATE segment_membership SET left_at = %s, leave_reason = 'segment_deleted'"
    " WHERE segment_id = %s AND left_at IS NULL"
)
ADD_COUNT = (
    "INSERT INTO segment_stats (segment_id, customer_count) VALUES (%s, %s)"
    " ON CONFLICT (segment_id) DO UPDATE"
    " SET customer_count = segment_stats.customer_count + EXCLUDED.customer_count"
)
CALCULATED = (
    "INSERT INTO segment_stats (segment_id, customer_count, last_calculated) VALUES (%s, %s, %s)"
    " ON CONFLICT (segment_id) DO UPDATE"
    " SET customer_count = EXCLUDED.customer_count, last_calculated = EXCLUDED.last_calculated"
)
# An erased customer's history goes; the evaluator's SegmentLeft events fix the counts.
FORGET_CUSTOMER = "DELETE FROM segment_membership WHERE customer_id = %s"
DROP_STATS = "DELETE FROM segment_stats WHERE segment_id = %s"
TRUNCATE = "TRUNCATE segment_membership, segment_stats"


def _name(event: Any) -> str:
    return type(event).__qualname__


class MembershipView:
    """A projections.runner.View over the membership streams (and segment deletions and
    customer erasures)."""

    name = VIEW

    def accepts(self, topic: str) -> bool:
        return topic.startswith(MEMBERSHIP_MODULE) or topic in {SEGMENT_DELETED, CUSTOMER_ERASED}

    def prepare(self, conn: Connection) -> None:
        pass

    def truncate(self, conn: Connection) -> None:
        conn.execute(TRUNCATE)

    def apply(self, conn: Connection, events: Sequence[Any]) -> None:
        i = 0
        while i < len(events):
            e = events[i]
            kind = _name(e)
            if kind in {"SegmentJoined", "SegmentLeft"}:
                ids = list(e.customer_ids)
                j = i + 1
                while j < len(events) and _same_decision(events[j], e):
                    ids += events[j].customer_ids
                    j += 1
                self._change(conn, e, ids)
                i = j
                continue
            if kind == "SegmentCalculated":
                conn.execute(CALCULATED, (e.segment_id, e.member_count, e.timestamp))
            elif kind == "Customer.Erased":
                conn.execute(FORGET_CUSTOMER, (e.originator_id,))
            elif kind == "Segment.Deleted":
                conn.execute(END_ALL, (e.timestamp, e.originator_id))
                conn.execute(DROP_STATS, (e.originator_id,))
            else:
                raise ValueError(f"segment_membership has no rule for {kind}")
            i += 1

    def _change(self, conn: Connection, e: Any, ids: list[str]) -> None:
        if _name(e) == "SegmentJoined":
            conn.execute(JOIN, (e.segment_id, ids, e.org_id, e.timestamp, e.reason))
            conn.execute(ADD_COUNT, (e.segment_id, len(ids)))
        else:
            conn.execute(LEAVE, (e.timestamp, e.reason, e.segment_id, ids))
            conn.execute(ADD_COUNT, (e.segment_id, -len(ids)))


def _same_decision(a: Any, b: Any) -> bool:
    return bool(
        type(a) is type(b)
        and a.segment_id == b.segment_id
        and a.timestamp == b.timestamp
        and a.reason == b.reason
    )
