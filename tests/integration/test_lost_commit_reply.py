"""A save whose COMMIT became durable but whose reply was lost (PostgreSQL stopped between the
two; found by `make chaos`): the library retries it, the retry meets its own rows, and the
write must still be answered as made, not as a conflict."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from eventsourcing.persistence import IntegrityError, InterfaceError, OperationalError
from eventsourcing.postgres import PostgresApplicationRecorder
from eventsourcing.utils import retry

from domain.access import Principal
from domain.consent import ConsentChange
from domain.customer import Customer
from domain.values import Profile
from eventstore.application import Customers
from service.settings import Settings
from write_api.customers import CustomerCommands


@pytest.fixture
def app(migrated: Settings) -> Iterator[Customers]:
    a = Customers(migrated, pool_size=2)
    yield a
    a.close()


@pytest.fixture
def lose_next_reply(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Arm: the next save commits, then its connection "fails" (once)."""
    original: Any = getattr(PostgresApplicationRecorder.insert_events, "__wrapped__")
    armed = {"on": False}

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.01)
    def insert_events(self: Any, stored_events: Any, **kwargs: Any) -> Any:
        ids = original(self, stored_events, **kwargs)
        if armed["on"]:
            armed["on"] = False
            raise OperationalError("server closed the connection unexpectedly")
        return ids

    monkeypatch.setattr(PostgresApplicationRecorder, "insert_events", insert_events)
    return lambda: armed.update(on=True)


def principal() -> Principal:
    return Principal(sub="tester", org=f"org-{uuid.uuid4().hex[:8]}", roles=frozenset({"admin"}))


def profile(email: str, tags: list[str]) -> Profile:
    return Profile.model_validate(
        {
            "email": email,
            "name": "Lost Reply",
            "preferences": {"marketingConsent": True, "dataProcessingConsent": True},
            "tags": tags,
        }
    )


def topics(app: Customers, customer_id: uuid.UUID) -> list[str]:
    return [e.topic.rsplit(".", 1)[-1] for e in app.recorder.select_events(customer_id)]


def test_writes_whose_reply_was_lost_are_answered_as_made(
    app: Customers, lose_next_reply: Callable[[], None]
) -> None:
    commands = CustomerCommands(app)
    who = principal()
    email = f"lost.{uuid.uuid4().hex[:8]}@example.com"
    lose_next_reply()
    created = commands.create(who, profile(email, ["a"]))  # no Idempotency-Key
    assert created.body is not None and created.created
    customer_id = uuid.UUID(created.body["id"])

    lose_next_reply()
    updated = commands.update(who, customer_id, profile(email, ["b"]), None, if_match=1)
    assert updated.version == 2  # not a 412: the update was made

    lose_next_reply()
    change = ConsentChange.model_validate({"consents": {"marketing": False}})
    consent = commands.change_consent(who, customer_id, change)
    assert consent.version == 3  # made once, answered once
    assert topics(app, customer_id) == ["Created", "Updated", "ConsentChanged"]


def test_a_real_conflict_is_still_a_conflict(app: Customers) -> None:
    commands = CustomerCommands(app)
    who = principal()
    created = commands.create(who, profile(f"real.{uuid.uuid4().hex[:8]}@example.com", ["a"]))
    assert created.body is not None
    customer_id = uuid.UUID(created.body["id"])
    first: object = app.repository.get(customer_id)
    second: object = app.repository.get(customer_id)
    assert isinstance(first, Customer) and isinstance(second, Customer)
    first.set_active_orders(1, actor="t")
    second.set_active_orders(2, actor="t")
    app.save(first)
    with pytest.raises(IntegrityError):
        app.save(second)
