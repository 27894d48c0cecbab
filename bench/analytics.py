"""Analytics benchmark: `python -m bench.analytics` (also run by `make bench`).

1. Model fit of an organization with 100,000 buyers: purchase histories simulated from BG/NBD
   (the CDNOW estimates r = 0.24, alpha = 30.87 days, a = 0.79, b = 2.43; first purchases
   spread over two years) with Gamma-Gamma spend (p = 6.25, q = 3.74, gamma = 15.44), COPYed
   into `customer_events`, with their `customer_activity` and `segment_facts` derived from
   those events by SQL. `projections.purchase_models.fit` is timed end to end (what the
   segments process runs for a queued fit, minus the FINISH update), beside its parts: the
   OCCASIONS query alone (baseline: the SQL every fit has to run) and the numpy/scipy fits.
2. Insights of a customer with 1,000 tracked events (created through the event store and
   projected; events stored by `write_api.tracking.ActivityWriter`) in that organization, with
   its model fitted: sequential `GET /api/v1/customers/{id}/insights` (and `/analytics`) on the
   read app in process (httpx + ASGITransport), beside `GET /api/v1/customers/{id}` on the same
   app, interleaved.
3. `POST /api/v1/customers/reports` (JSON) over an organization of 1,000,000 customers seeded by
   set-based SQL (`customers_view`, `segment_facts`, ~1.7M `customer_events`,
   `customer_activity` derived from them) with its model fitted, beside one pass over the same
   rows (`SELECT count(*) FROM customer_facts WHERE org_id = ...`); then each of the report's
   queries alone, in one snapshot like the endpoint's, with the server's work_mem and with
   64MB (as the fit's OCCASIONS query): at 4MB their sorts and aggregations spill to disk,
   and whether more memory helps is measured rather than assumed.

Seeding drops and rebuilds the secondary indexes of customers_view around its bulk INSERT
(same definitions, read from pg_indexes): 11 indexes maintained row by row took 105 s here.
"""

from __future__ import annotations

import asyncio
import os
import random
import resource
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from psycopg.types.json import Jsonb

from bench import env, report
from bench.client import Latencies
from bench.report import lat, ms

DB = "customers_bench_analytics"
FIT_ORG = "bench-analytics-fit"
REPORT_ORG = "bench-analytics-report"
FIT_CUSTOMERS = 100_000
REPORT_CUSTOMERS = 1_000_000
YEARS_DAYS = 730.0  # first purchases / acquisitions spread over two years
BGNBD = {"r": 0.24, "alpha": 30.87, "a": 0.79, "b": 2.43}  # CDNOW, per day
GAMMA_GAMMA = {"p": 6.25, "q": 3.74, "gamma": 15.44}  # CDNOW
CATEGORIES = ("books", "music", "electronics", "home", "garden", "toys", "fashion", "sports")
INSIGHT_EVENTS = {"PURCHASE": 300, "PAGE_VIEW": 400, "LOGIN": 150, "EMAIL_OPEN": 100}
INSIGHT_EVENTS["EMAIL_CLICK"] = 1000 - sum(INSIGHT_EVENTS.values())
REQUESTS = 500  # per endpoint, sequential
REPORT_RUNS = 3
# With the server's work_mem (4MB by default) the big sorts and hash aggregations of the fit
# and the report spill to disk; each is also timed with this much, for comparison.
WORK_MEM_SIZE = "64MB"
WORK_MEM = f"SELECT set_config('work_mem', '{WORK_MEM_SIZE}', true)"

EVENT_COLUMNS = (
    "id, customer_id, org_id, event_type, event_data, channel, occurred_at, received_at,"
    " session_id, device_info"
)
EVENT_TYPES = (
    "uuid", "uuid", "text", "text", "jsonb", "text", "timestamptz", "timestamptz", "uuid", "jsonb",
)  # fmt: skip

# The running totals `write_api.tracking.STORE` keeps, computed from the stored events at once.
ACTIVITY_FROM_EVENTS = """
INSERT INTO customer_activity (customer_id, org_id, event_count, purchase_count,
    spend_currency, mixed_currencies, total_spent_cents, first_purchase_at, last_purchase_at,
    categories, login_count, last_login_at, first_event_at, last_activity_at)
SELECT customer_id, min(org_id), count(*),
    count(*) FILTER (WHERE event_type = 'PURCHASE'),
    min(lower(event_data->>'currency')) FILTER (WHERE event_type = 'PURCHASE'),
    coalesce(count(DISTINCT lower(event_data->>'currency'))
        FILTER (WHERE event_type = 'PURCHASE') > 1, false),
    coalesce(sum(round((event_data->>'amount')::numeric * 100))
        FILTER (WHERE event_type = 'PURCHASE'), 0)::bigint,
    min(occurred_at) FILTER (WHERE event_type = 'PURCHASE'),
    max(occurred_at) FILTER (WHERE event_type = 'PURCHASE'),
    coalesce(array_agg(DISTINCT lower(event_data->>'category'))
        FILTER (WHERE event_type = 'PURCHASE' AND event_data->>'category' <> ''), '{}'),
    count(*) FILTER (WHERE event_type = 'LOGIN'),
    max(occurred_at) FILTER (WHERE event_type = 'LOGIN'),
    min(occurred_at), max(occurred_at)
FROM customer_events WHERE org_id = %s GROUP BY customer_id
"""


def elapsed(started: float) -> str:
    return f"{time.perf_counter() - started:.1f} s"


def seconds(x: float) -> str:
    return f"{x:.2f} s" if x >= 1 else ms(x * 1000)


def fine(x: float) -> str:
    return ms(x * 1000) if x >= 1e-4 else f"{x * 1e6:.0f} µs"


def create_partitions(conn: psycopg.Connection[Any], first: datetime, last: datetime) -> int:
    """The monthly partitions of customer_events covering [first, last], created with the
    writer's own statement (`write_api.tracking.CREATE_PARTITION`)."""
    from psycopg import sql

    from write_api.tracking import CREATE_PARTITION

    month = first.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    count = 0
    while month <= last:
        end = month.replace(year=month.year + month.month // 12, month=month.month % 12 + 1)
        name = f"customer_events_y{month.year:04d}m{month.month:02d}"
        conn.execute(
            CREATE_PARTITION.format(sql.Identifier(name), sql.Literal(month), sql.Literal(end))
        )
        month, count = end, count + 1
    return count


# ------------------------------------------------------------------------------- 1. model fit


def simulate(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """BG/NBD purchase histories of `n` customers: (customer index, days before now, amount)
    per purchase. Each customer's first purchase is uniform over the last two years; while
    alive, purchases are Poisson(lambda ~ Gamma(r, alpha)); after each repeat purchase the
    customer drops out with probability p ~ Beta(a, b). Amounts ~ Gamma(p, nu), nu ~
    Gamma(q, gamma) per customer."""
    lam = np.maximum(rng.gamma(BGNBD["r"], 1 / BGNBD["alpha"], n), 1e-300)
    drop = rng.beta(BGNBD["a"], BGNBD["b"], n)
    age = rng.uniform(0.0, YEARS_DAYS, n)  # days from the first purchase to now
    who, when = [np.arange(n)], [np.zeros(n)]
    t = np.zeros(n)
    active = np.arange(n)
    while active.size:
        t[active] += rng.exponential(1 / lam[active])
        active = active[t[active] <= age[active]]
        who.append(active)
        when.append(t[active].copy())
        active = active[rng.random(active.size) >= drop[active]]
    customer = np.concatenate(who)
    days_ago = age[customer] - np.concatenate(when)
    nu = rng.gamma(GAMMA_GAMMA["q"], 1 / GAMMA_GAMMA["gamma"], n)
    amount = np.maximum(np.round(rng.gamma(GAMMA_GAMMA["p"], 1 / nu[customer]), 2), 0.01)
    return customer, days_ago, amount


def seed_fit_org(url: str, now: datetime) -> tuple[int, int]:
    """(customers, purchase events) of FIT_ORG, COPYed in; facts derived by SQL."""
    rng = np.random.default_rng(42)
    customer, days_ago, amount = simulate(rng, FIT_CUSTOMERS)
    ids = [uuid.uuid4() for _ in range(FIT_CUSTOMERS)]
    categories = rng.integers(0, len(CATEGORIES), customer.size)
    epoch = now.timestamp()
    with psycopg.connect(url, autocommit=True) as conn:
        parts = create_partitions(conn, now - timedelta(days=YEARS_DAYS + 31), now)
        print(f"    {parts} monthly partitions; COPY {customer.size:,} purchases", flush=True)
        with conn.transaction(), conn.cursor() as cur:
            copy_sql = f"COPY customer_events ({EVENT_COLUMNS}) FROM STDIN (FORMAT BINARY)"
            with cur.copy(copy_sql) as copy:
                copy.set_types(EVENT_TYPES)
                for k in range(customer.size):
                    occurred = datetime.fromtimestamp(epoch - float(days_ago[k]) * 86400, UTC)
                    data = {
                        "orderId": f"o-{k}",
                        "amount": f"{amount[k]:.2f}",
                        "currency": "eur",
                        "product": "item",
                        "category": CATEGORIES[categories[k]],
                        "channel": "web",
                    }
                    cid = ids[customer[k]]
                    row = (uuid.uuid4(), cid, FIT_ORG, "PURCHASE", Jsonb(data), "web")
                    copy.write_row((*row, occurred, now, None, None))
        conn.execute("SET work_mem = '256MB'")
        conn.execute(ACTIVITY_FROM_EVENTS, (FIT_ORG,))
        conn.execute(
            "INSERT INTO segment_facts (id, org_id, version, status, marketing_consent,"
            " data_processing_consent, currency, login_count, order_count, total_spent_cents,"
            " total_spent, created_at, last_activity)"
            " SELECT customer_id, org_id, 1, 'ACTIVE', true, true, 'eur', 0, 0, 0, 0,"
            " first_event_at, last_activity_at FROM customer_activity WHERE org_id = %s",
            (FIT_ORG,),
        )
        conn.execute("VACUUM ANALYZE customer_events, customer_activity, segment_facts")
    return FIT_CUSTOMERS, int(customer.size)


def fit_figure(out: report.Report, url: str, now: datetime) -> None:
    from psycopg import sql

    from domain.purchase_model import fit_bgnbd, fit_gamma_gamma
    from projections import purchase_models

    print(f"\n== 1. model fit, {FIT_CUSTOMERS:,} customers", flush=True)
    started = time.perf_counter()
    customers, purchases = seed_fit_org(url, now)
    print(f"    seeded in {elapsed(started)}", flush=True)
    fits: list[float] = []
    done: dict[str, Any] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        for _ in range(3):
            t0 = time.perf_counter()
            with conn.transaction():
                done = purchase_models.fit(conn, FIT_ORG, now)
            fits.append(time.perf_counter() - t0)
        assert done["state"] == "SUCCEEDED", done["error"]
        # The parts, each best of 3.
        params = {"org": FIT_ORG, "until": now}
        occasions_sql = sql.SQL(purchase_models.OCCASIONS).format(where=sql.SQL(""))
        currency_sql = sql.SQL(purchase_models.CURRENCIES).format(where=sql.SQL(""))
        names = ("currency", "occasions", "occasions_work_mem", "loaded", "numeric", "facts")
        best = dict.fromkeys(names, float("inf"))

        def timed(name: str, started: float) -> None:
            best[name] = min(best[name], time.perf_counter() - started)

        for _ in range(3):
            t0 = time.perf_counter()
            conn.execute(currency_sql, params).fetchall()
            timed("currency", t0)
            t0 = time.perf_counter()
            rows = conn.execute(occasions_sql, params).fetchall()
            timed("occasions", t0)
            with conn.transaction():
                conn.execute(WORK_MEM)
                t0 = time.perf_counter()
                conn.execute(occasions_sql, params).fetchall()
                timed("occasions_work_mem", t0)
            t0 = time.perf_counter()
            data, currency = purchase_models.occasions(conn, FIT_ORG, now, None)
            timed("loaded", t0)
            t0 = time.perf_counter()
            bg = fit_bgnbd(data.x, data.t_x, data.T)
            buyers = data.repeat_mean > 0
            gg = fit_gamma_gamma(data.x[buyers], data.repeat_mean[buyers])
            timed("numeric", t0)
            t0 = time.perf_counter()
            purchase_models.rfm_base(conn, FIT_ORG, now, currency, None)
            timed("facts", t0)
        fid = uuid.uuid4()
        conn.execute(purchase_models.QUEUE, (fid, FIT_ORG, "bench", now, None, None))
        conn.execute(purchase_models.FINISH, {**done, "id": fid})
    total = statistics.median(fits)
    fitted = ", ".join(f"{k} {getattr(bg, k):.3g}" for k in BGNBD)
    fitted += "; " + ", ".join(f"{k} {getattr(gg, k):.3g}" for k in GAMMA_GAMMA)
    arrays = best["loaded"] - best["currency"] - best["occasions"]
    out.add(
        f"Model fit (BG/NBD + Gamma-Gamma + RFM samples), {customers:,} buyers,"
        f" {purchases:,} tracked purchases",
        f"{seconds(total)} end to end (median of 3: {', '.join(seconds(f) for f in fits)});"
        f" {len(rows):,} customers, {done['repeat']:,} repeat occasions; fitted {fitted}"
        f" (simulated from {', '.join(f'{k} {v:g}' for k, v in BGNBD.items())};"
        f" {', '.join(f'{k} {v:g}' for k, v in GAMMA_GAMMA.items())})",
        baseline=f"the OCCASIONS query alone {seconds(best['occasions'])} (with work_mem"
        f" {WORK_MEM_SIZE}: {seconds(best['occasions_work_mem'])}); the fit's other"
        f" parts (best of 3): numpy/scipy fits {seconds(best['numeric'])}, main-currency query"
        f" (CURRENCIES, a second pass over the same purchase days) {seconds(best['currency'])},"
        f" rows to arrays ~{seconds(max(arrays, 0.0))}, RFM samples from customer_facts"
        f" {seconds(best['facts'])}",
    )


# ------------------------------------------------------------------------------- 2. insights


def insight_customer(url: str, now: datetime) -> uuid.UUID:
    """A customer of FIT_ORG created through the event store and projected, with 1,000
    tracked events stored by the tracking writer."""
    from domain.activity import ONE
    from domain.customer import Customer
    from domain.values import Profile
    from eventstore.application import Customers
    from projections.runner import Projector
    from service.seed import CustomerFactory
    from service.settings import get_settings
    from write_api.tracking import ActivityWriter, Submission

    settings = get_settings()
    profile = CustomerFactory(random.Random(5)).profile(0)
    profile["preferences"]["currency"] = "EUR"
    profile["preferences"]["privacySettings"]["analyticsTracking"] = True
    for p in profile["metadata"]["purchaseHistory"]:
        p["amount"]["currency"] = "EUR"
    total = sum(p["amount"]["amount"] for p in profile["metadata"]["purchaseHistory"])
    profile["metadata"]["lifetimeValue"] = {"amount": round(total, 2), "currency": "EUR"}
    app = Customers(settings, pool_size=2)
    projector = Projector(settings, app=app)
    try:
        customer = Customer.register(FIT_ORG, Profile.model_validate(profile), "bench")
        app.save(customer, new_keys=[app.keys.create(customer.id, FIT_ORG)])
        projector.run_once()
    finally:
        projector.close()
        app.close()
    rng = random.Random(8)
    device = {"type": "mobile", "os": "iOS", "browser": "Safari"}
    events = []
    for kind, count in INSIGHT_EVENTS.items():
        for k in range(count):
            body: dict[str, Any] = {
                "type": kind,
                "customerId": str(customer.id),
                "timestamp": (now - timedelta(days=rng.uniform(0, YEARS_DAYS))).isoformat(),
            }
            if kind == "PURCHASE":
                body["data"] = {
                    "orderId": f"o-{k}",
                    "amount": round(rng.uniform(5, 300), 2),
                    "currency": "EUR",
                    "product": f"item {rng.randint(1, 300)}",
                    "category": rng.choice(CATEGORIES),
                    "channel": rng.choice(("web", "web", "mobile", "store")),
                }
            elif kind == "PAGE_VIEW":
                body["data"] = {"url": f"https://shop.example/p/{rng.randint(1, 5000)}"}
                body["device"] = device
                body["channel"] = "web"
            elif kind == "LOGIN":
                body["data"] = {"method": "password"}
                body["device"] = device
                body["channel"] = rng.choice(("web", "mobile"))
            elif kind == "EMAIL_CLICK":
                body["data"] = {"campaignId": "spring", "url": "https://shop.example/sale"}
                body["channel"] = "email"
            else:
                body["channel"] = "email"
            events.append(ONE.validate_python(body))
    writer = ActivityWriter(settings)
    try:
        result = writer.submit(Submission(FIT_ORG, events, now))
    finally:
        writer.close()
    assert result.accepted == len(events), result
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE customer_events, customer_activity")
    return customer.id


async def timed_gets(
    app: Any, headers: dict[str, str], paths: dict[str, str], rounds: int
) -> dict[str, Latencies]:
    """`rounds` of one GET of each path in turn (interleaved, so they share the noise)."""
    import httpx
    from asgi_lifespan import LifespanManager

    stats = {name: Latencies() for name in paths}
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://bench", headers=headers
        ) as client:
            for n in range(rounds + 20):
                for name, path in paths.items():
                    t0 = time.perf_counter()
                    reply = await client.get(path)
                    if n >= 20:  # warm-up
                        stats[name].add(
                            time.perf_counter() - t0, reply.status_code, reply.is_success
                        )
            for name, path in paths.items():
                reply = await client.get(path)
                print(f"    {name}: {reply.status_code} {reply.text[:300]}", flush=True)
    return stats


def endpoint_queries(url: str, cid: uuid.UUID) -> list[tuple[str, str, float]]:
    from projections import purchase_models
    from read_api import activity

    until = datetime.now(UTC)
    queries: list[tuple[str, str, Any, Any]] = [
        ("insights", "INSIGHT_FACTS (customer_facts)", activity.INSIGHT_FACTS, (cid, FIT_ORG)),
        ("insights", "purchase_models.LOAD (the model row)", purchase_models.LOAD, (FIT_ORG,)),
        ("insights", "HABITS", activity.HABITS, {"id": cid}),
        (
            "insights",
            "OCCASIONS (the customer's purchase days)",
            activity.OCCASIONS,
            {"org": FIT_ORG, "until": until, "customer": cid},
        ),
        ("analytics", "FACTS (customer_facts)", activity.FACTS, (cid, FIT_ORG)),
        ("analytics", "ENGAGEMENT", activity.ENGAGEMENT, (cid,)),
        ("analytics", "DEVICES", activity.DEVICES, (cid,)),
    ]
    took = []
    with psycopg.connect(url, autocommit=True) as conn:
        for endpoint, name, statement, params in queries:
            times = []
            for _ in range(100):
                t0 = time.perf_counter()
                rows = conn.execute(statement, params).fetchall()
                times.append(time.perf_counter() - t0)
            took.append((endpoint, name, statement, statistics.median(times), rows))
        row = took[1][4][0]
        times = []
        for _ in range(100):
            t0 = time.perf_counter()
            purchase_models.load(row)
            times.append(time.perf_counter() - t0)
    result = [(e, n, t) for e, n, _, t, _ in took]
    result.insert(2, ("insights", "purchase_models.load() of that row", statistics.median(times)))
    return result


def insights_figure(out: report.Report, url: str, now: datetime) -> None:
    from read_api.app import create_app
    from service.auth import issue_token
    from service.settings import get_settings

    print("\n== 2. insights of a customer with 1,000 events", flush=True)
    started = time.perf_counter()
    cid = insight_customer(url, now)
    print(f"    customer {cid} created, projected and tracked in {elapsed(started)}", flush=True)
    settings = get_settings()
    token = issue_token(settings, sub="bench", org=FIT_ORG, roles=["admin"], ttl_seconds=7200)
    paths = {
        "insights": f"/api/v1/customers/{cid}/insights",
        "analytics": f"/api/v1/customers/{cid}/analytics",
        "get": f"/api/v1/customers/{cid}",
    }
    stats = asyncio.run(
        timed_gets(create_app(settings), {"Authorization": f"Bearer {token}"}, paths, REQUESTS)
    )
    out.section(
        "The insights' and analytics' queries alone (the customer with 1,000 events; median"
        " of 100, one connection)",
        "| endpoint | query | median |\n|---|---|---|\n"
        + "\n".join(f"| {e} | {q} | {fine(t)} |" for e, q, t in endpoint_queries(url, cid)),
    )
    base = stats["get"]
    baseline = f"GET /customers/{{id}} on the same app, interleaved: {lat(base, 50, 99)}"
    for name in ("insights", "analytics"):
        s = stats[name]
        errors = f"; {s.errors} errors {s.statuses}" if s.errors else ""
        out.add(
            f"GET /customers/{{id}}/{name}, customer with 1,000 events (300 purchases),"
            f" {REQUESTS} sequential requests in process",
            f"{lat(s, 50, 99)}{errors}",
            baseline=baseline,
        )


# ------------------------------------------------------------------------------- 3. reports

PEOPLE = """
CREATE UNLOGGED TABLE bench_people AS
SELECT i, id, created_at, u,
    CASE WHEN u[1] < 0.85 THEN 'ACTIVE' WHEN u[1] < 0.95 THEN 'INACTIVE'
        WHEN u[1] < 0.99 THEN 'SUSPENDED' ELSE 'DELETED' END AS status,
    (ARRAY['ES','ES','ES','ES','ES','ES','FR','FR','FR','FR','DE','DE','DE','IT','IT','GB','GB',
        'US','US',NULL])[1 + floor(u[2] * 20)::int] AS country_code,
    (ARRAY['organic','organic','organic','organic','organic','organic','organic','paid_search',
        'paid_search','paid_search','paid_search','social','social','social','referral',
        'referral','email','email',NULL,NULL])[1 + floor(u[3] * 20)::int] AS source,
    u[4] < 0.4 AS buyer,
    CASE WHEN u[4] < 0.4 THEN floor(-ln(1 - u[5]))::int ELSE 0 END AS imported,
    CASE WHEN u[4] < 0.4 THEN 1 + floor(-1.5 * ln(1 - u[6]))::int ELSE 0 END AS purchases,
    floor(-1.3 * ln(1 - u[7]))::int AS others,
    -365 * ln(1 - u[8]) AS alive_days
FROM (
    SELECT i, gen_random_uuid() AS id,
        %(now)s - (730 * (1 - sqrt(random()))) * interval '1 day' AS created_at,
        ARRAY[random(), random(), random(), random(), random(), random(), random(), random(),
            random()] AS u
    FROM generate_series(1, %(n)s) i
) s
"""
VIEW_ROWS = """
INSERT INTO customers_view (id, org_id, email, name, age, gender, country_code, city, status,
    marketing_consent, data_processing_consent, created_at, updated_at, last_activity, version)
SELECT id, %(org)s, 'customer' || i || '@example.com', 'Customer ' || i,
    18 + floor(u[9] * 67)::int, (ARRAY['MALE','FEMALE','OTHER','UNKNOWN'])[1 + i %% 4],
    country_code, CASE WHEN country_code IS NOT NULL THEN 'City ' || (i %% 7) END, status,
    u[9] < 0.6, true, created_at, created_at, created_at, 1
FROM bench_people ORDER BY id
"""
FACTS_ROWS = """
INSERT INTO segment_facts (id, org_id, version, status, age, gender, country_code, country,
    city, marketing_consent, data_processing_consent, source, language, currency, login_count,
    created_at, last_activity, order_count, spend_currency, total_spent_cents, total_spent,
    average_order_value, first_purchase_at, last_purchase_at)
SELECT id, %(org)s, 1, status, 18 + floor(u[9] * 67)::int,
    lower((ARRAY['MALE','FEMALE','OTHER','UNKNOWN'])[1 + i %% 4]), lower(country_code),
    CASE country_code WHEN 'ES' THEN 'spain' WHEN 'FR' THEN 'france' WHEN 'DE' THEN 'germany'
        WHEN 'IT' THEN 'italy' WHEN 'GB' THEN 'united kingdom' WHEN 'US' THEN 'united states'
    END,
    CASE WHEN country_code IS NOT NULL THEN 'city ' || (i %% 7) END,
    u[9] < 0.6, true, source, 'en', 'eur', 0, created_at, created_at, imported,
    CASE WHEN imported > 0 THEN 'eur' END, p.cents, p.cents / 100.0,
    CASE WHEN imported > 0 THEN p.cents / 100.0 / imported END,
    CASE WHEN imported > 0 THEN created_at - (30 + 335 * u[5]) * interval '1 day' END,
    CASE WHEN imported > 0 THEN created_at - (30 * u[5]) * interval '1 day' END
FROM bench_people
CROSS JOIN LATERAL (SELECT (imported * (2000 + 6000 * u[7]))::bigint AS cents) p
ORDER BY id
"""
# Tracked events: buyers' purchases while "alive" after the acquisition; other activity
# decaying with time since the acquisition (for the retention cohorts).
EVENT_ROWS = """
INSERT INTO customer_events (id, customer_id, org_id, event_type, event_data, channel,
    occurred_at, received_at, session_id, device_info)
SELECT gen_random_uuid(), id, %(org)s, 'PURCHASE',
    jsonb_build_object('orderId', 'o-' || i || '-' || k,
        'amount', round((5 + 60 * -ln(1 - random()))::numeric, 2)::text, 'currency', 'EUR',
        'product', 'item', 'category', (ARRAY['books','music','electronics','home','garden',
            'toys','fashion','sports'])[1 + (i + k) %% 8], 'channel', 'web'),
    'web', created_at + random() * least(%(now)s - created_at,
        alive_days * interval '1 day'), %(now)s, NULL::uuid, NULL::jsonb
FROM bench_people, generate_series(1, purchases) k
WHERE status <> 'DELETED'
UNION ALL
SELECT gen_random_uuid(), id, %(org)s, t.type, t.data, t.channel,
    created_at + random() ^ 2 * (%(now)s - created_at), %(now)s, NULL::uuid, NULL::jsonb
FROM bench_people, generate_series(1, others) k
CROSS JOIN LATERAL (SELECT CASE WHEN (i + k) %% 20 < 12 THEN 'PAGE_VIEW'
    WHEN (i + k) %% 20 < 17 THEN 'LOGIN' ELSE 'EMAIL_OPEN' END AS type) c
CROSS JOIN LATERAL (SELECT c.type,
    CASE c.type WHEN 'PAGE_VIEW' THEN jsonb_build_object('url', 'https://shop.example/p/' || k)
        WHEN 'LOGIN' THEN '{"method": "password"}'::jsonb
        ELSE '{"campaignId": "spring"}'::jsonb END AS data,
    CASE c.type WHEN 'EMAIL_OPEN' THEN 'email' ELSE 'web' END AS channel) t
WHERE status <> 'DELETED'
"""


SECONDARY_INDEXES = """
SELECT i.indexname, i.indexdef FROM pg_indexes i
WHERE i.schemaname = current_schema() AND i.tablename = %(table)s
    AND i.indexname NOT IN (SELECT conname FROM pg_constraint WHERE conrelid = %(table)s::regclass)
"""


def bulk_insert(conn: psycopg.Connection[Any], table: str, statement: str, params: Any) -> int:
    """INSERT ... SELECT with the table's secondary indexes dropped and built again afterwards
    with their own definitions (seeding only: one CREATE INDEX is far cheaper than a million
    random index insertions; customers_view has 11 of them)."""
    from psycopg import sql

    indexes = conn.execute(SECONDARY_INDEXES, {"table": table}).fetchall()
    with conn.transaction():
        for name, _ in indexes:
            conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(name)))
        rows = conn.execute(statement, params).rowcount
        for _, definition in indexes:
            conn.execute(definition)
    return rows


def seed_report_org(url: str, now: datetime) -> dict[str, int]:
    steps: list[tuple[str, str, Any]] = [
        ("bench_people", PEOPLE, {"now": now, "n": REPORT_CUSTOMERS}),
        ("customers_view", VIEW_ROWS, {"org": REPORT_ORG}),
        ("segment_facts", FACTS_ROWS, {"org": REPORT_ORG}),
        ("customer_events", EVENT_ROWS, {"org": REPORT_ORG, "now": now}),
        ("customer_activity", ACTIVITY_FROM_EVENTS, (REPORT_ORG,)),
    ]
    counts = {}
    with psycopg.connect(url, autocommit=True) as conn:
        create_partitions(conn, now - timedelta(days=YEARS_DAYS + 31), now)
        conn.execute("SET work_mem = '256MB'")
        conn.execute("SET maintenance_work_mem = '512MB'")
        conn.execute("SELECT setseed(0.42)")
        for table, statement, params in steps:
            t0 = time.perf_counter()
            if table in {"customers_view", "segment_facts"}:
                counts[table] = bulk_insert(conn, table, statement, params)
            else:
                counts[table] = conn.execute(statement, params).rowcount
            print(f"    {table}: {counts[table]:,} rows in {elapsed(t0)}", flush=True)
        conn.execute("DROP TABLE bench_people")
        t0 = time.perf_counter()
        conn.execute(
            "VACUUM ANALYZE customers_view, segment_facts, customer_events, customer_activity"
        )
        conn.execute("CHECKPOINT")
        print(f"    VACUUM ANALYZE + CHECKPOINT in {elapsed(t0)}", flush=True)
    return counts


def memory(field: str) -> float:
    """MiB of /proc/self/status `field` (VmRSS: now, VmHWM: peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak_rss() -> bool:
    """Start a new VmHWM (peak RSS) interval (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def store_fit(url: str, org: str, now: datetime) -> tuple[float, dict[str, Any]]:
    from projections import purchase_models

    with psycopg.connect(url, autocommit=True) as conn:
        t0 = time.perf_counter()
        with conn.transaction():
            done = purchase_models.fit(conn, org, now)
        took = time.perf_counter() - t0
        fid = uuid.uuid4()
        conn.execute(purchase_models.QUEUE, (fid, org, "bench", now, None, None))
        conn.execute(purchase_models.FINISH, {**done, "id": fid})
    return took, done


async def timed_reports(app: Any, headers: dict[str, str], body: dict[str, Any]) -> Any:
    import httpx
    from asgi_lifespan import LifespanManager

    times: list[float] = []
    answer: Any = None
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://bench", headers=headers, timeout=600
        ) as client:
            for _ in range(REPORT_RUNS):
                t0 = time.perf_counter()
                reply = await client.post("/api/v1/customers/reports", json=body)
                times.append(time.perf_counter() - t0)
                assert reply.status_code == 200, reply.text[:500]
                answer = reply.json()
                print(f"    report {times[-1]:.2f} s ({len(reply.content):,} bytes)", flush=True)
    return times, answer


def report_sections(url: str, body: dict[str, Any]) -> list[tuple[str, float, float]]:
    """Each of the report's queries alone, in one snapshot with the endpoint's settings, then
    again with a bigger work_mem: (query, seconds, seconds with WORK_MEM)."""
    from read_api import reports

    chosen = reports.selection(
        reports.ReportRequest.model_validate(body), REPORT_ORG, datetime.now(UTC)
    )
    statements = [
        ("customers (GROUPING SETS)", reports.query(reports._PROFILE, chosen)),
        ("retention cohorts", reports.query(reports._RETENTION, chosen)),
        ("lifetime value percentiles", reports.query(reports._VALUE, chosen)),
        ("RFM buyers (packed)", reports.query(reports._RFM, chosen)),
        ("churn: purchase occasions (packed)", reports.churn_query(chosen)),
    ]
    took: dict[str, list[float]] = {name: [] for name, _ in statements}
    with psycopg.connect(url) as conn:
        for extra in (None, WORK_MEM):
            conn.execute(reports.SNAPSHOT)
            conn.execute(reports.SETTINGS)
            if extra:
                conn.execute(extra)
            for name, statement in statements:
                t0 = time.perf_counter()
                conn.execute(statement, chosen.params, prepare=False, binary=True).fetchall()
                took[name].append(time.perf_counter() - t0)
            conn.rollback()
    return [(name, t[0], t[1]) for name, t in took.items()]


def report_figure(out: report.Report, url: str, now: datetime) -> None:
    from read_api.app import create_app
    from service.auth import issue_token
    from service.settings import get_settings

    print(f"\n== 3. report over {REPORT_CUSTOMERS:,} customers", flush=True)
    started = time.perf_counter()
    counts = seed_report_org(url, now)
    print(f"    seeded in {elapsed(started)}", flush=True)
    fit_took, done = store_fit(url, REPORT_ORG, now)
    print(f"    model fit {done['state']} in {fit_took:.1f} s", flush=True)
    assert done["state"] == "SUCCEEDED", done["error"]
    out.add(
        f"Model fit of the report's organization ({done['customers']:,} buyers,"
        f" {counts['customer_events']:,} events)",
        f"{seconds(fit_took)} end to end",
    )

    with psycopg.connect(url) as conn:
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            row = conn.execute(
                "SELECT count(*) FROM customer_facts WHERE org_id = %s", (REPORT_ORG,)
            ).fetchone()
            best = min(best, time.perf_counter() - t0)
    assert row is not None
    settings = get_settings()
    token = issue_token(settings, sub="bench", org=REPORT_ORG, roles=["admin"], ttl_seconds=7200)
    body = {"from": (now - timedelta(days=YEARS_DAYS + 31)).isoformat(), "to": now.isoformat()}
    rss_before, reset = memory("VmRSS"), reset_peak_rss()
    times, answer = asyncio.run(
        timed_reports(create_app(settings), {"Authorization": f"Bearer {token}"}, body)
    )
    peak = memory("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    shown = (
        f"{answer['customers']['total']:,} customers, {answer['lifetimeValue']['buyers']:,}"
        f" buyers, RFM {answer['rfm']['buyers']:,} scored, churn"
        f" {answer['churnRisk']['buyers']:,} scored, {len(answer['retention']['byCohort'])}"
        " cohorts"
    )
    print(f"    {shown}; churn {answer['churnRisk']['buckets']}", flush=True)
    out.add(
        f"POST /customers/reports (JSON), {REPORT_CUSTOMERS:,} customers (all created in the"
        f" range), {REPORT_RUNS} runs in process",
        f"min {seconds(min(times))} / median {seconds(statistics.median(times))}"
        f" ({shown}); the process's RSS {rss_before:.0f} MiB before the reports, peak"
        f" {peak:.0f} MiB during them{'' if reset else ' (or earlier: peak of the whole run)'}",
        baseline=f"SELECT count(*) FROM customer_facts of the organization ({row[0]:,} rows)"
        f" {seconds(best)} (best of 3)",
    )
    sections = report_sections(url, body)
    out.section(
        "The report's queries alone (one snapshot with the endpoint's SNAPSHOT and SETTINGS)",
        f"| query | time | with work_mem {WORK_MEM_SIZE} |\n|---|---|---|\n"
        + "\n".join(f"| {n} | {seconds(a)} | {seconds(b)} |" for n, a, b in sections)
        + f"\n| sum | {seconds(sum(a for _, a, _ in sections))}"
        f" | {seconds(sum(b for _, _, b in sections))} |",
    )
    for name, took, bigger in sections:
        print(f"    {name}: {seconds(took)} (work_mem {WORK_MEM_SIZE}: {seconds(bigger)})")


# ------------------------------------------------------------------------------- main


def run(out: report.Report, url: str) -> None:
    started = time.perf_counter()
    now = datetime.now(UTC)
    fit_figure(out, url, now)
    insights_figure(out, url, datetime.now(UTC))
    report_figure(out, url, datetime.now(UTC))
    print(f"\n    whole bench {elapsed(started)} (pid {os.getpid()})", flush=True)


def main(argv: list[str] | None = None) -> int:
    _, execute = env.focused_bench("python -m bench.analytics", __doc__, DB, "analytics", argv)
    return execute(run)


if __name__ == "__main__":
    sys.exit(main())
