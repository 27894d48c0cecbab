"""The customer and segment use cases on the in-memory event store (eventstore.memory): the
same commands, aggregates, encryption and side writes (data keys, uniqueness claims,
idempotency records, queued calculations) as over PostgreSQL, with no database — their rules
are checked here in milliseconds; the integration and e2e tiers check the same over the real
stores and transports."""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from domain.access import Principal
from domain.errors import Code, DomainError
from domain.segment import SegmentDefinition
from domain.values import CustomerStatus, Profile
from eventstore.application import Customers
from eventstore.mapper import Shredded
from service.rules_engine import RulesEngine
from service.settings import Settings
from write_api.customers import CustomerCommands
from write_api.segments import SegmentCommands

ORG = "acme"


@pytest.fixture
def app() -> Iterator[Customers]:
    settings = Settings(master_key=base64.b64encode(os.urandom(32)).decode(), database_url=None)
    application = Customers(settings, in_memory=True)
    yield application
    application.close()


@pytest.fixture
def customers(app: Customers) -> CustomerCommands:
    return CustomerCommands(app)


@pytest.fixture
def segments(app: Customers) -> SegmentCommands:
    return SegmentCommands(app, RulesEngine(app.settings))


def who(*roles: str, org: str = ORG) -> Principal:
    return Principal(sub=f"{'-'.join(roles)}-1", org=org, roles=frozenset(roles))


def profile(email: str = "ann@example.com", **changes: Any) -> Profile:
    data = {
        "email": email,
        "name": "Ann Example",
        "preferences": {"marketingConsent": True, "dataProcessingConsent": True},
    }
    return Profile.model_validate({**data, **changes})


def refused(code: Code, call: Any, *args: Any, **kwargs: Any) -> DomainError:
    with pytest.raises(DomainError) as caught:
        call(*args, **kwargs)
    assert caught.value.code == code, caught.value
    return caught.value


def test_a_customer_is_created_sealed_under_its_own_key(
    app: Customers, customers: CustomerCommands
) -> None:
    made = customers.create(who("admin"), profile())
    assert made.created and made.version == 1 and made.body is not None
    cid = uuid.UUID(made.body["id"])
    (stored,) = app.recorder.select_events(cid)
    assert b"ann@example.com" not in stored.state  # sealed, not plain JSON
    assert app.repository.get(cid).email == "ann@example.com"


def test_one_address_per_organization(customers: CustomerCommands) -> None:
    customers.create(who("admin"), profile())
    taken = refused(Code.CONFLICT, customers.create, who("admin"), profile(name="Ann Again"))
    assert taken.field == "email"
    # Another organization has addresses of its own.
    assert customers.create(who("admin", org="globex"), profile()).created


def test_idempotent_creation_replays_and_refuses_another_body(
    customers: CustomerCommands,
) -> None:
    first = customers.create(who("admin"), profile(), idempotency_key="k-1")
    again = customers.create(who("admin"), profile(), idempotency_key="k-1")
    assert again.body == first.body and again.consistency_token == first.consistency_token
    other = refused(
        Code.INVALID, customers.create, who("admin"), profile(name="Bob"), idempotency_key="k-1"
    )
    assert other.field == "Idempotency-Key"


def test_if_match_names_the_version_a_change_is_made_to(customers: CustomerCommands) -> None:
    made = customers.create(who("admin"), profile())
    assert made.body is not None
    cid = uuid.UUID(made.body["id"])
    changed = customers.update(who("admin"), cid, profile(name="Ann Changed"), None, 1)
    assert changed.version == 2 and not changed.created
    refused(
        Code.PRECONDITION_FAILED,
        customers.update,
        who("admin"),
        cid,
        profile(name="Late"),
        None,
        1,
    )


def test_suspension_is_for_admins_and_deletion_waits_for_orders(
    customers: CustomerCommands,
) -> None:
    made = customers.create(who("admin"), profile())
    assert made.body is not None
    cid = uuid.UUID(made.body["id"])
    refused(
        Code.FORBIDDEN,
        customers.update,
        who("manager"),
        cid,
        profile(),
        CustomerStatus.SUSPENDED,
        None,
    )
    customers.set_active_orders(who("service"), cid, 2)
    refused(Code.CONFLICT, customers.delete, who("manager"), cid, None)
    customers.set_active_orders(who("service"), cid, 0)
    assert customers.delete(who("manager"), cid, None).body is not None


def test_deletion_frees_the_address_and_a_restore_claims_it_back(
    customers: CustomerCommands,
) -> None:
    made = customers.create(who("admin"), profile())
    assert made.body is not None
    cid = uuid.UUID(made.body["id"])
    customers.delete(who("manager"), cid, None)
    newcomer = customers.create(who("admin"), profile(name="Another Ann"))
    assert newcomer.created and newcomer.body is not None
    refused(Code.CONFLICT, customers.restore, who("manager"), cid, None)  # taken meanwhile
    customers.delete(who("manager"), uuid.UUID(newcomer.body["id"]), None)
    restored = customers.restore(who("manager"), cid, None)
    assert restored.body is not None and restored.body["status"] == "ACTIVE"
    refused(Code.CONFLICT, customers.create, who("admin"), profile())


def test_an_email_change_takes_the_new_address_only_when_verified(
    app: Customers, customers: CustomerCommands
) -> None:
    made = customers.create(who("admin"), profile())
    other = customers.create(who("admin"), profile("bob@example.com", name="Bob"))
    assert made.body is not None and other.body is not None
    cid = uuid.UUID(made.body["id"])
    pending = customers.update(who("support"), cid, profile("ann@new.example"), None, None)
    assert pending.body is not None
    assert (pending.body["email"], pending.body["pendingEmail"]) == (
        "ann@example.com",
        "ann@new.example",
    )
    token = app.repository.get(cid).pending_token
    verified = customers.verify_email(who("support"), cid, token)
    assert verified.body is not None and verified.body["email"] == "ann@new.example"
    # The old address is free; the new one is taken.
    assert customers.create(who("admin"), profile(name="Ann Two")).created
    refused(Code.CONFLICT, customers.create, who("admin"), profile("ann@new.example"))


def test_roles_without_the_permission_are_refused_before_anything_is_stored(
    app: Customers, customers: CustomerCommands
) -> None:
    refused(Code.FORBIDDEN, customers.create, who("analyst"), profile())
    assert app.recorder.max_notification_id() is None


def test_segment_names_are_unique_per_organization_whatever_the_case(
    app: Customers, segments: SegmentCommands
) -> None:
    definition = SegmentDefinition.model_validate(
        {
            "name": "VIP  buyers",
            "kind": "DYNAMIC",
            "criteria": {"demographics": {"ageRange": {"min": 30, "max": 40}}},
        }
    )
    made = segments.create(who("manager"), definition)
    assert made.created and made.body is not None
    assert app.recorder.jobs and app.recorder.jobs[-1].segment_id == uuid.UUID(made.body["id"])
    renamed = SegmentDefinition.model_validate({**definition.model_dump(), "name": "vip buyers"})
    clash = refused(Code.CONFLICT, segments.create, who("manager"), renamed)
    assert clash.field == "name"
    assert segments.create(who("manager", org="globex"), renamed).created


def test_erasure_needs_the_database_and_says_so(customers: CustomerCommands) -> None:
    """Erasure records a privacy request and its audit entry in the same transaction: the
    in-memory store refuses that save rather than pretend (tested over PostgreSQL)."""
    made = customers.create(who("admin"), profile())
    assert made.body is not None
    with pytest.raises(NotImplementedError):
        customers.erase(who("dpo"), uuid.UUID(made.body["id"]))


def test_a_shredded_key_decodes_to_tombstones(app: Customers, customers: CustomerCommands) -> None:
    made = customers.create(who("admin"), profile())
    assert made.body is not None
    cid = uuid.UUID(made.body["id"])
    app.recorder.keys[cid] = None  # type: ignore[attr-defined]  # what erasure's side write does
    app.keys.forget(cid)
    (stored,) = app.recorder.select_events(cid)
    assert isinstance(app.mapper.to_domain_event(stored), Shredded)
