"""Load → decide → save, shared by every aggregate's use cases."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import IntegrityError

from domain.access import Principal
from domain.errors import Code, DomainError
from eventstore.application import Customers
from eventstore.recorder import CLAIM_CONSTRAINT, violated_constraint

# Reloading and re-deciding is safe for commands without If-Match: the aggregate re-checks.
_CONCURRENCY_RETRIES = 3


class OrgAggregate(Protocol):
    org_id: str

    @property
    def id(self) -> UUID: ...

    @property
    def version(self) -> int: ...

    @property
    def pending_events(self) -> list[Any]: ...

    def public(self) -> dict[str, Any]: ...


A = TypeVar("A", bound=OrgAggregate)


@dataclass(frozen=True)
class Outcome:
    """What a command did: the aggregate as it is now (None: gone from view), its version
    (the ETag), the log position that shows it (the consistency token), and whether the
    command created it. The transports decide what that looks like on their wire."""

    body: dict[str, Any] | None
    version: int
    consistency_token: int
    created: bool = False


class Commands(Generic[A]):
    kind: str  # "customer", "segment": used in messages
    aggregate_type: type[A]
    claim_conflict: DomainError  # what a unique-claim violation means for this aggregate

    def __init__(self, app: Customers) -> None:
        self.app = app
        self.settings = app.settings

    def load(self, principal: Principal, aggregate_id: UUID) -> A:
        found: object = None
        with contextlib.suppress(AggregateNotFoundError):
            found = self.app.repository.get(aggregate_id)
        if not isinstance(found, self.aggregate_type) or found.org_id != principal.org:
            raise DomainError(Code.NOT_FOUND, f"{self.kind} {aggregate_id} not found")
        return found

    def command(
        self,
        principal: Principal,
        aggregate_id: UUID,
        if_match: int | None,
        decide: Callable[[A], dict[str, Any]],
    ) -> Outcome:
        """`decide` changes the aggregate and returns the side writes of its save."""
        for attempt in range(_CONCURRENCY_RETRIES):
            aggregate = self.load(principal, aggregate_id)
            if if_match is not None and aggregate.version != if_match:
                raise DomainError(
                    Code.PRECONDITION_FAILED,
                    f"If-Match version {if_match} is stale; current version is {aggregate.version}",
                )
            side_writes = decide(aggregate)
            if not aggregate.pending_events:
                token = self.app.recorder.notification_id(aggregate.id, aggregate.version)
                return Outcome(aggregate.public(), aggregate.version, token)
            try:
                token = self.save(aggregate, **side_writes)
            except IntegrityError:  # the aggregate moved on between load and save
                if if_match is not None:
                    raise DomainError(
                        Code.PRECONDITION_FAILED, f"the {self.kind} was changed concurrently"
                    ) from None
                if attempt == _CONCURRENCY_RETRIES - 1:
                    raise DomainError(
                        Code.CONFLICT, f"the {self.kind} is being changed concurrently; retry"
                    ) from None
                continue
            return Outcome(aggregate.public(), aggregate.version, token)
        raise AssertionError("unreachable")

    def save(self, aggregate: A, **side_writes: Any) -> int:
        """Saves with the side writes in the same transaction; returns the consistency token."""
        try:
            recordings = self.app.save(aggregate, **side_writes)
        except IntegrityError as e:
            if violated_constraint(e) == CLAIM_CONSTRAINT:
                raise self.claim_conflict from None
            raise
        return recordings[-1].notification.id
