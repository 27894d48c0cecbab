"""Session fixtures: real PostgreSQL and real NATS for every test tier.

PostgreSQL: 127.0.0.1:5432 (user postgres, trust) when reachable, else an embedded pgserver
under /var/tmp shared by all xdist workers. Each worker gets its own database
`customers_test_<worker>`, dropped and recreated at session start.

NATS: 127.0.0.1:4222 when reachable, else one embedded nats-server per worker. Each worker
uses its own JetStream stream name and subject prefix (`nats_names`), so workers and
repeated runs never collide; the stream is deleted at session end.

Fault tests that kill NATS use `private_nats`, never the shared server.
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from hypothesis import HealthCheck, settings
from psycopg import sql

from service import embedded
from service.settings import Settings, get_settings

# --------------------------------------------------------------------------- hypothesis

settings.register_profile(
    "ci",
    deadline=None,
    max_examples=50,
    derandomize=False,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "dev",
    deadline=None,
    max_examples=25,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev")
)

# --------------------------------------------------------------------------- helpers

SHARED_PG = ("127.0.0.1", 5432)
SHARED_PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
SHARED_NATS = ("127.0.0.1", 4222)
# Shared by all xdist workers of a run (pgserver serialises start-up with a file lock) and
# reused by later runs; stopped by the last process that holds a handle on it.
EMBEDDED_PG_DIR = Path("/var/tmp/customers-service-test")


# CUSTOMERS_TEST_EMBEDDED=1 ignores the shared servers (exercises the bare-machine path).
FORCE_EMBEDDED = os.environ.get("CUSTOMERS_TEST_EMBEDDED", "") not in ("", "0")


def _worker() -> str:
    """xdist worker id (gw0, gw1, ...) or "main" when not distributed, after the run's
    CUSTOMERS_TEST_TAG if set: runs side by side on one server need different databases,
    since each run drops and recreates its workers' ones."""
    tag = os.environ.get("CUSTOMERS_TEST_TAG", "")
    return tag + os.environ.get("PYTEST_XDIST_WORKER", "main")


@dataclass(frozen=True)
class NatsNames:
    stream: str
    subject_prefix: str


# --------------------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    """URL of the server's `postgres` database (for CREATE/DROP DATABASE)."""
    if not FORCE_EMBEDDED and embedded.reachable(*SHARED_PG):
        return SHARED_PG_ADMIN_URL
    return embedded.start_postgres(EMBEDDED_PG_DIR, stop_at_exit=True)


@pytest.fixture(scope="session")
def database_url(pg_admin_url: str) -> str:
    """URL of this worker's own, freshly created database `customers_test_<worker>`."""
    dbname = f"customers_test_{_worker()}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    return embedded.with_database(pg_admin_url, dbname)


# --------------------------------------------------------------------------- NATS


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not FORCE_EMBEDDED and embedded.reachable(*SHARED_NATS):
        yield "nats://{}:{}".format(*SHARED_NATS)
        return
    server = embedded.EmbeddedNats(tmp_path_factory.mktemp("nats-session"))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def nats_names(nats_url: str) -> Iterator[NatsNames]:
    """Stream name and subject prefix unique to this worker and run."""
    worker = _worker()
    suffix = secrets.token_hex(4)
    names = NatsNames(
        stream=f"CUSTOMERS_TEST_{worker.upper()}_{suffix.upper()}",
        subject_prefix=f"test{worker}{suffix}",
    )
    yield names
    asyncio.run(_delete_stream(nats_url, names.stream))


async def _delete_stream(url: str, stream: str) -> None:
    """Best effort: do not let test streams pile up on the shared server."""
    import nats

    try:
        nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=0)
    except Exception:
        return
    try:
        await nc.jetstream().delete_stream(stream)
    except Exception:
        pass  # not created by the tests, or the server is gone
    finally:
        await nc.close()


class PrivateNats(embedded.EmbeddedNats):
    """A nats-server owned by one test: `.stop()`, `.kill()`, `.start()`, `.restart()`."""


@pytest.fixture
def private_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateNats]:
    """A private JetStream server (own store dir in a tmp dir, own free port) that the test
    may stop, kill and restart; restart keeps the port and the stored streams."""
    server = PrivateNats(tmp_path_factory.mktemp("private-nats"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------- environment


@pytest.fixture(scope="session")
def env(
    database_url: str,
    nats_url: str,
    nats_names: NatsNames,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Settings]:
    """os.environ set up for the service under test; yields the resulting Settings."""
    values = {
        "DATABASE_URL": database_url,
        "NATS_URL": nats_url,
        "CUSTOMERS_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode("ascii"),
        "CUSTOMERS_JWT_SECRET": secrets.token_urlsafe(48),
        "CUSTOMERS_NATS_STREAM": nats_names.stream,
        "CUSTOMERS_NATS_SUBJECT_PREFIX": nats_names.subject_prefix,
        "CUSTOMERS_DATA_DIR": str(tmp_path_factory.mktemp("data")),
        # Lifecycle-deleted customers stay readable during tests; erasure is tested on its own.
        "CUSTOMERS_ERASURE_GRACE_HOURS": "720",
        # Two workers, each with a whole service and its background processes, share the
        # machine's 100 connections.
        "CUSTOMERS_DB_POOL_SIZE": "2",
        "CUSTOMERS_WORKERS": "1",
        # The whole suite comes from one address; limits are tested on their own.
        "CUSTOMERS_RATE_LIMIT_READS_PER_MINUTE": "0",
        "CUSTOMERS_RATE_LIMIT_WRITES_PER_MINUTE": "0",
        "CUSTOMERS_RATE_LIMIT_EXPORTS_PER_MINUTE": "0",
        "CUSTOMERS_AUTH_FAILURES_PER_MINUTE": "0",
    }
    mp = pytest.MonkeyPatch()
    for key, value in values.items():
        mp.setenv(key, value)
    get_settings.cache_clear()
    try:
        yield get_settings()
    finally:
        mp.undo()
        get_settings.cache_clear()


@pytest.fixture(scope="session")
def migrated(env: Settings) -> Settings:
    """The worker's database with the full schema (SQL migrations + event store table)."""
    from service.cli import migrate

    migrate(env)
    return env


@pytest.fixture(scope="module")
def scratch_settings(
    env: Settings, pg_admin_url: str, request: pytest.FixtureRequest
) -> Iterator[Settings]:
    """A migrated database of the calling module's own (for tests that truncate or rebuild)."""
    from eventstore.application import Customers
    from eventstore.migrate import migrate

    dbname = f"{request.module.__name__.rsplit('.', 1)[-1]}_{secrets.token_hex(4)}"[:60]
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    url = embedded.with_database(pg_admin_url, dbname)
    migrate(url)
    scratch = env.model_copy(update={"database_url": url})
    Customers(scratch, create_table=True).close()
    yield scratch
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname))
        )
