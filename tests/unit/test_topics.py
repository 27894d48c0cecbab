"""The topic registry names what eventsourcing stores: a renamed class or module changes
the prefixes with it, and every name the followers select by is a real event class."""

from __future__ import annotations

from eventsourcing.utils import get_topic

from domain import membership, topics
from domain.customer import Customer
from domain.segment import Segment
from eventstore.public_events import MEMBERSHIP_KINDS, PUBLIC_TYPES


def test_every_public_customer_type_is_a_stored_customer_event() -> None:
    for name in PUBLIC_TYPES:
        assert get_topic(getattr(Customer, name)) == topics.CUSTOMER_EVENTS + name


def test_membership_and_segment_events_have_the_registered_prefixes() -> None:
    for name in MEMBERSHIP_KINDS:
        topic = get_topic(getattr(membership, name))
        assert topic.startswith(topics.MEMBERSHIP_MODULE), topic
    assert get_topic(Segment.Deleted) == topics.SEGMENT_DELETED  # type: ignore[attr-defined]
    assert get_topic(Customer.Erased) == topics.CUSTOMER_ERASED
    assert get_topic(Customer.Anonymized) == topics.CUSTOMER_ANONYMIZED  # type: ignore[attr-defined]
    assert topics.SEGMENT_EVENTS.startswith(topics.SEGMENT_MODULE)
    assert topics.CUSTOMER_EVENTS.startswith(topics.CUSTOMER_MODULE)
