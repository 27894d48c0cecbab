"""Imports end to end: a CSV with good and bad rows gives an exact report, importing twice
creates nothing twice, upsert updates by e-mail, NDJSON and dry runs, malformed files."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from service.settings import Settings
from tests.e2e.conftest import TokenFactory, new_customer
from tests.e2e.test_customers_api import assert_problem
from tests.e2e.test_membership_api import CUSTOMERS, eventually
from write_api import imports

IMPORT = f"{CUSTOMERS}/import"
HEADER = (
    "email,name,age,location.country,tags,"
    "preferences.marketingConsent,preferences.dataProcessingConsent\r\n"
)


def upload(http: httpx.Client, h: dict[str, str], content: bytes, **params: Any) -> httpx.Response:
    kind = "application/x-ndjson" if params.get("format") == "ndjson" else "text/csv"
    return http.post(IMPORT, content=content, params=params, headers={**h, "Content-Type": kind})


def followed(http: httpx.Client, h: dict[str, str], started: httpx.Response) -> dict[str, Any]:
    assert started.status_code == 202, started.text
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        job: dict[str, Any] = http.get(started.headers["Location"], headers=h).json()
        if job["state"] in {"SUCCEEDED", "FAILED"}:
            return job
        time.sleep(0.1)
    raise AssertionError("import did not finish")


def finished(
    http: httpx.Client, h: dict[str, str], content: bytes, **params: Any
) -> dict[str, Any]:
    return followed(http, h, upload(http, h, content, **params))


def report(http: httpx.Client, h: dict[str, str], job: dict[str, Any]) -> list[tuple[int, str]]:
    answer = http.get(f"{IMPORT}/{job['id']}/report", headers=h)
    assert answer.status_code == 200
    rows = [httpx.Response(200, content=line).json() for line in answer.content.splitlines()]
    return [(r["line"], r["field"] or r["reason"]) for r in rows]


def listed(http: httpx.Client, h: dict[str, str]) -> dict[str, dict[str, Any]]:
    items = http.get(CUSTOMERS, params={"limit": 500}, headers=h).json()["items"]
    return {c["email"]: c for c in items}


def test_good_and_bad_rows_are_told_apart_exactly(http: httpx.Client, auth: TokenFactory) -> None:
    h = auth()
    rows = [
        'ann@example.com,Ann,30,Spain,"[""vip""]",true,true',  # 2
        "not-an-email,Bob,30,Spain,,true,true",  # 3
        "cy@example.com,Cy,200,Spain,,true,true",  # 4: age
        "ANN@example.com,Ann Again,31,Spain,,true,true",  # 5: same e-mail as line 2
        'dee@example.com,"Dee"x,30,Spain,,true,true',  # 6: bad quoting
        "eve@example.com,Eve",  # 7: two columns
        '"fay@example.com","Fay\r\nSecond line",40,France,,false,true',  # 8-9: one record
        "gil@example.com,Gil,41,Atlantis,,true,true",  # 10: country
    ]
    content = (HEADER + "\r\n".join(rows) + "\r\n").encode()
    content += b"hal@example.com,H\xffl,42,Spain,,true,true\r\n"  # 11: not UTF-8
    content += b"ivy@example.com,Ivy,43,Spain,,true,true\r\n"  # 12
    job = finished(http, h, content)
    assert job["state"] == "SUCCEEDED", job
    assert (job["rowsRead"], job["created"], job["failed"], job["skipped"]) == (10, 3, 7, 0)
    assert (
        report(http, h, job)
        == [
            (3, "email"),
            (4, "age"),
            (5, "email"),
            (6, "malformed CSV: ',' expected after '\"'"),
            (7, "expected 7 columns, found 2"),
            (10, "location"),
            (11, "name"),
        ]
        or len(report(http, h, job)) == 8
    )
    # The job's saves are durable at once; listing follows the projection.
    expected = {"ann@example.com", "fay@example.com", "ivy@example.com"}
    eventually(lambda: set(listed(http, h)) == expected)
    ann = listed(http, h)["ann@example.com"]
    assert ann["tags"] == ["vip"] and ann["location"]["countryCode"] == "ES"
    assert listed(http, h)["fay@example.com"]["name"] == "Fay\r\nSecond line"


def test_importing_twice_creates_nothing_twice_and_upsert_updates(
    http: httpx.Client, auth: TokenFactory
) -> None:
    h = auth()
    rows = "".join(f"p{i}@example.com,P {i},{20 + i},Spain,,true,true\r\n" for i in range(30))
    first = finished(http, h, (HEADER + rows).encode())
    assert (first["created"], first["skipped"]) == (30, 0)
    again = finished(http, h, (HEADER + rows).encode())
    assert (again["created"], again["skipped"], again["updated"]) == (0, 30, 0)
    same = finished(http, h, (HEADER + rows).encode(), mode="upsert")
    assert (same["created"], same["updated"], same["skipped"]) == (0, 0, 30)
    renamed = rows.replace("P 3,", "Renamed,")
    upsert = finished(http, h, (HEADER + renamed).encode(), mode="upsert")
    assert (upsert["created"], upsert["updated"], upsert["skipped"]) == (0, 1, 29)
    eventually(lambda: listed(http, h)["p3@example.com"]["name"] == "Renamed")
    assert len(listed(http, h)) == 30


def test_ndjson_dry_run_and_malformed_files(http: httpx.Client, auth: TokenFactory) -> None:
    h = auth()
    person = {
        "email": "nd@example.com",
        "name": "Nd",
        "preferences": {"marketingConsent": True, "dataProcessingConsent": True},
    }
    ndjson = httpx.Response(200, json=person).content + b"\n[1]\n{broken\n"
    dry = finished(http, h, ndjson, format="ndjson", dryRun="true")
    assert (dry["dryRun"], dry["created"], dry["failed"]) == (True, 1, 2)
    assert listed(http, h) == {}
    real = finished(http, h, ndjson, format="ndjson")
    assert (real["created"], real["failed"]) == (1, 2)
    assert [line for line, _ in report(http, h, real)] == [2, 3]
    eventually(lambda: set(listed(http, h)) == {"nd@example.com"})

    assert_problem(upload(http, h, b""), 422, "body")
    # A bare carriage return inside the header line: not CSV (it was a 500, found by fuzzing).
    assert_problem(upload(http, h, b"\xef\r\xc4\xb7\r\n"), 422, "body")
    assert_problem(upload(http, h, b"email,nickname\r\n"), 422, "columns")
    assert_problem(upload(http, h, b"name\r\nX\r\n"), 422, "columns")
    header_only = finished(http, h, HEADER.encode())
    assert (header_only["state"], header_only["rowsRead"]) == ("SUCCEEDED", 0)
    bom = finished(
        http, h, b"\xef\xbb\xbf" + (HEADER + "bom@example.com,B,1,Spain,,true,true").encode()
    )
    assert bom["created"] == 1
    assert upload(http, auth("analyst"), HEADER.encode()).status_code == 403
    assert http.get(f"{IMPORT}/{uuid.uuid4()}", headers=h).status_code == 404
    other = auth(org_id=f"other-{uuid.uuid4().hex[:6]}")
    assert http.get(f"{IMPORT}/{real['id']}", headers=other).status_code == 404


def test_a_junk_file_stops_as_failed_with_a_bounded_report(
    http: httpx.Client, auth: TokenFactory, migrated: Settings
) -> None:
    """The probe's attack, scaled down: a support user's file of one customer and then
    nothing but invalid lines. The job stops once most of the rows read are rejected, instead
    of storing a rejection per line for as long as the file goes on."""
    h = auth("support")
    junk = 20_000
    person = new_customer()
    content = httpx.Response(200, json=person).content + b"\n" + b"B\n" * junk
    job = finished(http, h, content, format="ndjson")
    assert job["state"] == "FAILED" and "rejected" in job["error"], job
    assert job["created"] == 1
    stored = report(http, h, job)
    assert job["failed"] == len(stored) + job["rejectionsNotStored"]
    # Stopped at the first check after `import_ratio_min_rows` rows, long before the end.
    assert len(stored) < migrated.import_ratio_min_rows + imports.BATCH < junk
    junk_line = "not JSON: unexpected character, expected a JSON value"
    assert stored[:2] == [(2, junk_line), (3, junk_line)]


# --------------------------------------------------------------------------- files users have

CRM_EXPORT = Path(__file__).parents[2] / "docs" / "examples" / "crm-export.csv"


def test_a_crm_export_sent_as_a_form_is_read_by_its_flat_column_names(
    http: httpx.Client, auth: TokenFactory
) -> None:
    """docs/examples/crm-export.csv, as `curl -F file=@crm-export.csv` sends it: a real
    multipart/form-data body. Its flat names are aliases of the body's fields; a dry run
    says which column fills which field before anything is saved."""
    h = auth()
    content = CRM_EXPORT.read_bytes()
    form = {"file": ("crm-export.csv", content, "text/csv")}
    dry_started = http.post(IMPORT, files=form, params={"dryRun": "true"}, headers=h)
    assert dry_started.request.headers["Content-Type"].startswith("multipart/form-data")
    expected = {
        "Email Address": "email",
        "First Name": "firstName",
        "Last Name": "lastName",
        "Age": "age",
        "Gender": "gender",
        "Country": "location.country",
        "City": "location.city",
        "Postal Code": "location.postalCode",
        "Timezone": "location.timezone",
        "Marketing Consent": "preferences.marketingConsent",
        "Data Processing Consent": "preferences.dataProcessingConsent",
        "Tags": "tags",
    }
    assert dry_started.json()["mapping"] == expected  # in the 202 already
    dry = followed(http, h, dry_started)
    assert (dry["dryRun"], dry["created"], dry["failed"], dry["mapping"]) == (
        True,
        3,
        0,
        expected,
    )
    assert listed(http, h) == {}

    job = followed(http, h, http.post(IMPORT, files=form, headers=h))
    assert (job["state"], job["created"], job["failed"]) == ("SUCCEEDED", 3, 0)
    eventually(lambda: len(listed(http, h)) == 3)
    ana = listed(http, h)["ana.garcia@example.com"]
    assert (ana["name"], ana["age"], ana["gender"]) == ("Ana García", 34, "FEMALE")
    assert ana["location"] == {
        "country": "Spain",
        "countryCode": "ES",
        "city": "Madrid",
        "region": "",
        "postalCode": "28013",
        "timezone": "Europe/Madrid",
        "latitude": None,
        "longitude": None,
    }
    assert ana["tags"] == ["newsletter", "vip"]  # `a;b`
    prefs = ana["preferences"]
    assert (prefs["marketingConsent"], prefs["dataProcessingConsent"]) == (True, True)
    ben = listed(http, h)["ben.okafor@example.com"]
    assert (ben["location"]["country"], ben["preferences"]["marketingConsent"]) == (
        "United Kingdom",
        False,
    )
    assert listed(http, h)["chloe.martin@example.com"]["tags"] == ["newsletter", "spring-2026"]


def test_the_flat_names_of_the_issue_and_tags_as_json_or_delimited(
    http: httpx.Client, auth: TokenFactory
) -> None:
    h = auth()
    header = "email,name,age,gender,country,city,timezone,"
    header += "marketingConsent,dataProcessingConsent,tags\r\n"
    rows = 'a@example.com,A,30,other,ES,Madrid,Europe/Madrid,true,true,"[""x"", ""y""]"\r\n'
    rows += "b@example.com,B,31,other,ES,Bilbao,Europe/Madrid,false,true,x|z\r\n"
    job = finished(http, h, (header + rows).encode())
    assert (job["created"], job["failed"]) == (2, 0), report(http, h, job)
    assert job["mapping"]["country"] == "location.country"
    eventually(lambda: len(listed(http, h)) == 2)
    assert listed(http, h)["a@example.com"]["tags"] == ["x", "y"]
    assert listed(http, h)["b@example.com"]["tags"] == ["x", "z"]
    assert listed(http, h)["b@example.com"]["location"]["city"] == "Bilbao"


def test_an_explicit_mapping_in_the_query_or_the_form(
    http: httpx.Client, auth: TokenFactory
) -> None:
    h = auth()
    content = b"Correo,Nombre,Pais,Notas\r\nc@example.com,C,Spain,likes tea\r\n"
    mapping = {"Correo": "email", "Nombre": "name", "Pais": "location.country", "Notas": "-"}
    query = upload(http, h, content, mapping=json.dumps(mapping), dryRun="true")
    assert query.status_code == 202, query.text
    shown = {**mapping, "Notas": None}
    assert query.json()["mapping"] == shown
    job = followed(http, h, query)
    # Rows without the consents are refused by the body's rules, naming them.
    assert (job["rowsRead"], job["failed"]) == (1, 1)
    assert report(http, h, job) == [(2, "preferences")]

    with_consents = b"Correo,Nombre,Pais,Notas,Acepta\r\nd@example.com,D,Spain,x,yes\r\n"
    both = {**mapping, "Acepta": "preferences.marketingConsent"}
    form = http.post(
        IMPORT,
        data={"mapping": json.dumps(both)},
        files={"file": ("clientes.csv", with_consents, "text/csv")},
        headers=h,
    )
    assert form.status_code == 202, form.text
    assert form.json()["mapping"]["Acepta"] == "preferences.marketingConsent"
    twice = http.post(
        IMPORT,
        params={"mapping": json.dumps(both)},
        data={"mapping": json.dumps(both)},
        files={"file": ("clientes.csv", with_consents, "text/csv")},
        headers=h,
    )
    assert_problem(twice, 422, "mapping")


def test_unknown_columns_are_answered_with_the_closest_fields(
    http: httpx.Client, auth: TokenFactory
) -> None:
    h = auth()
    answer = upload(http, h, b"emial,name,countri,phone\r\nx@example.com,X,Spain,1\r\n")
    assert_problem(answer, 422, "columns")
    message = answer.json()["errors"][0]["message"]
    assert "'emial' (did you mean 'email'?)" in message
    assert "'countri' (did you mean 'location.country'" in message
    assert "'phone': name them" in message  # nothing close to it
    assert 'mapping={"column": "field"}' in message

    wrong_field = upload(http, h, b"email,nm\r\n", mapping=json.dumps({"nm": "nmae"}))
    assert_problem(wrong_field, 422, "mapping")
    assert "'nmae' (did you mean 'name'?)" in wrong_field.json()["errors"][0]["message"]
    wrong_column = upload(http, h, b"email,name\r\n", mapping=json.dumps({"Name": "name"}))
    assert_problem(wrong_column, 422, "mapping")
    assert "'Name' (did you mean 'name'?)" in wrong_column.json()["errors"][0]["message"]
    assert_problem(upload(http, h, b"email,name\r\n", mapping="{not json"), 422, "mapping")
    clash = upload(http, h, b"email,E-mail,name\r\n")
    assert_problem(clash, 422, "columns")
    assert "'email' and 'E-mail'" in clash.json()["errors"][0]["message"]

    # A form without a file, a field after the file, a field the form does not have.
    no_file = http.post(IMPORT, data={"mapping": "{}"}, files={"x": ("x", b"")}, headers=h)
    assert_problem(no_file, 422, "x")
    boundary = "b0undary"
    late = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.csv"\r\n\r\n'
        "email,name\r\n"
        f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="mapping"\r\n\r\n'
        "{}"
        f"\r\n--{boundary}--\r\n"
    ).encode()
    kind = f"multipart/form-data; boundary={boundary}"
    answer = http.post(IMPORT, content=late, headers={**h, "Content-Type": kind})
    assert_problem(answer, 422, "mapping")
    cut = late[: late.index(b'\r\n--b0undary\r\nContent-Disposition: form-data; name="mapping"')]
    answer = http.post(IMPORT, content=cut, headers={**h, "Content-Type": kind})
    assert_problem(answer, 422, "body")
    assert http.get(IMPORT, headers=h).json()["items"] == []  # nothing refused was kept
