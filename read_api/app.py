"""The query-side FastAPI app: reads only read-model tables, never loads aggregates."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import psycopg
from fastapi import FastAPI, Request, Response
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from eventstore.application import EVENTS_TABLE
from eventstore.keys import LazyKeyring
from projections.customers import VIEW, use_raw_json
from projections.positions import ALL_POSITIONS, MAX_NOTIFICATION_ID, TABLE_EXISTS
from read_api import (
    activity,
    customers,
    export,
    jobs,
    models,
    personal_data,
    privacy,
    reports,
    segments,
)
from read_api.consistency import PositionWatcher
from service import limits, logs, problems
from service.api_keys import ApiKeyStore
from service.settings import Settings, get_settings

log = logging.getLogger(__name__)


async def _configure(conn: psycopg.AsyncConnection[Any]) -> None:
    use_raw_json(conn)  # `doc` and json_agg come back as bytes, sent untouched


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    if not settings.database_url:
        raise RuntimeError("DATABASE_URL is not set")
    database_url = settings.database_url

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            database_url,
            min_size=min(2, settings.db_pool_size),
            max_size=settings.db_pool_size,
            open=False,
            timeout=5.0,
            configure=_configure,
            name="read-api",
        )
        await pool.open(wait=False)  # start even if PostgreSQL is down: /ready says so
        watcher = PositionWatcher(database_url)
        await watcher.start()
        app.state.pool = pool
        app.state.positions = watcher
        app.state.event_store = personal_data.EventStore(settings)
        app.state.api_keys = ApiKeyStore(settings, keyring)
        try:
            yield
        finally:
            app.state.api_keys.close()
            app.state.event_store.close()
            await watcher.stop()
            await pool.close()

    app = FastAPI(
        title="Customer Management Service — read API",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    keyring = LazyKeyring(settings)
    app.state.cursors = customers.CursorCodec(keyring)
    problems.install(app)
    limits.install(app, settings)
    logs.install(app)
    app.add_exception_handler(psycopg.OperationalError, _database_unavailable)
    app.add_exception_handler(PoolTimeout, _database_unavailable)
    # First match wins: fixed paths (/customers/export, /customers/segments/export,
    # /customers/import/…, /customers/{id}/data, …) before /customers/segments/{id} and
    # /customers/{id}.
    for module in (
        export,
        segments,
        personal_data,
        jobs,
        activity,
        models,
        reports,
        customers,
        privacy,
    ):
        app.include_router(module.router)

    @app.get("/metrics", tags=["operations"], response_class=Response)
    async def metrics(request: Request) -> Response:
        """Prometheus text format."""
        text = await privacy.privacy_metrics(request.app.state.pool)
        return Response(text, media_type="text/plain; version=0.0.4")

    @app.get("/health", tags=["operations"])
    async def health() -> dict[str, str]:
        """The process is up (no dependency is checked)."""
        return {"status": "ok"}

    @app.get("/ready", tags=["operations"], response_class=Response)
    async def ready(request: Request) -> Response:
        """PostgreSQL answers; reports how many notifications each follower of the event log
        (projections, segment evaluator, write auditor, relay) is behind."""
        pool: AsyncConnectionPool[Any] = request.app.state.pool
        try:
            async with pool.connection(timeout=2.0) as conn:
                lags = await _lags(conn)
        except (psycopg.Error, PoolTimeout) as e:
            log.warning("not ready: database unreachable", extra={"error": type(e).__name__})
            return problems.problem(
                503, "database unreachable", headers={"Retry-After": "1"}, instance="/ready"
            )
        body = {"status": "ready", "projections": {name: {"lag": lag} for name, lag in lags}}
        return Response(orjson.dumps(body), media_type="application/json")

    return app


async def _lags(conn: psycopg.AsyncConnection[Any]) -> list[tuple[str, int]]:
    """(follower, notifications it has not processed), customers_view first (just that one,
    at 0, before the event table exists)."""
    cur = await conn.execute(TABLE_EXISTS, (EVENTS_TABLE,))
    exists = await cur.fetchone()
    if not exists or not exists[0]:
        return [(VIEW, 0)]
    row = await (await conn.execute(MAX_NOTIFICATION_ID)).fetchone()
    top = int(row[0]) if row else 0
    positions = dict(await (await conn.execute(ALL_POSITIONS)).fetchall())
    names = [VIEW, *sorted(n for n in positions if n != VIEW)]
    return [(name, max(0, top - int(positions.get(name, 0)))) for name in names]


async def _database_unavailable(request: Request, exc: Exception) -> Response:
    log.warning("database unavailable", extra={"error": type(exc).__name__})
    return problems.problem(
        503,
        "the database is unavailable; retry later",
        headers={"Retry-After": "1"},
        instance=request.url.path,
    )
