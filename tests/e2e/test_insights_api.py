"""Insights end to end: the organization's purchase and spend models are fitted in the
background on request, are visible with their sample, and drive each customer's RFM scores
and predictions; customers without purchases get none."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from tests.e2e.conftest import TokenFactory
from tests.e2e.test_membership_api import CUSTOMERS, add_customer, eventually
from tests.e2e.test_tracking_api import BATCH, page_view, purchase

MODELS = f"{CUSTOMERS}/analytics/models"


def fitted(http: httpx.Client, headers: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
    """Queue a fit and wait for its outcome."""
    queued = http.post(MODELS, json=body, headers=headers)
    assert queued.status_code == 202, queued.text
    assert queued.json()["state"] == "QUEUED"

    def done() -> dict[str, Any] | None:
        fit: dict[str, Any] = http.get(queued.headers["Location"], headers=headers).json()
        return fit if fit["state"] != "QUEUED" else None

    result: dict[str, Any] = eventually(done, timeout=30)
    return result


def test_models_are_fitted_and_drive_insights(http: httpx.Client, auth: TokenFactory) -> None:
    h = auth()
    assert http.get(MODELS, headers=h).json() == {"items": []}
    now = datetime.now(UTC)
    ids = [add_customer(http, h)["id"] for _ in range(60)]
    # Purchases as the BG/NBD story goes: a Poisson rate per customer while active, a chance
    # to drop out after each purchase.
    rng = random.Random(7)
    events: list[dict[str, Any]] = []
    last: dict[str, tuple[int, datetime]] = {}
    days: dict[str, set[str]] = {}
    for cid in ids:
        when = now - timedelta(days=rng.uniform(60, 360))
        rate, dropout, orders = rng.gammavariate(2.0, 1 / 60), rng.uniform(0.05, 0.5), 0
        while when < now:
            events.append(
                {
                    **purchase(round(rng.uniform(10, 90), 2), customerId=cid),
                    "timestamp": when.isoformat(),
                }
            )
            orders += 1
            last[cid] = (orders, when)
            days.setdefault(cid, set()).add(when.date().isoformat())
            if rng.random() < dropout:
                break
            when += timedelta(days=rng.expovariate(rate))
    repeat_purchases = sum(len(d) - 1 for d in days.values())  # occasions are days
    assert http.post(BATCH, json={"events": events}, headers=h).status_code == 202
    idle = add_customer(http, h)["id"]

    assert http.post(MODELS, json={}, headers=auth("analyst")).status_code == 403
    model = fitted(http, h, {})
    assert model["state"] == "SUCCEEDED", model
    assert (model["customers"], model["repeatPurchases"]) == (60, repeat_purchases)
    assert model["currency"] == "EUR"
    bgnbd = model["bgnbd"]
    assert (bgnbd["timeUnit"], bgnbd["sampleSize"], bgnbd["converged"]) == ("day", 60, True)
    assert all(bgnbd[k] > 0 for k in ("r", "alpha", "a", "b"))
    assert len(model["rfmQuintileBreaks"]["frequency"]) == 4
    assert [f["id"] for f in http.get(MODELS, headers=h).json()["items"]] == [model["id"]]

    # The most recent of the most frequent buyers against the one gone longest.
    best = max(ids, key=lambda c: last[c])
    worst = min(ids, key=lambda c: last[c][1])
    insight = http.get(f"{CUSTOMERS}/{best}/insights", headers=h)
    assert insight.status_code == 200, insight.text
    top = insight.json()
    assert top["rfm"]["frequency"] == 5 and top["rfm"]["recency"] >= 4
    assert top["rfm"]["segment"] in {"Champions", "Loyal Customers"}
    assert 0 < top["probabilityAlive"] <= 1
    assert top["expectedPurchases90Days"] > 0
    assert top["predictedValue12Months"]["currency"] == "EUR"
    assert top["predictedValue12Months"]["amount"] > 0
    assert top["preferredCategory"] == "Footwear" and top["preferredChannel"] == "web"
    assert top["model"] == {
        "id": model["id"],
        "calibrationEnd": model["calibrationEnd"],
        "customers": 60,
        "currency": "EUR",
    }
    low = http.get(f"{CUSTOMERS}/{worst}/insights", headers=h).json()
    assert low["rfm"]["recency"] == 1
    assert low["expectedPurchases90Days"] < top["expectedPurchases90Days"]

    for _ in range(3):
        http.post(f"{CUSTOMERS}/{idle}/track", json=page_view(), headers=h)
    none = http.get(f"{CUSTOMERS}/{idle}/insights", headers=h).json()
    assert none["rfm"] is None and none["probabilityAlive"] is None
    assert none["engagementTrend"] == {"trend": "rising", "last30Days": 3, "previous30Days": 0}
