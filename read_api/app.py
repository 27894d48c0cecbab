"""The query-side FastAPI app: reads only read-model tables, never loads aggregates."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import psycopg
from fastapi import Depends, FastAPI, Request, Response
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from eventstore.keys import LazyKeyring
from read_api import (
    activity,
    customers,
    export,
    figures,
    jobs,
    models,
    paging,
    personal_data,
    privacy,
    reports,
    segments,
)
from read_api.consistency import PositionWatcher
from read_api.replicas import PRIMARY, ReadRouter, Target
from service import edge, problems, tracing
from service.api_keys import ApiKeyStore
from service.http_metrics import require_scraper, scrape
from service.limits import RouteClass
from service.metrics import unwatch_pool, watch_pool
from service.settings import Settings, get_settings

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    if not settings.database_url:
        raise RuntimeError("DATABASE_URL is not set")
    database_url = settings.database_url

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = paging.new_pool(settings, "read-api")
        await pool.open(wait=False)  # start even if PostgreSQL is down: /ready says so
        watcher = PositionWatcher(database_url)
        await watcher.start()
        reads = await ReadRouter.start(settings, Target(PRIMARY, pool, watcher))
        app.state.pool = pool
        app.state.positions = watcher
        app.state.reads = reads
        app.state.event_store = personal_data.EventStore(settings)
        app.state.api_keys = ApiKeyStore(settings, keyring)
        watch_pool("read-api", pool)
        try:
            yield
        finally:
            unwatch_pool("read-api", pool)
            app.state.api_keys.close()
            app.state.event_store.close()
            await reads.close()
            await watcher.stop()
            await pool.close()

    app = FastAPI(
        title="Customer Management Service — read API",
        docs_url=None,  # service.docs: Swagger UI served without a CDN
        redoc_url=None,
        version="0.1.0",
        lifespan=lifespan,
        telemetry=tracing.FASTAPI_TELEMETRY,
    )
    app.state.settings = settings
    app.state.route_class = RouteClass.READS
    keyring = LazyKeyring(settings)
    app.state.cursors = customers.CursorCodec(keyring)
    app.state.emails = customers.EmailIndex(keyring)
    edge.install(app, settings)
    app.state.figures = figures.Figures(settings.metrics_cache_seconds)
    # First match wins: fixed paths (/customers/export, /customers/segments/export,
    # /customers/import/…, /customers/{id}/data, …) before /customers/segments/{id} and
    # /customers/{id}.
    edge.add_routes(
        app,
        export.router,
        segments.router,
        personal_data.router,
        jobs.router,
        activity.router,
        models.router,
        reports.router,
        customers.router,
        privacy.router,
    )

    @app.get(
        "/metrics",
        tags=["operations"],
        response_class=Response,
        dependencies=[Depends(require_scraper)],
    )
    async def metrics(request: Request) -> Response:
        """Prometheus text format."""
        state = request.app.state
        return await scrape(await state.figures.render(state.pool))

    @app.get("/health", tags=["operations"])
    async def health() -> dict[str, str]:
        """The process is up (no dependency is checked)."""
        return {"status": "ok"}

    @app.get("/ready", tags=["operations"], response_class=Response)
    async def ready(request: Request) -> Response:
        """PostgreSQL answers; reports how many notifications each follower of the event log
        (projections, segment evaluator, write auditor, relay) is behind, and how many it
        passed over as dead letters (still ready: the other customers are served); and each
        read replica's replay lag (still ready without them: the primary answers)."""
        pool: AsyncConnectionPool[Any] = request.app.state.pool
        try:
            async with pool.connection(timeout=2.0) as conn:
                lags = await figures.lags(conn)
        except (psycopg.Error, PoolTimeout) as e:
            log.warning("not ready: database unreachable", extra={"error": type(e).__name__})
            return problems.problem(
                503, "database unreachable", headers={"Retry-After": "1"}, instance="/ready"
            )
        body = {
            "status": "ready",
            "projections": {name: {"lag": lag, "deadLetters": dead} for name, lag, dead in lags},
            **request.app.state.reads.status(),
        }
        return Response(orjson.dumps(body), media_type="application/json")

    return app
