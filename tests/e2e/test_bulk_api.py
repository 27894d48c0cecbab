"""Bulk operations end to end: a patch, deletions and static segment membership applied to
ids, filters or a segment's members as jobs; per-customer failures reported exactly, the rest
applied; dry runs; the requests refused with the field named."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from tests.e2e.conftest import TokenFactory, new_customer
from tests.e2e.test_customers_api import assert_problem
from tests.e2e.test_membership_api import (
    CUSTOMERS,
    add_customer,
    eventually,
    members,
    new_segment,
)

BULK = f"{CUSTOMERS}/bulk"


def finished(http: httpx.Client, h: dict[str, str], path: str, body: Any) -> dict[str, Any]:
    started = http.post(f"{BULK}/{path}", json=body, headers=h)
    assert started.status_code == 202, started.text
    assert started.json()["state"] == "QUEUED"

    def done() -> dict[str, Any] | None:
        job: dict[str, Any] = http.get(started.headers["Location"], headers=h).json()
        return job if job["state"] in {"SUCCEEDED", "FAILED"} else None

    job: dict[str, Any] = eventually(done, timeout=30)
    return job


def report(http: httpx.Client, h: dict[str, str], job: dict[str, Any]) -> list[dict[str, Any]]:
    answer = http.get(f"{BULK}/{job['id']}/report", headers=h)
    assert answer.status_code == 200
    return [httpx.Response(200, content=line).json() for line in answer.content.splitlines()]


def customer(http: httpx.Client, h: dict[str, str], cid: str) -> dict[str, Any]:
    answer: dict[str, Any] = http.get(f"{CUSTOMERS}/{cid}", headers=h).json()
    return answer


def test_a_patch_applies_to_ids_and_reports_each_failure(
    http: httpx.Client, auth: TokenFactory
) -> None:
    admin, manager = auth(), auth("manager")
    ok = [add_customer(http, admin, tags=["old", "keep"])["id"] for _ in range(3)]
    shown = add_customer(http, admin)
    suspended = shown["id"]
    suspend = {**new_customer(email=shown["email"]), "status": "SUSPENDED"}
    assert http.put(f"{CUSTOMERS}/{suspended}", json=suspend, headers=admin).is_success
    deleted = add_customer(http, admin)["id"]
    assert http.delete(f"{CUSTOMERS}/{deleted}", headers=admin).status_code == 204
    unknown = str(uuid.uuid4())
    ids = [*ok, suspended, deleted, unknown]
    body = {
        "selection": {"ids": ids},
        "patch": {
            "tags": {"add": ["vip"], "remove": ["old"]},
            "status": "INACTIVE",
            "preferences": {"language": "fr", "customPreferences": {"tier": "gold"}},
        },
    }
    job = finished(http, manager, "update", body)
    assert job["state"] == "SUCCEEDED", job
    assert job["kind"] == "bulk_update" and job["selection"] == {"ids": 6}
    assert (job["total"], job["processed"], job["updated"], job["skipped"], job["failed"]) == (
        6,
        6,
        3,
        0,
        3,
    )
    rows = report(http, manager, job)
    assert [(r["line"], r["customerId"]) for r in rows] == [
        (4, suspended),
        (5, deleted),
        (6, unknown),
    ]
    assert "admin role" in rows[0]["reason"]
    assert "deleted" in rows[1]["reason"] and "not found" in rows[2]["reason"]

    def patched() -> bool:
        return all(customer(http, admin, c)["status"] == "INACTIVE" for c in ok)

    eventually(patched)
    for cid in ok:
        got = customer(http, admin, cid)
        assert got["tags"] == ["keep", "vip"]
        assert got["preferences"]["language"] == "fr"
        assert got["preferences"]["customPreferences"] == {"tier": "gold"}
        assert got["preferences"]["marketingConsent"] is True  # consents are never patched
    assert customer(http, admin, suspended)["status"] == "SUSPENDED"

    again = finished(http, manager, "update", body)  # nothing left to change
    assert (again["updated"], again["skipped"], again["failed"]) == (0, 3, 3)


def test_a_filter_selects_and_a_dry_run_changes_nothing(
    http: httpx.Client, auth: TokenFactory
) -> None:
    h = auth()
    chosen = {add_customer(http, h, tags=["spring"])["id"] for _ in range(4)}
    other = add_customer(http, h, tags=["autumn"])["id"]
    body = {"selection": {"filters": {"tags": ["spring"]}}, "patch": {"tags": {"add": ["x"]}}}
    dry = finished(http, h, "update", {**body, "dryRun": True})
    assert (dry["dryRun"], dry["total"], dry["updated"]) == (True, 4, 4)
    assert all("x" not in customer(http, h, c)["tags"] for c in chosen)

    job = finished(http, h, "update", body)
    assert job["selection"] == {"filters": {"tags": ["spring"]}}
    assert (job["total"], job["updated"], job["failed"]) == (4, 4, 0)
    eventually(lambda: all("x" in customer(http, h, c)["tags"] for c in chosen))
    assert "x" not in customer(http, h, other)["tags"]


def test_bulk_delete_frees_the_emails_and_reports_active_orders(
    http: httpx.Client, auth: TokenFactory
) -> None:
    h = auth()
    doomed = [add_customer(http, h, tags=["churned"]) for _ in range(3)]
    busy = doomed[0]["id"]
    orders = http.put(f"{CUSTOMERS}/{busy}/active-orders", json={"activeOrders": 2}, headers=h)
    assert orders.is_success, orders.text
    job = finished(http, h, "delete", {"selection": {"filters": {"tags": ["churned"]}}})
    assert (job["total"], job["updated"], job["failed"]) == (3, 2, 1)
    [row] = report(http, h, job)
    assert row["customerId"] == busy and "active order" in row["reason"]
    for gone in doomed[1:]:
        eventually(lambda g=gone: customer(http, h, g["id"])["status"] == "DELETED")
        again = http.post(CUSTOMERS, json=new_customer(email=gone["email"]), headers=h)
        assert again.status_code == 201, again.text  # the e-mail was released
    assert customer(http, h, busy)["status"] == "ACTIVE"


def test_static_membership_in_bulk(http: httpx.Client, auth: TokenFactory) -> None:
    h = auth()
    ids = [add_customer(http, h, tags=["club"])["id"] for _ in range(3)]
    static = new_segment(http, h, kind="STATIC", criteria=None)["id"]
    added = finished(
        http,
        h,
        "segments",
        {"selection": {"filters": {"tags": ["club"]}}, "segmentId": static, "action": "add"},
    )
    assert (added["total"], added["updated"], added["failed"]) == (3, 3, 0)
    assert added["segmentId"] == static and added["action"] == "add"
    eventually(lambda: members(http, h, static) == set(ids))

    unknown = str(uuid.uuid4())
    removed = finished(
        http,
        h,
        "segments",
        {"selection": {"ids": [ids[0], unknown]}, "segmentId": static, "action": "remove"},
    )
    assert (removed["updated"], removed["skipped"], removed["failed"]) == (1, 0, 1)
    assert [r["customerId"] for r in report(http, h, removed)] == [unknown]
    eventually(lambda: members(http, h, static) == set(ids[1:]))

    # Members of the source segment, selected by segmentId, into a second static segment.
    copy = new_segment(http, h, kind="STATIC", criteria=None, name="copy")["id"]
    copied = finished(
        http,
        h,
        "segments",
        {"selection": {"segmentId": static}, "segmentId": copy, "action": "add"},
    )
    assert copied["updated"] == 2
    eventually(lambda: members(http, h, copy) == set(ids[1:]))

    dynamic = new_segment(http, h, name="dynamic")["id"]
    refused = http.post(
        f"{BULK}/segments",
        json={"selection": {"ids": ids}, "segmentId": dynamic, "action": "add"},
        headers=h,
    )
    assert_problem(refused, 409, "kind")
    missing = http.post(
        f"{BULK}/segments",
        json={"selection": {"ids": ids}, "segmentId": unknown, "action": "add"},
        headers=h,
    )
    assert_problem(missing, 404)


def test_bad_requests_name_the_field_and_roles_are_enforced(
    http: httpx.Client, auth: TokenFactory
) -> None:
    h = auth()
    some = {"ids": [str(uuid.uuid4())]}
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("update", {"selection": {}, "patch": {"status": "ACTIVE"}}, "selection"),
        (
            "update",
            {"selection": {**some, "filters": {"tags": ["a"]}}, "patch": {"status": "ACTIVE"}},
            "selection",
        ),
        (
            "update",
            {"selection": {"filters": {}}, "patch": {"status": "ACTIVE"}},
            "selection.filters",
        ),
        ("update", {"selection": some, "patch": {}}, "patch"),
        ("update", {"selection": some, "patch": {"status": "DELETED"}}, "patch.status"),
        ("update", {"selection": some, "patch": {"tags": {"add": ["a b"]}}}, "patch.tags.add.0"),
        (
            "update",
            {"selection": some, "patch": {"preferences": {"marketingConsent": False}}},
            "patch.preferences.marketingConsent",
        ),
        (
            "update",
            {"selection": {"ids": ["nope"]}, "patch": {"status": "ACTIVE"}},
            "selection.ids.0",
        ),
        (
            "delete",
            {"selection": {"filters": {"country": "Atlantis"}}},
            "selection.filters.country",
        ),
        ("segments", {"selection": some, "action": "add"}, "segmentId"),
        ("segments", {"selection": some, "segmentId": some["ids"][0], "action": "x"}, "action"),
    ]
    for path, body, field in cases:
        assert_problem(http.post(f"{BULK}/{path}", json=body, headers=h), 422, field)
    missing_segment = {"selection": {"segmentId": str(uuid.uuid4())}}
    assert_problem(http.post(f"{BULK}/delete", json=missing_segment, headers=h), 404)

    analyst, support = auth("analyst"), auth("support")
    patch = {"selection": some, "patch": {"status": "ACTIVE"}}
    assert_problem(http.post(f"{BULK}/update", json=patch, headers=analyst), 403)
    assert_problem(http.post(f"{BULK}/delete", json={"selection": some}, headers=support), 403)
    other = finished(http, h, "delete", {"selection": some})
    assert http.get(f"{BULK}/{other['id']}", headers=auth(org_id="another-org")).status_code == 404
    assert http.get(f"{CUSTOMERS}/import/{other['id']}", headers=h).status_code == 404
