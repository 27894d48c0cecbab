"""Segment membership: who joined or left a segment, when and why.

Membership of one segment is its own event stream (`stream_id(segment)`), apart from the
Segment aggregate: a calculation appends thousands of ids, which must not bump the segment's
version (its ETag) nor be replayed whenever the definition is loaded. Joins and leaves are
decided by diffing against the current members, never by replaying the stream, so the stream
has no aggregate: its events are appended at the next version directly.

Ids travel in batches (`BATCH` per event): a whole-base calculation of 1M customers is a few
hundred events, not a million.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from uuid import UUID, uuid5

from eventsourcing.domain import DomainEvent

BATCH = 5_000  # customer ids per SegmentJoined / SegmentLeft event (~190 KB of JSON)
_STREAMS = UUID("6f1c1f8e-3b0a-4d55-9a57-2d6b0f0e4c11")


class Reason(StrEnum):
    CALCULATION = "calculation"  # a requested (re)calculation of the whole base
    CRITERIA_CHANGE = "criteria_change"  # the recalculation that follows a definition change
    CUSTOMER_CHANGE = "customer_change"  # one customer's data changed (incremental)
    MANUAL = "manual"  # members of a STATIC segment assigned or removed explicitly


def stream_id(segment_id: UUID) -> UUID:
    """The membership stream of a segment (stable, distinct from the segment's own id)."""
    return uuid5(_STREAMS, str(segment_id))


# `actor`: who assigned the members by hand (a user, a bulk job); None when the engine
# decided (calculations, incremental evaluation), and in events stored before it existed.
@dataclass(frozen=True)
class SegmentJoined(DomainEvent):
    org_id: str
    segment_id: str
    customer_ids: list[str]
    reason: str
    actor: str | None = None


@dataclass(frozen=True)
class SegmentLeft(DomainEvent):
    org_id: str
    segment_id: str
    customer_ids: list[str]
    reason: str
    actor: str | None = None


@dataclass(frozen=True)
class SegmentCalculated(DomainEvent):
    """A whole-base calculation finished: the segment has `member_count` members."""

    org_id: str
    segment_id: str
    job_id: str
    member_count: int
    joined: int
    left: int


@dataclass(frozen=True)
class Change:
    """Joins and leaves of one segment, decided together."""

    org_id: str
    segment_id: UUID
    joined: Sequence[str]
    left: Sequence[str]
    reason: Reason
    actor: str | None = None  # set for manual assignments

    def __bool__(self) -> bool:
        return bool(self.joined or self.left)


def events(
    change: Change, after_version: int, at: datetime
) -> Iterator[SegmentJoined | SegmentLeft]:
    """The change as batched events at versions after `after_version` (leaves first: a
    segment never looks bigger mid-change than before and after it)."""
    version = after_version
    stream = stream_id(change.segment_id)
    for cls, ids in ((SegmentLeft, change.left), (SegmentJoined, change.joined)):
        for start in range(0, len(ids), BATCH):
            version += 1
            yield cls(
                originator_id=stream,
                originator_version=version,
                timestamp=at,
                org_id=change.org_id,
                segment_id=str(change.segment_id),
                customer_ids=list(ids[start : start + BATCH]),
                reason=change.reason.value,
                actor=change.actor,
            )
