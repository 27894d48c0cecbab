"""A hypothesis state machine drives the Customer aggregate and checks its invariants."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from domain.customer import Customer
from domain.errors import Code, DomainError
from domain.values import CustomerStatus, Profile

NOW = datetime(2026, 1, 1, tzinfo=UTC)
TTL = timedelta(hours=1)
EMAILS = st.sampled_from(["a@example.com", "b@example.com", "c@example.org"])
NAMES = st.sampled_from(["Ann", "Bob", "Cleo"])
STATUSES = st.sampled_from(list(CustomerStatus))


def make(email: str, name: str) -> Profile:
    return Profile.model_validate(
        {
            "email": email,
            "name": name,
            "preferences": {"marketingConsent": True, "dataProcessingConsent": True},
        }
    )


class CustomerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.customer = Customer.register("acme", make("a@example.com", "Ann"), "u")
        self.email = "a@example.com"
        self.status = CustomerStatus.ACTIVE
        self.orders = 0
        self.token: str | None = None
        self.pending: str | None = None
        self.events = list(self.customer.collect_events())

    def _expect_refused(self, action: object, codes: set[Code]) -> None:
        try:
            action()  # type: ignore[operator]
        except DomainError as e:
            assert e.code in codes, e
        else:
            raise AssertionError("expected a refusal")

    @rule(email=EMAILS, name=NAMES, status=st.none() | STATUSES, admin=st.booleans())
    def update(self, email: str, name: str, status: CustomerStatus | None, admin: bool) -> None:
        def act() -> str | None:
            return self.customer.update(
                make(email, name),
                status=status,
                actor="u",
                actor_is_admin=admin,
                now=NOW,
                verification_ttl=TTL,
            )

        deleted = self.status == CustomerStatus.DELETED
        changing = status is not None and status != self.status
        free = (self.status, status) in {
            (CustomerStatus.ACTIVE, CustomerStatus.INACTIVE),
            (CustomerStatus.INACTIVE, CustomerStatus.ACTIVE),
        }
        own_request = {CustomerStatus.DELETED, CustomerStatus.ANONYMIZED}
        if deleted or (changing and (status in own_request or not (free or admin))):
            self._expect_refused(act, {Code.CONFLICT, Code.FORBIDDEN})
            return
        token = act()
        if status is not None:
            self.status = status
        if email != self.email:
            if token is not None:
                self.token, self.pending = token, email
            assert self.pending == email
        if token is not None:
            assert email != self.email

    @precondition(lambda self: self.token is not None)
    @rule()
    def verify(self) -> None:
        assert self.token is not None
        if self.status == CustomerStatus.DELETED:
            self._expect_refused(
                lambda: self.customer.verify_email(self.token or "", actor="t", now=NOW),
                {Code.CONFLICT},
            )
            return
        self.customer.verify_email(self.token, actor="t", now=NOW)
        assert self.pending is not None
        self.email, self.token, self.pending = self.pending, None, None

    @rule(count=st.integers(min_value=0, max_value=3))
    def orders_change(self, count: int) -> None:
        if self.status == CustomerStatus.DELETED:
            self._expect_refused(
                lambda: self.customer.set_active_orders(count, actor="t"), {Code.CONFLICT}
            )
            return
        self.customer.set_active_orders(count, actor="t")
        self.orders = count

    @rule()
    def delete(self) -> None:
        if self.status == CustomerStatus.DELETED or self.orders > 0:
            self._expect_refused(lambda: self.customer.delete(actor="u"), {Code.CONFLICT})
            return
        self.customer.delete(actor="u")
        self.status = CustomerStatus.DELETED

    @invariant()
    def matches_model(self) -> None:
        assert self.customer.email == self.email
        assert self.customer.status == self.status
        assert self.customer.active_orders == self.orders
        assert self.customer.pending_email == self.pending

    @invariant()
    def replay_reproduces_state(self) -> None:
        self.events.extend(self.customer.collect_events())
        replayed = None
        for event in self.events:
            replayed = event.mutate(replayed)  # type: ignore[attr-defined]
        assert replayed is not None
        assert replayed.version == self.customer.version == len(self.events)
        assert replayed.public() == self.customer.public()


TestCustomerMachine = CustomerMachine.TestCase
