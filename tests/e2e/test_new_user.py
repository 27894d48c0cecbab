"""Issue 22, from the newcomer's side: each test sends what a new user following README and
docs/api.md sends, and expects the answer they should get."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson

from service.embedded import free_port
from tests.e2e.conftest import TokenFactory, new_customer
from tests.e2e.test_membership_api import eventually
from tests.e2e.test_transfer_cli import customers_cli

CUSTOMERS = "/api/v1/customers"


def create(http: httpx.Client, h: dict[str, str], **overrides: Any) -> tuple[dict[str, Any], str]:
    """A new customer and the consistency token of its creation."""
    answer = http.post(CUSTOMERS, json=new_customer(**overrides), headers=h)
    assert answer.status_code == 201, answer.text
    return answer.json(), answer.headers["X-Consistency-Token"]


def refused(answer: httpx.Response, status: int) -> list[str]:
    """The fields a problem answer names, after checking it is one with `status`."""
    assert answer.status_code == status, answer.text
    assert answer.headers["Content-Type"] == "application/problem+json"
    return [e["field"] for e in answer.json().get("errors", [])]


# --------------------------------------------------------------------------- 1. filters


def test_a_query_parameter_the_endpoint_does_not_take_is_named_not_ignored(
    http: httpx.Client, auth: TokenFactory
) -> None:
    h = auth()
    for path, params, unknown in (
        (CUSTOMERS, {"countryCode": "FR"}, ["countryCode"]),
        (CUSTOMERS, {"country": "ES", "emial": "a@example.com", "tagz": "vip"}, ["emial", "tagz"]),
        (f"{CUSTOMERS}/export", {"format": "csv", "segment": "vip"}, ["segment"]),
        (f"{CUSTOMERS}/segments", {"state": "ACTIVE"}, ["state"]),
        (f"{CUSTOMERS}/00000000-0000-4000-8000-000000000000", {"fields": "name"}, ["fields"]),
    ):
        answer = http.get(path, params=params, headers=h)
        assert refused(answer, 422) == unknown, path
        message = answer.json()["errors"][0]["message"]
        assert message.startswith("unknown query parameter; this endpoint takes:"), message
    takes = http.get(CUSTOMERS, params={"countryCode": "FR"}, headers=h).json()["errors"][0]
    assert "country" in takes["message"] and "tags" in takes["message"]


def test_support_finds_a_customer_by_exact_email_in_lists_and_exports(
    http: httpx.Client, auth: TokenFactory
) -> None:
    h = auth("support")
    wanted, _ = create(http, h)
    other, token = create(http, h, tags=["vip"])
    seen = {**h, "X-Consistency-Token": token}

    found = http.get(CUSTOMERS, params={"email": wanted["email"].upper()}, headers=seen)
    assert [c["id"] for c in found.json()["items"]] == [wanted["id"]]
    nobody = http.get(CUSTOMERS, params={"email": "nobody@example.com"}, headers=seen)
    assert nobody.status_code == 200 and nobody.json()["items"] == []
    assert refused(http.get(CUSTOMERS, params={"email": "not an address"}, headers=h), 422) == [
        "email"
    ]
    export = http.get(f"{CUSTOMERS}/export", params={"email": other["email"]}, headers=seen)
    assert [orjson.loads(line)["id"] for line in export.text.splitlines()] == [other["id"]]
    # `tags`, as in bulk selections and reports (`tag`, its former name, still works).
    for name in ("tags", "tag"):
        listed = http.get(CUSTOMERS, params={name: ["vip"], "tags": "premium"}, headers=seen)
        assert [c["id"] for c in listed.json()["items"]] == [wanted["id"]]
    listed = http.get(CUSTOMERS, params={"tags": "vip"}, headers=seen)
    assert {c["id"] for c in listed.json()["items"]} == {wanted["id"], other["id"]}


def test_a_role_that_sees_emails_masked_cannot_look_one_up(
    http: httpx.Client, auth: TokenFactory
) -> None:
    customer, token = create(http, auth())
    analyst = {**auth("analyst"), "X-Consistency-Token": token}
    for path in (CUSTOMERS, f"{CUSTOMERS}/export"):
        answer = http.get(path, params={"email": customer["email"]}, headers=analyst)
        assert refused(answer, 403) == ["email"]
        assert customer["email"] not in answer.text


# --------------------------------------------------------------------------- 2. restore


def test_a_deleted_customer_is_kept_and_can_be_restored_with_its_email(
    http: httpx.Client, auth: TokenFactory
) -> None:
    h = auth("manager", sub="manager-9")
    customer, _ = create(http, h)
    url = f"{CUSTOMERS}/{customer['id']}"
    deleted = http.delete(url, headers=h)
    assert deleted.status_code == 204
    seen = {**h, "X-Consistency-Token": deleted.headers["X-Consistency-Token"]}
    kept = http.get(url, headers=seen).json()
    assert (kept["status"], kept["name"]) == ("DELETED", customer["name"])

    assert refused(http.post(f"{url}/restore", headers=auth("support")), 403) == []
    assert http.post(f"{url}/restore", headers={**h, "If-Match": '"1"'}).status_code == 412
    restored = http.post(f"{url}/restore", headers=h)
    assert restored.status_code == 200, restored.text
    assert restored.json()["status"] == "ACTIVE"
    assert restored.headers["ETag"] == f'"{customer["version"] + 2}"'
    seen = {**h, "X-Consistency-Token": restored.headers["X-Consistency-Token"]}
    again = http.get(url, headers=seen).json()
    assert {
        k: v for k, v in again.items() if k not in {"updatedAt", "lastActivity", "version"}
    } == {k: v for k, v in customer.items() if k not in {"updatedAt", "lastActivity", "version"}}
    # Its e-mail address is its own again: found by it, and refused to a newcomer.
    by_email = http.get(CUSTOMERS, params={"email": customer["email"]}, headers=seen).json()
    assert [c["id"] for c in by_email["items"]] == [customer["id"]]
    taken = http.post(CUSTOMERS, json=new_customer(email=customer["email"]), headers=h)
    assert refused(taken, 409) == ["email"]
    assert refused(http.post(f"{url}/restore", headers=h), 409) == []

    def audited() -> bool:
        items = http.get("/api/v1/audit", params={"subjectId": customer["id"]}, headers=auth())
        return ("manager-9", "customer.Restored") in {
            (e["actor"], e["action"]) for e in items.json()["items"]
        }

    eventually(audited)


def test_a_restore_whose_email_was_registered_meanwhile_is_a_conflict(
    http: httpx.Client, auth: TokenFactory
) -> None:
    h = auth()
    customer, _ = create(http, h)
    url = f"{CUSTOMERS}/{customer['id']}"
    deleted = http.delete(url, headers=h)
    assert deleted.status_code == 204
    create(http, h, email=customer["email"])  # the address was free
    conflict = http.post(f"{url}/restore", headers=h)
    assert refused(conflict, 409) == ["email"]
    assert customer["email"] not in conflict.text
    seen = {**h, "X-Consistency-Token": deleted.headers["X-Consistency-Token"]}
    assert http.get(url, headers=seen).json()["status"] == "DELETED"


# --------------------------------------------------------------------------- 3. read-your-writes


def test_a_read_right_after_a_write_says_how_to_see_the_write(
    http: httpx.Client, auth: TokenFactory
) -> None:
    h = auth()
    missing = http.get(f"{CUSTOMERS}/{uuid.uuid4()}", headers=h)
    assert refused(missing, 404) == []
    assert "X-Consistency-Token" in missing.json()["detail"]
    assert "X-Consistency-Token" in http.get(f"{CUSTOMERS}/segments/{uuid.uuid4()}", headers=h).text
    # What the quick start shows: the creation's token on the next reads.
    answer = http.post(CUSTOMERS, json=new_customer(), headers=h)
    seen = {**h, "X-Consistency-Token": answer.headers["X-Consistency-Token"]}
    assert http.get(answer.headers["Location"], headers=seen).json() == answer.json()
    listed = http.get(CUSTOMERS, params={"status": "ACTIVE"}, headers=seen).json()["items"]
    assert [c["id"] for c in listed] == [answer.json()["id"]]


# --------------------------------------------------------------------------- 4. segments

SEGMENTS = f"{CUSTOMERS}/segments"


def test_a_marketing_segment_previews_what_it_calculates_and_explains_why(
    http: httpx.Client, auth: TokenFactory
) -> None:
    h = auth()
    consenting, _ = create(http, h, age=33)
    preferences = {**new_customer()["preferences"], "marketingConsent": False}
    refusing, token = create(http, h, age=34, preferences=preferences)
    seen = {**h, "X-Consistency-Token": token}
    # The create body as docs/api.md shows it: no ruleId (no rules engine involved).
    body = {
        "name": "Spanish thirties, marketing",
        "purpose": "marketing",
        "criteria": {"demographics": {"ageRange": {"min": 30, "max": 39}}},
    }
    preview = http.post(f"{SEGMENTS}/preview", json={**body, "sampleSize": 5}, headers=seen)
    assert preview.status_code == 200, preview.text
    assert preview.json()["count"] == 1
    assert [c["id"] for c in preview.json()["sample"]] == [consenting["id"]]

    created = http.post(SEGMENTS, json=body, headers=h)
    assert created.status_code == 201, created.text
    assert created.json()["ruleId"] is None
    url = created.headers["Location"]

    def calculated() -> dict[str, Any] | None:
        shown: dict[str, Any] = http.get(url, headers=h).json()
        return shown if shown["status"] == "ACTIVE" and shown["lastCalculated"] else None

    assert eventually(calculated)["customerCount"] == preview.json()["count"]

    why = http.get(f"{url}/explain/{refusing['id']}", headers=h).json()
    assert (why["matches"], why["member"]) == (False, False)
    by_path = {c["criterion"]: c for c in why["criteria"]}
    assert by_path["status"] == {
        "criterion": "status",
        "holds": True,
        "operand": "not DELETED",
        "values": {"status": "active"},
    }
    assert by_path["demographics.ageRange"] == {
        "criterion": "demographics.ageRange",
        "holds": True,
        "operand": {"min": 30, "max": 39},
        "values": {"age": 34},
    }
    assert by_path["customRules.0"] == {
        "criterion": "customRules.0",
        "holds": False,
        "operand": {"field": "marketingConsent", "operator": "equals", "value": True},
        "values": {"marketingConsent": False},
    }


def test_a_preview_names_what_is_wrong_and_masks_what_the_role_cannot_see(
    http: httpx.Client, auth: TokenFactory
) -> None:
    h = auth()
    bad = http.post(
        f"{SEGMENTS}/preview",
        json={"purpose": "marketting", "criteria": {"demographics": {"ageRange": {}}}},
        headers=h,
    )
    assert sorted(refused(bad, 422)) == ["criteria.demographics.ageRange", "purpose"]
    assert "'general' or 'marketing'" in bad.text  # the allowed values
    static = http.post(f"{SEGMENTS}/preview", json={"kind": "STATIC"}, headers=h)
    assert "only a DYNAMIC segment" in static.text and static.status_code == 422
    customer, token = create(http, h)
    body = {"name": "Madrid", "criteria": {"geographic": {"cities": ["madrid"]}}}
    segment = http.post(SEGMENTS, json=body, headers={**h, "X-Consistency-Token": token})
    analyst = {**auth("analyst"), "X-Consistency-Token": segment.headers["X-Consistency-Token"]}
    url = f"{segment.headers['Location']}/explain/{customer['id']}"
    why = http.get(url, headers=analyst).json()
    city = next(c for c in why["criteria"] if c["criterion"] == "geographic.cities")
    assert (city["holds"], city["values"]) == (True, {"city": "***"})


# --------------------------------------------------------------------------- 5. tracking, enums

QUICK_START = {  # README's customer: no privacySettings, so no analytics-tracking consent
    "email": "john.doe@example.com",
    "name": "John Doe",
    "age": 35,
    "location": {"country": "Spain", "city": "Madrid", "timezone": "Europe/Madrid"},
    "preferences": {"marketingConsent": True, "dataProcessingConsent": True},
}


def test_tracking_says_what_it_kept_and_takes_types_in_any_case(
    http: httpx.Client, auth: TokenFactory
) -> None:
    h = auth()
    readme = http.post(CUSTOMERS, json=QUICK_START, headers=h).json()
    view = {"type": "page_view", "data": {"url": "https://shop.example/p/1"}}
    skipped = http.post(f"{CUSTOMERS}/{readme['id']}/track", json=view, headers=h)
    assert skipped.status_code == 202
    assert skipped.json() == {
        "eventId": None,
        "stored": False,
        "duplicate": False,
        "reason": "analytics_tracking_off",
    }
    tracked, _ = create(http, h)  # with analytics-tracking consent
    url = f"{CUSTOMERS}/{tracked['id']}/track"
    event_id = str(uuid.uuid4())
    device = {"type": "Mobile", "os": "iOS"}
    stored = http.post(url, json={**view, "eventId": event_id, "device": device}, headers=h)
    assert stored.json() == {"eventId": event_id, "stored": True, "duplicate": False}

    wrong = http.post(url, json={**view, "type": "pageview"}, headers=h)
    assert refused(wrong, 422) == ["type"]
    assert "'PAGE_VIEW', 'PURCHASE'" in wrong.text and "EventType" not in wrong.text
    assert refused(http.post(url, json={**view, "eventId": "click-1"}, headers=h), 422) == [
        "eventId"
    ]
    batch = {"events": [{**view, "customerId": tracked["id"]}, {"type": "login"}]}
    wrong = http.post(f"{CUSTOMERS}/track/batch", json=batch, headers=h)
    assert refused(wrong, 422) == ["events.1.customerId"]


def test_enumerations_are_accepted_in_any_case_and_refusals_list_the_values(
    http: httpx.Client, auth: TokenFactory
) -> None:
    h = auth()
    customer, token = create(http, h, gender="female")
    assert customer["gender"] == "FEMALE"
    seen = {**h, "X-Consistency-Token": token}
    listed = http.get(CUSTOMERS, params={"gender": "Female", "status": "active"}, headers=seen)
    assert [c["id"] for c in listed.json()["items"]] == [customer["id"]]
    wrong = http.get(CUSTOMERS, params={"gender": "femal"}, headers=h)
    assert refused(wrong, 422) == ["gender"]
    assert "'MALE', 'FEMALE', 'OTHER' or 'UNKNOWN'" in wrong.text
    body = {"name": "any case", "kind": "dynamic", "purpose": "Marketing"}
    criteria = {"customRules": [{"field": "age", "operator": "GREATER_THAN", "value": 30}]}
    segment = http.post(SEGMENTS, json={**body, "criteria": criteria}, headers=h)
    assert segment.status_code == 201, segment.text
    assert (segment.json()["kind"], segment.json()["purpose"]) == ("DYNAMIC", "marketing")
    consent = {"consents": {"Marketing": False}, "source": "preference_center"}
    changed = http.put(f"{CUSTOMERS}/{customer['id']}/consent", json=consent, headers=h)
    assert changed.status_code == 200, changed.text
    assert changed.json()["consents"]["marketing"] is False


# --------------------------------------------------------------------------- 6. models


def test_insights_and_fits_say_why_there_is_no_prediction(
    http: httpx.Client, auth: TokenFactory
) -> None:
    h = auth()
    customer, token = create(http, h)
    seen = {**h, "X-Consistency-Token": token}
    assert http.get(f"{CUSTOMERS}/{customer['id']}", headers=seen).status_code == 200
    url = f"{CUSTOMERS}/{customer['id']}/insights"
    empty = http.get(url, headers=h).json()
    assert (empty["rfm"], empty["probabilityAlive"], empty["model"]) == (None, None, None)
    assert "at least 20 customers with a tracked purchase" in empty["reason"]

    fit = http.post(f"{CUSTOMERS}/analytics/models", json={}, headers=h)
    assert fit.status_code == 202, fit.text

    def finished() -> dict[str, Any] | None:
        shown: dict[str, Any] = http.get(fit.headers["Location"], headers=h).json()
        return shown if shown["state"] != "QUEUED" else None

    failed = eventually(finished)
    assert failed["state"] == "FAILED"
    assert failed["error"] == "BG/NBD needs at least 20 customers with a tracked purchase, got 0"
    again = http.get(url, headers=h).json()
    assert again["reason"].endswith(f"the latest fit failed: {failed['error']}")


# --------------------------------------------------------------------------- 7. imports, jobs

IMPORT = f"{CUSTOMERS}/import"


def test_an_import_names_every_unknown_column_and_every_error_of_a_row(
    http: httpx.Client, auth: TokenFactory
) -> None:
    h = {**auth(), "Content-Type": "text/csv"}
    columns = b"email,name,phone,nickname,preferences.marketingConsent\r\n"
    unknown = http.post(IMPORT, content=columns + b"a@example.com,A,1,a,true\r\n", headers=h)
    assert refused(unknown, 422) == ["columns"]
    assert "'phone', 'nickname'" in unknown.json()["errors"][0]["message"]

    # A spreadsheet's CSV with semicolons; one good row, one row with three mistakes.
    header = "email;name;age;location.country;location.timezone;"
    header += "preferences.marketingConsent;preferences.dataProcessingConsent\r\n"
    rows = "ann@example.com;Ann;30;Spain;Europe/Madrid;true;true\r\n"
    rows += "bob@example.com;Bob;200;Spain;Mars/Olympus;maybe;true\r\n"
    started = http.post(IMPORT, content=(header + rows).encode(), headers=h)
    assert started.status_code == 202, started.text

    def done() -> dict[str, Any] | None:
        job: dict[str, Any] = http.get(started.headers["Location"], headers=h).json()
        return job if job["state"] in {"SUCCEEDED", "FAILED"} else None

    job = eventually(done)
    assert (job["state"], job["created"], job["failed"]) == ("SUCCEEDED", 1, 1)
    report = http.get(f"{IMPORT}/{job['id']}/report", headers=h).json()
    assert report["line"] == 3
    assert report["field"] == "age, location.timezone, preferences.marketingConsent"
    for field in ("age: ", "location.timezone: ", "preferences.marketingConsent: "):
        assert field in report["reason"]

    listed = http.get(IMPORT, headers=h).json()
    assert [j["id"] for j in listed["items"]] == [job["id"]]  # the refused upload left none
    assert (listed["nextCursor"], listed["limit"]) == (None, 20)


def test_bulk_jobs_are_listed_newest_first(http: httpx.Client, auth: TokenFactory) -> None:
    h = auth()
    customer, _ = create(http, h)
    selection = {"ids": [customer["id"]]}
    queued = [
        http.post(f"{CUSTOMERS}/bulk/update", json=body, headers=h).json()["id"]
        for body in (
            {"selection": selection, "patch": {"tags": {"add": ["a"]}}, "dryRun": True},
            {"selection": selection, "patch": {"tags": {"add": ["b"]}}, "dryRun": True},
        )
    ]
    first = http.get(f"{CUSTOMERS}/bulk", params={"limit": 1}, headers=h).json()
    assert [j["id"] for j in first["items"]] == [queued[1]]
    rest = http.get(f"{CUSTOMERS}/bulk", params={"cursor": first["nextCursor"]}, headers=h)
    assert [j["id"] for j in rest.json()["items"]] == [queued[0]]
    assert http.get(IMPORT, headers=h).json()["items"] == []


def test_the_command_line_says_in_one_line_what_is_wrong_and_what_it_would_do(
    http: httpx.Client, auth: TokenFactory, service_url: str, tmp_path: Path
) -> None:
    h = auth()
    token = h["Authorization"].removeprefix("Bearer ")
    missing = customers_cli(service_url, token, "import", str(tmp_path / "nope.csv"))
    assert missing.returncode == 1
    assert missing.stderr.decode().splitlines() == [
        f"customers: cannot read {tmp_path / 'nope.csv'}: No such file or directory"
    ]
    file = tmp_path / "customers.csv"
    file.write_text(
        "email;name;preferences.marketingConsent;preferences.dataProcessingConsent\n"
        "zoe@example.com;Zoe;true;true\n"
    )
    nobody = f"http://127.0.0.1:{free_port()}"
    unreachable = customers_cli(nobody, token, "import", str(file))
    assert unreachable.returncode == 1
    (line,) = unreachable.stderr.decode().splitlines()
    assert line.startswith(f"customers: cannot reach the service at {nobody}")

    # The API's address as docs/api.md writes it works too; a dry run says what it would do.
    dry = customers_cli(f"{service_url}/api/v1/", token, "import", str(file), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    lines = dry.stderr.decode().splitlines()
    (job,) = [x for x in lines if x.startswith("job ")]
    assert f"{service_url}/api/v1/customers/import/" in job
    assert "succeeded (dry run): 1 rows, 1 would be created, 0 would be updated" in lines[-1]
    assert not [x for x in lines if x.startswith("{")]  # no log lines among the progress


# --------------------------------------------------------------------------- 8. details

MERGE_PATCH = {"Content-Type": "application/merge-patch+json"}


def test_the_body_get_returned_can_be_put_back_and_patched(
    http: httpx.Client, auth: TokenFactory
) -> None:
    h = auth()
    customer, token = create(http, h)
    url = f"{CUSTOMERS}/{customer['id']}"
    shown = http.get(url, headers={**h, "X-Consistency-Token": token}).json()

    same = http.put(url, json=shown, headers=h)
    assert same.status_code == 200, same.text
    assert same.headers["ETag"] == '"1"'  # nothing changed, nothing recorded
    renamed = http.put(url, json={**shown, "name": "Jane Roe"}, headers=h)
    assert (renamed.json()["name"], renamed.headers["ETag"]) == ("Jane Roe", '"2"')
    current = {**shown, "version": 2}
    for field, value in (("activeOrders", 3), ("id", str(uuid.uuid4()))):
        assert refused(http.put(url, json={**current, field: value}, headers=h), 422) == [field]
    assert http.put(url, json=shown, headers=h).status_code == 412  # its version is 1

    patch = {"name": "Ana", "location": {"city": "Sevilla"}, "tags": None}
    stale = http.patch(
        url, content=orjson.dumps(patch), headers={**h, **MERGE_PATCH, "If-Match": "1"}
    )
    assert stale.status_code == 412
    patched = http.patch(
        url, content=orjson.dumps(patch), headers={**h, **MERGE_PATCH, "If-Match": "2"}
    )
    assert patched.status_code == 200, patched.text
    body = patched.json()
    assert (body["name"], body["tags"], body["version"]) == ("Ana", [], 3)
    assert body["location"] == {**customer["location"], "city": "Sevilla"}
    assert body["preferences"] == customer["preferences"]
    status = http.patch(url, content=b'{"status": "inactive"}', headers={**h, **MERGE_PATCH})
    assert status.json()["status"] == "INACTIVE"
    wrong = http.patch(url, content=b'{"age": 400, "gender": "x"}', headers={**h, **MERGE_PATCH})
    assert sorted(refused(wrong, 422)) == ["age", "gender"]
    plain = http.patch(url, content=b'{"age": 40}', headers={**h, "Content-Type": "text/plain"})
    assert refused(plain, 415) == []


def test_one_entity_tag_rule_for_if_match_and_if_none_match(
    http: httpx.Client, auth: TokenFactory
) -> None:
    h = auth()
    customer, token = create(http, h)
    url = f"{CUSTOMERS}/{customer['id']}"
    seen = {**h, "X-Consistency-Token": token}
    for tag in ('"1"', "1", 'W/"1"', '"7", 1'):
        assert http.get(url, headers={**seen, "If-None-Match": tag}).status_code == 304, tag
    assert http.get(url, headers={**seen, "If-None-Match": "2"}).status_code == 200
    assert refused(http.get(url, headers={**seen, "If-None-Match": "v1"}), 422) == ["If-None-Match"]
    assert http.delete(url, headers={**h, "If-Match": "2"}).status_code == 412
    assert http.delete(url, headers={**h, "If-Match": "1"}).status_code == 204


def test_a_dpo_records_a_withdrawal_and_exports_consistent_files(
    http: httpx.Client, auth: TokenFactory
) -> None:
    dpo = auth("dpo")
    customer, _ = create(http, auth())
    url = f"{CUSTOMERS}/{customer['id']}"
    withdrawal = {"consents": {"marketing": False}, "source": "email_to_dpo"}
    recorded = http.put(f"{url}/consent", json=withdrawal, headers=dpo)
    assert recorded.status_code == 200, recorded.text
    seen = {**dpo, "X-Consistency-Token": recorded.headers["X-Consistency-Token"]}
    assert http.get(url, headers=seen).json()["preferences"]["marketingConsent"] is False

    export = http.get(f"{url}/data", headers=seen).json()
    created = export["events"][0]
    assert created["type"] == "Created" and {"orgId", "profile", "actor"} <= set(created["data"])
    consent = next(e for e in export["events"] if e["type"] == "ConsentChanged")
    assert {"policyVersion", "ipAddress", "userAgent"} <= set(consent["data"])
    assert not [k for e in export["events"] for k in e["data"] if "_" in k]

    archive = http.get(f"{url}/data", params={"format": "zip"}, headers=seen)
    with zipfile.ZipFile(io.BytesIO(archive.content)) as z:
        history = z.read("segment_history.csv").decode()
        assert history == "segmentId,name,joinedAt,joinReason,leftAt,leaveReason,active\r\n"
        (profile,) = csv.DictReader(io.StringIO(z.read("profile.csv").decode()))
    export_csv = http.get(
        f"{CUSTOMERS}/export", params={"format": "csv", "email": customer["email"]}, headers=seen
    ).text
    header = export_csv.splitlines()[0]
    assert list(profile) == header.split(",")
    assert (
        profile["location.city"] == "Madrid" and profile["preferences.marketingConsent"] == "false"
    )


def test_dev_tokens_need_the_services_secret_and_name_their_role(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "CUSTOMERS_JWT_SECRET"}
    env["CUSTOMERS_DATA_DIR"] = str(tmp_path)
    command = [sys.executable, "-m", "service.cli", "dev-token", "--role", "analyst"]
    refused_token = subprocess.run(command, env=env, capture_output=True, check=False, timeout=60)
    assert refused_token.returncode == 1 and not refused_token.stdout
    assert b"start the service first" in refused_token.stderr
    assert not (tmp_path / "secrets.env").exists()  # no new secret nobody accepts

    env["CUSTOMERS_JWT_SECRET"] = os.environ["CUSTOMERS_JWT_SECRET"]
    issued = subprocess.run(command, env=env, capture_output=True, check=True, timeout=60)
    claims = jwt.decode(issued.stdout.strip(), options={"verify_signature": False})
    assert (claims["sub"], claims["roles"]) == ("dev-analyst", ["analyst"])


# --------------------------------------------------------------------------- the quick start

README = Path(__file__).resolve().parents[2] / "README.md"


def quick_start() -> str:
    """The shell block of README's quick start that follows `make run`."""
    text = README.read_text()
    start = text.index("```sh\n", text.index("the eight everyday tasks")) + len("```sh\n")
    return text[start : text.index("```\n", start)]


def test_the_readme_quick_start_runs_as_written(service_url: str, tmp_path: Path) -> None:
    """Every request of the eight tasks answers 2xx, and says what the comments promise."""
    org = f"readme-{uuid.uuid4().hex[:8]}"
    script = (
        quick_start()
        .replace("http://127.0.0.1:8080", service_url)
        .replace(".venv/bin/customers", f"{sys.executable} -m service.cli")
        .replace("--org acme", f"--org {org}")
    )
    # Any answer >= 400 stops the walk-through with the answer on stderr.
    strict = 'set -euo pipefail\ncurl() { command curl --fail-with-body "$@"; }\n'
    env = {**os.environ, "PYTHONPATH": str(README.parent)}
    done = subprocess.run(
        ["bash", "-c", strict + script + "\necho WALKED"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        timeout=300,
        check=False,
    )
    out, err = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 0 and out.rstrip().endswith("WALKED"), err[-2000:]
    assert '"reason":"analytics_tracking_off"' in out
    assert "1 would be created, 0 would be updated, 0 skipped, 1 rejected" in err
    assert '"status":"ERASED"' in out
    with zipfile.ZipFile(tmp_path / "john-doe.zip") as archive:
        assert "profile.csv" in archive.namelist()
