"""Integration tests that write customers directly work in their module's scratch database;
tests that follow the log out to NATS (relay, dead letters) get a database and a stream of
their own per test (`shared`)."""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass

import nats
import psycopg
import pytest
from psycopg import sql

from eventstore.application import Customers
from eventstore.migrate import migrate
from service import embedded
from service.settings import Settings, get_settings


@pytest.fixture(scope="module")
def settings(scratch_settings: Settings) -> Settings:
    return scratch_settings


@pytest.fixture
def app(settings: Settings) -> Iterator[Customers]:
    a = Customers(settings, pool_size=2)
    yield a
    a.close()


@pytest.fixture
def scratch_db(pg_admin_url: str) -> Iterator[str]:
    """A fresh, migrated database for one test."""
    name = f"relay_test_{secrets.token_hex(4)}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = embedded.with_database(pg_admin_url, name)
    migrate(url)
    try:
        yield url
    finally:
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@dataclass
class Env:
    settings: Settings
    app: Customers  # the writers' application


def make_env(monkeypatch: pytest.MonkeyPatch, database_url: str, nats_url: str) -> Iterator[Env]:
    suffix = secrets.token_hex(4)
    values = {
        "DATABASE_URL": database_url,
        "NATS_URL": nats_url,
        "CUSTOMERS_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
        "CUSTOMERS_NATS_STREAM": f"RELAY_TEST_{suffix.upper()}",
        "CUSTOMERS_NATS_SUBJECT_PREFIX": f"relaytest{suffix}",
        "CUSTOMERS_RELAY_BATCH_SIZE": "200",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    settings = get_settings()
    app = Customers(settings, pool_size=2, create_table=True)
    try:
        yield Env(settings, app)
    finally:
        app.close()
        asyncio.run(_delete_stream(nats_url, settings.nats_stream))
        get_settings.cache_clear()


@pytest.fixture
def shared(monkeypatch: pytest.MonkeyPatch, scratch_db: str, nats_url: str) -> Iterator[Env]:
    yield from make_env(monkeypatch, scratch_db, nats_url)


async def _delete_stream(url: str, stream: str) -> None:
    try:
        nc = await nats.connect(url, connect_timeout=2, allow_reconnect=False)
    except Exception:
        return
    try:
        await nc.jetstream().delete_stream(stream)
    except Exception:
        pass
    finally:
        await nc.close()


def wait_listening(database_url: str, channel: str, timeout: float = 30.0) -> None:
    """Until a session LISTENs on `channel` (a follower is connected and idle)."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(database_url, autocommit=True) as conn:
        while not conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND query ILIKE %s",
            (f"LISTEN%{channel}%",),
        ).fetchone()[0]:  # type: ignore[index]
            assert time.monotonic() < deadline, f"nobody LISTENs on {channel}"
            time.sleep(0.02)
