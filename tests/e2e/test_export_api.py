"""Bulk exports end to end: customers as NDJSON and CSV (each exactly what GET /customers/{id}
shows, masked for roles without personal data), selected by the listing's filters or a
segment, streamed complete and in order past one fetch chunk; segment definitions exported
from one organization and recreated in another."""

from __future__ import annotations

import csv
import io
import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from read_api.export import CHUNK, CSV_COLUMNS, _csv, csv_row
from service.settings import Settings
from tests.e2e.conftest import EMAIL, TokenFactory, new_customer
from tests.e2e.test_customers_api import assert_problem
from tests.e2e.test_membership_api import add_customer, eventually, new_segment
from tests.e2e.test_model_fits_api import register, wait_projected
from tests.e2e.test_segments_api import SEGMENTS

CUSTOMERS = "/api/v1/customers"
EXPORT = f"{CUSTOMERS}/export"
SEGMENTS_EXPORT = f"{SEGMENTS}/export"
FREE_FORM = {"preferences.customPreferences"}  # a map, not flattened: one JSON cell


def export(
    http: httpx.Client, headers: dict[str, str], **params: Any
) -> tuple[httpx.Response, list[dict[str, Any]]]:
    """GET the NDJSON export; the answer and its customers."""
    response = http.get(EXPORT, params=params, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-ndjson")
    text = response.text
    assert text == "" or text.endswith("\n")
    return response, [json.loads(line) for line in text.splitlines()]


def exported_ids(http: httpx.Client, headers: dict[str, str], **params: Any) -> list[str]:
    return [c["id"] for c in export(http, headers, **params)[1]]


def export_csv(
    http: httpx.Client, headers: dict[str, str], **params: Any
) -> tuple[httpx.Response, list[dict[str, str]]]:
    response = http.get(EXPORT, params={**params, "format": "csv"}, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    reader = csv.DictReader(io.StringIO(response.content.decode("utf-8"), newline=""))
    rows = list(reader)
    assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
    return response, rows


def at(customer: dict[str, Any], column: str) -> Any:
    value: Any = customer
    for key in column.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def leaves(value: Any, path: str = "") -> set[str]:
    """The dotted paths of a customer's JSON that hold a value (lists and free-form maps are
    leaves)."""
    if isinstance(value, dict) and path not in FREE_FORM:
        return {p for k, v in value.items() for p in leaves(v, f"{path}.{k}" if path else k)}
    return set() if value is None else {path}


def assert_row_is(row: dict[str, str], customer: dict[str, Any]) -> None:
    """A CSV row holds the customer: text as is (a leading ' escapes a formula start), null
    as an empty cell, anything else as JSON."""
    assert leaves(customer) <= set(row), leaves(customer) - set(row)
    for column, cell in row.items():
        value = at(customer, column)
        if value is None:
            assert cell == "", column
        elif isinstance(value, str):
            escaped = value[:1] in {"=", "+", "-", "@", "\t", "\r", "'"}
            assert cell == ("'" + value if escaped else value), column
        else:
            assert json.loads(cell) == value, column


def by_creation(customers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(customers, key=lambda c: (datetime.fromisoformat(c["createdAt"]), c["id"]))


def test_ndjson_and_csv_exports_are_what_get_shows(
    http: httpx.Client, auth: TokenFactory, org: str
) -> None:
    h = auth()
    preferences = new_customer()["preferences"] | {"customPreferences": {"theme": "dark", "n": 2}}
    rich = add_customer(
        http,
        h,
        location={"country": "Spain", "city": "Madrid", "region": "=HYPERLINK(1)"},
        preferences=preferences,
        metadata={
            "source": "store",
            "lifetimeValue": {"amount": 1234.5, "currency": "EUR"},
            "purchaseHistory": [
                {
                    "id": "p-1",
                    "amount": {"amount": 20.25, "currency": "EUR"},
                    "product": "Shoes",
                    "purchaseDate": "2025-05-01T10:00:00Z",
                }
            ],
            "referralSource": "-newsletter",
        },
    )
    quoted = add_customer(http, h, name='Zelda "Z" Quxworth,\nJr.', location=None, tags=[])
    plain = add_customer(http, h, name="José Ñúñez", age=None, gender=None)
    sid = new_segment(http, h, kind="STATIC", criteria=None)["id"]
    added = http.post(f"{SEGMENTS}/{sid}/members", json={"add": [rich["id"]]}, headers=h)
    assert added.json() == {"joined": 1, "left": 0}
    login = {"type": "LOGIN", "timestamp": (datetime.now(UTC) - timedelta(hours=1)).isoformat()}
    assert http.post(f"{CUSTOMERS}/{quoted['id']}/track", json=login, headers=h).status_code == 202
    eventually(lambda: http.get(f"{CUSTOMERS}/{rich['id']}", headers=h).json()["segments"])
    token = {"X-Consistency-Token": "1"}  # long reached: answered at once

    ids = [rich["id"], quoted["id"], plain["id"]]
    shown = by_creation([http.get(f"{CUSTOMERS}/{i}", headers=h).json() for i in ids])
    assert shown[0]["segments"] == [sid] and shown[0]["preferences"]["customPreferences"]
    assert shown[1]["metadata"]["loginCount"] == 1

    response, customers = export(http, {**h, **token})
    assert customers == shown
    disposition = response.headers["content-disposition"]
    name = rf"customers-{org}-\d{{8}}T\d{{6}}Z\.ndjson"
    assert re.fullmatch(f'attachment; filename="{name}"', disposition), disposition
    assert export(http, h, format="ndjson")[1] == shown

    response, rows = export_csv(http, h)
    assert response.content.startswith(b"id,email,name,age,gender,location.country,")
    assert b"\r\n" in response.content
    assert response.headers["content-disposition"].endswith('.csv"')
    assert [r["id"] for r in rows] == [c["id"] for c in shown]
    for row, customer in zip(rows, shown, strict=True):
        assert_row_is(row, customer)
    assert rows[0]["location.region"] == "'=HYPERLINK(1)"
    assert rows[0]["preferences.privacySettings.analyticsTracking"] == "true"
    assert rows[0]["metadata.lifetimeValue.amount"] == "1234.5"
    assert json.loads(rows[0]["segments"]) == [sid]


def test_filters_and_segment_select_the_customers(http: httpx.Client, auth: TokenFactory) -> None:
    h = auth()
    madrid = add_customer(http, h, age=35, tags=["vip"])["id"]
    paris = add_customer(http, h, age=50, tags=[], location={"country": "FR", "city": "Paris"})
    old = add_customer(http, h, age=70, tags=["vip", "gold"])["id"]
    gone = add_customer(http, h)["id"]
    deleted = http.delete(f"{CUSTOMERS}/{gone}", headers=h)
    assert deleted.status_code == 204
    h_now = {**h, "X-Consistency-Token": deleted.headers["X-Consistency-Token"]}

    assert exported_ids(http, h_now) == [madrid, paris["id"], old]  # DELETED left out
    assert exported_ids(http, h, status="DELETED") == [gone]
    assert exported_ids(http, h, status="ACTIVE") == [madrid, paris["id"], old]
    assert exported_ids(http, h, country="Spain") == [madrid, old]
    assert exported_ids(http, h, country="es", tag=["vip"], ageMax=40) == [madrid]
    assert exported_ids(http, h, tag=["vip", "gold"]) == [old]
    assert exported_ids(http, h, city="PARIS", gender="MALE") == [paris["id"]]
    assert exported_ids(http, h, ageMin=40, ageMax=60) == [paris["id"]]
    since = paris["createdAt"]
    assert exported_ids(http, h, createdFrom=since) == [paris["id"], old]
    assert exported_ids(http, h, createdTo=since) == [madrid, paris["id"]]
    assert [r["id"] for r in export_csv(http, h, country="ES")[1]] == [madrid, old]

    sid = new_segment(http, h, kind="STATIC", criteria=None)["id"]
    url = f"{SEGMENTS}/{sid}/members"
    assert http.post(url, json={"add": [old, paris["id"], madrid]}, headers=h).status_code == 200
    assert http.post(url, json={"remove": [madrid]}, headers=h).status_code == 200
    expected = sorted([old, paris["id"]])  # customer id order
    eventually(lambda: exported_ids(http, h, segmentId=sid) == expected)
    assert [r["id"] for r in export_csv(http, h, segmentId=sid)[1]] == expected

    def problem(code: int, field: str | None, **params: Any) -> None:
        assert_problem(http.get(EXPORT, params=params, headers=h), code, field)

    problem(404, None, segmentId=str(uuid.uuid4()))
    other = auth(org_id=f"other-{uuid.uuid4().hex[:6]}")
    foreign = new_segment(http, other, kind="STATIC", criteria=None)["id"]
    problem(404, None, segmentId=foreign)
    problem(422, "segmentId", segmentId=sid, country="ES")
    problem(422, "segmentId", segmentId=sid, status="DELETED")
    problem(422, "ageMax", ageMin=50, ageMax=40)
    problem(422, "createdTo", createdFrom="2026-02-01T00:00:00Z", createdTo="2026-01-01T00:00:00Z")
    problem(422, "country", country="Atlantis")
    problem(422, "format", format="xml")
    problem(422, "segmentId", segmentId="not-a-uuid")
    assert http.get(EXPORT).status_code == 401


def test_analysts_get_masked_exports_and_other_organizations_nothing(
    http: httpx.Client, auth: TokenFactory
) -> None:
    h = auth()
    cid = add_customer(http, h, name="Export Person")["id"]
    analyst = auth("analyst")
    shown = http.get(f"{CUSTOMERS}/{cid}", headers=analyst).json()
    assert shown["email"] == "***"

    response, customers = export(http, analyst)
    assert customers == [shown]
    assert not EMAIL.findall(response.text) and "Export Person" not in response.text
    response, rows = export_csv(http, analyst)
    assert_row_is(rows[0], shown)
    assert not EMAIL.findall(response.text) and "Export Person" not in response.text
    assert rows[0]["email"] == rows[0]["name"] == "***" and rows[0]["location.city"] == ""

    stranger = auth(org_id=f"other-{uuid.uuid4().hex[:6]}")
    assert export(http, stranger)[1] == []
    assert export_csv(http, stranger)[1] == []


def test_an_export_larger_than_a_chunk_arrives_complete_and_in_order(
    http: httpx.Client, auth: TokenFactory, migrated: Settings, org: str
) -> None:
    count = CHUNK + 500
    ids = set(register(migrated, org, count))
    wait_projected(migrated, org, count)
    h = auth()

    _, customers = export(http, h)
    assert len(customers) == count and {c["id"] for c in customers} == ids
    assert customers == by_creation(customers)
    _, rows = export_csv(http, h)
    assert [r["id"] for r in rows] == [c["id"] for c in customers]


def test_segment_definitions_round_trip_to_another_organization(
    http: httpx.Client, auth: TokenFactory
) -> None:
    a = auth()
    new_segment(http, a)
    new_segment(
        http,
        a,
        purpose="marketing",
        description="",
        criteria={"demographics": {"ageRange": {"min": 18, "max": 30}}},
    )
    new_segment(http, a, kind="STATIC", criteria=None, ruleId="manual-list")
    dropped = new_segment(http, a)["id"]
    deleted = http.delete(f"{SEGMENTS}/{dropped}", headers=a)
    assert deleted.status_code == 204
    a_now = {**a, "X-Consistency-Token": deleted.headers["X-Consistency-Token"]}

    exported = http.get(SEGMENTS_EXPORT, headers=a_now)
    assert exported.status_code == 200, exported.text
    body = exported.json()
    assert body["version"] == 1 and datetime.fromisoformat(body["exportedAt"])
    definitions = body["segments"]
    assert len(definitions) == 3
    fields = {"name", "description", "ruleId", "kind", "purpose", "criteria"}
    assert all(set(d) == fields for d in definitions), definitions
    assert [d["kind"] for d in definitions] == ["DYNAMIC", "DYNAMIC", "STATIC"]
    assert definitions[1]["purpose"] == "marketing"
    assert exported.headers["content-disposition"].endswith('.json"')

    b = auth(org_id=f"org-b-{uuid.uuid4().hex[:6]}")
    assert http.get(SEGMENTS_EXPORT, headers=b).json()["segments"] == []
    imported = http.post(f"{SEGMENTS}/import", json=body, headers=b)
    assert imported.status_code == 200, imported.text
    result = imported.json()
    assert (result["created"], result["skipped"]) == (3, 0)
    assert [r["name"] for r in result["segments"]] == [d["name"] for d in definitions]
    eventually(lambda: http.get(SEGMENTS_EXPORT, headers=b).json()["segments"] == definitions)

    # Importing again creates nothing; upsert redefines what changed and keeps the rest.
    assert http.post(f"{SEGMENTS}/import", json=body, headers=b).json()["skipped"] == 3
    changed = [{**definitions[0], "description": "changed"}, *definitions[1:]]
    upserted = http.post(
        f"{SEGMENTS}/import",
        params={"mode": "upsert"},
        json={**body, "segments": changed},
        headers=b,
    ).json()
    assert [r["outcome"] for r in upserted["segments"]] == ["updated", "unchanged", "unchanged"]
    assert [r["id"] for r in upserted["segments"]] == [r["id"] for r in result["segments"]]

    # Checked whole before anything is created: a name twice, a bad definition.
    c = auth(org_id=f"org-c-{uuid.uuid4().hex[:6]}")
    twice = {**body, "segments": [definitions[0], definitions[0]]}
    assert_problem(http.post(f"{SEGMENTS}/import", json=twice, headers=c), 422, "segments.1.name")
    broken = {**body, "segments": [definitions[0], {**definitions[1], "kind": "STATIC"}]}
    assert_problem(
        http.post(f"{SEGMENTS}/import", json=broken, headers=c), 422, "segments.1.criteria"
    )
    assert_problem(
        http.post(f"{SEGMENTS}/import", json={**body, "version": 2}, headers=c), 422, "version"
    )
    assert http.get(SEGMENTS_EXPORT, headers=c).json()["segments"] == []


def test_the_csv_flattened_by_the_server_is_byte_for_byte_the_cells_of_what_get_shows(
    http: httpx.Client, auth: TokenFactory
) -> None:
    """The CSV export's cells are made in SQL (read_api.export.csv_cells); they are exactly
    `csv_row` of each customer the NDJSON export shows (masked for an analyst), with its
    current segments and tracked activity: formula starts, quotes, line breaks, numbers as
    written, lists and maps as compact JSON in their order."""
    h = auth()
    preferences = new_customer()["preferences"] | {
        "customPreferences": {"z": 1, "a": [1.5, "x"], "n": None, "t": "=1+1"}
    }
    rich = add_customer(
        http,
        h,
        name='@Ann, "the" first',
        location={
            "country": "ES",
            "city": "+Madrid",
            "region": "'quoted",
            "postalCode": "-28001",
            "latitude": 0.00001,
            "longitude": -3.703790,
        },
        preferences=preferences,
        tags=["b", "a"],
        metadata={
            "source": "=cmd",
            "lifetimeValue": {"amount": 1000000.5, "currency": "EUR"},
            "referralSource": "line\nbreak",
            "lastLogin": "2030-01-01T00:00:00Z",  # later than the tracked login: kept
        },
    )
    plain = add_customer(http, h, name="José Ñúñez", age=None, gender=None, location=None)
    sid = new_segment(http, h, kind="STATIC", criteria=None)["id"]
    http.post(f"{SEGMENTS}/{sid}/members", json={"add": [rich["id"]]}, headers=h)
    moment = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    for customer, at_ in ((rich, moment), (plain, moment + timedelta(microseconds=120))):
        login = {"type": "LOGIN", "timestamp": at_.isoformat()}
        sent = http.post(f"{CUSTOMERS}/{customer['id']}/track", json=login, headers=h)
        assert sent.status_code == 202
    eventually(lambda: http.get(f"{CUSTOMERS}/{rich['id']}", headers=h).json()["segments"])
    eventually(
        lambda: http.get(f"{CUSTOMERS}/{plain['id']}", headers=h).json()["metadata"]["loginCount"]
    )

    def rendered(customers: list[dict[str, Any]]) -> bytes:
        return _csv([list(CSV_COLUMNS), *(csv_row(c) for c in customers)])

    for who in (h, auth("analyst")):
        for params in ({}, {"segmentId": sid}):
            _, customers = export(http, who, **params)
            assert len(customers) == (2 if not params else 1)
            response = http.get(EXPORT, params={**params, "format": "csv"}, headers=who)
            assert response.content == rendered(customers)
