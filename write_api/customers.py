"""Customer use cases: load, decide in the aggregate, save with the transactional side-writes."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import orjson
from eventsourcing.persistence import IntegrityError

from domain.access import Permission, Principal, Role
from domain.consent import ConsentChange, consents
from domain.customer import Customer
from domain.errors import Code, DomainError, invalid
from domain.values import CustomerStatus, Profile, merge_patch
from eventstore import compliance, erasure_ledger
from eventstore.compliance import PrivacyRecord, RequestType
from eventstore.erasure_ledger import ledger_path
from eventstore.keys import EMAIL, keyed_hash
from eventstore.recorder import (
    IDEMPOTENCY_CONSTRAINT,
    Claim,
    IdempotencyRecord,
    Release,
    violated_constraint,
)
from write_api.commands import Commands, Outcome
from write_api.schemas import CustomerUpdate

MAX_IDEMPOTENCY_KEY = 255
# Why a server-made field of an update body must be what the customer has.
_READ_ONLY = {
    "id": "is the customer's id, which cannot change",
    "createdAt": "is read-only: when the customer was created",
    "activeOrders": "is read-only here: the orders system sets it (PUT …/active-orders)",
    "pendingEmail": "is read-only: send the new address as email, then verify it",
}


class CustomerCommands(Commands[Customer]):
    kind = "customer"
    aggregate_type = Customer
    claim_conflict = DomainError(Code.CONFLICT, "e-mail address already registered", field="email")

    # --- commands -------------------------------------------------------------------

    def create(
        self, principal: Principal, profile: Profile, idempotency_key: str | None = None
    ) -> Outcome:
        principal.require(Permission.WRITE)
        # Stored as text (PostgreSQL refuses NUL); a gRPC field can hold any string.
        if idempotency_key is not None and not (
            0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY and idempotency_key.isprintable()
        ):
            raise invalid(
                "Idempotency-Key", f"must be 1 to {MAX_IDEMPOTENCY_KEY} printable characters"
            )
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
            token = self.save(
                customer,
                new_keys=[key],
                claims=[self.email_claim(principal.org, customer.email, customer.id)],
                idempotency=record,
            )
        except IntegrityError as e:
            if idempotency_key is not None and violated_constraint(e) == IDEMPOTENCY_CONSTRAINT:
                replay = self._replay(principal.org, idempotency_key, request_hash)
                assert replay is not None
                return replay
            raise
        return Outcome(customer.public(), customer.version, token, created=True)

    def update(
        self,
        principal: Principal,
        customer_id: UUID,
        profile: Profile,
        status: CustomerStatus | None,
        if_match: int | None,
        *,
        echoed: Mapping[str, Any] | None = None,
    ) -> Outcome:
        """Full replacement. `echoed`: server-made fields the body carried (the answer sent
        back), which must say what the customer is."""
        principal.require(Permission.WRITE)

        def decide(customer: Customer) -> dict[str, Any]:
            self._replace(principal, customer, profile, status, echoed or {})
            return {}

        return self.command(principal, customer_id, if_match, decide)

    def patch(
        self, principal: Principal, customer_id: UUID, patch: dict[str, Any], if_match: int | None
    ) -> Outcome:
        """RFC 7396 merge patch of the customer as answers show it, then a full replacement by
        the same rules (an invalid result is a 422 naming its fields)."""
        principal.require(Permission.WRITE)

        def decide(customer: Customer) -> dict[str, Any]:
            body = CustomerUpdate.model_validate(merge_patch(customer.public(), patch))
            if body.version not in (None, customer.version):  # the patch set it: an If-Match
                raise DomainError(
                    Code.PRECONDITION_FAILED,
                    f"version {body.version} is stale; current version is {customer.version}",
                )
            self._replace(principal, customer, body.profile(), body.status, body.echoed())
            return {}

        return self.command(principal, customer_id, if_match, decide)

    def _replace(
        self,
        principal: Principal,
        customer: Customer,
        profile: Profile,
        status: CustomerStatus | None,
        echoed: Mapping[str, Any],
    ) -> None:
        current = {
            "id": customer.id,
            "createdAt": customer.created_on,
            "activeOrders": customer.active_orders,
            "pendingEmail": customer.pending_email,
        }
        for name, value in echoed.items():
            if value != current[name]:
                raise invalid(name, _READ_ONLY[name])
        customer.update(
            profile,
            status=status,
            actor=principal.sub,
            actor_is_admin=principal.can(Permission.SUSPEND),
            now=datetime.now(UTC),
            verification_ttl=timedelta(hours=self.settings.email_verification_ttl_hours),
        )

    def verify_email(self, principal: Principal, customer_id: UUID, token: str) -> Outcome:
        principal.require(Permission.WRITE)

        def decide(customer: Customer) -> dict[str, Any]:
            previous = customer.email
            customer.verify_email(token, actor=principal.sub, now=datetime.now(UTC))
            return {
                "releases": [self.email_release(principal.org, previous)],
                "claims": [self.email_claim(principal.org, customer.email, customer.id)],
            }

        return self.command(principal, customer_id, None, decide)

    def set_active_orders(self, principal: Principal, customer_id: UUID, count: int) -> Outcome:
        principal.require(Permission.ORDERS)

        def decide(customer: Customer) -> dict[str, Any]:
            customer.set_active_orders(count, actor=principal.sub)
            return {}

        return self.command(principal, customer_id, None, decide)

    def delete(self, principal: Principal, customer_id: UUID, if_match: int | None) -> Outcome:
        """Lifecycle deletion: status DELETED, e-mail freed for a new registration."""
        principal.require(Permission.DELETE)

        def decide(customer: Customer) -> dict[str, Any]:
            customer.delete(actor=principal.sub)
            return {"releases": [self.email_release(principal.org, customer.email)]}

        return self.command(principal, customer_id, if_match, decide)

    def restore(self, principal: Principal, customer_id: UUID, if_match: int | None) -> Outcome:
        """Undo a lifecycle deletion within CUSTOMERS_ERASURE_GRACE_HOURS: the status it had,
        and its e-mail address claimed again (409 when another customer registered it)."""
        principal.require(Permission.DELETE)
        grace = timedelta(hours=self.settings.erasure_grace_hours)

        def decide(customer: Customer) -> dict[str, Any]:
            customer.restore(actor=principal.sub, now=datetime.now(UTC), grace=grace)
            return {"claims": [self.email_claim(principal.org, customer.email, customer.id)]}

        return self.command(principal, customer_id, if_match, decide)

    def change_consent(
        self, principal: Principal, customer_id: UUID, change: ConsentChange
    ) -> Outcome:
        """Grant or withdraw purposes; recorded in the ledger and effective at once (the
        profile, segment facts and memberships follow)."""
        principal.require(Permission.CONSENT)
        request = PrivacyRecord(
            uuid4(), principal.org, customer_id, RequestType.CONSENT_CHANGE, principal.sub
        )

        def decide(customer: Customer) -> dict[str, Any]:
            customer.change_consent(change, actor=principal.sub)
            return {"privacy": request}

        outcome = self.command(principal, customer_id, None, decide)
        assert outcome.body is not None
        body = {
            "customerId": str(customer_id),
            "consents": consents(outcome.body["preferences"]),
            "requestId": str(request.request_id),
            "version": outcome.version,
        }
        return replace(outcome, body=body)

    def anonymize(self, principal: Principal, customer_id: UUID) -> Outcome:
        """Irreversibly replace what identifies the customer, keeping the analytics (see
        domain/anonymization.py)."""
        return self._shred(principal, customer_id, RequestType.ANONYMIZATION, Customer.anonymize)

    def erase(self, principal: Principal, customer_id: UUID) -> Outcome:
        """Art. 17 erasure; read models follow the Erased event."""
        return self._shred(principal, customer_id, RequestType.ERASURE, Customer.erase)

    def _shred(
        self,
        principal: Principal,
        customer_id: UUID,
        kind: RequestType,
        act: Callable[..., None],
    ) -> Outcome:
        """`act` on the customer; its event, the destroyed data key, the customer's claims
        and idempotency records, the privacy request and its audit entry: one transaction."""
        principal.require(Permission.PRIVACY)
        request = PrivacyRecord(uuid4(), principal.org, customer_id, kind, principal.sub)

        def decide(customer: Customer) -> dict[str, Any]:
            act(customer, actor=principal.sub)
            if kind == RequestType.ERASURE and self.settings.backup_enabled:
                # Before the commit: no committed erasure can be missing from the ledger.
                erasure_ledger.append(ledger_path(self.settings.backup_path), customer.id)
            return {"erase": customer.id, "privacy": request}

        try:
            outcome = self.command(principal, customer_id, None, decide)
        except DomainError as e:
            if e.code == Code.CONFLICT:  # refused by a rule (active orders): still a request
                rejected = replace(request, status="REJECTED", outcome=e.detail)
                with self.app.datastore.transaction(commit=True) as cur:
                    compliance.record(cur.connection, self.app.keys.audit_key, rejected)
            raise
        self.app.keys.forget(customer_id)
        return outcome

    def erase_again(self, customer_id: UUID, org: str) -> Outcome:
        """Re-apply an erasure of the erasure ledger to a store restored to before it: the
        Erased event, the destroyed key and a privacy request by "erasure-ledger", as the
        first time (read models and NATS follow the event); not written to the ledger again."""
        principal = Principal(sub="erasure-ledger", org=org, roles=frozenset({Role.ADMIN.value}))
        request = PrivacyRecord(uuid4(), org, customer_id, RequestType.ERASURE, principal.sub)

        def decide(customer: Customer) -> dict[str, Any]:
            customer.erase(actor=principal.sub, again=True)
            return {"erase": customer.id, "privacy": request}

        outcome = self.command(principal, customer_id, None, decide)
        self.app.keys.forget(customer_id)
        return outcome

    # --- mechanics ------------------------------------------------------------------

    def load(self, principal: Principal, aggregate_id: UUID) -> Customer:
        # An erased customer's events cannot be read any more: it does not exist.
        if self.app.keys.cipher(aggregate_id) is None:
            raise DomainError(Code.NOT_FOUND, f"customer {aggregate_id} not found")
        customer = super().load(principal, aggregate_id)
        if customer.erased or customer.status == CustomerStatus.ANONYMIZED:
            # Shredded by another process, while this one still had the key cached.
            self.app.keys.forget(aggregate_id)
            raise DomainError(Code.NOT_FOUND, f"customer {aggregate_id} not found")
        return customer

    def _replay(self, org: str, key: str, request_hash: bytes) -> Outcome | None:
        record = self.app.recorder.find_idempotency(org, key, self.settings.idempotency_ttl_hours)
        if record is None:
            return None
        if record.request_hash != request_hash:
            raise invalid("Idempotency-Key", "this key was already used with a different request")
        customer: object = self.app.repository.get(record.customer_id, version=record.version)
        assert isinstance(customer, Customer)
        token = self.app.recorder.notification_id(record.customer_id, record.version)
        return Outcome(customer.public(), record.version, token, created=record.status == 201)

    def email_claim(self, org: str, email: str, customer_id: UUID) -> Claim:
        return Claim(EMAIL, org, self.app.keys.claim_hash(EMAIL, org, email), customer_id)

    def email_release(self, org: str, email: str) -> Release:
        return Release(EMAIL, org, self.app.keys.claim_hash(EMAIL, org, email))
