"""The consent ledger end to end: statements per purpose with how they were captured,
effective at once (a marketing segment loses the customer who withdraws), visible as
history, tracked as privacy requests."""

from __future__ import annotations

import httpx
import psycopg
from psycopg import sql

from service.settings import Settings
from tests.e2e.conftest import TokenFactory, new_customer
from tests.e2e.test_customers_api import assert_problem
from tests.e2e.test_membership_api import (
    CUSTOMERS,
    SPAIN_30_TO_40,
    add_customer,
    eventually,
    members,
    new_segment,
)


def consent(
    http: httpx.Client, headers: dict[str, str], cid: str, **body: object
) -> httpx.Response:
    return http.put(f"{CUSTOMERS}/{cid}/consent", json=body, headers=headers)


def test_withdrawal_is_recorded_and_takes_effect(
    http: httpx.Client, auth: TokenFactory, migrated: Settings
) -> None:
    h = auth()
    customer = add_customer(http, h, age=35)
    cid = customer["id"]
    sid = new_segment(http, h, criteria=SPAIN_30_TO_40, purpose="marketing")["id"]
    eventually(lambda: cid in members(http, h, sid))

    withdrawn = consent(
        http,
        h,
        cid,
        consents={"marketing": False, "personalization": True},
        source="preference_center",
        policyVersion="2026-10",
        ipAddress="203.0.113.7",
        userAgent="Mozilla/5.0 (ConsentTest)",
    )
    assert withdrawn.status_code == 200, withdrawn.text
    body = withdrawn.json()
    assert body["consents"]["marketing"] is False and body["consents"]["personalization"] is True
    token = {"X-Consistency-Token": withdrawn.headers["X-Consistency-Token"]}
    profile = http.get(f"{CUSTOMERS}/{cid}", headers={**h, **token}).json()
    assert profile["preferences"]["marketingConsent"] is False
    eventually(lambda: cid not in members(http, h, sid))
    stints = http.get(f"{CUSTOMERS}/{cid}/segments", params={"history": "true"}, headers=h)
    assert [s["leaveReason"] for s in stints.json()["items"]] == ["customer_change"]

    ledger = http.get(f"{CUSTOMERS}/{cid}/consent", headers={**auth("dpo"), **token}).json()
    assert ledger["consents"]["marketing"] is False
    assert [s["source"] for s in ledger["history"]] == ["registration", "preference_center"]
    last = ledger["history"][-1]
    assert last["consents"] == {"marketing": False, "personalization": True}
    assert (last["policyVersion"], last["ipAddress"], last["userAgent"]) == (
        "2026-10",
        "203.0.113.7",
        "Mozilla/5.0 (ConsentTest)",
    )
    masked = http.get(f"{CUSTOMERS}/{cid}/consent", headers=auth("analyst")).json()
    assert "ipAddress" not in masked["history"][-1]
    # Shown from the encrypted event store: no read model holds the address or the agent.
    with psycopg.connect(str(migrated.database_url)) as conn:
        for table in ("consent_ledger", "customers_docs", "customers_view", "segment_facts"):
            query = sql.SQL("SELECT count(*) FROM {t} WHERE {t}::text ~ %s").format(
                t=sql.Identifier(table)
            )
            found = conn.execute(query, ("203\\.0\\.113\\.7|ConsentTest",)).fetchone()
            assert found == (0,), table

    # Granting again is the same call; the member is back.
    assert consent(http, h, cid, consents={"marketing": True}).status_code == 200
    eventually(lambda: cid in members(http, h, sid))

    # A profile update that changes a purpose is a statement too.
    update = {**new_customer(email=customer["email"], age=35)}
    update["preferences"]["dataProcessingConsent"] = False
    updated = http.put(f"{CUSTOMERS}/{cid}", json=update, headers=h)
    assert updated.status_code == 200
    token = {"X-Consistency-Token": updated.headers["X-Consistency-Token"]}
    history = http.get(f"{CUSTOMERS}/{cid}/consent", headers={**h, **token}).json()["history"]
    assert history[-1]["source"] == "profile_update"
    assert history[-1]["consents"]["dataProcessing"] is False

    requests = http.get(
        "/api/v1/privacy/requests",
        params={"customerId": cid, "type": "CONSENT_CHANGE"},
        headers=auth("dpo"),
    ).json()["items"]
    assert [r["status"] for r in requests] == ["COMPLETED", "COMPLETED"]


def test_bad_consent_input_names_the_field(http: httpx.Client, auth: TokenFactory) -> None:
    h = auth()
    cid = add_customer(http, h)["id"]
    assert_problem(consent(http, h, cid, consents={"telepathy": True}), 422, "consents.telepathy")
    assert_problem(consent(http, h, cid, consents={}), 422, "consents")
    bad_ip = consent(http, h, cid, consents={"marketing": True}, ipAddress="999.1.1.1")
    assert_problem(bad_ip, 422, "ipAddress")
    assert_problem(consent(http, auth("analyst"), cid, consents={"marketing": True}), 403)
    assert_problem(
        http.get(f"{CUSTOMERS}/00000000-0000-0000-0000-000000000000/consent", headers=h), 404
    )
