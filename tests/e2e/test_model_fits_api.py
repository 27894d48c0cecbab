"""Model fits through the API on simulated purchase histories: the parameters the histories
were drawn from are recovered when fitting as of a calibration end, and the holdout
validation's predicted and actual repeat purchases agree."""

from __future__ import annotations

import itertools
import math
import secrets
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import numpy as np
import psycopg

from domain.customer import Customer
from domain.values import Profile
from eventstore.application import Customers
from service.settings import Settings
from tests.e2e.conftest import TokenFactory
from tests.e2e.test_insights_api import MODELS, fitted
from tests.e2e.test_tracking_api import BATCH

CUSTOMERS_SIMULATED = 3000
# BG/NBD of Fader, Hardie & Lee's CDNOW example (alpha per day), Gamma-Gamma of the same data.
R, ALPHA, A, B = 0.24, 4.41 * 7, 0.79, 2.43
P, Q, GAMMA = 6.25, 3.74, 15.44
# Four standard deviations of each log-estimate at this sample size: those of the domain
# tests (5,000 customers) times sqrt(5000 / 3000); spend is fitted on the repeat buyers only
# (about a third), hence its wider bounds.
TOLERANCE = {"r": 0.13, "alpha": 0.26, "a": 0.46, "b": 0.61}
SPEND_MEAN_TOLERANCE = 0.15  # relative, of the population mean p * gamma / (q - 1)


def register(settings: Settings, org: str, count: int) -> list[str]:
    """Customers registered straight through the event store (the API is not the subject)."""
    app = Customers(settings, pool_size=1)
    try:
        made = [
            Customer.register(
                org,
                Profile.model_validate(
                    {
                        "email": f"sim{i}.{secrets.token_hex(4)}@example.com",
                        "name": f"Sim {i}",
                        "preferences": {"marketingConsent": False, "dataProcessingConsent": True},
                    }
                ),
                "tester",
            )
            for i in range(count)
        ]
        for start in range(0, count, 500):
            chunk = made[start : start + 500]
            app.save(*chunk, new_keys=[app.keys.create(c.id, org) for c in chunk])
    finally:
        app.close()
    return [str(c.id) for c in made]


def wait_projected(settings: Settings, org: str, count: int) -> None:
    deadline = time.monotonic() + 60
    with psycopg.connect(str(settings.database_url)) as conn:
        while time.monotonic() < deadline:
            row = conn.execute("SELECT count(*) FROM customers_view WHERE org_id = %s", (org,))
            if row.fetchone() == (count,):
                return
            time.sleep(0.1)
    raise AssertionError("customers not projected in time")


def simulate(ids: list[str], calibration_end: datetime, now: datetime) -> list[dict[str, Any]]:
    """BG/NBD's story in calendar time: first purchases spread so that T at the calibration
    end is uniform on 365-730 days; Poisson purchases at rate lambda ~ Gamma(r, alpha) until,
    after a repeat purchase, a drop-out with probability p ~ Beta(a, b). Values: Gamma(p,
    nu) per purchase, nu ~ Gamma(q, gamma) per customer."""
    rng = np.random.default_rng(20261127)
    events = []
    for cid in ids:
        rate, dropout = rng.gamma(R, 1 / ALPHA), rng.beta(A, B)
        nu = rng.gamma(Q, 1 / GAMMA)
        when = calibration_end - timedelta(days=float(rng.uniform(365, 730)))
        first = True
        while when <= now:
            amount = max(round(float(rng.gamma(P, 1 / nu)), 2), 0.01)
            events.append(
                {
                    "type": "PURCHASE",
                    "customerId": cid,
                    "timestamp": when.isoformat(),
                    "data": {"orderId": f"{cid}-{len(events)}", "amount": amount,
                             "currency": "EUR", "product": "Item"},
                }
            )  # fmt: skip
            if not first and rng.random() < dropout:
                break
            first = False
            # Capped only to stay within datetime's range: 100,000 days is past `now` anyway.
            when += timedelta(days=min(float(rng.exponential(1 / rate)), 1e5))
    return events


def test_fit_as_of_a_date_recovers_parameters_and_validates_on_the_holdout(
    http: httpx.Client, auth: TokenFactory, migrated: Settings, org: str
) -> None:
    h = auth()
    now = datetime.now(UTC)
    calibration_end = now - timedelta(days=182)
    ids = register(migrated, org, CUSTOMERS_SIMULATED)
    wait_projected(migrated, org, CUSTOMERS_SIMULATED)
    events = simulate(ids, calibration_end, now)
    for start in range(0, len(events), 1000):
        sent = http.post(BATCH, json={"events": events[start : start + 1000]}, headers=h)
        assert sent.status_code == 202, sent.text

    body = {"calibrationEnd": calibration_end.isoformat(), "holdoutEnd": now.isoformat()}
    fit = fitted(http, h, body)
    assert fit["state"] == "SUCCEEDED", fit
    assert fit["customers"] == CUSTOMERS_SIMULATED  # everyone bought before the end
    bgnbd, spend = fit["bgnbd"], fit["gammaGamma"]
    truth = {"r": R, "alpha": ALPHA, "a": A, "b": B}
    errors = {k: abs(math.log(bgnbd[k] / v)) for k, v in truth.items()}
    assert all(errors[k] < TOLERANCE[k] for k in truth), (errors, bgnbd)
    mean = spend["p"] * spend["gamma"] / (spend["q"] - 1)
    assert abs(mean / (P * GAMMA / (Q - 1)) - 1) < SPEND_MEAN_TOLERANCE, spend

    validation = fit["validation"]
    totals = validation["totals"]
    # The holdout total is a sum over 3,000 customers: its relative spread is a few percent.
    assert abs(totals["predicted"] / totals["actual"] - 1) < 0.15, totals
    assert [g["repeatPurchases"] for g in validation["byFrequency"]][:2] == ["0", "1"]
    assert sum(g["customers"] for g in validation["byFrequency"]) == CUSTOMERS_SIMULATED
    weekly = validation["cumulative"]
    assert len(weekly) == 26 and weekly[-1]["actual"] == totals["actual"]
    assert all(a["predicted"] <= b["predicted"] for a, b in itertools.pairwise(weekly))
    assert validation["meanAbsoluteError"] > 0

    page = http.get(f"{MODELS}/{fit['id']}", headers={**h, "Accept": "text/html"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.text.count("<svg") == 2

    # Same data, same fit: deterministic.
    again = fitted(http, h, body)
    assert again["bgnbd"] == bgnbd

    # Refused before queueing: a holdout not after the calibration end, a future end.
    bad = {"calibrationEnd": now.isoformat(), "holdoutEnd": calibration_end.isoformat()}
    assert http.post(MODELS, json=bad, headers=h).status_code == 422
    future = {"calibrationEnd": (now + timedelta(days=1)).isoformat()}
    assert http.post(MODELS, json=future, headers=h).status_code == 422


def test_an_empty_filter_set_is_refused_as_its_schema_says(
    http: httpx.Client, auth: TokenFactory
) -> None:
    """`filters: {}` is a 422 naming `filters` (it once made the fit's SQL invalid, and the
    fitter retried that fit forever, ahead of every organization's); leaving filters out
    fits everyone."""
    h = auth()
    refused = http.post(MODELS, json={"filters": {}}, headers=h)
    assert refused.status_code == 422, refused.text
    assert any(e["field"].startswith("filters") for e in refused.json()["errors"]), refused.text
    assert fitted(http, h, {})["state"] in {"SUCCEEDED", "FAILED"}
