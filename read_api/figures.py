"""Figures /metrics reads from the database at scrape time: how far each follower of the event
log is behind, customers by status, new customers, privacy requests.

They describe the whole installation, not a process, so every read API process reports the
same values (alert rules take their max). A scrape never hammers the database: the figures
are reused for `CUSTOMERS_METRICS_CACHE_SECONDS`, and refreshed no more often than 20 times
what the last refresh cost (so at most 5% of a database core per process, however large the
tables grow); the refresh has a statement timeout, and a failed one keeps the previous
figures with `customers_figures_up` 0.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from domain.values import CustomerStatus
from eventstore import dead_letters
from eventstore.application import EVENTS_TABLE
from eventstore.compliance import RequestType
from eventstore.relay import POSITION_NAME as RELAY
from projections.customers import VIEW
from projections.positions import ALL_POSITIONS, MAX_NOTIFICATION_ID, TABLE_EXISTS

log = logging.getLogger(__name__)

UP = "customers_figures_up"
PROJECTION_LAG = "customers_projection_lag_events"
RELAY_LAG = "customers_relay_lag_events"
DEAD_LETTERS = "customers_dead_letters"
PROFILES = "customers_profiles"
CREATED = "customers_profiles_created_24h"
PRIVACY_OPEN = "customers_privacy_requests_open"
PRIVACY_OVERDUE = "customers_privacy_requests_overdue"
PRIVACY_DUE = "customers_privacy_requests_due_7d"
PRIVACY_RECEIVED = "customers_privacy_requests_received_24h"
NAMES = (
    UP,
    PROJECTION_LAG,
    RELAY_LAG,
    DEAD_LETTERS,
    PROFILES,
    CREATED,
    PRIVACY_OPEN,
    PRIVACY_OVERDUE,
    PRIVACY_DUE,
    PRIVACY_RECEIVED,
)

STATEMENT_TIMEOUT = "SET LOCAL statement_timeout = '5s'"
# One pass over the customers view for both figures.
BY_STATUS = (
    "SELECT status, count(*), count(*) FILTER (WHERE created_at >= now() - interval '24 hours')"
    " FROM customers_view GROUP BY status"
)
# Open requests through their partial index (privacy_requests_open_idx).
OPEN_REQUESTS = (
    "SELECT count(*), count(*) FILTER (WHERE due_at < now()),"
    " count(*) FILTER (WHERE due_at < now() + interval '7 days') FROM privacy_requests"
    " WHERE status IN ('RECEIVED', 'IN_PROGRESS')"
)
RECEIVED_REQUESTS = (
    "SELECT type, count(*) FROM privacy_requests"
    " WHERE received_at >= now() - interval '24 hours' GROUP BY type"
)
COST_FACTOR = 20


async def lags(conn: psycopg.AsyncConnection[Any]) -> list[tuple[str, int, int]]:
    """(follower, notifications it has not processed, its dead letters), customers_view
    first (just that one, at 0, before the event table exists)."""
    cur = await conn.execute(TABLE_EXISTS, (EVENTS_TABLE,))
    exists = await cur.fetchone()
    if not exists or not exists[0]:
        return [(VIEW, 0, 0)]
    row = await (await conn.execute(MAX_NOTIFICATION_ID)).fetchone()
    top = int(row[0]) if row else 0
    positions = dict(await (await conn.execute(ALL_POSITIONS)).fetchall())
    dead = dict(await (await conn.execute(dead_letters.COUNT_BY_FOLLOWER)).fetchall())
    names = [VIEW, *sorted(n for n in positions if n != VIEW)]
    return [
        (name, max(0, top - int(positions.get(name, 0))), int(dead.get(name, 0))) for name in names
    ]


class Figures:
    """The cached figures of one app, rendered in the Prometheus text format."""

    def __init__(self, cache_seconds: float) -> None:
        self.cache_seconds = cache_seconds
        self._families: list[Metric] = []
        self._up = 0
        self._next = 0.0
        self._lock = asyncio.Lock()
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(self)

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            UP, "1 when the database figures were refreshed at the last attempt, 0 when not."
        )
        up.add_metric([], self._up)
        yield up
        yield from self._families

    async def render(self, pool: AsyncConnectionPool[Any]) -> bytes:
        async with self._lock:  # concurrent scrapes share one refresh
            if time.monotonic() >= self._next:
                started = time.monotonic()
                await self._refresh(pool)
                cost = time.monotonic() - started
                self._next = time.monotonic() + max(self.cache_seconds, COST_FACTOR * cost)
        return generate_latest(self._registry)

    async def _refresh(self, pool: AsyncConnectionPool[Any]) -> None:
        try:
            async with pool.connection(timeout=2.0) as conn, conn.transaction():
                await conn.execute(STATEMENT_TIMEOUT)
                followers = await lags(conn)
                statuses = await (await conn.execute(BY_STATUS)).fetchall()
                open_row = await (await conn.execute(OPEN_REQUESTS)).fetchone()
                received = await (await conn.execute(RECEIVED_REQUESTS)).fetchall()
        except (psycopg.Error, PoolTimeout) as e:
            log.warning(
                "metrics: database figures not refreshed", extra={"error": type(e).__name__}
            )
            self._up = 0
            return
        self._families = [
            *_lag_families(followers),
            *_customer_families(statuses),
            *_privacy_families(open_row, received),
        ]
        self._up = 1


def _lag_families(followers: list[tuple[str, int, int]]) -> list[Metric]:
    projection = GaugeMetricFamily(
        PROJECTION_LAG,
        "Notifications of the event log a follower (projector view, segment evaluator, write"
        " auditor) has not processed yet: the max notification id minus its position.",
        labels=["projection"],
    )
    relay = GaugeMetricFamily(
        RELAY_LAG, "Notifications of the event log the NATS relay has not published yet."
    )
    dead = GaugeMetricFamily(
        DEAD_LETTERS,
        "Events a follower of the event log could not process and passed over (dead letters,"
        " `customers dead-letters`), by follower: anything above 0 needs a look.",
        labels=["follower"],
    )
    relay_lag = 0
    for name, lag, dead_count in followers:
        if name == RELAY:
            relay_lag = lag
        else:
            projection.add_metric([name], lag)
        dead.add_metric([name], dead_count)
    relay.add_metric([], relay_lag)
    return [projection, relay, dead]


def _customer_families(statuses: list[tuple[Any, ...]]) -> list[Metric]:
    counts = {str(status): (int(n), int(new)) for status, n, new in statuses}
    profiles = GaugeMetricFamily(
        PROFILES, "Customers in the read model, by status.", labels=["status"]
    )
    for status in sorted({s.value for s in CustomerStatus} | set(counts)):
        profiles.add_metric([status], counts.get(status, (0, 0))[0])
    created = GaugeMetricFamily(
        CREATED, "Customers created in the last 24 hours (still in the read model)."
    )
    created.add_metric([], sum(new for _, new in counts.values()))
    return [profiles, created]


def _privacy_families(
    open_row: tuple[Any, ...] | None, received: list[tuple[Any, ...]]
) -> list[Metric]:
    open_count, overdue_count, due_count = open_row if open_row else (0, 0, 0)
    still_open = GaugeMetricFamily(PRIVACY_OPEN, "Privacy requests received and not finished.")
    still_open.add_metric([], int(open_count))
    overdue = GaugeMetricFamily(PRIVACY_OVERDUE, "Open privacy requests past their deadline.")
    overdue.add_metric([], int(overdue_count))
    due = GaugeMetricFamily(
        PRIVACY_DUE, "Open privacy requests due within 7 days (the overdue ones included)."
    )
    due.add_metric([], int(due_count))
    by_type = dict(received)
    recent = GaugeMetricFamily(
        PRIVACY_RECEIVED,
        "Privacy requests received in the last 24 hours, by type (exports, erasures,"
        " anonymizations, consent changes).",
        labels=["type"],
    )
    for kind in sorted({t.value for t in RequestType} | set(by_type)):
        recent.add_metric([kind], int(by_type.get(kind, 0)))
    return [still_open, overdue, due, recent]
