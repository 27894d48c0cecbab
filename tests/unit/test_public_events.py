"""The public form of domain events: thin, stable ids, no personal data."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import orjson
import pytest

from domain.customer import Customer
from domain.values import CustomerStatus, Profile
from eventstore.mapper import Shredded
from eventstore.public_events import (
    KINDS,
    customer_id,
    event_org,
    org_token,
    public_event,
    subject,
)

EMAIL = "ana.garcia.secret@example.org"
NEW_EMAIL = "ana.new.hidden@example.net"
NAME = "Ana Garcia Hidalgo"
NEW_NAME = "Ana Maria Garcia"
CITY = "Valladolid"
NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def profile(email: str = EMAIL, name: str = NAME, **extra: object) -> Profile:
    return Profile.model_validate(
        {
            "email": email,
            "name": name,
            "age": 37,
            "location": {"country": "ES", "city": CITY},
            "preferences": {"marketingConsent": True, "dataProcessingConsent": True},
            "tags": ["vip"],
            **extra,
        }
    )


def lifecycle() -> tuple[Customer, list[object], str]:
    """Every published event type once; returns the customer, its events and the token."""
    c = Customer.register("acme", profile(), actor="admin@acme.example")
    token = c.update(
        profile(email=NEW_EMAIL, name=NEW_NAME),
        status=CustomerStatus.SUSPENDED,
        actor="admin@acme.example",
        actor_is_admin=True,
        now=NOW,
        verification_ttl=timedelta(hours=24),
    )
    assert token is not None
    c.verify_email(token, actor="t", now=NOW)
    c.set_active_orders(3, actor="t")
    c.set_active_orders(0, actor="t")
    c.delete(actor="admin@acme.example")
    return c, list(c.collect_events()), token


def test_every_event_type_maps_to_a_thin_public_event() -> None:
    c, events, token = lifecycle()
    public = [public_event(e, "acme") for e in events]
    assert all(p is not None for p in public)
    types = [p["type"] for p in public if p]
    assert types == [
        "CustomerCreated",
        "EmailChangeRequested",
        "CustomerUpdated",
        "StatusChanged",
        "EmailVerified",
        "ActiveOrdersChanged",
        "ActiveOrdersChanged",
        "CustomerDeleted",
    ]
    for version, p in enumerate(public, start=1):
        assert p is not None
        assert p["id"] == f"{c.id}:{version}"
        assert p["customerId"] == str(c.id)
        assert p["orgId"] == "acme"
        assert p["version"] == version
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", p["occurredAt"])
        assert set(p) >= {"id", "type", "orgId", "customerId", "occurredAt", "version"}

    by_type = {p["type"]: p for p in public if p}
    assert by_type["CustomerCreated"]["status"] == "ACTIVE"
    assert by_type["CustomerUpdated"]["fields"] == ["name"]  # names, never values
    requested = by_type["EmailChangeRequested"]
    assert requested["verificationToken"] == token
    assert requested["expiresAt"] == "2025-03-02T12:00:00Z"
    assert by_type["StatusChanged"]["from"] == "ACTIVE"
    assert by_type["StatusChanged"]["to"] == "SUSPENDED"
    assert [p["count"] for p in public if p and p["type"] == "ActiveOrdersChanged"] == [3, 0]


def test_no_personal_data_in_public_events() -> None:
    _, events, _ = lifecycle()
    public = [public_event(e, "acme") for e in events]
    full = orjson.dumps(public).decode().lower()
    for secret in (EMAIL, NEW_EMAIL, NAME, NEW_NAME, CITY, "admin@acme.example"):
        assert secret.lower() not in full
    # Without the random ids, token and clock, no fragment of any profile value is left.
    random_keys = {"id", "customerId", "verificationToken", "occurredAt"}
    rest = orjson.dumps([{k: v for k, v in p.items() if k not in random_keys} for p in public if p])
    rest_text = rest.decode().lower()
    for fragment in ("ana", "garcia", "example", "valladolid", "vip", "37", "spain", '"es"'):
        assert fragment not in rest_text


def test_public_event_round_trips_through_decoded_state() -> None:
    """Events read back from the store carry plain strings instead of enums."""
    _, events, _ = lifecycle()
    status_changed = events[3]
    decoded = object.__new__(type(status_changed))
    state = dict(vars(status_changed))
    state["status"], state["previous"] = "SUSPENDED", "ACTIVE"
    object.__setattr__(decoded, "__dict__", state)
    assert public_event(decoded, "acme") == public_event(status_changed, "acme")


def test_shredded_and_foreign_events_are_not_published() -> None:
    shredded = Shredded(uuid4(), 2, "domain.customer:Customer.Updated")
    assert public_event(shredded, "acme") is None
    assert customer_id(shredded) == shredded.originator_id
    assert event_org(shredded) is None
    assert public_event(object(), "acme") is None
    assert customer_id(object()) is None


def test_org_and_customer_helpers() -> None:
    c, events, _ = lifecycle()
    assert event_org(events[0]) == "acme"
    assert all(event_org(e) is None for e in events[1:])
    assert {customer_id(e) for e in events} == {c.id}


@pytest.mark.parametrize("org", ["acme", "Acme-01", "org_7", "a" * 64])
def test_safe_org_ids_are_subject_tokens_verbatim(org: str) -> None:
    assert org_token(org) == org


@pytest.mark.parametrize(
    "org", ["acme.eu", "*", ">", "with space", "_leading", "a" * 65, "ñandú", "", "a/b"]
)
def test_unsafe_org_ids_are_hashed(org: str) -> None:
    token = org_token(org)
    assert re.fullmatch(r"_[0-9a-f]{32}", token)
    assert org_token(org) == token  # stable
    assert org_token(org + "x") != token


def test_subject_per_org_and_kind() -> None:
    _, events, _ = lifecycle()
    subjects = [subject("customers", p) for e in events if (p := public_event(e, "acme"))]
    assert subjects[0] == "customers.acme.customer.created"
    assert subjects[1] == "customers.acme.customer.email_change_requested"
    assert subjects[-1] == "customers.acme.customer.deleted"
    assert set(KINDS.values()) >= {s.split(".", 2)[2] for s in subjects}
    dotted = public_event(events[0], "acme.eu")
    assert dotted is not None
    token = subject("customers", dotted).split(".")[1]
    assert token.startswith("_") and len(subject("customers", dotted).split(".")) == 4
