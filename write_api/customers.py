"""Customer use cases: load, decide in the aggregate, save with the transactional side-writes."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import orjson
from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import IntegrityError

from domain.customer import Customer
from domain.errors import Code, DomainError, invalid
from domain.values import CustomerStatus, Profile
from eventstore.application import Customers
from eventstore.keys import keyed_hash
from eventstore.recorder import (
    CLAIM_CONSTRAINT,
    IDEMPOTENCY_CONSTRAINT,
    Claim,
    IdempotencyRecord,
    Release,
    violated_constraint,
)
from service.auth import Permission, Principal

EMAIL = "email"  # unique_claims scope of customer e-mail addresses

# Reloading and re-deciding is safe for commands without If-Match: the aggregate re-checks.
_CONCURRENCY_RETRIES = 3


@dataclass(frozen=True)
class Outcome:
    customer: dict[str, Any] | None
    version: int
    consistency_token: int
    status: int = 200


class CustomerCommands:
    def __init__(self, app: Customers) -> None:
        self.app = app
        self.settings = app.settings

    # --- commands -------------------------------------------------------------------

    def create(
        self, principal: Principal, profile: Profile, idempotency_key: str | None = None
    ) -> Outcome:
        principal.require(Permission.WRITE)
        request_hash = keyed_hash(
            self.app.keys.request_key,
            orjson.dumps(profile.dump(), option=orjson.OPT_SORT_KEYS).decode(),
        )
        if idempotency_key is not None:
            replay = self._replay(principal.org, idempotency_key, request_hash)
            if replay is not None:
                return replay
        customer = Customer.register(principal.org, profile, principal.sub)
        key = self.app.keys.create(customer.id, principal.org)
        record = None
        if idempotency_key is not None:
            record = IdempotencyRecord(
                principal.org, idempotency_key, request_hash, customer.id, customer.version, 201
            )
        try:
            token = self._save(
                customer,
                new_keys=[key],
                claims=[self._claim(principal.org, customer.email, customer.id)],
                idempotency=record,
            )
        except IntegrityError as e:
            if idempotency_key is not None and violated_constraint(e) == IDEMPOTENCY_CONSTRAINT:
                replay = self._replay(principal.org, idempotency_key, request_hash)
                assert replay is not None
                return replay
            raise
        return Outcome(customer.public(), customer.version, token, status=201)

    def update(
        self,
        principal: Principal,
        customer_id: UUID,
        profile: Profile,
        status: CustomerStatus | None,
        if_match: int | None,
    ) -> Outcome:
        principal.require(Permission.WRITE)
        now = datetime.now(UTC)
        ttl = timedelta(hours=self.settings.email_verification_ttl_hours)

        def decide(customer: Customer) -> dict[str, Any]:
            customer.update(
                profile,
                status=status,
                actor=principal.sub,
                actor_is_admin=principal.can(Permission.SUSPEND),
                now=now,
                verification_ttl=ttl,
            )
            return {}

        return self._command(principal, customer_id, if_match, decide)

    def verify_email(self, principal: Principal, customer_id: UUID, token: str) -> Outcome:
        principal.require(Permission.WRITE)

        def decide(customer: Customer) -> dict[str, Any]:
            previous = customer.email
            customer.verify_email(token, now=datetime.now(UTC))
            return {
                "releases": [self._release(principal.org, previous)],
                "claims": [self._claim(principal.org, customer.email, customer.id)],
            }

        return self._command(principal, customer_id, None, decide)

    def set_active_orders(self, principal: Principal, customer_id: UUID, count: int) -> Outcome:
        principal.require(Permission.ORDERS)

        def decide(customer: Customer) -> dict[str, Any]:
            customer.set_active_orders(count)
            return {}

        return self._command(principal, customer_id, None, decide)

    def delete(self, principal: Principal, customer_id: UUID, if_match: int | None) -> Outcome:
        """Lifecycle deletion: status DELETED, e-mail freed for a new registration."""
        principal.require(Permission.DELETE)

        def decide(customer: Customer) -> dict[str, Any]:
            customer.delete(actor=principal.sub)
            return {"releases": [self._release(principal.org, customer.email)]}

        return self._command(principal, customer_id, if_match, decide)

    # --- mechanics ------------------------------------------------------------------

    def _command(
        self,
        principal: Principal,
        customer_id: UUID,
        if_match: int | None,
        decide: Callable[[Customer], dict[str, Any]],
    ) -> Outcome:
        for attempt in range(_CONCURRENCY_RETRIES):
            customer = self.load(principal, customer_id)
            if if_match is not None and customer.version != if_match:
                raise DomainError(
                    Code.PRECONDITION_FAILED,
                    f"If-Match version {if_match} is stale; current version is {customer.version}",
                )
            side_writes = decide(customer)
            if not customer.pending_events:
                token = self.app.recorder.notification_id(customer.id, customer.version)  # type: ignore[attr-defined]
                return Outcome(customer.public(), customer.version, token)
            try:
                token = self._save(customer, **side_writes)
            except IntegrityError:  # the aggregate moved on between load and save
                if if_match is not None:
                    raise DomainError(
                        Code.PRECONDITION_FAILED, "the customer was changed concurrently"
                    ) from None
                if attempt == _CONCURRENCY_RETRIES - 1:
                    raise DomainError(
                        Code.CONFLICT, "the customer is being changed concurrently; retry"
                    ) from None
                continue
            return Outcome(customer.public(), customer.version, token)
        raise AssertionError("unreachable")

    def load(self, principal: Principal, customer_id: UUID) -> Customer:
        customer: object = None
        with contextlib.suppress(AggregateNotFoundError):
            customer = self.app.repository.get(customer_id)
        if not isinstance(customer, Customer) or customer.org_id != principal.org:
            raise DomainError(Code.NOT_FOUND, f"customer {customer_id} not found")
        return customer

    def _save(self, customer: Customer, **side_writes: Any) -> int:
        try:
            recordings = self.app.save(customer, **side_writes)
        except IntegrityError as e:
            if violated_constraint(e) == CLAIM_CONSTRAINT:
                raise DomainError(
                    Code.CONFLICT, "e-mail address already registered", field="email"
                ) from None
            raise
        return recordings[-1].notification.id

    def _replay(self, org: str, key: str, request_hash: bytes) -> Outcome | None:
        record = self.app.recorder.find_idempotency(  # type: ignore[attr-defined]
            org, key, self.settings.idempotency_ttl_hours
        )
        if record is None:
            return None
        if record.request_hash != request_hash:
            raise invalid("Idempotency-Key", "this key was already used with a different request")
        customer: object = self.app.repository.get(record.customer_id, version=record.version)
        assert isinstance(customer, Customer)
        token = self.app.recorder.notification_id(record.customer_id, record.version)  # type: ignore[attr-defined]
        return Outcome(customer.public(), record.version, token, status=record.status)

    def _claim(self, org: str, email: str, customer_id: UUID) -> Claim:
        return Claim(EMAIL, org, self.app.keys.claim_hash(EMAIL, org, email), customer_id)

    def _release(self, org: str, email: str) -> Release:
        return Release(EMAIL, org, self.app.keys.claim_hash(EMAIL, org, email))
