"""Field-level access: without the personal-data permission, customers are masked wherever
they are shown."""

from __future__ import annotations

from typing import Any

import httpx

from tests.e2e.conftest import TokenFactory
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
