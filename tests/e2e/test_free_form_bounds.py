"""Free-form JSON is bounded where it enters (issue 23): customPreferences nested too deep or
too large is a 422 naming it on create, update and bulk patch, and a rejected row of an
import; a criteria value or a tracked body of any depth is a 422, never a 500. Privileged
reads of what the bounds admit always answer, and their records say what happened: an export
or history read that fails (here on data stored before the bounds existed) is recorded as
failed, never as completed."""

from __future__ import annotations

from typing import Any

import httpx

from domain.customer import Customer
from domain.values import FREE_FORM_BYTES, FREE_FORM_DEPTH, Profile
from eventstore.application import Customers
from service.settings import Settings
from tests.e2e.conftest import TokenFactory, new_customer
from tests.e2e.test_customers_api import assert_problem
from tests.e2e.test_erasure_api import privacy_audit
from tests.e2e.test_import_api import finished, report
from tests.e2e.test_membership_api import CUSTOMERS, add_customer, eventually

PREFERENCES = "preferences.customPreferences"


def nested(depth: int) -> dict[str, Any]:
    """A map `depth` levels deep (the map itself is level 1)."""
    value: dict[str, Any] = {"leaf": True}
    for _ in range(depth - 1):
        value = {"n": value}
    return value


def with_custom(custom: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    body = new_customer(**overrides)
    body["preferences"]["customPreferences"] = custom
    return body


def test_deep_or_large_custom_preferences_are_refused_naming_the_field(
    http: httpx.Client, auth: TokenFactory
) -> None:
    h = auth()
    deep = with_custom(nested(300))
    assert_problem(http.post(CUSTOMERS, json=deep, headers=h), 422, PREFERENCES)
    too_deep = with_custom(nested(FREE_FORM_DEPTH + 1))
    assert_problem(http.post(CUSTOMERS, json=too_deep, headers=h), 422, PREFERENCES)
    large = with_custom({"notes": "x" * FREE_FORM_BYTES})
    assert_problem(http.post(CUSTOMERS, json=large, headers=h), 422, PREFERENCES)
    huge_number = with_custom({"n": 2**70})
    assert_problem(http.post(CUSTOMERS, json=huge_number, headers=h), 422, PREFERENCES)

    customer = add_customer(http, h)
    url = f"{CUSTOMERS}/{customer['id']}"
    update = with_custom(nested(300), email=customer["email"])
    assert_problem(http.put(url, json=update, headers=h), 422, PREFERENCES)
    patch = {"selection": {"ids": [customer["id"]]}, "patch": {"preferences": {}}}
    patch["patch"]["preferences"]["customPreferences"] = nested(300)
    bulk = http.post(f"{CUSTOMERS}/bulk/update", json=patch, headers=h)
    assert_problem(bulk, 422, f"patch.{PREFERENCES}")
    assert http.get(url, headers=h).json()["version"] == 1  # nothing was changed

    deepest = with_custom(nested(FREE_FORM_DEPTH))
    assert http.post(CUSTOMERS, json=deepest, headers=h).status_code == 201


def test_deep_json_elsewhere_is_a_422_never_a_500(http: httpx.Client, auth: TokenFactory) -> None:
    h = {**auth(), "Content-Type": "application/json"}
    depth = 800  # deeper than orjson or a recursive walk could take, within what FastAPI parses
    value = b"[" * depth + b"30" + b"]" * depth
    segment = b'{"name": "deep", "ruleId": "r", "kind": "DYNAMIC", "criteria": {"customRules":'
    segment += b'[{"field": "age", "operator": "in", "value": ' + value + b"}]}}"
    answer = http.post(f"{CUSTOMERS}/segments", content=segment, headers=h)
    assert_problem(answer, 422, "criteria.customRules.0.value")

    customer = add_customer(http, h)
    data = b'{"n": ' * depth + b'{"url": "https://shop.example/\\u0000"}' + b"}" * depth
    tracked = b'{"type": "PAGE_VIEW", "data": ' + data + b"}"
    answer = http.post(f"{CUSTOMERS}/{customer['id']}/track", content=tracked, headers=h)
    assert_problem(answer, 422)


def test_an_import_rejects_a_deep_row_and_imports_the_others(
    http: httpx.Client, auth: TokenFactory
) -> None:
    h = auth()
    rows = [new_customer(), with_custom(nested(300)), new_customer()]
    content = b"".join(httpx.Response(200, json=r).content + b"\n" for r in rows)
    job = finished(http, h, content, format="ndjson")
    assert (job["state"], job["created"], job["failed"]) == ("SUCCEEDED", 2, 1), job
    assert report(http, h, job) == [(2, PREFERENCES)]


def test_exports_and_history_of_bounded_data_answer_and_are_recorded_completed(
    http: httpx.Client, auth: TokenFactory
) -> None:
    h, dpo = auth(), auth("dpo", sub="dpo-23")
    wide = {f"k{i}": nested(FREE_FORM_DEPTH - 1) for i in range(3)}
    customer = http.post(CUSTOMERS, json=with_custom(wide), headers=h).json()
    url = f"{CUSTOMERS}/{customer['id']}"
    eventually(lambda: http.get(url, headers=h).status_code == 200)
    assert http.put(url, json=with_custom(nested(FREE_FORM_DEPTH), email=customer["email"]),
                    headers=h).status_code == 200  # fmt: skip
    exported = http.get(f"{url}/data", headers=dpo)
    assert exported.status_code == 200
    assert (
        exported.json()["events"][0]["data"]["profile"]["preferences"]["customPreferences"] == wide
    )
    assert http.get(f"{url}/data", params={"format": "zip"}, headers=dpo).status_code == 200
    assert http.get(f"{url}/history", headers=dpo).status_code == 200
    as_of = http.get(f"{url}/history", params={"asOf": "2999-01-01T00:00:00Z"}, headers=dpo)
    assert as_of.json()["customer"]["preferences"]["customPreferences"] == nested(FREE_FORM_DEPTH)
    outcomes = [(e["action"], e["outcome"]) for e in privacy_audit(http, dpo, customer["id"])]
    assert outcomes == [
        ("export", "completed"),
        ("export", "completed"),
        ("history", "completed"),
        ("history_as_of", "completed"),
    ]


def test_a_read_that_fails_is_recorded_as_failed_not_completed(
    http: httpx.Client, auth: TokenFactory, migrated: Settings, org: str
) -> None:
    """A customer saved, as versions before the bounds accepted, with preferences nested 251
    deep: its export and history cannot be written as JSON. The answer is an error, and the
    records say so."""
    dpo = auth("dpo", sub="dpo-legacy")
    app = Customers(migrated, pool_size=1)
    try:
        profile = Profile.model_validate(new_customer()).dump()  # the stored shape
        profile["preferences"]["customPreferences"] = nested(251)
        legacy = Customer(org_id=org, profile=profile, actor="legacy-writer")
        app.save(legacy, new_keys=[app.keys.create(legacy.id, org)])
    finally:
        app.close()
    url = f"{CUSTOMERS}/{legacy.id}"
    once = {**dpo, "Connection": "close"}  # the server drops a connection after a 500
    assert_problem(http.get(f"{url}/data", headers=once), 500)
    assert_problem(http.get(f"{url}/history", headers=once), 500)
    outcomes = [(e["action"], e["outcome"]) for e in privacy_audit(http, dpo, str(legacy.id))]
    assert outcomes == [("export", "failed"), ("history", "failed")]
    requests = http.get(
        "/api/v1/privacy/requests", params={"customerId": str(legacy.id)}, headers=dpo
    ).json()["items"]
    assert [(r["type"], r["status"], r["outcome"], r["completedAt"]) for r in requests] == [
        ("EXPORT", "RECEIVED", "failed", None)
    ]
