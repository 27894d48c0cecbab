"""API keys: created by an admin, shown once, stored peppered, scoped to an organization and a
role set, last use recorded, revocable (at once, with the keys made with them), capped per
organization."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from service import cli
from service.gateway import Gateway
from service.settings import Settings
from tests.e2e.conftest import TokenFactory, serve_in_thread
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


def make_key(
    http: httpx.Client, headers: dict[str, str], roles: tuple[str, ...] = ("admin",)
) -> dict[str, Any]:
    made = http.post(KEYS, json={"name": "k", "roles": list(roles)}, headers=headers)
    assert made.status_code == 201, made.text
    body: dict[str, Any] = made.json()
    return body


def test_a_revoked_key_is_refused_at_once_for_reads_too(
    http: httpx.Client, auth: TokenFactory
) -> None:
    """The gateway's read and write apps have a key store each: a revocation through one
    (DELETE is a write) must not leave the other serving its cached lookup."""
    admin = auth()
    key = make_key(http, admin, ("analyst",))
    as_key = {"X-API-Key": key["key"]}
    assert http.get(CUSTOMERS, headers=as_key).status_code == 200  # now cached by reads
    assert http.delete(f"{KEYS}/{key['id']}", headers=admin).status_code == 204
    assert_problem(http.get(CUSTOMERS, headers=as_key), 401)


def test_keys_made_with_a_key_die_with_it(
    http: httpx.Client, auth: TokenFactory, migrated: Settings
) -> None:
    admin = auth()
    parent = make_key(http, admin)
    as_parent = {"X-API-Key": parent["key"]}
    child = make_key(http, as_parent)
    grandchild = make_key(http, {"X-API-Key": child["key"]}, ("analyst",))
    for key in (child, grandchild):
        assert http.get(CUSTOMERS, headers={"X-API-Key": key["key"]}).status_code == 200

    assert http.delete(f"{KEYS}/{parent['id']}", headers=admin).status_code == 204
    for key in (parent, child, grandchild):
        assert_problem(http.get(CUSTOMERS, headers={"X-API-Key": key["key"]}), 401)
    listed = {k["id"]: k for k in http.get(KEYS, headers=admin).json()["items"]}
    assert all(listed[k["id"]]["revokedAt"] for k in (parent, child, grandchild))

    # A child its parent made while being revoked (so the revocation missed it) is refused
    # all the same: the whole chain must be live.
    parent = make_key(http, admin)
    late = make_key(http, {"X-API-Key": parent["key"]}, ("analyst",))
    with psycopg.connect(str(migrated.database_url), autocommit=True) as conn:
        conn.execute("UPDATE api_keys SET revoked_at = now() WHERE id = %s", (parent["id"],))
    assert_problem(http.get(CUSTOMERS, headers={"X-API-Key": late["key"]}), 401)


@pytest.fixture(scope="module")
def capped(migrated: Settings) -> Iterator[str]:
    yield from serve_in_thread(
        Gateway(migrated.model_copy(update={"api_keys_per_organization": 2}))
    )


def test_keys_per_organization_are_capped(capped: str, auth: TokenFactory) -> None:
    admin = auth()
    with httpx.Client(base_url=capped, timeout=10) as http:
        first, _ = make_key(http, admin), make_key(http, admin)
        assert_problem(http.post(KEYS, json={"name": "k", "roles": ["admin"]}, headers=admin), 409)
        # Other organizations have caps of their own; a revoked key frees its place.
        make_key(http, auth(org_id="another-org-capped"))
        assert http.delete(f"{KEYS}/{first['id']}", headers=admin).status_code == 204
        make_key(http, admin)
