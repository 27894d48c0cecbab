"""Backups and point-in-time restore on a private embedded PostgreSQL (a restore replaces its
data directory): an erased customer stays erased after a restore to before the erasure, the
relay announces the restore and does not take new events for old ones."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest

from domain.access import Principal
from domain.errors import Code, DomainError
from domain.values import Profile
from eventstore import erasure_ledger
from eventstore.application import Customers
from eventstore.relay import MSG_ID_HEADER, RESTORED_KIND, Relay
from service import embedded
from service.backups import (
    Archive,
    BackupAgent,
    WalReceiver,
    archived,
    listing,
    prune,
    take_backup,
)
from service.cli import migrate
from service.restore import RestoreError, parse_target, restore_embedded
from service.settings import Settings
from tests.integration.conftest import _delete_stream
from tests.integration.test_relay import read_stream
from write_api.customers import CustomerCommands


@pytest.fixture
def private(env: Settings) -> Iterator[Settings]:
    """Settings on a PostgreSQL of this test's own, with backups enabled in its data dir."""
    data_dir = Path(tempfile.mkdtemp(prefix="customers-backup-test-", dir="/var/tmp"))
    suffix = secrets.token_hex(4)
    settings = env.model_copy(
        update={
            "database_url": embedded.start_postgres(data_dir),
            "data_dir": data_dir,
            "backup_enabled": True,
            "http_port": embedded.free_port(),
            "nats_stream": f"BACKUP_TEST_{suffix.upper()}",
            "nats_subject_prefix": f"backuptest{suffix}",
        }
    )
    migrate(settings)
    try:
        yield settings
    finally:
        embedded.stop_postgres(data_dir)
        shutil.rmtree(data_dir, ignore_errors=True)
        assert settings.nats_url
        asyncio.run(_delete_stream(settings.nats_url, settings.nats_stream))


def admin(org: str) -> Principal:
    return Principal(sub="tester", org=org, roles=frozenset({"admin"}))


def profile(name: str) -> Profile:
    return Profile.model_validate(
        {
            "email": f"{name.lower()}.{secrets.token_hex(3)}@example.com",
            "name": name,
            "age": 30,
            "preferences": {"marketingConsent": True, "dataProcessingConsent": True},
        }
    )


def wait_archived(settings: Settings) -> None:
    assert settings.database_url
    deadline = time.monotonic() + 30
    while not archived(settings.database_url):
        assert time.monotonic() < deadline, "pg_receivewal did not catch up"
        time.sleep(0.05)


def relay_once(settings: Settings) -> Relay:
    app = Customers(settings, pool_size=1)
    relay = Relay(settings, app)

    async def run() -> None:
        try:
            await relay.run_once()
        finally:
            await relay.close()

    try:
        asyncio.run(run())
    finally:
        app.close()
    return relay


def customer_id(outcome: Any) -> UUID:
    return UUID(outcome.body["id"])


def test_restore_before_an_erasure_keeps_the_customer_erased(private: Settings) -> None:
    assert private.database_url
    org = f"org-{secrets.token_hex(3)}"
    receiver = WalReceiver(private, private.database_url)
    receiver.start()
    app = Customers(private, pool_size=2)
    try:
        take_backup(private, private.database_url)
        commands = CustomerCommands(app)
        kept = customer_id(commands.create(admin(org), profile("Kept")))
        erased = customer_id(commands.create(admin(org), profile("Erased")))
        relay_once(private)
        wait_archived(private)
        target = datetime.now(UTC)
        time.sleep(0.01)  # commits after the target have later timestamps
        commands.patch(admin(org), kept, {"age": 41}, None)
        commands.erase(admin(org), erased)
        later = customer_id(commands.create(admin(org), profile("Later")))
        relay_once(private)
        wait_archived(private)
    finally:
        app.close()
        receiver.stop()
    ledger = erasure_ledger.ledger_path(private.backup_path)
    assert [cid for cid, _ in erasure_ledger.entries(ledger)] == [erased]

    outcome = restore_embedded(private, target)
    assert outcome.reached == "target" and outcome.epoch == 1
    assert outcome.aside is not None and (outcome.aside / "PG_VERSION").exists()
    restored = private.model_copy(
        update={"database_url": embedded.start_postgres(private.data_dir)}
    )
    migrate(restored)  # what `customers restore` and `customers serve` do before serving

    assert [cid for cid, _ in erasure_ledger.entries(ledger)] == [erased]  # not appended again
    app = Customers(restored, pool_size=2)
    try:
        commands = CustomerCommands(app)
        assert commands.load(admin(org), kept).version == 1  # the later update is gone
        for gone in (erased, later):
            with pytest.raises(DomainError) as missing:
                commands.load(admin(org), gone)
            assert missing.value.code == Code.NOT_FOUND
        with psycopg.connect(restored.database_url or "") as conn:
            key = conn.execute(
                "SELECT wrapped_key FROM customer_keys WHERE customer_id = %s", (erased,)
            ).fetchone()
            listed = {r[0] for r in conn.execute("SELECT id FROM customers_view")}
            epochs = conn.execute("SELECT epoch FROM store_restores").fetchall()
        assert key == (None,)
        assert listed == {kept}
        assert epochs == [(1,)]

        # The relay announces the restore, publishes the erasure again, and a new version 2
        # of the kept customer is not de-duplicated against the version 2 the restore undid.
        relay_once(restored)
        commands.patch(admin(org), kept, {"tags": ["vip"]}, None)
        relay = relay_once(restored)
    finally:
        app.close()
    assert relay.duplicates == 0
    messages = asyncio.run(read_stream(restored))
    ids = [m.headers[MSG_ID_HEADER] for m in messages]
    announced = [m for m in messages if m.subject.endswith(RESTORED_KIND)]
    assert [m.data["epoch"] for m in announced] == [1]
    assert announced[0].data["type"] == "store.restored"
    assert ids.index("restored:1") < ids.index(f"{kept}:2@1")
    version_2 = {m.headers[MSG_ID_HEADER]: m.data.get("fields") for m in messages}
    assert version_2[f"{kept}:2"] == ["age"] and version_2[f"{kept}:2@1"] == ["tags"]
    erased_again = [m for m in messages if m.subject.endswith("customer.erased")]
    assert [m.headers[MSG_ID_HEADER].endswith("@1") for m in erased_again] == [False, True]


def test_backups_list_their_ranges_keep_the_newest_and_refuse_other_targets(
    private: Settings,
) -> None:
    assert private.database_url
    receiver = WalReceiver(private, private.database_url)
    receiver.start()
    try:
        labels = [take_backup(private, private.database_url).label for _ in range(3)]
        newest = listing(private)[-1]
        # A backup is restorable to times after it once WAL written after it is archived.
        assert (
            newest["restorableUntil"] is None
            or newest["restorableUntil"] >= newest["restorableFrom"]
        )
        with psycopg.connect(private.database_url, autocommit=True) as conn:
            conn.execute("CREATE TABLE after_backups (n int)")
        wait_archived(private)
    finally:
        receiver.stop()
    kept = private.model_copy(update={"backup_retention_count": 2})
    assert prune(kept) == labels[:1]
    rows = listing(private)
    assert [r["label"] for r in rows] == labels[1:]
    for row in rows:
        assert row["restorableUntil"] is not None
        assert str(row["restorableFrom"]) <= str(row["restorableUntil"])
    assert Archive(private.backup_path).choose(datetime.now(UTC)) is None  # after the archive

    before_all = Archive(private.backup_path).backups()[0].started_at
    with pytest.raises(RestoreError, match="--target-time"):
        restore_embedded(private, before_all)
    for bad in ("yesterday", "2026-01-31T12:00:00"):
        with pytest.raises(RestoreError, match="--target-time"):
            parse_target(bad)
    assert (private.data_dir / "pg" / "PG_VERSION").exists()  # left alone


def test_serve_keeps_streaming_and_takes_the_first_backup_of_an_epoch(private: Settings) -> None:
    assert private.database_url
    agent = BackupAgent(private, private.database_url)
    agent.start()
    try:
        deadline = time.monotonic() + 60
        while not Archive(private.backup_path).backups():
            assert time.monotonic() < deadline, "no base backup taken"
            time.sleep(0.1)
        assert agent.receiver.running()
        wait_archived(private)
        process = agent.receiver.process
    finally:
        agent.stop()
    assert process is not None and process.poll() is not None  # stopped with the agent
    assert not agent._due()  # the next one is an interval away


def test_cli_backup_list_and_restore_the_embedded_server(private: Settings) -> None:
    """`customers backup`, `customers backups`, `customers restore` as an operator runs them
    (DATABASE_URL unset: the embedded server of the data dir)."""
    assert private.database_url and private.master_key and private.nats_url
    environ = {
        k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "CUSTOMERS_DATA_DIR"}
    }
    environ.update(
        {
            "CUSTOMERS_DATA_DIR": str(private.data_dir),
            "CUSTOMERS_BACKUP_ENABLED": "1",
            "CUSTOMERS_HTTP_PORT": str(private.http_port),
            "CUSTOMERS_MASTER_KEY": private.master_key,
            "NATS_URL": private.nats_url,
            "CUSTOMERS_LOG_LEVEL": "WARNING",
        }
    )

    def customers(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "service.cli", *args],
            env=environ,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    receiver = WalReceiver(private, private.database_url)
    receiver.start()
    try:
        taken = customers("backup")
        assert taken.returncode == 0, taken.stderr
        label = json.loads(taken.stdout)["label"]
        with psycopg.connect(private.database_url, autocommit=True) as conn:
            conn.execute("CREATE TABLE drill_marks (n int)")
            conn.execute("INSERT INTO drill_marks VALUES (1)")
            wait_archived(private)
            target = datetime.now(UTC)
            time.sleep(0.01)
            conn.execute("INSERT INTO drill_marks VALUES (2)")
        wait_archived(private)
    finally:
        receiver.stop()
    listed = customers("backups")
    assert [json.loads(line)["label"] for line in listed.stdout.splitlines()] == [label]

    refused = customers("restore", "--target-time", "2026-13-45")
    assert refused.returncode == 2 and "--target-time" in refused.stderr

    done = customers("restore", "--target-time", target.isoformat())
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["reached"] == "target"
    url = embedded.start_postgres(private.data_dir)
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT n FROM drill_marks").fetchall() == [(1,)]


def test_restore_into_a_directory_for_an_external_server(private: Settings) -> None:
    """`--into`: the directory an operator starts their own PostgreSQL on (as docs/operations.md
    says: owned by the server's user), then `customers migrate` re-applies the ledger."""
    from pgserver._commands import POSTGRES_BIN_PATH

    from service.restore import restore_into

    assert private.database_url
    org = f"org-{secrets.token_hex(3)}"
    receiver = WalReceiver(private, private.database_url)
    receiver.start()
    app = Customers(private, pool_size=2)
    try:
        take_backup(private, private.database_url)
        erased = customer_id(CustomerCommands(app).create(admin(org), profile("Gone")))
        wait_archived(private)
        target = datetime.now(UTC)
        time.sleep(0.01)
        CustomerCommands(app).erase(admin(org), erased)
        wait_archived(private)
    finally:
        app.close()
        receiver.stop()

    into = private.data_dir / "external" / "pgdata"
    outcome = restore_into(private, target, into)
    assert outcome.epoch == 1 and (into / "recovery.signal").exists()

    user = "pgserver" if os.geteuid() == 0 else None  # the embedded server's user here
    if user is not None:
        shutil.chown(into.parent, user, user)
        owned = [str(into), str(private.backup_path / "wal")]
        subprocess.run(["chown", "-R", f"{user}:{user}", *owned], check=True)
    socket_dir = into.parent
    pg_ctl = [str(Path(POSTGRES_BIN_PATH) / "pg_ctl"), "-D", str(into)]
    subprocess.run(
        [*pg_ctl, "-l", str(socket_dir / "log"), "-o", f"-k {socket_dir} -c listen_addresses=''",
         "-W", "start"], check=True, user=user, timeout=60,
    )  # fmt: skip
    url = f"postgresql://postgres@/postgres?host={socket_dir}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert time.monotonic() < deadline, "the external server did not promote"
            try:
                with psycopg.connect(url, connect_timeout=2) as conn:
                    row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
                if row == (False,):
                    break
            except psycopg.OperationalError:
                pass
            time.sleep(0.2)
        external = private.model_copy(update={"database_url": url})
        migrate(external)
        app = Customers(external, pool_size=1)
        try:
            with pytest.raises(DomainError) as missing:
                CustomerCommands(app).load(admin(org), erased)
            assert missing.value.code == Code.NOT_FOUND
        finally:
            app.close()
    finally:
        subprocess.run([*pg_ctl, "-m", "fast", "-w", "stop"], check=False, user=user, timeout=60)
