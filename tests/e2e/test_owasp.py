"""The OWASP API Security Top 10 (2023) items not covered by a module of their own:

- API1 object-level authorization: every route that takes an id answers 404 for another
  organization's object, whatever the caller's role;
- API3 property-level: server-owned properties cannot be mass-assigned;
- API4 resource consumption: page sizes are bounded (rate and body limits: test_limits.py);
- API8 injection: SQL and JSON payloads in strings, filters and criteria are data.

API2 authentication: test_tokens.py, test_customers_api.py; API5 function-level
authorization: test_authorization.py; masking (API3 exposure): test_masking.py.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from tests.e2e.conftest import TokenFactory, new_customer
from tests.e2e.test_authorization import routes
from tests.e2e.test_customers_api import assert_problem
from tests.e2e.test_membership_api import CUSTOMERS, add_customer, new_segment
from tests.e2e.test_segments_api import segment

BODIES: dict[str, Any] = {
    "/api/v1/customers/{id}": new_customer(),
    "/api/v1/customers/{id}/consent": {"consents": {"marketing": True}},
    "/api/v1/customers/{id}/email/verify": {"token": "t"},
    "/api/v1/customers/{id}/active-orders": {"activeOrders": 1},
    "/api/v1/customers/{id}/track": {"type": "LOGOUT"},
    "/api/v1/customers/segments/{segment_id}": segment(),
    "/api/v1/customers/segments/{segment_id}/members": {"add": []},
}


def test_another_organizations_objects_are_not_found(
    http: httpx.Client, auth: TokenFactory, migrated: Any
) -> None:
    owner = auth()
    victim = add_customer(http, owner)
    victim_segment = new_segment(http, owner, kind="STATIC", criteria=None)
    job = http.post(f"{CUSTOMERS}/segments/{victim_segment['id']}/calculate", headers=owner)
    key = http.post("/api/v1/api-keys", json={"name": "k", "roles": ["analyst"]}, headers=owner)
    fit = http.post(f"{CUSTOMERS}/analytics/models", json={}, headers=owner)
    ids = {
        "customer_id": victim["id"],
        "id": victim["id"],
        "segment_id": victim_segment["id"],
        "job_id": job.json()["id"],
        "key_id": key.json()["id"],
        "fit_id": fit.json()["id"],
    }
    intruder = auth("admin", org_id=f"intruder-{uuid.uuid4().hex[:6]}")
    checked = 0
    for method, path, _ in routes(migrated):
        if "{" not in path:
            continue
        url = path
        for name, value in ids.items():
            url = url.replace("{" + name + "}", value)
        body = BODIES.get(path, {}) if method in {"POST", "PUT", "PATCH"} else None
        response = http.request(method, url, json=body, headers=intruder)
        assert response.status_code == 404, (method, path, response.status_code, response.text)
        checked += 1
    assert checked >= 20
    # And the owner still has everything.
    assert http.get(f"{CUSTOMERS}/{victim['id']}", headers=owner).status_code == 200


def test_server_owned_properties_cannot_be_assigned(http: httpx.Client, auth: TokenFactory) -> None:
    h = auth()
    for field, value in {
        "id": str(uuid.uuid4()),
        "version": 99,
        "createdAt": "2000-01-01T00:00:00Z",
        "segments": ["vip"],
        "status": "SUSPENDED",
        "activeOrders": 5,
    }.items():
        assert_problem(
            http.post(CUSTOMERS, json={**new_customer(), field: value}, headers=h), 422, field
        )
    cid = add_customer(http, h)["id"]
    # An update takes them back as GET showed them, never to change them: another id or
    # creation time is refused, another version is a stale If-Match, segments are ignored.
    for field in ("id", "createdAt", "segments"):
        body = {**new_customer(), field: 1}
        assert_problem(http.put(f"{CUSTOMERS}/{cid}", json=body, headers=h), 422, field)
    stale = {**new_customer(), "version": 99}
    assert_problem(http.put(f"{CUSTOMERS}/{cid}", json=stale, headers=h), 412)
    joined = {**new_customer(), "segments": [str(uuid.uuid4())]}
    assert http.put(f"{CUSTOMERS}/{cid}", json=joined, headers=h).json()["segments"] == []
    bad = {**segment(), "customerCount": 10**6}
    assert_problem(http.post(f"{CUSTOMERS}/segments", json=bad, headers=h), 422, "customerCount")


def test_page_sizes_are_bounded(http: httpx.Client, auth: TokenFactory) -> None:
    h = auth()
    for url in (CUSTOMERS, f"{CUSTOMERS}/segments", "/api/v1/privacy/requests"):
        assert_problem(http.get(url, params={"limit": 501}, headers=h), 422, "limit")


def test_injection_payloads_are_data(http: httpx.Client, auth: TokenFactory) -> None:
    h = auth()
    payloads = [
        "' OR '1'='1",
        "x'; DROP TABLE customers_view; --",
        '{"$gt": ""}',
        "\\u0027 UNION SELECT email FROM customers_view --",
    ]
    mine = add_customer(http, h, name=payloads[1], tags=["safe"])
    assert http.get(f"{CUSTOMERS}/{mine['id']}", headers=h).json()["name"] == payloads[1]
    for text in payloads:
        for params in ({"q": text}, {"city": text}, {"country": "ES", "tag": "safe", "q": text}):
            response = http.get(CUSTOMERS, params=params, headers=h)
            assert response.status_code in {200, 422}, (params, response.text)
            if response.status_code == 200:
                assert all(c["id"] == mine["id"] for c in response.json()["items"])
        criteria = {
            "geographic": {"cities": [text]},
            "customRules": [{"field": "city", "operator": "contains", "value": text}],
        }
        preview = http.post(f"{CUSTOMERS}/segments/preview", json={"criteria": criteria}, headers=h)
        assert preview.status_code == 200 and preview.json()["count"] == 0, preview.text
    # The table the payload names is intact.
    assert http.get(f"{CUSTOMERS}/{mine['id']}", headers=h).status_code == 200


def test_headers_that_become_data_are_bounded(http: httpx.Client, auth: TokenFactory) -> None:
    """Idempotency-Key is stored: a control character in it is a 422 naming it (a NUL cannot
    cross HTTP; over gRPC, test_grpc_parity). Request and correlation ids are logged and
    echoed: one that is not a short plain token is replaced, not repeated."""
    h = auth()
    raw = [(k.encode(), v.encode()) for k, v in h.items()] + [(b"Idempotency-Key", b"k\x85")]
    odd = http.post(CUSTOMERS, json=new_customer(), headers=raw)
    assert_problem(odd, 422, "Idempotency-Key")
    long = http.post(CUSTOMERS, json=new_customer(), headers={**h, "Idempotency-Key": "k" * 256})
    assert_problem(long, 422, "idempotency-key")
    given = {"X-Request-ID": "r" * 5000, "X-Correlation-ID": "<script>"}
    answer = http.get(CUSTOMERS, headers={**h, **given})
    assert answer.status_code == 200
    assert answer.headers["X-Request-Id"] != given["X-Request-ID"]
    assert answer.headers["X-Correlation-ID"] == answer.headers["X-Request-Id"]
