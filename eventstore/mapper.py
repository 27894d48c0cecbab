"""Maps domain events to stored events, encrypting customer events with the customer's key."""

from __future__ import annotations

import os
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import orjson
from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import Mapper, StoredEvent
from eventsourcing.utils import get_topic, resolve_topic

from domain.topics import CUSTOMER_ANONYMIZED, CUSTOMER_ERASED, CUSTOMER_MODULE
from eventstore.keys import NONCE, KeyStore

SHREDDING_TOPICS = frozenset({CUSTOMER_ERASED, CUSTOMER_ANONYMIZED})
_ENCRYPTED = b"\x01"


class Shredded:
    """What an event of an erased customer decodes to: ids only, never the old data."""

    def __init__(self, originator_id: UUID, originator_version: int, topic: str) -> None:
        self.originator_id = originator_id
        self.originator_version = originator_version
        self.topic = topic


def topic_of(event: Any) -> str:
    """The stored topic of a decoded event (a Shredded placeholder keeps its own)."""
    if isinstance(event, Shredded):
        return event.topic
    cls = type(event)
    return f"{cls.__module__}:{cls.__qualname__}"


def _default(obj: Any) -> Any:
    if isinstance(obj, Decimal):
        return str(obj)
    raise TypeError(type(obj).__name__)


def _aad(stored: StoredEvent) -> bytes:
    assert isinstance(stored.originator_id, UUID)
    return (
        stored.originator_id.bytes + stored.originator_version.to_bytes(8) + stored.topic.encode()
    )


class CustomerMapper(Mapper[UUID]):
    """orjson state; AES-256-GCM per customer for every event of a Customer aggregate."""

    def __init__(self, keys: KeyStore) -> None:
        self.keys = keys

    def to_stored_event(self, domain_event: DomainEventProtocol[UUID]) -> StoredEvent:
        state = dict(vars(domain_event))
        originator_id = state.pop("originator_id")
        originator_version = state.pop("originator_version")
        topic = get_topic(type(domain_event))
        payload = orjson.dumps(state, default=_default)
        stored = StoredEvent(originator_id, originator_version, topic, payload)
        if not topic.startswith(CUSTOMER_MODULE) or topic in SHREDDING_TOPICS:
            return stored
        cipher = self.keys.cipher(originator_id)
        if cipher is None:
            raise RuntimeError("no data key for customer; it was erased or never created")
        nonce = os.urandom(NONCE)
        sealed = _ENCRYPTED + nonce + cipher.encrypt(nonce, payload, _aad(stored))
        return StoredEvent(originator_id, originator_version, topic, sealed)

    def to_domain_event(self, stored_event: StoredEvent) -> Any:
        payload = stored_event.state
        if payload[:1] == _ENCRYPTED:
            assert isinstance(stored_event.originator_id, UUID)
            cipher = self.keys.cipher(stored_event.originator_id)
            if cipher is None:
                return Shredded(
                    stored_event.originator_id,
                    stored_event.originator_version,
                    stored_event.topic,
                )
            body = payload[1:]
            payload = cipher.decrypt(body[:NONCE], body[NONCE:], _aad(stored_event))
        state = orjson.loads(payload)
        state["originator_id"] = stored_event.originator_id
        state["originator_version"] = stored_event.originator_version
        state["timestamp"] = datetime.fromisoformat(state["timestamp"])
        event = object.__new__(resolve_topic(stored_event.topic))
        object.__setattr__(event, "__dict__", state)
        return event
