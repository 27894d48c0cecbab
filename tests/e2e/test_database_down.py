"""Commands while the database refuses connections: a 503 problem to retry, never a 500
(this module's own database, closed to new connections and its sessions ended)."""

from __future__ import annotations

import httpx
import psycopg
import pytest
from asgi_lifespan import LifespanManager
from psycopg import sql

from service.auth import issue_token
from service.settings import Settings
from tests.e2e.conftest import new_customer
from tests.e2e.test_customers_api import assert_problem
from write_api.app import create_app

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def close_database(admin_url: str, url: str) -> None:
    name = str(psycopg.conninfo.conninfo_to_dict(url)["dbname"])
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(name))
        )
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )


async def test_commands_answer_503_while_the_database_is_down(
    scratch_settings: Settings, pg_admin_url: str
) -> None:
    settings = scratch_settings.model_copy(update={"db_wait_seconds": 1})
    token = issue_token(settings, sub="t", org="org-down", roles=["admin"])
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        LifespanManager(create_app(settings)) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://test"
        ) as client,
    ):
        close_database(pg_admin_url, str(settings.database_url))
        created = await client.post("/api/v1/customers", json=new_customer(), headers=headers)
        assert_problem(created, 503)
        assert created.headers["Retry-After"] == "1"
        event = {
            "customerId": "7b7a1b8e-3f9a-4c55-9a44-0f5f8c1d2e3f",
            "type": "PAGE_VIEW",
            "data": {"url": "https://shop.example/"},
        }
        tracked = await client.post(
            "/api/v1/customers/track/batch", json={"events": [event]}, headers=headers
        )
        assert_problem(tracked, 503)
