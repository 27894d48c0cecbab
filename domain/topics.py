"""Stored event topics, named once. eventsourcing stores an event's topic as
"<module>:<qualified class name>"; followers select events by these prefixes, and the mapper
and the AES-GCM associated data depend on them, so they are derived from the classes here
instead of being spelled in each follower."""

from __future__ import annotations

from domain import membership
from domain.customer import Customer
from domain.segment import Segment


def _events(aggregate: type) -> str:
    return f"{aggregate.__module__}:{aggregate.__qualname__}."


CUSTOMER_MODULE = f"{Customer.__module__}:"  # every event of the customer module: encrypted
CUSTOMER_EVENTS = _events(Customer)  # the Customer aggregate's events
SEGMENT_MODULE = f"{Segment.__module__}:"
SEGMENT_EVENTS = _events(Segment)
MEMBERSHIP_MODULE = f"{membership.__name__}:"  # SegmentJoined / SegmentLeft / SegmentCalculated

# Written as the customer's key is destroyed, and read after it: never encrypted, and
# carrying no personal data (ids, org, actor; the anonymized record).
CUSTOMER_ERASED = CUSTOMER_EVENTS + "Erased"
CUSTOMER_ANONYMIZED = CUSTOMER_EVENTS + "Anonymized"
SEGMENT_DELETED = SEGMENT_EVENTS + "Deleted"
