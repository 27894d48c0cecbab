"""Art. 15/20 export and the audited event history with point-in-time reconstruction."""

from __future__ import annotations

import csv
import io
import time
import zipfile
from datetime import UTC, datetime

import httpx

from tests.e2e.conftest import TokenFactory, new_customer
from tests.e2e.test_customers_api import assert_problem
from tests.e2e.test_erasure_api import privacy_audit
from tests.e2e.test_membership_api import (
    CUSTOMERS,
    SPAIN_30_TO_40,
    add_customer,
    eventually,
    members,
    new_segment,
)


def test_export_holds_everything_and_is_recorded(http: httpx.Client, auth: TokenFactory) -> None:
    h, dpo = auth(), auth("dpo", sub="dpo-9")
    customer = add_customer(http, h, age=35, name="Export Person")
    cid = customer["id"]
    url = f"{CUSTOMERS}/{cid}"
    consent = {"consents": {"marketing": False}, "source": "form", "ipAddress": "198.51.100.4"}
    assert http.put(f"{url}/consent", json=consent, headers=h).status_code == 200
    sid = new_segment(http, h, criteria=SPAIN_30_TO_40)["id"]
    eventually(lambda: cid in members(http, h, sid))
    viewed = {"type": "PAGE_VIEW", "data": {"url": "https://shop.example/"}}
    viewed["device"] = {"type": "desktop", "os": "Linux"}
    assert http.post(f"{url}/track", json=viewed, headers=h).status_code == 202

    exported = http.get(f"{url}/data", headers=dpo)
    assert exported.status_code == 200, exported.text
    body = exported.json()
    assert body["profile"]["name"] == "Export Person"
    assert [c["source"] for c in body["consentHistory"]] == ["registration", "form"]
    assert body["consentHistory"][-1]["ipAddress"] == "198.51.100.4"
    assert [s["segmentId"] for s in body["segmentHistory"]] == [sid]
    assert [e["type"] for e in body["events"]] == ["Created", "ConsentChanged"]
    assert body["events"][0]["data"]["profile"]["name"] == "Export Person"
    assert {"purposes", "recipients", "retention", "source"} <= set(body["processing"])
    assert body["processing"]["source"] == "website"
    assert [r["type"] for r in body["privacyRequests"]] == ["CONSENT_CHANGE", "EXPORT"]
    (tracked,) = body["activity"]
    assert tracked["type"] == "PAGE_VIEW" and tracked["device"]["os"] == "Linux"
    assert tracked["data"]["url"] == "https://shop.example/"

    archive = http.get(f"{url}/data", params={"format": "zip"}, headers=dpo)
    assert archive.status_code == 200
    assert archive.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(archive.content)) as z:
        assert {
            "profile.csv",
            "consent_history.csv",
            "segment_history.csv",
            "events.csv",
            "privacy_requests.csv",
            "activity.csv",
            "processing.json",
        } <= set(z.namelist())
        (profile,) = csv.DictReader(io.StringIO(z.read("profile.csv").decode()))
        assert (profile["name"], profile["location.city"]) == ("Export Person", "Madrid")

    requests = http.get(
        "/api/v1/privacy/requests", params={"customerId": cid, "type": "EXPORT"}, headers=dpo
    ).json()["items"]
    assert len(requests) == 2 and {r["requestedBy"] for r in requests} == {"dpo-9"}
    audit = privacy_audit(http, dpo, cid)
    assert [e["action"] for e in audit] == ["consent_change", "export", "export"]

    assert_problem(http.get(f"{url}/data", headers=auth("analyst")), 403)
    assert_problem(http.get(f"{CUSTOMERS}/{cid}/data", headers=auth(org_id="elsewhere")), 404)
    assert http.delete(f"{url}/data", headers=dpo).status_code == 200
    assert_problem(http.get(f"{url}/data", headers=dpo), 404)
    assert_problem(http.get(f"{url}/history", headers=dpo), 404)


def test_history_and_point_in_time(http: httpx.Client, auth: TokenFactory) -> None:
    h, dpo = auth(), auth("dpo")
    customer = add_customer(http, h, name="Before Rename")
    cid = customer["id"]
    time.sleep(0.01)
    between = datetime.now(UTC)
    time.sleep(0.01)
    renamed = new_customer(email=customer["email"], name="After Rename")
    assert http.put(f"{CUSTOMERS}/{cid}", json=renamed, headers=h).status_code == 200

    history = http.get(f"{CUSTOMERS}/{cid}/history", headers=dpo)
    assert history.status_code == 200, history.text
    events = history.json()["events"]
    assert [(e["version"], e["type"]) for e in events] == [(1, "Created"), (2, "Updated")]
    assert events[1]["data"]["changes"]["name"] == "After Rename"

    then = http.get(
        f"{CUSTOMERS}/{cid}/history", params={"asOf": between.isoformat()}, headers=dpo
    ).json()
    assert then["customer"]["name"] == "Before Rename" and then["customer"]["version"] == 1
    before_birth = {"asOf": "2001-01-01T00:00:00Z"}
    assert_problem(http.get(f"{CUSTOMERS}/{cid}/history", params=before_birth, headers=dpo), 404)
    assert_problem(http.get(f"{CUSTOMERS}/{cid}/history", headers=h | auth("support")), 403)
    audit = privacy_audit(http, dpo, cid)
    assert [(e["action"], e["outcome"]) for e in audit] == [
        ("history", "completed"),
        ("history_as_of", "completed"),
        ("history_as_of", "not_found"),
    ]
