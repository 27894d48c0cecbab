"""Tracking end to end: single and batch events, durable on 202, the consent rule, unknown
customers and bad payloads refused whole, redeliveries not counted twice, running totals that
segment criteria read (a purchase makes a customer join), erasure reaching the activity."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg

from service.settings import Settings
from tests.e2e.conftest import TokenFactory, new_customer
from tests.e2e.test_customers_api import assert_problem
from tests.e2e.test_membership_api import (
    CUSTOMERS,
    add_customer,
    eventually,
    members,
    new_segment,
)

BATCH = f"{CUSTOMERS}/track/batch"


def purchase(amount: float = 50.0, **extra: Any) -> dict[str, Any]:
    return {
        "type": "PURCHASE",
        "data": {
            "orderId": f"o-{uuid.uuid4().hex[:8]}",
            "amount": amount,
            "currency": "EUR",
            "product": "Trail shoes",
            "category": "Footwear",
            "channel": "web",
        },
        **extra,
    }


def page_view(**extra: Any) -> dict[str, Any]:
    return {
        "type": "PAGE_VIEW",
        "data": {"url": "https://shop.example/p/1", "title": "Shoes"},
        "sessionId": str(uuid.uuid4()),
        "device": {"type": "mobile", "os": "Android", "browser": "Chrome"},
        **extra,
    }


def activity(settings: Settings, customer_id: str) -> dict[str, Any] | None:
    with psycopg.connect(str(settings.database_url)) as conn:
        cur = conn.execute(
            "SELECT event_count, purchase_count, total_spent_cents, login_count, categories,"
            " last_login_at FROM customer_activity WHERE customer_id = %s",
            (customer_id,),
        )
        row = cur.fetchone()
        if row is None:
            return None
        names = [d.name for d in cur.description or ()]
        return dict(zip(names, row, strict=True))


def stored_events(settings: Settings, customer_id: str) -> list[tuple[str, Any]]:
    with psycopg.connect(str(settings.database_url)) as conn:
        return [
            (t, d)
            for t, d in conn.execute(
                "SELECT event_type, event_data FROM customer_events WHERE customer_id = %s"
                " ORDER BY occurred_at",
                (customer_id,),
            )
        ]


def test_single_events_are_stored_and_totalled(
    http: httpx.Client, auth: TokenFactory, migrated: Settings
) -> None:
    h = auth()
    cid = add_customer(http, h)["id"]
    login_at = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    for body in (page_view(), purchase(20.5), {"type": "LOGIN", "timestamp": login_at}):
        answer = http.post(f"{CUSTOMERS}/{cid}/track", json=body, headers=h)
        assert answer.status_code == 202, answer.text
        assert answer.json()["stored"] is True
    totals = activity(migrated, cid)
    assert totals is not None
    assert (totals["event_count"], totals["purchase_count"], totals["total_spent_cents"]) == (
        3,
        1,
        2050,
    )
    assert totals["login_count"] == 1 and totals["categories"] == ["footwear"]
    assert totals["last_login_at"] == datetime.fromisoformat(login_at)
    types = [t for t, _ in stored_events(migrated, cid)]
    assert sorted(types) == ["LOGIN", "PAGE_VIEW", "PURCHASE"]
    # The customer shows them: login count, last login, last activity (now: the page view).
    shown = http.get(f"{CUSTOMERS}/{cid}", headers=h).json()
    assert shown["metadata"]["loginCount"] == 1
    assert datetime.fromisoformat(shown["metadata"]["lastLogin"]) == datetime.fromisoformat(
        login_at
    )
    assert datetime.now(UTC) - datetime.fromisoformat(shown["lastActivity"]) < timedelta(minutes=1)
    listed = http.get(CUSTOMERS, headers=h).json()["items"]
    assert [c["metadata"]["loginCount"] for c in listed if c["id"] == cid] == [1]


def test_behavioral_events_need_analytics_consent(
    http: httpx.Client, auth: TokenFactory, migrated: Settings
) -> None:
    h = auth()
    body = new_customer()
    body["preferences"]["privacySettings"]["analyticsTracking"] = False
    cid = add_customer(http, h, preferences=body["preferences"])["id"]
    viewed = http.post(f"{CUSTOMERS}/{cid}/track", json=page_view(), headers=h)
    assert viewed.status_code == 202, viewed.text
    assert viewed.json() == {
        "eventId": None,
        "stored": False,
        "duplicate": False,
        "reason": "analytics_tracking_off",
    }
    bought = http.post(f"{CUSTOMERS}/{cid}/track", json=purchase(), headers=h)
    assert bought.json()["stored"] is True  # a purchase is a contract record, not tracking
    assert [t for t, _ in stored_events(migrated, cid)] == ["PURCHASE"]

    batch = http.post(
        BATCH,
        json={"events": [{**page_view(), "customerId": cid}, {**purchase(), "customerId": cid}]},
        headers=h,
    )
    assert batch.status_code == 202, batch.text
    assert batch.json() == {
        "accepted": 1,
        "duplicates": 0,
        "skipped": [{"index": 0, "reason": "analytics_tracking_off"}],
    }


def test_batches_are_stored_whole_and_redelivery_is_not_counted_twice(
    http: httpx.Client, auth: TokenFactory, migrated: Settings
) -> None:
    h = auth()
    ids = [add_customer(http, h)["id"] for _ in range(3)]
    at = datetime.now(UTC) - timedelta(days=40)  # another month's partition too
    events = [
        {
            **purchase(10.0, customerId=ids[i % 3]),
            "eventId": str(uuid.uuid4()),
            "timestamp": (at + timedelta(days=i)).isoformat(),
        }
        for i in range(30)
    ]
    first = http.post(BATCH, json={"events": events}, headers=h)
    assert first.status_code == 202, first.text
    assert first.json()["accepted"] == 30
    again = http.post(BATCH, json={"events": events}, headers=h)
    assert again.json() == {"accepted": 0, "duplicates": 30, "skipped": []}
    twice = {**purchase(10.0, customerId=ids[0]), "eventId": str(uuid.uuid4())}
    within = http.post(BATCH, json={"events": [twice, twice]}, headers=h)
    assert within.json() == {"accepted": 1, "duplicates": 1, "skipped": []}
    for cid in ids:
        totals = activity(migrated, cid)
        assert totals is not None
        extra = 1 if cid == ids[0] else 0
        assert (totals["purchase_count"], totals["total_spent_cents"]) == (
            10 + extra,
            10_000 + 1000 * extra,
        )

    # One unknown customer (or another organization's) refuses the whole batch.
    stranger = add_customer(http, auth(org_id=f"other-{uuid.uuid4().hex[:6]}"))["id"]
    for bad in (str(uuid.uuid4()), stranger):
        refused = http.post(
            BATCH,
            json={"events": [purchase(customerId=ids[0]), purchase(customerId=bad)]},
            headers=h,
        )
        assert_problem(refused, 404, "events.1.customerId")
    totals = activity(migrated, ids[0])
    assert totals is not None and totals["purchase_count"] == 11


def test_bad_input_is_refused_with_the_field_named(http: httpx.Client, auth: TokenFactory) -> None:
    h = auth()
    cid = add_customer(http, h)["id"]
    track = f"{CUSTOMERS}/{cid}/track"
    bad_amount = purchase()
    bad_amount["data"]["amount"] = -1
    assert_problem(http.post(track, json=bad_amount, headers=h), 422, "data.amount")
    bad_currency = purchase()
    bad_currency["data"]["currency"] = "XXY"
    batch = {"events": [purchase(customerId=cid), {**bad_currency, "customerId": cid}]}
    assert_problem(http.post(BATCH, json=batch, headers=h), 422, "events.1.data.currency")
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert_problem(http.post(track, json=page_view(timestamp=future), headers=h), 422, "timestamp")
    # Times are RFC 3339 text, as the contract says; not a number of Unix seconds.
    assert_problem(http.post(track, json=page_view(timestamp=1.5), headers=h), 422, "timestamp")
    no_customer = {"events": [purchase()]}
    assert_problem(http.post(BATCH, json=no_customer, headers=h), 422, "events.0.customerId")
    too_many = {"events": [purchase(customerId=cid)] * 1001}
    assert_problem(http.post(BATCH, json=too_many, headers=h), 422, "events")
    nul = page_view()
    nul["data"]["title"] = "a\x00b"
    assert_problem(http.post(track, json=nul, headers=h), 422, "data.title")
    lone = {"events": [{**page_view(), "customerId": cid, "channel": "web\ud800"}]}
    raw = json.dumps(lone).encode()  # lone surrogates as JSON escapes, as clients send them
    headers = {**h, "Content-Type": "application/json"}
    assert_problem(http.post(BATCH, content=raw, headers=headers), 422, "events.0.channel")
    unknown = http.post(f"{CUSTOMERS}/{uuid.uuid4()}/track", json=purchase(), headers=h)
    assert unknown.status_code == 404
    assert http.post(track, json=purchase(), headers=auth("analyst")).status_code == 403


def test_tracked_purchases_move_segment_membership(
    http: httpx.Client, auth: TokenFactory, migrated: Settings
) -> None:
    h = auth()
    cid = add_customer(http, h)["id"]
    criteria = {"purchaseHistory": {"orderCount": {"min": 2}, "categories": ["footwear"]}}
    sid = new_segment(http, h, criteria=criteria)["id"]
    assert cid not in members(http, h, sid)
    for _ in range(2):
        assert http.post(f"{CUSTOMERS}/{cid}/track", json=purchase(), headers=h).status_code == 202
    eventually(lambda: cid in members(http, h, sid))


def test_a_new_customer_can_be_tracked_at_once_and_erasure_reaches_activity(
    http: httpx.Client, auth: TokenFactory, migrated: Settings
) -> None:
    h = auth()
    created = http.post(CUSTOMERS, json=new_customer(), headers=h)
    cid = created.json()["id"]
    tracked = http.post(f"{CUSTOMERS}/{cid}/track", json=page_view(), headers=h)
    assert tracked.status_code == 202 and tracked.json()["stored"] is True
    assert activity(migrated, cid) is not None
    erased = http.delete(f"{CUSTOMERS}/{cid}/data", headers=auth("dpo"))
    assert erased.status_code in {200, 202, 204}, erased.text
    assert stored_events(migrated, cid) == [] and activity(migrated, cid) is None
    gone = http.post(f"{CUSTOMERS}/{cid}/track", json=page_view(), headers=h)
    assert gone.status_code == 404


def test_analytics_combine_profile_history_and_tracked_activity(
    http: httpx.Client, auth: TokenFactory
) -> None:
    h = auth()
    history = [
        {
            "id": "p-1",
            "amount": {"amount": 30.0, "currency": "EUR"},
            "product": "Jacket",
            "category": "Outerwear",
            "purchaseDate": (datetime.now(UTC) - timedelta(days=100)).isoformat(),
            "channel": "store",
        }
    ]
    metadata = {"source": "website", "purchaseHistory": history}
    cid = add_customer(http, h, metadata=metadata)["id"]
    track = f"{CUSTOMERS}/{cid}/track"
    events = [purchase(20.0, channel="web"), page_view(channel="web"), {"type": "LOGIN"}]
    for body in events:
        assert http.post(track, json=body, headers=h).status_code == 202
    metrics = http.get(f"{CUSTOMERS}/{cid}/analytics", headers=h)
    assert metrics.status_code == 200, metrics.text
    m = metrics.json()
    assert m["orderCount"] == 2
    assert m["lifetimeValue"] == {"amount": 50.0, "currency": "EUR"}
    assert m["averageOrderValue"] == {"amount": 25.0, "currency": "EUR"}
    assert m["recencyDays"] == 0 and m["categories"] == ["footwear", "outerwear"]
    assert m["purchaseFrequency"] == round(2 * 30 / 100, 4)
    assert m["loginCount"] == 1 and m["lastLogin"] is not None
    assert m["engagement"]["last7Days"] == 3
    assert m["engagement"]["byType"] == {"PURCHASE": 1, "PAGE_VIEW": 1, "LOGIN": 1}
    assert m["engagement"]["byChannel"] == {"web": 2, "unknown": 1}
    assert m["devices"][0]["os"] == "Android"
    masked = http.get(f"{CUSTOMERS}/{cid}/analytics", headers=auth("analyst")).json()
    assert masked["devices"] == [{"type": "mobile", "events": 1}]
    other = auth(org_id=f"other-{uuid.uuid4().hex[:6]}")
    assert http.get(f"{CUSTOMERS}/{cid}/analytics", headers=other).status_code == 404
