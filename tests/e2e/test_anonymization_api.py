"""Anonymization end to end: identifying data is gone from every table and answer, the
analytics stay (country, age band, purchases, segment membership by country)."""

from __future__ import annotations

import uuid

import httpx

from service.settings import Settings
from tests.e2e.conftest import TokenFactory
from tests.e2e.test_customers_api import assert_problem
from tests.e2e.test_erasure_api import table_scan
from tests.e2e.test_membership_api import (
    CUSTOMERS,
    add_customer,
    eventually,
    members,
    new_segment,
)


def test_anonymization_keeps_analytics_only(
    http: httpx.Client, auth: TokenFactory, migrated: Settings
) -> None:
    h, dpo = auth(), auth("dpo")
    tag = uuid.uuid4().hex[:8]
    name, agent = f"Quentin Anonymo{tag}", f"AnonAgent/{tag}"
    purchase = {
        "id": f"order-{tag}",
        "amount": {"amount": 120.5, "currency": "EUR"},
        "product": "Acme Phone",
        "category": "electronics",
        "purchaseDate": "2026-01-10T10:00:00Z",
    }
    customer = add_customer(
        http,
        h,
        name=name,
        age=37,
        metadata={"source": "store", "purchaseHistory": [purchase], "referralSource": tag},
    )
    cid, email = customer["id"], customer["email"]
    url = f"{CUSTOMERS}/{cid}"
    consent = {"consents": {"personalization": True}, "userAgent": agent}
    assert http.put(f"{url}/consent", json=consent, headers=h).status_code == 200
    sid = new_segment(http, h, criteria={"geographic": {"countries": ["Spain"]}})["id"]
    eventually(lambda: cid in members(http, h, sid))

    assert_problem(http.post(f"{url}/anonymize", headers=auth("manager")), 403)
    done = http.post(f"{url}/anonymize", headers=dpo)
    assert done.status_code == 200, done.text
    token = {"X-Consistency-Token": done.headers["X-Consistency-Token"]}
    shown = http.get(url, headers={**h, **token}).json()
    assert shown["status"] == "ANONYMIZED" and shown["name"] == "Anonymized customer"
    assert shown["age"] is None and shown["location"]["country"] == "Spain"
    assert shown["location"]["city"] == "" and shown["tags"] == []
    assert shown["preferences"]["customPreferences"] == {"ageBand": "30-39"}
    assert shown["preferences"]["marketingConsent"] is False
    kept = shown["metadata"]["purchaseHistory"]
    assert [(p["amount"]["amount"], p["category"], p["id"]) for p in kept] == [
        (120.5, "electronics", "purchase-1")
    ]
    assert shown["metadata"]["source"] == "store"

    # Still counted where only analytics decide; nothing identifying anywhere.
    assert cid in members(http, h, sid)
    assert_problem(http.put(url, json={"name": "x"}, headers=h), 422)
    assert_problem(http.post(f"{url}/anonymize", headers=dpo), 404)
    assert_problem(http.get(f"{url}/data", headers=dpo), 404)
    requests = http.get("/api/v1/privacy/requests", params={"customerId": cid}, headers=dpo).json()[
        "items"
    ]
    assert [r["type"] for r in requests] == ["CONSENT_CHANGE", "ANONYMIZATION"]
    eventually(lambda: not table_scan(str(migrated.database_url), [email, name, agent, tag]))
