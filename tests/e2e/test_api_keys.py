"""API keys: created by an admin, shown once, stored peppered, scoped to an organization and a
role set, last use recorded, revocable."""

from __future__ import annotations

import json

import httpx
import psycopg
import pytest

from service import cli
from service.settings import Settings
from tests.e2e.conftest import TokenFactory
from tests.e2e.test_customers_api import assert_problem
from tests.e2e.test_membership_api import CUSTOMERS, add_customer

KEYS = "/api/v1/api-keys"


def test_api_key_lifecycle(http: httpx.Client, auth: TokenFactory, migrated: Settings) -> None:
    admin = auth()
    customer = add_customer(http, admin)
    created = http.post(KEYS, json={"name": "crm sync", "roles": ["analyst"]}, headers=admin)
    assert created.status_code == 201, created.text
    body = created.json()
    key = body["key"]
    assert key.startswith("cmk_") and body["prefix"] == key[:12] and body["roles"] == ["analyst"]
    with psycopg.connect(str(migrated.database_url)) as conn:
        stored = conn.execute(
            "SELECT key_hash FROM api_keys WHERE id = %s", (body["id"],)
        ).fetchone()
    assert stored is not None and key.encode() not in bytes(stored[0])

    as_key = {"X-API-Key": key}
    assert http.get(f"{CUSTOMERS}/{customer['id']}", headers=as_key).status_code == 200
    assert_problem(http.post(CUSTOMERS, json={}, headers=as_key), 403)  # analyst: read only
    other = add_customer(http, auth(org_id="another-org"))
    assert_problem(http.get(f"{CUSTOMERS}/{other['id']}", headers=as_key), 404)
    listed = http.get(KEYS, headers=admin).json()["items"]
    (mine,) = [k for k in listed if k["id"] == body["id"]]
    assert "key" not in mine and mine["lastUsedAt"] is not None and mine["revokedAt"] is None

    assert_problem(
        http.post(KEYS, json={"name": "x", "roles": ["analyst"]}, headers=auth("manager")), 403
    )
    assert_problem(
        http.post(KEYS, json={"name": "x", "roles": ["root"]}, headers=admin), 422, "roles.0"
    )
    assert_problem(http.get(CUSTOMERS, headers={"X-API-Key": "cmk_not-a-key"}), 401)

    assert http.delete(f"{KEYS}/{body['id']}", headers=admin).status_code == 204
    # Revoked at once in the process that revoked it; the read side within its cache time.
    assert_problem(http.post(CUSTOMERS, json={}, headers=as_key), 401)
    assert http.get(KEYS, headers=admin).json()["items"][-1]["revokedAt"] is not None
    assert_problem(http.delete(f"{KEYS}/00000000-0000-0000-0000-000000000000", headers=admin), 404)


def test_cli_creates_lists_and_revokes(
    http: httpx.Client,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    org: str,
) -> None:
    monkeypatch.setattr(cli.logs, "configure", lambda *_: None)  # keep the suite's log capture
    assert cli.main(["api-keys", "create", "--org", org, "--name", "etl", "--role", "service"]) == 0
    key = capsys.readouterr().out.strip()
    assert http.get(CUSTOMERS, headers={"X-API-Key": key}).status_code == 200
    assert cli.main(["api-keys", "list", "--org", org]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert (listed["name"], listed["roles"]) == ("etl", ["service"])
    assert cli.main(["api-keys", "revoke", "--org", org, "--id", listed["id"]]) == 0
    assert cli.main(["api-keys", "revoke", "--org", "elsewhere", "--id", listed["id"]]) == 1
