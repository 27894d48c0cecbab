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

MODEL = f"{CUSTOMERS}/insights/model"


def test_models_are_fitted_and_drive_insights(http: httpx.Client, auth: TokenFactory) -> None:
    h = auth()
    assert http.get(MODEL, headers=h).json() == {"status": "PENDING"}
    now = datetime.now(UTC)
    ids = [add_customer(http, h)["id"] for _ in range(60)]
    # Purchases as the BG/NBD story goes: a Poisson rate per customer while active, a chance
    # to drop out after each purchase.
    rng = random.Random(7)
    events: list[dict[str, Any]] = []
    last: dict[str, tuple[int, datetime]] = {}
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
            if rng.random() < dropout:
                break
            when += timedelta(days=rng.expovariate(rate))
    repeat_buyers = sum(1 for orders, _ in last.values() if orders > 1)
    assert http.post(BATCH, json={"events": events}, headers=h).status_code == 202
    idle = add_customer(http, h)["id"]

    requested = http.post(MODEL, headers=h)
    assert requested.status_code == 202, requested.text
    assert http.post(MODEL, headers=auth("analyst")).status_code == 403

    def fitted() -> dict[str, Any] | None:
        model: dict[str, Any] = http.get(MODEL, headers=h).json()
        return model if model["status"] != "PENDING" else None

    model = eventually(fitted, timeout=30)
    assert model["status"] == "FITTED", model
    assert model["sampleSize"] == {"customers": 60, "repeatBuyers": repeat_buyers}
    assert model["currency"] == "EUR"
    assert set(model["bgnbd"]) == {"r", "alpha", "a", "b", "logLikelihood"}
    assert all(v > 0 for k, v in model["bgnbd"].items() if k != "logLikelihood")
    assert len(model["rfmQuintileBreaks"]["frequency"]) == 4

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
    assert top["model"]["sampleSize"] == 60
    low = http.get(f"{CUSTOMERS}/{worst}/insights", headers=h).json()
    assert low["rfm"]["recency"] == 1
    assert low["expectedPurchases90Days"] < top["expectedPurchases90Days"]

    for _ in range(3):
        http.post(f"{CUSTOMERS}/{idle}/track", json=page_view(), headers=h)
    none = http.get(f"{CUSTOMERS}/{idle}/insights", headers=h).json()
    assert none["rfm"] is None and none["probabilityAlive"] is None
    assert none["engagementTrend"] == {"trend": "rising", "last30Days": 3, "previous30Days": 0}
