"""Reports end to end: every section over a small known population (statuses, countries,
sources, acquisition months, activity months, purchases in two currencies, a deleted customer
left out), a segment's members and listing filters as selections, the CSV and HTML renderings
(aggregates only), RFM and churn risk from a fitted model, and the refusals."""

from __future__ import annotations

import csv
import io
import random
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg

from service.settings import Settings
from tests.e2e.conftest import EMAIL, TEST_NAMES, TokenFactory, new_customer
from tests.e2e.test_customers_api import assert_problem
from tests.e2e.test_insights_api import fitted
from tests.e2e.test_membership_api import (
    CUSTOMERS,
    SEGMENTS,
    add_customer,
    created,
    eventually,
    members,
    new_segment,
)
from tests.e2e.test_tracking_api import BATCH, page_view, purchase

REPORTS = f"{CUSTOMERS}/reports"
TOKEN = "X-Consistency-Token"


def month_start(moment: datetime, back: int = 0) -> datetime:
    """First instant (UTC) of the calendar month `back` months before `moment`'s."""
    years, index = divmod(moment.month - 1 - back, 12)
    return moment.replace(
        year=moment.year + years, month=index + 1, day=1, hour=0, minute=0, second=0, microsecond=0
    )


def key(month: datetime) -> str:
    return month.strftime("%Y-%m")


def day(month: datetime, n: int) -> datetime:
    """Noon of day n of the month."""
    return month + timedelta(days=n - 1, hours=12)


def bought(cid: str, amount: float, currency: str, when: datetime | None) -> dict[str, Any]:
    event = purchase(amount, customerId=cid)
    event["data"]["currency"] = currency
    if when is not None:
        event["timestamp"] = when.isoformat()
    return event


def backdate(settings: Settings, created_at: dict[str, datetime]) -> None:
    """Move customers' creation into past months, in the read model the report reads (the
    API creates customers now; no later customer event rewrites these rows in the test)."""
    with psycopg.connect(str(settings.database_url)) as conn:
        for cid, at in created_at.items():
            for table in ("customers_view", "segment_facts"):
                conn.execute(
                    f"UPDATE {table} SET created_at = %s WHERE id = %s",
                    (at, cid),
                )


def report(
    http: httpx.Client, headers: dict[str, str], body: dict[str, Any] | None = None
) -> dict[str, Any]:
    answer = http.post(REPORTS, json=body or {}, headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/json")
    result: dict[str, Any] = answer.json()
    return result


def test_report_sections_selections_and_renderings(
    http: httpx.Client, auth: TokenFactory, migrated: Settings
) -> None:
    h = auth()
    now = datetime.now(UTC)
    m0, m1, m2, m4 = (month_start(now, back) for back in (0, 1, 2, 4))

    bodies = {
        "c1": new_customer(tags=["vip", "premium"]),  # Spain, Madrid, source website
        "c2": new_customer(
            tags=["vip"],
            location={"country": "ES", "city": "Barcelona"},
            metadata={"source": "Store"},
        ),
        "c3": new_customer(tags=[], location={"country": "France", "city": "Paris"}),
        "c4": new_customer(
            tags=[], location={"country": "DE", "city": "Berlin"}, metadata={"referralSource": "x"}
        ),
        "c5": new_customer(tags=[]),  # made INACTIVE below
        "c6": new_customer(),  # deleted below
        "c7": new_customer(),  # created before the reported months
    }
    made = {name: created(http, h, CUSTOMERS, body) for name, body in bodies.items()}
    c = {name: customer["id"] for name, customer in made.items()}

    events = [
        bought(c["c1"], 10, "EUR", day(m2, 20)),
        bought(c["c1"], 30, "EUR", day(m1, 5)),
        bought(c["c2"], 100, "EUR", day(m2, 18)),
        page_view(customerId=c["c2"]),  # now
        bought(c["c3"], 50, "USD", day(m1, 12)),
        bought(c["c4"], 20, "EUR", None),  # now
        page_view(customerId=c["c5"]),
        bought(c["c6"], 1000, "EUR", day(m1, 3)),
    ]
    tracked = http.post(BATCH, json={"events": events}, headers=h)
    assert tracked.status_code == 202, tracked.text

    # A static segment: c1, c3 and c6 (deleted below, so left out).
    sid = new_segment(http, h, kind="STATIC", criteria=None)["id"]
    added = http.post(
        f"{SEGMENTS}/{sid}/members", json={"add": [c["c1"], c["c3"], c["c6"]]}, headers=h
    )
    assert added.status_code == 200, added.text
    eventually(lambda: members(http, h, sid) >= {c["c1"], c["c3"]})

    inactive = {**bodies["c5"], "email": made["c5"]["email"], "status": "INACTIVE"}
    assert http.put(f"{CUSTOMERS}/{c['c5']}", json=inactive, headers=h).status_code == 200
    deleted = http.delete(f"{CUSTOMERS}/{c['c6']}", headers=h)
    assert deleted.status_code == 204, deleted.text
    h_seen = {**h, TOKEN: deleted.headers[TOKEN]}
    backdate(
        migrated,
        {
            c["c1"]: day(m2, 15),
            c["c2"]: day(m2, 16),
            c["c3"]: day(m1, 10),
            c["c7"]: day(m4, 15),
        },
    )

    body = {"from": m2.isoformat()}
    first = eventually(
        lambda: (r := report(http, h_seen, body))["lifetimeValue"]["buyers"] == 4 and r
    )
    assert first["report"]["from"] == m2.isoformat().replace("+00:00", "Z")
    assert first["report"]["segmentId"] is None and first["report"]["filters"] is None
    assert first["report"]["model"] is None
    assert first["customers"] == {
        "total": 5,
        "byStatus": {"ACTIVE": 4, "INACTIVE": 1, "SUSPENDED": 0, "ANONYMIZED": 0},
        "byCountry": {"ES": 3, "FR": 1, "DE": 1},
        "bySource": {"website": 3, "api": 1, "store": 1},  # api: the default source
    }
    assert list(first["acquisition"]["byMonth"].items()) == [
        (key(m2), 2),
        (key(m1), 1),
        (key(m0), 2),
    ]
    assert first["retention"] == {
        "byCohort": {
            key(m2): {"size": 2, "active": [2, 1, 1], "shares": [1.0, 0.5, 0.5]},
            key(m1): {"size": 1, "active": [1, 0], "shares": [1.0, 0.0]},
            key(m0): {"size": 2, "active": [2], "shares": [1.0]},
        }
    }
    # EUR totals 40 (c1), 100 (c2), 20 (c4); c3's USD left out; c6 deleted.
    assert first["lifetimeValue"] == {
        "currency": "EUR",
        "buyers": 4,
        "customers": 3,
        "excludedOtherCurrencies": 1,
        "percentiles": {
            "p10": 24.0,
            "p25": 30.0,
            "p50": 40.0,
            "p75": 70.0,
            "p90": 88.0,
            "p99": 98.8,
        },
        "mean": 53.33,
    }
    for section, values in (("rfm", "segments"), ("churnRisk", "buckets")):
        assert first[section][values] is None and first[section]["buyers"] is None
        assert "no model is fitted" in first[section]["reason"]

    # Default period: the 12 months before now (13 calendar months), c7 included.
    default = report(http, h)
    months = list(default["acquisition"]["byMonth"])
    assert len(months) == 13 and months[-1] == key(m0) and months[0] == key(month_start(now, 12))
    assert default["customers"]["total"] == 6
    assert default["acquisition"]["byMonth"][key(m4)] == 1
    assert sum(default["acquisition"]["byMonth"].values()) == 6
    cohorts = default["retention"]["byCohort"]
    assert [len(v["active"]) for v in cohorts.values()] == list(range(13, 0, -1))
    assert cohorts[key(m4)] == {"size": 1, "active": [0] * 5, "shares": [0.0] * 5}
    assert cohorts[months[0]]["shares"] == [None] * 13  # an empty cohort
    assert report(http, h, {"to": day(m1, 1).isoformat()})["customers"]["total"] == 3

    # The segment: c1 (40 EUR) and c3 (50 USD); one each, so the first by name counts.
    in_segment = report(http, h, {**body, "segmentId": sid})
    assert in_segment["report"]["segmentId"] == sid
    assert in_segment["customers"]["total"] == 2
    assert in_segment["customers"]["byCountry"] == {"ES": 1, "FR": 1}
    assert in_segment["acquisition"]["byMonth"] == {key(m2): 1, key(m1): 1, key(m0): 0}
    value = in_segment["lifetimeValue"]
    assert (value["currency"], value["customers"], value["excludedOtherCurrencies"]) == (
        "EUR",
        1,
        1,
    )
    assert value["percentiles"]["p10"] == value["mean"] == 40.0

    # Filters: those of GET /customers.
    vip = report(http, h, {**body, "filters": {"country": "Spain", "tags": ["vip"]}})
    assert vip["report"]["filters"] == {"country": "ES", "tags": ["vip"]}
    assert vip["customers"]["total"] == 2
    assert vip["acquisition"]["byMonth"] == {key(m2): 2, key(m1): 0, key(m0): 0}
    assert vip["lifetimeValue"]["percentiles"]["p50"] == 70.0
    madrid = report(http, h, {**body, "filters": {"city": "MADRID"}})
    assert madrid["customers"]["byStatus"] == {
        "ACTIVE": 1,
        "INACTIVE": 1,
        "SUSPENDED": 0,
        "ANONYMIZED": 0,
    }
    inactive_only = report(http, h, {**body, "filters": {"status": "INACTIVE", "ageMin": 30}})
    assert inactive_only["customers"]["total"] == 1
    assert report(http, h, {**body, "filters": {"ageMax": 20}})["customers"]["total"] == 0

    # CSV: one row per value of the JSON.
    as_csv = http.post(REPORTS, json=body, headers={**h, "Accept": "text/csv"})
    assert as_csv.status_code == 200, as_csv.text
    assert as_csv.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(as_csv.text)))
    assert rows[0] == ["section", "key", "value"]
    assert {
        ("customers", "total", "5"),
        ("customers", "byCountry.ES", "3"),
        ("acquisition", f"byMonth.{key(m2)}", "2"),
        ("retention", f"byCohort.{key(m2)}.shares.1", "0.5"),
        ("lifetimeValue", "currency", "EUR"),
        ("lifetimeValue", "percentiles.p50", "40.0"),
        ("rfm", "segments", ""),
    } <= {tuple(r) for r in rows}

    # HTML: a page with charts and nothing that identifies a customer.
    page = http.post(
        REPORTS, json=body, headers={**h, "Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    )
    assert page.status_code == 200, page.text
    assert page.headers["content-type"].startswith("text/html")
    text = page.text
    assert text.startswith("<!DOCTYPE html>") and text.count("<svg") >= 5
    assert not [tag for tag in ("<script", "<link", "src=", "href=") if tag in text]
    assert not EMAIL.findall(text)
    assert not [n for n in TEST_NAMES if n in text]
    assert not [cid for cid in c.values() if cid in text]
    assert not [m["email"] for m in made.values() if m["email"] in text]


def test_report_refusals(http: httpx.Client, auth: TokenFactory) -> None:
    h = auth()
    sid = new_segment(http, h, kind="STATIC", criteria=None)["id"]
    now = datetime.now(UTC)
    later = (now + timedelta(days=1)).isoformat()
    for body, field in (
        ({"segmentId": sid, "filters": {"city": "Madrid"}}, "filters"),
        ({"from": now.isoformat(), "to": now.isoformat()}, "to"),
        ({"from": later, "to": now.isoformat()}, "to"),
        ({"from": later}, "to"),  # to defaults to now
        ({"from": "2026-01-01T00:00:00"}, "from"),  # no time zone
        ({"from": "1980-01-01T00:00:00Z"}, "from"),  # more than 120 months
        ({"from": "0001-01-01T00:00:00Z"}, "from"),
        ({"filters": {"colour": "red"}}, "filters.colour"),
        ({"filters": {"country": "Atlantis"}}, "filters.country"),
        ({"filters": {"status": "DELETED"}}, "filters.status"),
        ({"filters": {"ageMin": 40, "ageMax": 30}}, "filters.ageMax"),
        ({"filters": {"tags": [""]}}, "filters.tags.0"),
        ({"segment": sid}, "segment"),
        ({"segmentId": "not-a-uuid"}, "segmentId"),
    ):
        assert_problem(http.post(REPORTS, json=body, headers=h), 422, field)

    other = auth(org_id=f"org-{uuid.uuid4().hex[:10]}")
    foreign = new_segment(http, other, kind="STATIC", criteria=None)["id"]
    assert_problem(http.post(REPORTS, json={"segmentId": foreign}, headers=h), 404)
    assert_problem(http.post(REPORTS, json={"segmentId": str(uuid.uuid4())}, headers=h), 404)
    assert http.post(REPORTS, json={"segmentId": foreign}, headers=other).status_code == 200
    assert_problem(http.post(REPORTS, json={}), 401)
    # Every role reads; an empty organization gets an empty, well-formed report.
    empty = report(http, auth("analyst"))
    assert empty["customers"]["total"] == 0
    assert empty["lifetimeValue"]["currency"] is None
    assert set(empty["lifetimeValue"]["percentiles"].values()) == {None}
    assert http.post(REPORTS, headers=h).status_code == 200  # no body: all customers


def test_rfm_and_churn_risk_from_the_fitted_model(http: httpx.Client, auth: TokenFactory) -> None:
    h = auth()
    now = datetime.now(UTC)
    ids = [add_customer(http, h)["id"] for _ in range(45)]
    idle = add_customer(http, h)["id"]  # no purchase: not a buyer
    rng = random.Random(20240601)
    events: list[dict[str, Any]] = []
    for cid in ids:  # every one buys at least once (see test_insights_api)
        when = now - timedelta(days=rng.uniform(30, 360))
        rate, dropout = rng.gammavariate(2.0, 1 / 60), rng.uniform(0.05, 0.5)
        while when < now:
            events.append(bought(cid, round(rng.uniform(10, 90), 2), "EUR", when))
            if rng.random() < dropout:
                break
            when += timedelta(days=rng.expovariate(rate))
    assert http.post(BATCH, json={"events": events}, headers=h).status_code == 202
    model = fitted(http, h, {})
    assert model["state"] == "SUCCEEDED", model
    result = report(http, h)
    assert result["report"]["model"] == {
        "id": model["id"],
        "calibrationEnd": model["calibrationEnd"].replace("+00:00", "Z"),
        "customers": 45,
        "currency": "EUR",
    }
    assert result["customers"]["total"] == 46
    assert result["lifetimeValue"]["customers"] == 45
    rfm, churn = result["rfm"], result["churnRisk"]
    assert rfm["reason"] is None and churn["reason"] is None
    assert rfm["buyers"] == churn["buyers"] == 45
    assert sum(rfm["segments"].values()) == 45 and len(rfm["segments"]) == 11
    assert sum(churn["buckets"].values()) == 45 and set(churn["buckets"]) == {
        "low",
        "medium",
        "high",
    }
    # The same scores as each customer's insights.
    insights = [http.get(f"{CUSTOMERS}/{cid}/insights", headers=h).json() for cid in ids]
    segments = Counter(i["rfm"]["segment"] for i in insights)
    assert {k: v for k, v in rfm["segments"].items() if v} == dict(segments)
    risks = [1 - i["probabilityAlive"] for i in insights]
    assert churn["buckets"] == {
        "low": sum(r < 0.3 for r in risks),
        "medium": sum(0.3 <= r <= 0.7 for r in risks),
        "high": sum(r > 0.7 for r in risks),
    }
    assert http.get(f"{CUSTOMERS}/{idle}/insights", headers=h).json()["rfm"] is None

    page = http.post(REPORTS, json={}, headers={**h, "Accept": "text/html"})
    assert page.status_code == 200 and "buyers scored" in page.text
    assert page.text.count("<svg") == 8
