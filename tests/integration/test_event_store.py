"""The event store on real PostgreSQL: encryption at rest, keys and claims in one transaction."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from cryptography.exceptions import InvalidTag
from eventsourcing.persistence import StoredEvent

from domain.access import Principal
from domain.values import Profile
from eventstore.application import Customers
from eventstore.mapper import Shredded
from service.settings import Settings
from write_api.customers import CustomerCommands


@pytest.fixture
def commands(migrated: Settings) -> Iterator[CustomerCommands]:
    app = Customers(migrated, pool_size=8)
    try:
        yield CustomerCommands(app)
    finally:
        app.close()


def admin(org: str) -> Principal:
    return Principal(sub="tester", org=org, roles=frozenset({"admin"}))


def profile(email: str, name: str) -> Profile:
    return Profile.model_validate(
        {
            "email": email,
            "name": name,
            "location": {"country": "FR", "city": "Lyon", "postalCode": "69001"},
            "preferences": {"marketingConsent": True, "dataProcessingConsent": True},
        }
    )


def test_no_plaintext_personal_data_in_any_table(
    commands: CustomerCommands, migrated: Settings
) -> None:
    org = f"org-{uuid.uuid4().hex[:8]}"
    marker = uuid.uuid4().hex[:10]
    email, name = f"plain.{marker}@example.com", f"Zebulon {marker}"
    out = commands.create(admin(org), profile(email, name), idempotency_key=uuid.uuid4().hex)
    assert out.body is not None
    customer_id = uuid.UUID(out.body["id"])
    commands.update(
        admin(org), customer_id, profile(f"next.{marker}@example.com", name + " Jr"), None, None
    )

    assert migrated.database_url
    with psycopg.connect(migrated.database_url) as conn:
        for table in ("customers_events", "customer_keys", "unique_claims", "idempotency_keys"):
            rows = conn.execute(f"SELECT t::text FROM {table} t").fetchall()
            dump = "\n".join(r[0] for r in rows)
            assert marker not in dump, table
            assert "Zebulon" not in dump, table
        states = [
            bytes(r[0])
            for r in conn.execute(
                "SELECT state FROM customers_events WHERE originator_id = %s", (customer_id,)
            )
        ]
    assert len(states) == 3  # created, e-mail change requested, updated
    assert all(marker.encode() not in s and b"Lyon" not in s for s in states)


def test_key_and_email_claim_commit_with_the_event(
    commands: CustomerCommands, migrated: Settings
) -> None:
    org = f"org-{uuid.uuid4().hex[:8]}"
    out = commands.create(admin(org), profile(f"a.{uuid.uuid4().hex[:6]}@example.com", "Ann"))
    assert out.body is not None
    customer_id = uuid.UUID(out.body["id"])
    assert migrated.database_url
    with psycopg.connect(migrated.database_url) as conn:
        assert conn.execute(
            "SELECT org_id FROM customer_keys WHERE customer_id=%s", (customer_id,)
        ).fetchone() == (org,)
        assert conn.execute(
            "SELECT count(*) FROM unique_claims WHERE owner_id=%s", (customer_id,)
        ).fetchone() == (1,)


def test_failed_save_leaves_no_key_or_claim(commands: CustomerCommands, migrated: Settings) -> None:
    org = f"org-{uuid.uuid4().hex[:8]}"
    email = f"dup.{uuid.uuid4().hex[:6]}@example.com"
    commands.create(admin(org), profile(email, "First"))
    assert migrated.database_url
    with psycopg.connect(migrated.database_url) as conn:
        before = conn.execute(
            "SELECT count(*) FROM customer_keys WHERE org_id=%s", (org,)
        ).fetchone()
    with pytest.raises(Exception, match="already registered"):
        commands.create(admin(org), profile(email, "Second"))
    with psycopg.connect(migrated.database_url) as conn:
        after = conn.execute(
            "SELECT count(*) FROM customer_keys WHERE org_id=%s", (org,)
        ).fetchone()
        events = conn.execute(
            "SELECT count(*) FROM customers_events e"
            " JOIN customer_keys k ON k.customer_id = e.originator_id WHERE k.org_id=%s",
            (org,),
        ).fetchone()
    assert before == after == (1,)
    assert events == (1,)


def test_ciphertext_is_bound_to_its_event(commands: CustomerCommands) -> None:
    org = f"org-{uuid.uuid4().hex[:8]}"
    out = commands.create(admin(org), profile(f"b.{uuid.uuid4().hex[:6]}@example.com", "Bea"))
    assert out.body is not None
    customer_id = uuid.UUID(out.body["id"])
    stored = commands.app.recorder.select_events(customer_id)[0]
    moved = StoredEvent(customer_id, 2, stored.topic, stored.state)  # replayed at another version
    with pytest.raises(InvalidTag):
        commands.app.mapper.to_domain_event(moved)


def test_destroyed_key_decodes_to_placeholder(
    commands: CustomerCommands, migrated: Settings
) -> None:
    org = f"org-{uuid.uuid4().hex[:8]}"
    out = commands.create(admin(org), profile(f"c.{uuid.uuid4().hex[:6]}@example.com", "Cid"))
    assert out.body is not None
    customer_id = uuid.UUID(out.body["id"])
    assert migrated.database_url
    with psycopg.connect(migrated.database_url) as conn:
        conn.execute(
            "UPDATE customer_keys SET wrapped_key = NULL, shredded_at = now() WHERE customer_id=%s",
            (customer_id,),
        )
    fresh = Customers(migrated, pool_size=1)  # a process that never cached the key
    try:
        event = fresh.mapper.to_domain_event(fresh.recorder.select_events(customer_id)[0])
    finally:
        fresh.close()
    assert isinstance(event, Shredded)
    assert event.originator_id == customer_id


def test_concurrent_claims_fail_only_as_conflicts(commands: CustomerCommands) -> None:
    """Racing claims of one name must lose as a 409, never as a pipeline error (a 500)."""
    from concurrent.futures import ThreadPoolExecutor

    from domain.errors import Code, DomainError

    org = f"org-{uuid.uuid4().hex[:8]}"
    outcomes: dict[str, int] = {}
    for _ in range(10):
        email = f"race.{uuid.uuid4().hex[:6]}@example.com"

        def attempt(_: int, email: str = email) -> str:
            try:
                commands.create(admin(org), profile(email, "Racer"))
            except DomainError as e:
                return e.code
            return "created"

        with ThreadPoolExecutor(max_workers=8) as pool:
            for result in pool.map(attempt, range(16)):
                outcomes[result] = outcomes.get(result, 0) + 1
    assert outcomes == {"created": 10, Code.CONFLICT: 150}
