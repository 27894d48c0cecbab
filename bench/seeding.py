"""Seeding with service.seed.seed in parallel processes (disjoint e-mail ranges)."""

from __future__ import annotations

import multiprocessing
import time

import psycopg

from bench.workloads import BULK_ORG, SMALL_ORG

SMALL_SHARE = 0.05  # the second organization: most customers belong to the bulk one


def _part(jobs: list[tuple[str, int, int, int]]) -> int:
    from service.seed import seed
    from service.settings import get_settings

    done = 0
    for org, count, offset, seed_value in jobs:
        if count:
            done += seed(get_settings(), count=count, org=org, offset=offset, seed_value=seed_value)
    return done


def plan(total: int, processes: int, base: int) -> list[list[tuple[str, int, int, int]]]:
    small = int(total * SMALL_SHARE)
    bulk = total - small
    parts = []
    for i in range(processes):
        b = bulk // processes + (1 if i < bulk % processes else 0)
        s = small // processes + (1 if i < small % processes else 0)
        offset = base + i * total  # disjoint n ranges: distinct e-mails within each org
        parts.append([(BULK_ORG, b, offset, 7 + i), (SMALL_ORG, s, offset + b, 7 + i)])
    return parts


def seed_parallel(
    database_url: str, total: int, processes: int = 2, progress_every: float = 15.0
) -> tuple[int, float]:
    """Seed `total` customers with `processes` seeders; returns (count, seconds)."""
    ctx = multiprocessing.get_context("spawn")
    parts = plan(total, processes, base=int(time.time() * 1000))
    with ctx.Pool(processes) as pool, psycopg.connect(database_url, autocommit=True) as conn:
        started = time.perf_counter()
        pending = pool.map_async(_part, parts)
        while not pending.ready():
            pending.wait(progress_every)
            if not pending.ready():
                row = conn.execute("SELECT count(*) FROM customer_keys").fetchone()
                done = int(row[0]) if row else 0
                rate = done / (time.perf_counter() - started)
                print(f"    seeding: {done:,} customers, {rate:,.0f}/s", flush=True)
        counts = pending.get()
        elapsed = time.perf_counter() - started
    return sum(counts), elapsed
