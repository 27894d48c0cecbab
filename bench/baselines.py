"""Baselines measured in the same run: raw PostgreSQL, stock eventsourcing, bare HTTP."""

from __future__ import annotations

import asyncio
import random
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate

from bench.client import Client, Latencies, closed_loop
from eventstore.application import postgres_env
from service.seed import CustomerFactory

COPY_TABLE = "bench_copy"
_COPY_DDL = f"""
CREATE TABLE {COPY_TABLE} (
    id uuid PRIMARY KEY, org_id text NOT NULL, email text NOT NULL, name text NOT NULL,
    age int4, country text, created_at timestamptz NOT NULL, doc text NOT NULL
)"""
_COPY_TYPES = ("uuid", "text", "text", "text", "int4", "text", "timestamptz", "text")


def copy_rate(database_url: str, rows: int) -> tuple[float, list[uuid.UUID]]:
    """Binary COPY of `rows` customer-shaped rows (one ~1 KB JSON text column), committed
    every 50,000 rows; rows/s. Rows are generated before the clock starts."""
    factory = CustomerFactory(random.Random(1))
    now = datetime.now(UTC)
    data = []
    for n in range(rows):
        p = factory.profile(n)
        data.append(
            (
                uuid.uuid4(),
                "bench",
                p["email"],
                p["name"],
                p["age"],
                p["location"]["country"],
                now,
                orjson.dumps(p).decode(),
            )
        )
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {COPY_TABLE}")
        conn.execute(_COPY_DDL)
        started = time.perf_counter()
        for lo in range(0, rows, 50_000):
            with (
                conn.transaction(),
                conn.cursor() as cur,
                cur.copy(f"COPY {COPY_TABLE} FROM STDIN (FORMAT BINARY)") as copy,
            ):
                copy.set_types(_COPY_TYPES)
                for row in data[lo : lo + 50_000]:
                    copy.write_row(row)
        elapsed = time.perf_counter() - started
        conn.execute(f"ANALYZE {COPY_TABLE}")
    return rows / elapsed, [r[0] for r in data]


def point_select(database_url: str, ids: list[uuid.UUID], seconds: float) -> Latencies:
    """Prepared primary-key SELECT of one row's doc, one connection, back to back."""
    rng = random.Random(2)
    stats = Latencies()
    query = f"SELECT doc FROM {COPY_TABLE} WHERE id = %s"
    with psycopg.connect(database_url, autocommit=True) as conn:
        for _ in range(200):  # warm the plan cache and the buffer cache a little
            conn.execute(query, (rng.choice(ids),), prepare=True).fetchone()
        started = time.perf_counter()
        deadline = started + seconds
        while True:
            t0 = time.perf_counter()
            if t0 >= deadline:
                break
            row = conn.execute(query, (rng.choice(ids),), prepare=True).fetchone()
            stats.add(time.perf_counter() - t0, 200, row is not None)
        stats.elapsed = time.perf_counter() - started
    return stats


# ------------------------------------------------------------------------------- eventsourcing


class StockCustomer(Aggregate):
    """A plain aggregate: one Created event carrying the same profile dict as the API gets."""

    def __init__(self, org_id: str, profile: dict[str, Any]) -> None:
        self.org_id = org_id
        self.profile = profile


class StockApp(Application[uuid.UUID]):
    name = "BenchStock"  # table benchstock_events


def stock_save_rate(database_url: str, *, threads: int, seconds: float) -> Latencies:
    """eventsourcing out of the box (default mapper, no cipher, stock recorder, its own
    table): one `save()` per new aggregate, from `threads` threads; pool 8 + 8 overflow,
    like the service's write side."""
    app = StockApp(
        {
            **postgres_env(database_url),
            "CREATE_TABLE": "y",
            "POSTGRES_POOL_SIZE": "8",
            "POSTGRES_MAX_OVERFLOW": "8",
        }
    )
    factory = CustomerFactory(random.Random(3))
    profiles = [factory.profile(n) for n in range(2000)]
    stats = Latencies()
    lock = threading.Lock()
    try:
        for p in profiles[:50]:  # warm-up: connections, table, plan cache
            app.save(StockCustomer("bench", p))
        deadline = time.perf_counter() + seconds

        def work(k: int) -> None:
            local = Latencies()
            i = k
            while True:
                t0 = time.perf_counter()
                if t0 >= deadline:
                    break
                app.save(StockCustomer("bench", profiles[i % len(profiles)]))
                local.add(time.perf_counter() - t0, 200, True)
                i += threads
            with lock:
                stats.merge(local)

        started = time.perf_counter()
        pool = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        stats.elapsed = time.perf_counter() - started
    finally:
        app.close()
    return stats


# ------------------------------------------------------------------------------- HTTP


def hello_rate(
    base_url: str, *, path: str, concurrency: int, seconds: float, use_httpx: bool = False
) -> Latencies:
    """Closed-loop GETs against a hello server, with our raw client or httpx.AsyncClient."""
    if not use_httpx:
        client = Client(base_url)
        raw = client.build("GET", path)

        async def run_raw() -> Latencies:
            return await closed_loop(
                client,
                concurrency=concurrency,
                duration=seconds,
                next_request=lambda: raw,
                ok=lambda r: r.status == 200,
            )

        return asyncio.run(run_raw())

    import httpx

    async def run_httpx() -> Latencies:
        stats = Latencies()
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as http:
            deadline = time.perf_counter() + seconds

            async def worker() -> None:
                while True:
                    t0 = time.perf_counter()
                    if t0 >= deadline:
                        return
                    r = await http.get(path)
                    stats.add(time.perf_counter() - t0, r.status_code, r.status_code == 200)

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            stats.elapsed = time.perf_counter() - started
        return stats

    return asyncio.run(run_httpx())
