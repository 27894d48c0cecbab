"""Master-key rotation on real PostgreSQL (this module's own database): processes holding the
old or the new key keep working throughout, every data key ends up under the new one, an
erasure during rotation stays an erasure, and HMAC values (API keys, the audit chain) stay
valid because the root secret is re-wrapped, not changed."""

from __future__ import annotations

import base64
import secrets
from typing import Any

import psycopg
import pytest

from domain.access import Principal
from domain.customer import Customer
from eventstore import keys
from eventstore.application import Customers
from eventstore.keys import LazyKeyring, key_status, rotate
from service.api_keys import ApiKeyStore
from service.cli import _verify_audit
from service.settings import Settings
from tests.integration.test_erasure import people
from write_api.customers import CustomerCommands


def new_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def names(settings: Settings, customers: list[Customer]) -> list[str]:
    """Read back by a process that has cached nothing."""
    fresh = Customers(settings, pool_size=1)
    try:
        return [fresh.repository.get(c.id).profile["name"] for c in customers]
    finally:
        fresh.close()


def status(settings: Settings) -> dict[str, int]:
    with psycopg.connect(str(settings.database_url)) as conn:
        return key_status(conn, settings)


def test_rotation_without_downtime(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    org = f"org-{secrets.token_hex(3)}"
    old = settings
    with Customers(old, pool_size=1) as app:
        before = people(app, org, 5)
        doomed = people(app, org, 1)[0]
    api_keys = ApiKeyStore(old, LazyKeyring(old))
    _, api_key = api_keys.create(org, "crm", ["service"], "tester")
    api_keys.close()
    # An audited privacy operation seals an entry with the audit key.
    with Customers(old, pool_size=1) as app:
        CustomerCommands(app).erase(Principal("dpo-1", org, frozenset({"dpo"})), before[-1].id)
    before = before[:-1]

    # Step 1 of the runbook: the new key is current, the old one still accepted.
    both = old.model_copy(
        update={"master_key": new_key(), "previous_master_keys": str(old.master_key)}
    )
    assert names(both, before) == [c.profile["name"] for c in before]
    with Customers(both, pool_size=1) as app:
        after = people(app, org, 2)
    assert names(old.model_copy(update={"previous_master_keys": both.master_key}), after) == [
        c.profile["name"] for c in after
    ]
    assert status(both)["other"] == len(before) + 1  # + doomed; the erased one is shredded

    # The doomed customer is erased while its key is being re-wrapped: erasure wins.
    unwrap = keys.MasterKeys.unwrap

    def erase_meanwhile(self: keys.MasterKeys, kek_id: Any, wrapped: bytes, ctx: bytes) -> bytes:
        if ctx == doomed.id.bytes:
            with psycopg.connect(str(old.database_url)) as conn:
                conn.execute(
                    "UPDATE customer_keys SET wrapped_key = NULL WHERE customer_id = %s",
                    (doomed.id,),
                )
        return unwrap(self, kek_id, wrapped, ctx)

    monkeypatch.setattr(keys.MasterKeys, "unwrap", erase_meanwhile)
    with psycopg.connect(str(both.database_url)) as conn:
        assert rotate(conn, both, batch=2) == len(before)
    monkeypatch.undo()
    assert status(both) == {"current": len(before) + len(after), "other": 0, "shredded": 2}

    # Step 3: the old key is gone from the configuration; everything still reads and verifies.
    new_only = both.model_copy(update={"previous_master_keys": ""})
    assert names(new_only, before + after) == [c.profile["name"] for c in before + after]
    assert _verify_audit(new_only) == 0
    store = ApiKeyStore(new_only, LazyKeyring(new_only))
    try:
        identified = store.identify(api_key)
    finally:
        store.close()
    assert identified is not None and identified[1] == org

    # And the old key alone no longer opens anything.
    with pytest.raises(RuntimeError, match="CUSTOMERS_PREVIOUS_MASTER_KEYS"):
        names(old, before[:1])
