"""Segment calculation benchmark: `python -m bench.segments` (also run by `make bench`).

Per organization size (100,000 and 1,000,000 customers): a segment with demographic,
geographic and behavioral criteria is calculated end to end — job claimed, SQL diffed against
the members, SegmentJoined/SegmentLeft/SegmentCalculated appended in one transaction,
membership history projected — beside the same criteria's bare SQL (baseline). Then a
recalculation with nothing to change, and the incremental re-evaluation of single customers
whose facts changed, beside a bare one-event append (baseline).

Input: `segment_facts` rows for synthetic customers, COPYed in (the calculation reads only
that table; how the customers projection fills it is measured by `python -m bench`). The facts
are built by `domain.segment_facts.customer_facts` from the seeder's realistic profiles.
"""

from __future__ import annotations

import random
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql

from bench import env, report
from bench.client import Latencies
from bench.report import lat, ms

SIZES = (100_000, 1_000_000)
DB = "customers_bench_segments"
CRITERIA: dict[str, Any] = {
    "demographics": {"ageRange": {"min": 25, "max": 65}},
    "geographic": {"countries": ["Spain", "France", "Italy", "Germany"]},
    "behavioral": {"lastPurchaseDays": {"max": 1500}},
}
TEMPLATES = 20_000  # distinct synthetic profiles, cycled with fresh ids


def fill_facts(url: str, org: str, count: int) -> None:
    from domain.segment_facts import customer_facts
    from domain.values import Profile
    from projections import segment_sql
    from service.seed import CustomerFactory

    factory = CustomerFactory(random.Random(11))
    now = datetime.now(UTC)
    templates = []
    for n in range(TEMPLATES):
        profile = Profile.model_validate(factory.profile(n)).dump()
        facts = customer_facts(profile, status="ACTIVE", created_at=now, last_activity=now)
        templates.append(segment_sql.facts_row(org, uuid.UUID(int=0), 1, facts)[3:])
    columns = sql.SQL(", ").join(map(sql.Identifier, segment_sql.COLUMNS))
    copy_sql = sql.SQL("COPY segment_facts ({}) FROM STDIN (FORMAT BINARY)").format(columns)
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        with cur.copy(copy_sql) as copy:
            copy.set_types(segment_sql.TYPES)
            for i in range(count):
                copy.write_row((org, uuid.uuid4(), 1, *templates[i % TEMPLATES]))
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE segment_facts")


def define(app: Any, org: str, name: str) -> uuid.UUID:
    from domain.segment import Segment, SegmentDefinition

    definition = SegmentDefinition.model_validate(
        {"name": name, "ruleId": "bench", "criteria": CRITERIA}
    )
    segment = Segment.define(org, definition, "bench")
    app.save(segment)
    return segment.id


def bare_sql_seconds(url: str, org: str) -> tuple[float, int]:
    """The compiled criteria's SELECT of ids, warm (best of 3)."""
    from domain.criteria import SegmentCriteria
    from projections.segment_sql import compile_criteria

    query, params = compile_criteria(
        SegmentCriteria.model_validate(CRITERIA), org, datetime.now(UTC)
    )
    best, count = float("inf"), 0
    with psycopg.connect(url) as conn:
        for _ in range(3):
            started = time.perf_counter()
            count = len(conn.execute(query, params).fetchall())
            best = min(best, time.perf_counter() - started)
    return best, count


def run(out: report.Report, url: str) -> None:
    from eventstore.application import Customers
    from projections.runner import Projector
    from service.settings import get_settings
    from write_api.background import calculation
    from write_api.background.calculation import Calculator
    from write_api.background.membership import Reevaluator

    settings = get_settings()
    app = Customers(settings, pool_size=4)
    projector = Projector(settings, app=app)
    calculator = Calculator(app)
    try:
        for size in SIZES:
            org = f"seg-{size}"
            print(f"\n== {size:,} customers: facts", flush=True)
            started = time.perf_counter()
            fill_facts(url, org, size)
            print(f"    COPY + VACUUM ANALYZE {time.perf_counter() - started:.1f} s", flush=True)
            sid = define(app, org, f"bench {size}")
            projector.run_once()
            bare, matched = bare_sql_seconds(url, org)

            def calculate(
                reason: calculation.Reason, sid: uuid.UUID = sid, org: str = org
            ) -> tuple[float, float]:
                calculation.queue(app, org, sid, reason, "bench")
                t0 = time.perf_counter()
                assert calculator.run_next()
                t1 = time.perf_counter()
                projector.run_once()  # every view, as the projector process does
                return t1 - t0, time.perf_counter() - t1

            job, projected = calculate(calculation.Reason.CALCULATION)
            total = job + projected
            target = 1.0 if size == 100_000 else 10.0
            out.add(
                f"6. Segment calculation, {size:,} customers, first run ({matched:,} join)",
                f"{ms(total * 1000)} end to end (job {ms(job * 1000)}: diff + "
                f"{-(-matched // 5000) + 1} events + members; history projected "
                f"{ms(projected * 1000)})",
                baseline=f"bare SQL of the criteria {ms(bare * 1000)}",
                target=f"≤ {target:g} s",
                ok=total <= target,
            )
            again, projected = calculate(calculation.Reason.CALCULATION)
            out.add(
                f"6. Segment recalculation, {size:,} customers, nothing changed",
                f"{ms((again + projected) * 1000)} end to end",
                baseline=f"bare SQL {ms(bare * 1000)}",
                target=f"≤ {target:g} s",
                ok=again + projected <= target,
            )
            if size == SIZES[-1]:
                incremental(out, app, url, org, Reevaluator(app), projector)
    finally:
        calculator.close()
        projector.close()
        app.close()


def incremental(
    out: report.Report,
    app: Any,
    url: str,
    org: str,
    reevaluator: Any,
    projector: Any,
) -> None:
    """One customer's facts change (age in / out of the range); time its re-evaluation
    against the organization's active segments (5: the benched one + 4 more)."""
    from domain.membership import Change, Reason, events
    from write_api.background.membership import append

    print("\n== incremental re-evaluation", flush=True)
    for k in range(4):
        define(app, org, f"bench extra {k}")
    projector.run_once()
    with psycopg.connect(url, autocommit=True) as conn:
        ids = [
            r[0]
            for r in conn.execute(
                "SELECT id FROM segment_facts WHERE org_id = %s ORDER BY random() LIMIT 2000",
                (org,),
            )
        ]
        stats = Latencies()
        for i, cid in enumerate(ids):
            conn.execute("UPDATE segment_facts SET age = %s WHERE id = %s", (70 + i % 2 * -30, cid))
            t0 = time.perf_counter()
            reevaluator.reevaluate([cid])
            stats.add(time.perf_counter() - t0, 200, True)
    reevaluator.close()
    projector.run_once()

    base = Latencies()
    dummy = uuid.uuid4()
    for version in range(500):
        change = Change(org, dummy, [str(uuid.uuid4())], [], Reason.MANUAL)
        t0 = time.perf_counter()
        append(app, [change], list(events(change, version, datetime.now(UTC))))
        base.add(time.perf_counter() - t0, 200, True)
    out.add(
        f"7. Incremental re-evaluation of one changed customer ({len(ids):,} customers, "
        "5 active segments, 1M-member segment)",
        lat(stats, 50, 99),
        baseline=f"bare append of one membership event {lat(base, 50, 99)}",
        target="p99 ≤ 5 ms",
        ok=stats.ms(99) <= 5,
    )


def main(argv: list[str] | None = None) -> int:
    _, execute = env.focused_bench("python -m bench.segments", __doc__, DB, "segments", argv)
    return execute(run)


if __name__ == "__main__":
    sys.exit(main())
