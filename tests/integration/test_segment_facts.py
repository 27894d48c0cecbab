"""segment_facts on real PostgreSQL: the customers projection writes exactly the facts
`domain.segment_facts.customer_facts` computes from the aggregate, keeps them current across
updates, status changes and deletion, removes them on erasure, rebuilds them identically; and
the compiled SQL over the projected rows selects what the Python predicate selects."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import psycopg

from domain.criteria import SegmentCriteria, predicate
from domain.customer import Customer
from domain.segment_facts import CustomerFacts, customer_facts
from domain.values import CustomerStatus, Profile
from eventstore.application import Customers
from projections import customers as view
from projections import segment_sql
from projections.runner import ViewRunner, rebuild_view
from service.settings import Settings

NOW = datetime.now(UTC)
DAY = timedelta(days=1)


def profile(i: int, **over: Any) -> Profile:
    purchases = [
        {
            "id": f"p{i}-{k}",
            "amount": {"amount": round(10 + 7.25 * k + i, 2), "currency": "EUR"},
            "product": ["Acme Phone", "Globex Laptop", "Initech Stapler"][k % 3],
            "category": ["Electronics", "Books"][k % 2],
            "purchaseDate": (NOW - (5 + 11 * k + i) * DAY).isoformat(),
        }
        for k in range(i % 4)
    ]
    data: dict[str, Any] = {
        "email": f"facts{i}@example.com",
        "name": f"Facts {i}",
        "age": 20 + i,
        "gender": ["MALE", "FEMALE", "OTHER"][i % 3],
        "location": {
            "country": ["ES", "FR"][i % 2],
            "city": ["Madrid", "PARIS"][i % 2],
            "region": "Region",
            "postalCode": f"2800{i % 3}",
            "latitude": 40.0 + i / 10,
            "longitude": -3.5 + i / 10,
        },
        "preferences": {
            "marketingConsent": i % 2 == 0,
            "dataProcessingConsent": True,
            "customPreferences": {"income": 1000 * i, "education": ["Master", "PhD"][i % 2]},
        },
        "tags": ["vip"] if i % 3 == 0 else [],
        "metadata": {"purchaseHistory": purchases, "loginCount": i},
    }
    data.update(over)
    return Profile.model_validate(data)


def expected(agg: Customer) -> CustomerFacts:
    return customer_facts(
        agg.profile, status=agg.status, created_at=agg.created_on, last_activity=agg.modified_on
    )


def stored(settings: Settings, ids: list[UUID]) -> dict[UUID, CustomerFacts]:
    with psycopg.connect(str(settings.database_url)) as conn:
        return segment_sql.load_facts(conn, ids)


def select(settings: Settings, criteria: SegmentCriteria, org: str) -> set[UUID]:
    query, params = segment_sql.compile_criteria(criteria, org, NOW)
    with psycopg.connect(str(settings.database_url)) as conn:
        return {r[0] for r in conn.execute(query, params)}


def test_projected_facts_are_the_domain_facts(settings: Settings, app: Customers) -> None:
    org = f"org-{secrets.token_hex(3)}"
    made = [Customer.register(org, profile(i), "tester") for i in range(12)]
    app.save(*made, new_keys=[app.keys.create(c.id, org) for c in made])
    runner = ViewRunner(app, view.CustomersView(), batch_size=5)
    try:
        runner.run_once()
        ids = [c.id for c in made]
        assert stored(settings, ids) == {c.id: expected(c) for c in made}

        # Updates (new purchase history, moved, untagged), status changes and deletion.
        for i, c in enumerate(made):
            if i % 2:
                new = profile(i + 1, email=f"facts{i}@example.com", tags=[])
                c.update(
                    new,
                    status=CustomerStatus.SUSPENDED if i % 3 == 1 else None,
                    actor="tester",
                    actor_is_admin=True,
                    now=NOW,
                    verification_ttl=timedelta(hours=1),
                )
            if i % 4 == 0:
                c.delete(actor="tester")
        app.save(*made)
        runner.run_once()
        facts = stored(settings, ids)
        assert facts == {c.id: expected(c) for c in made}
        assert {f.status for f in facts.values()} == {"active", "suspended", "deleted"}

        # The compiled SQL over the projected rows == the predicate over the domain facts.
        for data in [
            {"demographics": {"ageRange": {"min": 22, "max": 28}}},
            {"geographic": {"cities": ["paris"]}, "behavioral": {"productCategories": ["BOOKS"]}},
            {"behavioral": {"lastPurchaseDays": {"max": 30}, "brandPreferences": ["acme"]}},
            {"purchaseHistory": {"orderCount": {"max": 0}}},
            {"customRules": [{"field": "status", "operator": "not_equals", "value": "active"}]},
            {
                "geographic": {
                    "distanceFrom": {"latitude": 40.3, "longitude": -3.2, "radiusKm": 40}
                },
                "demographics": {"education": ["phd"]},
            },
        ]:
            criteria = SegmentCriteria.model_validate(data)
            holds = predicate(criteria, NOW)
            want = {c.id for c in made if holds(expected(c))}
            assert select(settings, criteria, org) == want, data
            assert all(c.status != CustomerStatus.DELETED for c in made if c.id in want)

        # A rebuild writes the very same facts.
        before = stored(settings, ids)
        rebuild_view(app, view.CustomersView())
        assert stored(settings, ids) == before
    finally:
        runner.close()


def test_erasure_removes_the_facts(settings: Settings, app: Customers) -> None:
    org = f"org-{secrets.token_hex(3)}"
    keep, erase = (Customer.register(org, profile(i + 50), "tester") for i in range(2))
    app.save(keep, erase, new_keys=[app.keys.create(c.id, org) for c in (keep, erase)])
    runner = ViewRunner(app, view.CustomersView())
    runner.run_once()
    runner.close()
    assert set(stored(settings, [keep.id, erase.id])) == {keep.id, erase.id}
    erase.set_active_orders(1, actor="t")
    app.save(erase)
    with psycopg.connect(str(settings.database_url), autocommit=True) as conn:
        conn.execute(
            "UPDATE customer_keys SET wrapped_key = NULL, shredded_at = now()"
            " WHERE customer_id = %s",
            (erase.id,),
        )
    fresh = Customers(settings)
    try:
        runner = ViewRunner(fresh, view.CustomersView())
        runner.run_once()
        runner.close()
        assert set(stored(settings, [keep.id, erase.id])) == {keep.id}
        everyone = SegmentCriteria.model_validate(
            {"customRules": [{"field": "age", "operator": "exists"}]}
        )
        assert select(settings, everyone, org) == {keep.id}
    finally:
        fresh.close()
