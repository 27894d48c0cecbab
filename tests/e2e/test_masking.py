"""Field-level access: without the personal-data permission, customers are masked wherever
they are shown, and no listing, export, report or preview filters, searches, sorts or builds
criteria on what is masked."""

from __future__ import annotations

from typing import Any

import httpx

from tests.e2e.conftest import TokenFactory
from tests.e2e.test_customers_api import assert_problem
from tests.e2e.test_membership_api import (
    CUSTOMERS,
    SPAIN_30_TO_40,
    add_customer,
    eventually,
    members,
    new_segment,
)

DEVICE = {
    "type": "mobile",
    "os": "iOS",
    "firstSeen": "2026-01-01T00:00:00Z",
    "lastSeen": "2026-01-02T00:00:00Z",
    "userAgent": "Secret/1.0",
}


def assert_masked(customer: dict[str, Any]) -> None:
    assert customer["email"] == "***" and customer["name"] == "***"
    assert customer["location"] == {"country": "Spain", "countryCode": "ES"}
    assert customer["metadata"]["deviceInfo"] == []
    assert customer["age"] == 35  # analytics stay


def test_analysts_see_masked_customers(http: httpx.Client, auth: TokenFactory) -> None:
    h, analyst = auth(), auth("analyst")
    customer = add_customer(http, h, age=35, metadata={"source": "web", "deviceInfo": [DEVICE]})
    cid = customer["id"]
    full = http.get(f"{CUSTOMERS}/{cid}", headers=auth("manager")).json()
    assert full["email"] == customer["email"] and full["metadata"]["deviceInfo"]

    assert_masked(http.get(f"{CUSTOMERS}/{cid}", headers=analyst).json())
    listed = http.get(CUSTOMERS, headers=analyst).json()["items"]
    assert_masked(next(c for c in listed if c["id"] == cid))
    sid = new_segment(http, h, criteria=SPAIN_30_TO_40)["id"]
    eventually(lambda: cid in members(http, h, sid))
    page = http.get(f"{CUSTOMERS}/segments/{sid}/customers", headers=analyst).json()
    assert_masked(page["items"][0]["customer"])
    preview = http.post(
        f"{CUSTOMERS}/segments/preview", json={"criteria": SPAIN_30_TO_40}, headers=analyst
    ).json()
    assert_masked(preview["sample"][0])
    text = str([listed, page, preview])
    assert customer["email"] not in text and "Secret/1.0" not in text


# A customer the attacks below try to read back: e-mail, city, postal code and position.
PLACED = {
    "country": "Spain",
    "city": "Madrid",
    "region": "Madrid",
    "postalCode": "28001",
    "latitude": 40.4168,
    "longitude": -3.7038,
}


def test_analysts_cannot_filter_search_or_sort_on_masked_fields(
    http: httpx.Client, auth: TokenFactory
) -> None:
    analyst = auth("analyst")
    customer = add_customer(http, auth(), location=PLACED)
    email = customer["email"]

    def listing(headers: dict[str, str], **query: Any) -> httpx.Response:
        return http.get(CUSTOMERS, params={"limit": 1, **query}, headers=headers)

    # The probes that rebuilt an e-mail a character at a time, ordered masked values, or
    # selected by city: refused before any customer is selected, naming the parameter.
    for query, parameter in (
        ({"q": email[0]}, "q"),
        ({"q": email}, "q"),
        ({"sort": "email"}, "sort"),
        ({"sort": "-name"}, "sort"),
        ({"city": "madrid"}, "city"),
        ({"country": "ES", "city": "Madrid"}, "city"),
    ):
        refused = listing(analyst, **query)
        assert_problem(refused, 403, parameter)
        assert email not in refused.text
    assert_problem(
        http.get(f"{CUSTOMERS}/export", params={"city": "Madrid"}, headers=analyst), 403, "city"
    )
    report = http.post(
        f"{CUSTOMERS}/reports", json={"filters": {"city": "Madrid"}}, headers=analyst
    )
    assert_problem(report, 403, "filters.city")

    # What an analyst sees unmasked still filters and sorts.
    shown = listing(analyst, country="ES", ageMin=30, sort="-createdAt")
    assert shown.status_code == 200 and shown.json()["items"][0]["id"] == customer["id"]
    allowed = http.post(
        f"{CUSTOMERS}/reports", json={"filters": {"country": "ES"}}, headers=analyst
    )
    assert allowed.status_code == 200, allowed.text

    # Roles that read the fields filter, search and sort on them as before.
    for role in ("manager", "support"):
        reader = auth(role)
        for query in ({"q": email[:5]}, {"sort": "email"}, {"city": "madrid"}):
            found = listing(reader, **query)
            assert found.status_code == 200, found.text
            assert found.json()["items"][0]["email"] == email
        export = http.get(f"{CUSTOMERS}/export", params={"city": "Madrid"}, headers=reader)
        assert export.status_code == 200 and email in export.text
        report = http.post(
            f"{CUSTOMERS}/reports", json={"filters": {"city": "Madrid"}}, headers=reader
        )
        assert report.status_code == 200, report.text


def test_analysts_cannot_preview_criteria_on_masked_fields(
    http: httpx.Client, auth: TokenFactory
) -> None:
    analyst, manager = auth("analyst"), auth("manager")
    cid = add_customer(http, auth(), location=PLACED)["id"]
    preview = f"{CUSTOMERS}/segments/preview"

    def rule(field: str, operator: str, value: Any) -> dict[str, Any]:
        return {"customRules": [{"field": field, "operator": operator, "value": value}]}

    # The bisection that found exact coordinates, and its kin: refused, naming the criterion.
    for criteria, path in (
        (rule("latitude", "greater_than", 40.0), "criteria.customRules.0"),
        (rule("longitude", "between", [-4, -3]), "criteria.customRules.0"),
        (rule("postalCode", "starts_with", "28"), "criteria.customRules.0"),
        (rule("city", "equals", "Madrid"), "criteria.customRules.0"),
        ({"geographic": {"postalCodes": ["28001"]}}, "criteria.geographic.postalCodes"),
        ({"geographic": {"cities": ["Madrid"]}}, "criteria.geographic.cities"),
        ({"geographic": {"regions": ["Madrid"]}}, "criteria.geographic.regions"),
        (
            {"geographic": {"distanceFrom": {"latitude": 40.4, "longitude": -3.7, "radiusKm": 5}}},
            "criteria.geographic.distanceFrom",
        ),
        (
            {**SPAIN_30_TO_40, **rule("latitude", "less_than", 41)},
            "criteria.customRules.0",
        ),
    ):
        refused = http.post(preview, json={"criteria": criteria}, headers=analyst)
        assert_problem(refused, 403, path)
        allowed = http.post(preview, json={"criteria": criteria}, headers=manager)
        assert allowed.status_code == 200, allowed.text
        assert allowed.json()["count"] == 1 and allowed.json()["sample"][0]["id"] == cid

    # Criteria on what the analyst sees unmasked still preview.
    shown = http.post(preview, json={"criteria": SPAIN_30_TO_40}, headers=analyst)
    assert shown.status_code == 200 and shown.json()["count"] == 1
