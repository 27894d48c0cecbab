"""Every customer endpoint and rule, through the REST gateway over real HTTP."""

from __future__ import annotations

import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import jwt
import pytest

from domain.customer import Customer
from eventstore.application import Customers
from service.settings import Settings
from tests.e2e.conftest import TokenFactory, new_customer

API = "/api/v1/customers"


def create(http: httpx.Client, headers: dict[str, str], **overrides: Any) -> httpx.Response:
    response = http.post(API, json=new_customer(**overrides), headers=headers)
    assert response.status_code == 201, response.text
    return response


def read(http: httpx.Client, headers: dict[str, str], created: httpx.Response) -> httpx.Response:
    token = created.headers["X-Consistency-Token"]
    return http.get(created.headers["Location"], headers={**headers, "X-Consistency-Token": token})


def assert_problem(response: httpx.Response, status: int, field: str | None = None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status and body["title"] and body["detail"]
    if field is not None:
        assert field in {e["field"] for e in body["errors"]}, body


def test_create_then_read_your_write(http: httpx.Client, auth: TokenFactory) -> None:
    body = new_customer()
    created = http.post(API, json=body, headers=auth())
    assert created.status_code == 201
    customer = created.json()
    assert created.headers["Location"] == f"{API}/{customer['id']}"
    assert created.headers["ETag"] == '"1"'
    assert int(created.headers["X-Consistency-Token"]) > 0
    assert customer["email"] == body["email"]
    assert customer["location"]["country"] == "Spain"
    assert customer["location"]["countryCode"] == "ES"
    assert customer["status"] == "ACTIVE" and customer["version"] == 1
    assert customer["tags"] == ["premium", "vip"]
    assert customer["metadata"]["referralSource"] == "google_ads"

    fetched = read(http, auth(), created)
    assert fetched.status_code == 200
    assert fetched.json() == customer
    assert fetched.headers["ETag"] == '"1"'


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"email": "nope"}, "email"),
        ({"age": 151}, "age"),
        ({"age": -3}, "age"),
        ({"gender": "X"}, "gender"),
        ({"location": {"country": "Narnia"}}, "location"),
        ({"location": {"country": "ES", "timezone": "Europe/Nowhere"}}, "location.timezone"),
        ({"preferences": {"dataProcessingConsent": True}}, "preferences.marketingConsent"),
        ({"preferences": {"marketingConsent": True}}, "preferences.dataProcessingConsent"),
        ({"name": ""}, "name"),
        ({"unknownField": 1}, "unknownField"),
    ],
)
def test_invalid_input_is_a_422_naming_the_field(
    http: httpx.Client, auth: TokenFactory, overrides: dict[str, Any], field: str
) -> None:
    response = http.post(API, json=new_customer(**overrides), headers=auth())
    assert_problem(response, 422, field)


def test_validation_errors_do_not_echo_personal_data(
    http: httpx.Client, auth: TokenFactory
) -> None:
    response = http.post(API, json=new_customer(email="secret.person@@x"), headers=auth())
    assert_problem(response, 422, "email")
    assert "secret.person" not in response.text


def test_email_unique_per_org_case_insensitively(http: httpx.Client, auth: TokenFactory) -> None:
    email = f"Unique.{uuid.uuid4().hex[:6]}@Example.com"
    create(http, auth(), email=email)
    assert_problem(
        http.post(API, json=new_customer(email=email.upper()), headers=auth()), 409, "email"
    )
    other_org = auth(org_id=f"other-{uuid.uuid4().hex[:6]}")
    assert http.post(API, json=new_customer(email=email), headers=other_org).status_code == 201


def test_fifty_concurrent_creates_with_one_email_yield_one_customer(
    http: httpx.Client, auth: TokenFactory
) -> None:
    body = new_customer()
    headers = auth()
    with ThreadPoolExecutor(max_workers=25) as pool:
        statuses = list(
            pool.map(lambda _: http.post(API, json=body, headers=headers).status_code, range(50))
        )
    assert statuses.count(201) == 1
    assert statuses.count(409) == 49


def test_idempotency_key_replays_first_answer(http: httpx.Client, auth: TokenFactory) -> None:
    headers = {**auth(), "Idempotency-Key": uuid.uuid4().hex}
    body = new_customer()
    first = http.post(API, json=body, headers=headers)
    again = http.post(API, json=body, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again.headers["X-Consistency-Token"] == first.headers["X-Consistency-Token"]
    different = http.post(API, json={**body, "name": "Someone Else"}, headers=headers)
    assert_problem(different, 422, "Idempotency-Key")


def test_concurrent_idempotent_retries_create_once(http: httpx.Client, auth: TokenFactory) -> None:
    headers = {**auth(), "Idempotency-Key": uuid.uuid4().hex}
    body = new_customer()
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda _: http.post(API, json=body, headers=headers), range(8)))
    assert {a.status_code for a in answers} == {201}
    assert len({a.json()["id"] for a in answers}) == 1


def test_full_update_with_if_match(http: httpx.Client, auth: TokenFactory) -> None:
    created = create(http, auth())
    url = created.headers["Location"]
    body = new_customer(email=created.json()["email"], name="Johnny", age=36, tags=["gold"])
    updated = http.put(url, json=body, headers={**auth(), "If-Match": '"1"'})
    assert updated.status_code == 200, updated.text
    assert updated.headers["ETag"] == '"2"'
    assert (updated.json()["name"], updated.json()["age"], updated.json()["tags"]) == (
        "Johnny",
        36,
        ["gold"],
    )
    stale = http.put(url, json=body | {"name": "Late"}, headers={**auth(), "If-Match": '"1"'})
    assert_problem(stale, 412)
    assert_problem(
        http.put(url, json=body, headers={**auth(), "If-Match": "yesterday"}), 422, "If-Match"
    )
    for odd in (b"\xb2", "99999999999"):
        odd_match = http.put(url, json=body, headers={**auth(), "If-Match": odd})
        assert_problem(odd_match, 422, "If-Match")
    fetched = http.get(
        url, headers={**auth(), "X-Consistency-Token": updated.headers["X-Consistency-Token"]}
    )
    assert fetched.json()["name"] == "Johnny" and fetched.json()["version"] == 2


def test_email_change_requires_verification(
    http: httpx.Client, auth: TokenFactory, migrated: Settings
) -> None:
    created = create(http, auth())
    url, old = created.headers["Location"], created.json()["email"]
    new = f"new.{uuid.uuid4().hex[:6]}@example.com"
    changed = http.put(url, json=new_customer(email=new), headers=auth())
    assert changed.status_code == 200
    assert changed.json()["email"] == old and changed.json()["pendingEmail"] == new
    assert "token" not in changed.text.lower()

    app = Customers(migrated, pool_size=1)
    try:
        customer = app.repository.get(uuid.UUID(created.json()["id"]))
        assert isinstance(customer, Customer) and customer.pending_token
        token = customer.pending_token
    finally:
        app.close()

    assert_problem(
        http.post(url + "/email/verify", json={"token": "wrong"}, headers=auth()), 422, "token"
    )
    verified = http.post(url + "/email/verify", json={"token": token}, headers=auth())
    assert verified.status_code == 200, verified.text
    assert verified.json()["email"] == new and verified.json()["pendingEmail"] is None
    # The old address is free again, the new one is taken.
    assert http.post(API, json=new_customer(email=old), headers=auth()).status_code == 201
    assert_problem(http.post(API, json=new_customer(email=new), headers=auth()), 409, "email")


def test_status_rules(http: httpx.Client, auth: TokenFactory) -> None:
    created = create(http, auth())
    url, body = created.headers["Location"], new_customer(email=created.json()["email"])
    manager = auth("manager")
    assert (
        http.put(url, json=body | {"status": "INACTIVE"}, headers=manager).json()["status"]
        == "INACTIVE"
    )
    assert (
        http.put(url, json=body | {"status": "ACTIVE"}, headers=manager).json()["status"]
        == "ACTIVE"
    )
    assert_problem(http.put(url, json=body | {"status": "SUSPENDED"}, headers=manager), 403)
    assert (
        http.put(url, json=body | {"status": "SUSPENDED"}, headers=auth("admin")).json()["status"]
        == "SUSPENDED"
    )
    assert_problem(http.put(url, json=body | {"status": "DELETED"}, headers=auth("admin")), 409)


def test_delete_rules(http: httpx.Client, auth: TokenFactory) -> None:
    created = create(http, auth())
    url, body = created.headers["Location"], new_customer(email=created.json()["email"])
    orders = http.put(url + "/active-orders", json={"activeOrders": 2}, headers=auth("service"))
    assert orders.status_code == 200 and orders.json()["activeOrders"] == 2
    assert_problem(http.delete(url, headers=auth()), 409)
    http.put(url + "/active-orders", json={"activeOrders": 0}, headers=auth("service"))
    deleted = http.delete(url, headers=auth())
    assert deleted.status_code == 204
    fetched = http.get(
        url, headers={**auth(), "X-Consistency-Token": deleted.headers["X-Consistency-Token"]}
    )
    assert fetched.json()["status"] == "DELETED"
    assert_problem(http.put(url, json=body, headers=auth()), 409)
    assert_problem(http.delete(url, headers=auth()), 409)
    # Lifecycle deletion frees the address for a new registration.
    assert http.post(API, json=body, headers=auth()).status_code == 201


def test_last_activity_moves_on_every_interaction(http: httpx.Client, auth: TokenFactory) -> None:
    created = create(http, auth())
    first = read(http, auth(), created).json()["lastActivity"]
    time.sleep(0.01)
    changed = http.put(
        created.headers["Location"],
        json=new_customer(email=created.json()["email"], name="Later"),
        headers=auth(),
    )
    second = http.get(
        created.headers["Location"],
        headers={**auth(), "X-Consistency-Token": changed.headers["X-Consistency-Token"]},
    )
    assert second.json()["lastActivity"] > first


def test_other_organizations_customers_are_invisible(
    http: httpx.Client, auth: TokenFactory
) -> None:
    created = create(http, auth())
    url = created.headers["Location"]
    stranger = auth(org_id=f"stranger-{uuid.uuid4().hex[:6]}")
    body = new_customer(email=created.json()["email"])
    assert_problem(
        http.get(
            url, headers={**stranger, "X-Consistency-Token": created.headers["X-Consistency-Token"]}
        ),
        404,
    )
    assert_problem(http.put(url, json=body, headers=stranger), 404)
    assert_problem(http.delete(url, headers=stranger), 404)


def test_unknown_and_malformed_ids(http: httpx.Client, auth: TokenFactory) -> None:
    assert_problem(http.put(f"{API}/{uuid.uuid4()}", json=new_customer(), headers=auth()), 404)
    assert_problem(http.put(f"{API}/not-a-uuid", json=new_customer(), headers=auth()), 422, "id")


def test_roles_are_enforced(http: httpx.Client, auth: TokenFactory) -> None:
    assert_problem(http.post(API, json=new_customer(), headers=auth("analyst")), 403)
    created = create(http, auth("manager"))
    assert_problem(
        http.put(
            created.headers["Location"] + "/active-orders",
            json={"activeOrders": 1},
            headers=auth("manager"),
        ),
        403,
    )


@pytest.mark.parametrize(
    "claims_change",
    ["expired", "wrong_audience", "wrong_issuer", "no_org", "bad_signature", "alg_none"],
)
def test_bad_tokens_are_401(http: httpx.Client, migrated: Settings, claims_change: str) -> None:
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": "x",
        "org": "acme",
        "roles": ["admin"],
        "iss": migrated.jwt_issuer,
        "aud": migrated.jwt_audience,
        "iat": now,
        "exp": now + 60,
    }
    secret, alg = migrated.jwt_secret or "", "HS256"
    if claims_change == "expired":
        claims["exp"] = now - 3600
    elif claims_change == "wrong_audience":
        claims["aud"] = "someone-else"
    elif claims_change == "wrong_issuer":
        claims["iss"] = "evil"
    elif claims_change == "no_org":
        del claims["org"]
    elif claims_change == "bad_signature":
        secret = "not-the-secret-but-long-enough-for-hs256-ok"
    token = (
        jwt.encode(claims, secret, algorithm=alg)
        if claims_change != "alg_none"
        else jwt.encode(claims, None, algorithm="none")
    )
    response = http.post(API, json=new_customer(), headers={"Authorization": f"Bearer {token}"})
    assert_problem(response, 401)


def test_missing_token_is_401(http: httpx.Client) -> None:
    assert_problem(http.post(API, json=new_customer()), 401)
    assert_problem(http.get(API), 401)


def test_health_ready_and_openapi(http: httpx.Client) -> None:
    assert http.get("/health").status_code == 200
    assert http.get("/ready").status_code == 200
    paths = http.get("/openapi.json").json()["paths"]
    assert {API, API + "/{id}", API + "/{id}/email/verify"} <= set(paths)
    assert "get" in paths[API] and "post" in paths[API]


def test_the_docs_work_offline_and_can_authorize(http: httpx.Client, auth: TokenFactory) -> None:
    """Swagger UI's page and assets come from the service (no CDN: a machine without internet
    access shows the docs), and the contract declares the bearer and API-key schemes, so
    "Authorize" then "Try it out" sends the token."""
    page = http.get("/docs")
    assert page.status_code == 200
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sources and all(s.startswith("/docs/") for s in sources), sources
    for source in sources:
        asset = http.get(source)
        assert asset.status_code == 200 and len(asset.content) > 500, source
    contract = http.get("/openapi.json").json()
    schemes = contract["components"]["securitySchemes"]
    assert schemes["bearer"] == {**schemes["bearer"], "type": "http", "scheme": "bearer"}
    assert schemes["apiKey"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert contract["security"] == [{"bearer": []}, {"apiKey": []}]
    assert contract["paths"]["/health"]["get"]["security"] == []
    token = auth()["Authorization"].removeprefix("Bearer ")
    assert http.get(API, headers={"Authorization": f"Bearer {token}"}).status_code == 200


def test_unstorable_text_is_a_422_not_a_stuck_projector(
    http: httpx.Client, auth: TokenFactory
) -> None:
    """PostgreSQL text cannot hold NUL: refused at the door, wherever it hides."""
    h = auth()
    assert_problem(http.post(API, json=new_customer(name="Ann\x00"), headers=h), 422, "name")
    custom = new_customer()
    custom["preferences"]["customPreferences"] = {"note": ["ok", "bad\x00"]}
    assert_problem(http.post(API, json=custom, headers=h), 422, "preferences.customPreferences")
    segment = {"name": "s", "ruleId": "r", "description": "\x00", "kind": "STATIC"}
    response = http.post("/api/v1/customers/segments", json=segment, headers=h)
    assert_problem(response, 422, "description")
    # Nothing half-written: the next customer is projected as usual.
    assert read(http, h, create(http, h)).status_code == 200


def test_nul_in_a_query_parameter_is_a_422(http: httpx.Client, auth: TokenFactory) -> None:
    response = http.get("/api/v1/customers", params={"tag": "a\x00b"}, headers=auth())
    assert response.status_code == 422
    assert [e["field"] for e in response.json()["errors"]] == ["tag"]


def test_ready_reports_every_follower_of_the_log(http: httpx.Client, auth: TokenFactory) -> None:
    create(http, auth())
    followers = {"customers_view", "segments_view", "segment_membership", "consent_ledger"}
    followers |= {"segment_membership_evaluator", "audit_writes"}

    def reported() -> set[str]:
        lags = http.get("/ready").json()["projections"]
        assert all(isinstance(v["lag"], int) and v["lag"] >= 0 for v in lags.values())
        return set(lags)

    deadline = time.monotonic() + 10
    while not followers <= reported():
        assert time.monotonic() < deadline, reported()
        time.sleep(0.05)


def test_a_method_a_path_does_not_have_is_a_405_naming_the_ones_it_has(
    http: httpx.Client, auth: TokenFactory
) -> None:
    """Literal segments win over parameters (`bulk/delete` is not a job id), and the methods
    of both apps behind the one port are known."""
    h = auth()
    wrong = http.get(f"{API}/bulk/delete", headers=h)
    assert_problem(wrong, 405)
    assert wrong.headers["Allow"] == "POST"
    listing = http.delete(API, headers=h)
    assert_problem(listing, 405)
    assert listing.headers["Allow"] == "GET, POST"
    one = http.patch(f"{API}/{uuid.uuid4()}/data", headers=h)
    assert_problem(one, 405)
    assert set(one.headers["Allow"].split(", ")) == {"GET", "DELETE"}
    assert_problem(http.get("/api/v1/nothing-here", headers=h), 404)
