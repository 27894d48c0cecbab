"""The embedded PostgreSQL / NATS used by `make run` on a bare machine, and the fixtures."""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import nats
import psycopg
import pytest

from service import embedded
from service.settings import Settings, get_settings


@pytest.fixture
def var_tmp_dir() -> Iterator[Path]:
    """A fresh dir under /var/tmp (pgserver must not live under the repo, /root or /tmp's
    pytest dirs that other tests clean up)."""
    path = Path(tempfile.mkdtemp(prefix="customers-embedded-test-", dir="/var/tmp"))
    try:
        yield path
    finally:
        embedded.stop_postgres(path)
        shutil.rmtree(path, ignore_errors=True)


def test_start_postgres_returns_working_url(var_tmp_dir: Path) -> None:
    url = embedded.start_postgres(var_tmp_dir)
    assert url.startswith("postgresql://postgres@/postgres?host=")
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        conn.execute("CREATE TABLE marker (id int)")
        conn.commit()

    # Attaching again (as a second `customers serve` would) gives the same server.
    assert embedded.start_postgres(var_tmp_dir) == url

    # Stopped and started again: data survives, URL still works.
    embedded.stop_postgres(var_tmp_dir)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=2)
    url2 = embedded.start_postgres(var_tmp_dir)
    with psycopg.connect(url2) as conn:
        assert conn.execute("SELECT count(*) FROM marker").fetchone() == (0,)

    other_db = embedded.with_database(url2, "template1")
    with psycopg.connect(other_db) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("template1",)


def test_start_postgres_refuses_repo_and_root_dirs() -> None:
    repo = Path(__file__).resolve().parents[2]
    for bad in (repo / ".data", Path("/root/customers")):
        with pytest.raises(ValueError, match="pgserver"):
            embedded.start_postgres(bad)
        assert not bad.exists()


async def _publish_and_read(url: str) -> None:
    nc = await nats.connect(url, connect_timeout=2)
    try:
        js = nc.jetstream(timeout=5)
        await js.add_stream(name="EMBEDDED", subjects=["embedded.>"])
        ack = await js.publish("embedded.one", b"hello", headers={"Nats-Msg-Id": "m-1"})
        assert ack.seq == 1
        dup = await js.publish("embedded.one", b"hello", headers={"Nats-Msg-Id": "m-1"})
        assert dup.duplicate
        sub = await js.pull_subscribe("embedded.>", durable="reader", stream="EMBEDDED")
        msgs = await sub.fetch(1, timeout=5)
        assert [m.data for m in msgs] == [b"hello"]
        await msgs[0].ack()
    finally:
        await nc.close()


async def _check_persisted(url: str) -> None:
    nc = await nats.connect(url, connect_timeout=2)
    try:
        js = nc.jetstream(timeout=5)
        info = await js.stream_info("EMBEDDED")
        assert info.state.messages == 1
        msg = await js.get_msg("EMBEDDED", 1)
        assert msg.data == b"hello"
    finally:
        await nc.close()


def test_start_nats_publish_subscribe_and_restart(tmp_path: Path) -> None:
    url, process = embedded.start_nats(tmp_path)
    port = int(url.rsplit(":", 1)[1])
    try:
        assert embedded.reachable("127.0.0.1", port)
        asyncio.run(_publish_and_read(url))
    finally:
        embedded.stop_nats(process)
    assert process.returncode is not None
    assert not embedded.reachable("127.0.0.1", port)

    # Restart on the same store dir and port: the JetStream stream is still there.
    url2, process2 = embedded.start_nats(tmp_path, port)
    try:
        assert url2 == url
        asyncio.run(_check_persisted(url2))
    finally:
        embedded.stop_nats(process2)


def test_private_nats_fixture_survives_hard_restart(private_nats: embedded.EmbeddedNats) -> None:
    url = private_nats.url
    asyncio.run(_publish_and_read(url))
    private_nats.restart(hard=True)  # SIGKILL, then start on the same port and store
    assert private_nats.url == url
    asyncio.run(_check_persisted(url))
    private_nats.stop()
    assert not private_nats.running


def test_ensure_secrets_generates_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(embedded.MASTER_KEY_ENV, raising=False)
    monkeypatch.delenv(embedded.JWT_SECRET_ENV, raising=False)
    first = embedded.ensure_secrets(tmp_path)
    assert set(first) == {embedded.MASTER_KEY_ENV, embedded.JWT_SECRET_ENV}
    assert len(base64.b64decode(first[embedded.MASTER_KEY_ENV])) == 32
    assert len(first[embedded.JWT_SECRET_ENV]) >= 32
    path = tmp_path / embedded.SECRETS_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert embedded.ensure_secrets(tmp_path) == first  # stable across restarts

    monkeypatch.setenv(embedded.MASTER_KEY_ENV, "from-env")
    assert embedded.ensure_secrets(tmp_path) == {
        embedded.JWT_SECRET_ENV: first[embedded.JWT_SECRET_ENV]
    }
    monkeypatch.setenv(embedded.JWT_SECRET_ENV, "from-env-too")
    assert embedded.ensure_secrets(tmp_path) == {}


def test_prepare_environment_starts_everything(
    var_tmp_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    saved = dict(os.environ)  # prepare_environment writes os.environ directly
    for name in ("DATABASE_URL", "NATS_URL", embedded.MASTER_KEY_ENV, embedded.JWT_SECRET_ENV):
        os.environ.pop(name, None)
    os.environ["CUSTOMERS_DATA_DIR"] = str(var_tmp_dir)
    get_settings.cache_clear()
    try:
        caplog.set_level("INFO", logger="service.embedded")
        embedded.prepare_environment(Settings())
        settings = get_settings()
        assert settings.database_url == os.environ["DATABASE_URL"]
        assert settings.nats_url == os.environ["NATS_URL"]
        assert len(settings.master_key_bytes()) == 32
        assert settings.jwt_secret
        with psycopg.connect(settings.database_url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        asyncio.run(_publish_and_read(settings.nats_url))
        assert "embedded:" in caplog.text
        for secret in (settings.master_key, settings.jwt_secret):
            assert secret not in caplog.text
    finally:
        embedded._stop_embedded_nats()
        os.environ.clear()
        os.environ.update(saved)
        get_settings.cache_clear()


def test_env_fixture(env: Settings, database_url: str, nats_url: str) -> None:
    assert env.database_url == database_url
    assert env.nats_url == nats_url
    assert env.nats_stream.startswith("CUSTOMERS_TEST_")
    assert len(env.master_key_bytes()) == 32
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT current_database()").fetchone()
    assert row is not None and row[0].startswith("customers_test_")
