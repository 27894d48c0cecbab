"""The event store in memory: the application recorder of eventsourcing's POPO persistence,
with the side writes the PostgreSQL recorder makes in the events' transaction (data keys,
uniqueness claims, idempotency records, queued calculations, erasure). The use cases run on
it unchanged, so their rules are tested without a database (tests/unit/test_use_cases.py).
Saves carrying what only PostgreSQL can do (privacy records, membership, a job's
bookkeeping) are refused here rather than pretended."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from eventsourcing.persistence import IntegrityError, StoredEvent
from eventsourcing.popo import POPOApplicationRecorder

from eventstore.keys import StoredKey, WrappedKey
from eventstore.recorder import (
    CLAIM_CONSTRAINT,
    IDEMPOTENCY_CONSTRAINT,
    Claim,
    IdempotencyRecord,
    JobRequest,
    Release,
)

_UNSUPPORTED = ("privacy", "membership", "statements")


def _violation(constraint: str) -> IntegrityError:
    error = IntegrityError(f"unique constraint {constraint} violated")
    error.constraint = constraint  # type: ignore[attr-defined]  # read by violated_constraint
    return error


class MemoryRecorder(POPOApplicationRecorder):
    audit_key = b""
    relayed = False
    committer = None  # saves are made alone: there is no transaction to share

    def __init__(self) -> None:
        super().__init__()
        self.keys: dict[UUID, WrappedKey | None] = {}
        self.claims: dict[tuple[str, str, bytes], UUID] = {}
        self.idempotency: dict[tuple[str, str], IdempotencyRecord] = {}
        self.jobs: list[JobRequest] = []

    def _assert_uniqueness(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> None:
        for unsupported in _UNSUPPORTED:
            if kwargs.get(unsupported):
                raise NotImplementedError(f"{unsupported} side writes need PostgreSQL")
        super()._assert_uniqueness(stored_events)
        record: IdempotencyRecord | None = kwargs.get("idempotency")
        if record is not None and (record.org_id, record.key) in self.idempotency:
            raise _violation(IDEMPOTENCY_CONSTRAINT)
        freed = {(r.scope, r.org_id, r.key_hash) for r in kwargs.get("releases", ())}
        taken: set[tuple[str, str, bytes]] = set()
        for c in kwargs.get("claims", ()):
            name = (c.scope, c.org_id, c.key_hash)
            if (name in self.claims and name not in freed) or name in taken:
                raise _violation(CLAIM_CONSTRAINT)
            taken.add(name)

    def _update_table(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        ids = super()._update_table(stored_events)
        record: IdempotencyRecord | None = kwargs.get("idempotency")
        if record is not None:
            self.idempotency[record.org_id, record.key] = record
        for key in kwargs.get("new_keys", ()):
            self.keys[key.customer_id] = key
        releases: Sequence[Release] = kwargs.get("releases", ())
        for r in releases:
            self.claims.pop((r.scope, r.org_id, r.key_hash), None)
        claims: Sequence[Claim] = kwargs.get("claims", ())
        for c in claims:
            self.claims[c.scope, c.org_id, c.key_hash] = c.owner_id
        self.jobs.extend(kwargs.get("jobs", ()))
        erased: UUID | None = kwargs.get("erase")
        if erased is not None:
            self.keys[erased] = None
            self.claims = {k: v for k, v in self.claims.items() if v != erased}
            self.idempotency = {
                k: v for k, v in self.idempotency.items() if v.customer_id != erased
            }
        return ids

    # What the use cases ask the PostgreSQL recorder, answered from memory.

    def find_idempotency(self, org_id: str, key: str, ttl_hours: int) -> IdempotencyRecord | None:
        with self._database_lock:
            return self.idempotency.get((org_id, key))

    def notification_id(self, originator_id: UUID, version: int) -> int:
        with self._database_lock:
            return self._stored_events_index[str(originator_id)][version] + 1

    def stored_keys(self, customer_ids: list[UUID]) -> list[StoredKey]:
        with self._database_lock:
            found = [(c, self.keys[c]) for c in customer_ids if c in self.keys]
        return [
            (c, key.kek_id, key.wrapped) if key is not None else (c, None, None) for c, key in found
        ]
