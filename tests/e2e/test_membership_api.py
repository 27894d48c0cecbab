"""Segment membership end to end: calculation jobs, incremental joins and leaves, history,
preview, explain and static segments, through the REST gateway with the projector and the
segment engine running."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx

from tests.e2e.conftest import TokenFactory, new_customer
from tests.e2e.test_customers_api import assert_problem
from tests.e2e.test_segments_api import SEGMENTS, segment

CUSTOMERS = "/api/v1/customers"
SPAIN_30_TO_40 = {
    "demographics": {"ageRange": {"min": 30, "max": 40}},
    "geographic": {"countries": ["Spain"]},
}


def eventually(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll until `check()` returns something truthy (membership is asynchronous)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def created(http: httpx.Client, headers: dict[str, str], url: str, body: Any) -> dict[str, Any]:
    """POST `body`, expect 201, and wait until reads see the new resource."""
    response = http.post(url, json=body, headers=headers)
    assert response.status_code == 201, response.text
    token = {"X-Consistency-Token": response.headers["X-Consistency-Token"]}
    assert http.get(response.headers["Location"], headers={**headers, **token}).status_code == 200
    answer: dict[str, Any] = response.json()
    return answer


def add_customer(http: httpx.Client, headers: dict[str, str], **overrides: Any) -> dict[str, Any]:
    """Create a customer and wait until reads (hence segment facts) see it."""
    return created(http, headers, CUSTOMERS, new_customer(**overrides))


def new_segment(http: httpx.Client, headers: dict[str, str], **overrides: Any) -> dict[str, Any]:
    """Create a segment and wait until reads see it."""
    return created(http, headers, SEGMENTS, segment(**overrides))


def wait_job(http: httpx.Client, headers: dict[str, str], location: str) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        job: dict[str, Any] = http.get(location, headers=headers).json()
        return job if job["state"] in {"SUCCEEDED", "FAILED", "CANCELLED"} else None

    result: dict[str, Any] = eventually(finished)
    return result


def latest_job(http: httpx.Client, headers: dict[str, str], segment_id: str) -> dict[str, Any]:
    """Queue a calculation and wait for it: after it, every earlier change is reflected."""
    queued = http.post(f"{SEGMENTS}/{segment_id}/calculate", headers=headers)
    assert queued.status_code == 202, queued.text
    return wait_job(http, headers, queued.headers["Location"])


def members(
    http: httpx.Client, headers: dict[str, str], segment_id: str, **params: Any
) -> set[str]:
    seen: set[str] = set()
    cursor: str | None = None
    while True:
        query = {"limit": 2, **params, **({"cursor": cursor} if cursor else {})}
        page = http.get(f"{SEGMENTS}/{segment_id}/customers", params=query, headers=headers)
        assert page.status_code == 200, page.text
        body = page.json()
        seen |= {item["customerId"] for item in body["items"]}
        cursor = body["nextCursor"]
        if cursor is None:
            return seen


def test_calculation_job_fills_the_segment(http: httpx.Client, auth: TokenFactory) -> None:
    h = auth()
    inside = [add_customer(http, h, age=age)["id"] for age in (30, 35, 40)]
    outside = [add_customer(http, h, age=41)["id"], add_customer(http, h, age=29)["id"]]
    french = add_customer(http, h, age=35, location={"country": "France", "city": "Paris"})
    sid = new_segment(http, h, criteria=SPAIN_30_TO_40)["id"]

    job = latest_job(http, h, sid)
    assert job["state"] == "SUCCEEDED" and job["memberCount"] == 3, job
    assert members(http, h, sid) == set(inside)
    assert not set(outside) & members(http, h, sid) and french["id"] not in members(http, h, sid)
    shown = http.get(f"{SEGMENTS}/{sid}", headers=h).json()
    assert shown["status"] == "ACTIVE" and shown["customerCount"] == 3
    assert shown["lastCalculated"] is not None
    # Recalculating an unchanged base changes nothing.
    again = latest_job(http, h, sid)
    assert (again["joined"], again["left"], again["memberCount"]) == (0, 0, 3)
    page = http.get(f"{SEGMENTS}/{sid}/customers", headers=h).json()
    assert {i["joinReason"] for i in page["items"]} == {"criteria_change"}
    assert {i["customer"]["id"] for i in page["items"]} == set(inside)


def test_customer_changes_join_and_leave_incrementally(
    http: httpx.Client, auth: TokenFactory
) -> None:
    h = auth()
    sid = new_segment(http, h, criteria=SPAIN_30_TO_40)["id"]
    latest_job(http, h, sid)
    customer = add_customer(http, h, age=50)
    cid = customer["id"]
    url = f"{CUSTOMERS}/{cid}"

    def put(age: int) -> None:
        body = {**new_customer(age=age), "email": customer["email"]}
        assert http.put(url, json=body, headers=h).status_code == 200

    put(35)
    eventually(lambda: cid in members(http, h, sid))
    joined_at = datetime.now(UTC)
    now = http.get(f"{url}/segments", headers=h).json()["items"]
    assert [(s["segmentId"], s["joinReason"], s["active"]) for s in now] == [
        (sid, "customer_change", True)
    ]
    assert http.get(url, headers=h).json()["segments"] == [sid]
    listed = http.get(CUSTOMERS, headers=h).json()["items"]
    assert [c["segments"] for c in listed if c["id"] == cid] == [[sid]]

    put(60)
    eventually(lambda: cid not in members(http, h, sid))
    assert http.get(f"{url}/segments", headers=h).json()["items"] == []
    assert http.get(url, headers=h).json()["segments"] == []
    # History: one closed stint; the member as of a moment inside it.
    stints = http.get(f"{url}/segments", params={"history": "true"}, headers=h).json()["items"]
    assert len(stints) == 1 and stints[0]["leaveReason"] == "customer_change"
    assert stints[0]["joinedAt"] <= joined_at.isoformat() <= stints[0]["leftAt"]
    as_of = {"asOf": joined_at.isoformat()}
    assert cid in members(http, h, sid, **as_of)
    assert [
        s["segmentId"] for s in http.get(f"{url}/segments", params=as_of, headers=h).json()["items"]
    ] == [sid]
    assert http.get(f"{SEGMENTS}/{sid}", headers=h).json()["customerCount"] == 0

    # Deleting the customer is leaving too.
    put(35)
    eventually(lambda: cid in members(http, h, sid))
    assert http.delete(url, headers=h).status_code == 204
    eventually(lambda: cid not in members(http, h, sid))


def test_criteria_change_recalculates(http: httpx.Client, auth: TokenFactory) -> None:
    h = auth()
    young = add_customer(http, h, age=31)["id"]
    old = add_customer(http, h, age=39)["id"]
    created = new_segment(http, h, criteria=SPAIN_30_TO_40)
    sid = created["id"]
    eventually(lambda: members(http, h, sid) == {young, old})
    narrower = {**SPAIN_30_TO_40, "demographics": {"ageRange": {"min": 35, "max": 40}}}
    body = segment(name=created["name"], criteria=narrower)
    updated = http.put(f"{SEGMENTS}/{sid}", json=body, headers=h)
    assert updated.status_code == 200 and updated.json()["status"] == "CALCULATING"
    eventually(lambda: members(http, h, sid) == {old})
    stints = http.get(f"{CUSTOMERS}/{young}/segments", params={"history": "true"}, headers=h)
    assert [s["leaveReason"] for s in stints.json()["items"]] == ["criteria_change"]


def test_preview_and_explain(http: httpx.Client, auth: TokenFactory) -> None:
    h = auth()
    match = add_customer(http, h, age=33)
    add_customer(http, h, age=70)
    preview = http.post(
        f"{SEGMENTS}/preview", json={"criteria": SPAIN_30_TO_40, "sampleSize": 5}, headers=h
    )
    assert preview.status_code == 200, preview.text
    body = preview.json()
    assert body["count"] == 1 and [c["id"] for c in body["sample"]] == [match["id"]]
    bad = http.post(f"{SEGMENTS}/preview", json={"criteria": {"demographics": {}}}, headers=h)
    assert_problem(bad, 422, "criteria.demographics")

    sid = new_segment(http, h, criteria=SPAIN_30_TO_40)["id"]
    latest_job(http, h, sid)
    old = add_customer(http, h, age=70, location={"country": "France", "city": "Paris"})
    explained = http.get(f"{SEGMENTS}/{sid}/explain/{old['id']}", headers=h)
    assert explained.status_code == 200, explained.text
    verdicts = {c["criterion"]: c["holds"] for c in explained.json()["criteria"]}
    assert verdicts == {
        "status": True,
        "demographics.ageRange": False,
        "geographic.countries": False,
    }
    assert explained.json()["matches"] is False
    member = http.get(f"{SEGMENTS}/{sid}/explain/{match['id']}", headers=h).json()
    assert member["matches"] is True and member["member"] is True
    missing = http.get(f"{SEGMENTS}/{sid}/explain/{uuid.uuid4()}", headers=h)
    assert_problem(missing, 404)


def test_static_segment_members_are_assigned(http: httpx.Client, auth: TokenFactory) -> None:
    h = auth()
    a, b = add_customer(http, h)["id"], add_customer(http, h)["id"]
    created = new_segment(http, h, kind="STATIC", criteria=None)
    assert created["status"] == "ACTIVE"
    sid = created["id"]
    url = f"{SEGMENTS}/{sid}/members"
    assert http.post(url, json={"add": [a, b]}, headers=h).json() == {"joined": 2, "left": 0}
    assert http.post(url, json={"add": [a], "remove": [b]}, headers=h).json() == {
        "joined": 0,
        "left": 1,
    }
    eventually(lambda: members(http, h, sid) == {a})
    stints = http.get(f"{CUSTOMERS}/{b}/segments", params={"history": "true"}, headers=h)
    assert [(s["joinReason"], s["leaveReason"]) for s in stints.json()["items"]] == [
        ("manual", "manual")
    ]
    assert_problem(http.post(url, json={"add": [str(uuid.uuid4())]}, headers=h), 422, "add.0")
    other_org = add_customer(http, auth(org_id="other-" + uuid.uuid4().hex[:6]))["id"]
    assert_problem(http.post(url, json={"add": [other_org]}, headers=h), 422, "add.0")
    dynamic = new_segment(http, h)["id"]
    assert_problem(http.post(f"{SEGMENTS}/{dynamic}/members", json={"add": [a]}, headers=h), 409)


def test_deleting_a_segment_ends_its_memberships(http: httpx.Client, auth: TokenFactory) -> None:
    h = auth()
    cid = add_customer(http, h, age=35)["id"]
    sid = new_segment(http, h, criteria=SPAIN_30_TO_40)["id"]
    eventually(lambda: members(http, h, sid) == {cid})
    assert http.delete(f"{SEGMENTS}/{sid}", headers=h).status_code == 204
    eventually(lambda: http.get(f"{CUSTOMERS}/{cid}", headers=h).json()["segments"] == [])
    stints = http.get(f"{CUSTOMERS}/{cid}/segments", params={"history": "true"}, headers=h)
    assert [s["leaveReason"] for s in stints.json()["items"]] == ["segment_deleted"]


def test_jobs_of_unknown_segments_and_roles(http: httpx.Client, auth: TokenFactory) -> None:
    h = auth()
    assert_problem(http.post(f"{SEGMENTS}/{uuid.uuid4()}/calculate", headers=h), 404)
    sid = new_segment(http, h)["id"]
    assert_problem(http.get(f"{SEGMENTS}/{sid}/jobs/{uuid.uuid4()}", headers=h), 404)
    assert_problem(http.delete(f"{SEGMENTS}/{sid}/jobs/{uuid.uuid4()}", headers=h), 404)
    assert_problem(http.post(f"{SEGMENTS}/{sid}/calculate", headers=auth("viewer")), 403)
    # A finished job stays as it ended when cancelled late.
    job = latest_job(http, h, sid)
    late = http.delete(f"{SEGMENTS}/{sid}/jobs/{job['id']}", headers=h)
    assert late.status_code == 200 and late.json()["state"] == "SUCCEEDED"
