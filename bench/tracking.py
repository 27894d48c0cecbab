"""Activity tracking benchmark: `python -m bench.tracking` (also run by `make bench`).

10,000 customers seeded (`bench.seeding`, 80 % with analytics-tracking consent) and projected,
so the writer finds them in the read model; every tracked event names one that consented.
Then, against `write_api.tracking.ActivityWriter` (group commit into `customer_events`):

- baselines: binary COPY of the same rows straight into `customer_events` on one connection,
  and the writer called in process with validated events (no HTTP, no NATS);
- single `track` requests to `customers serve write-api` with CUSTOMERS_WORKERS=2 (uvicorn
  child processes: the load generator in this process does not share their GIL), open loop
  (latency from the scheduled send time) at 150 and at 1,000 req/s, beside `/health` of the
  same server at 1,000 req/s;
  then the process's capacity for them (closed loop, CPU measured there);
- the batch endpoint of the same process for 60 s, 1,000 mixed events per request from 8
  connections;
- NATS for 60 s: batches of 1,000 events published to the tracking subject at a fixed rate
  while two `customers serve ingest` processes (as `customers serve` runs them with
  CUSTOMERS_WORKERS=2) store them; rows counted in the table.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import secrets
import statistics
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import orjson
import psycopg

from bench import env, report
from bench.client import Client, HttpConnection, Latencies, Reply, closed_loop
from bench.report import lat, ms
from bench.workloads import BULK_ORG
from service.embedded import free_port

DB = "customers_bench_tracking"
CUSTOMERS = 10_000
BATCH = 1_000  # events per request / message (the endpoint's maximum)
WORKERS = 2  # CUSTOMERS_WORKERS of the servers under test: one per core of this machine
DURATION = 60.0  # seconds of sustained ingestion, HTTP and NATS each
CONNECTIONS = 16  # batch clients: enough to keep both server processes and the writer busy
TRACK_RATE = 1_000.0  # single-event requests per second, open loop
TRACK_SECONDS = 20.0
CAPACITY_SECONDS = 8.0
LOW_RATE = 150.0  # single-event requests per second that one process sustains
LOW_SECONDS = 10.0
MAX_BACKLOG = 2_000  # requests waiting when an open loop gives up (2 s of schedule)
NATS_OFFERED = 20_000  # events/s published (1.2M/min: above the target, below a flood)
DRAIN_SECONDS = 20.0  # at most, after publishing stops
TARGET_PER_MIN = 1_000_000
TARGET_P99_MS = 50.0
BATCH_PATH = "/api/v1/customers/track/batch"
PG = "postgres (bench db + background)"

# A storefront's mix: mostly page views, some e-mail and push, logins, purchases.
KINDS = ("PAGE_VIEW", "EMAIL_OPEN", "LOGIN", "PURCHASE", "EMAIL_CLICK", "LOGOUT", "PUSH_RECEIVED")
WEIGHTS = (50, 12, 10, 10, 6, 6, 6)
PRODUCTS = (
    ("Trail shoes", "Footwear"),
    ("Rain jacket", "Outerwear"),
    ("Headlamp", "Outdoor"),
    ("Water bottle", "Accessories"),
    ("Wool socks", "Footwear"),
)
DEVICES = (
    {"type": "mobile", "os": "Android", "browser": "Chrome"},
    {"type": "mobile", "os": "iOS", "browser": "Safari"},
    {"type": "desktop", "os": "Windows", "browser": "Edge"},
    {"type": "tablet", "os": "iPadOS", "browser": "Safari", "appVersion": "4.2.1"},
)


def main(argv: list[str] | None = None) -> int:
    tag = secrets.token_hex(4)
    os.environ.update(
        {
            # Rate limits are a per-client policy, not capacity (as env.prepare does for the
            # other route classes).
            "CUSTOMERS_RATE_LIMIT_TRACKING_PER_MINUTE": "0",
            # Its own JetStream stream and subjects (deleted at the end).
            "CUSTOMERS_NATS_STREAM": f"BENCHTRK_{tag}",
            "CUSTOMERS_NATS_SUBJECT_PREFIX": f"benchtrk_{tag}",
        }
    )
    _, execute = env.focused_bench("python -m bench.tracking", __doc__, DB, "tracking", argv)
    return execute(run)


# ------------------------------------------------------------------------------- workload


def event(rng: random.Random, customer: uuid.UUID | None, now: datetime) -> dict[str, Any]:
    """One tracked event as a producer sends it (customerId only when given)."""
    kind = rng.choices(KINDS, WEIGHTS)[0]
    body: dict[str, Any] = {
        "type": kind,
        "timestamp": (now - timedelta(seconds=rng.uniform(0, 3600))).isoformat(),
    }
    if customer is not None:
        body["customerId"] = str(customer)
    if kind == "PAGE_VIEW":
        body["data"] = {
            "url": f"https://shop.example/p/{rng.randint(1, 5000)}",
            "title": "Product page",
            "referrer": "https://search.example/",
            "durationSeconds": rng.randint(1, 300),
        }
        body["sessionId"] = str(uuid.UUID(int=rng.getrandbits(128)))
        body["device"] = rng.choice(DEVICES)
    elif kind == "PURCHASE":
        product, category = rng.choice(PRODUCTS)
        body["data"] = {
            "orderId": f"o-{rng.getrandbits(48):012x}",
            "amount": round(rng.uniform(5, 300), 2),
            "currency": "EUR",
            "product": product,
            "category": category,
            "channel": "web",
        }
    elif kind == "LOGIN":
        body["data"] = {"method": rng.choice(("password", "sso", "magic-link"))}
        body["device"] = rng.choice(DEVICES)
    elif kind in ("EMAIL_OPEN", "PUSH_RECEIVED"):
        body["data"] = {"campaignId": "spring-sale", "messageId": f"m-{rng.getrandbits(40):x}"}
    elif kind == "EMAIL_CLICK":
        body["data"] = {"campaignId": "spring-sale", "url": "https://shop.example/sale"}
    return body


def batches(ids: list[uuid.UUID], count: int, seed: int) -> list[bytes]:
    """`count` distinct `{"events": [...]}` bodies of BATCH events (cycled by the senders;
    events carry no eventId, so every send stores new rows)."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    return [
        orjson.dumps({"events": [event(rng, rng.choice(ids), now) for _ in range(BATCH)]})
        for _ in range(count)
    ]


# ------------------------------------------------------------------------------- plumbing


def postgres_backends() -> list[int]:
    """This bench's database backends (env.CpuMeter counts those of `customers_bench`)."""
    mine = []
    for pid in env.pids_named("postgres"):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if f" {DB} " in title:
            mine.append(pid)
    return mine


class Meter(env.CpuMeter):
    """env.CpuMeter with this database's backends in the PostgreSQL group."""

    def _add_backends(self) -> None:
        known = set(self.groups[PG])
        self.groups[PG] += [p for p in postgres_backends() if p not in known]

    def __enter__(self) -> Meter:
        self._add_backends()
        super().__enter__()
        return self

    def _sample(self) -> None:
        self._add_backends()
        super()._sample()


class Waits(env.DatabaseSampler):
    """What this database's active backends are doing, sampled every 100 ms
    (pg_stat_activity: a wait event, or none = on CPU)."""

    interval = 0.1
    QUERY = (
        "SELECT coalesce(wait_event_type || ':' || wait_event, 'CPU') FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        " AND backend_type = 'client backend' AND state = 'active'"
    )

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.seen: Counter[str] = Counter()

    def sample(self, conn: psycopg.Connection[Any]) -> None:
        for (what,) in conn.execute(self.QUERY):
            self.seen[what] += 1

    def summary(self) -> str:
        total = sum(self.seen.values())
        if not total:
            return "no active backend seen"
        top = ", ".join(f"{k} {v / total:.0%}" for k, v in self.seen.most_common(6))
        return f"active backends' wait events ({total} samples every 100 ms): {top}"


async def open_loop_bounded(
    client: Client,
    *,
    rate: float,
    duration: float,
    next_request: Callable[[], bytes],
    ok: Callable[[Reply], bool],
    connections: int = 64,
    max_backlog: int = MAX_BACKLOG,
) -> tuple[Latencies, float | None]:
    """bench.client.open_loop with at most `connections` connections: a request scheduled
    while all are busy waits for one (and is charged for the wait, from its scheduled time)
    instead of opening one more, so a server that falls behind shows a growing latency rather
    than exhausting the file descriptors. When `max_backlog` requests are waiting the
    schedule stops (the server cannot keep up; the rest would only lengthen the run); the
    second at which it stopped is returned with the latencies, None when it ran through."""
    stats = Latencies()
    pool: asyncio.Queue[HttpConnection] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(await client.connect())
    tasks: set[asyncio.Task[None]] = set()
    start = time.perf_counter()

    async def one(scheduled: float, raw: bytes) -> None:
        conn = await pool.get()
        try:
            reply = await conn.request(raw)
        except ConnectionError:
            conn.close()
            conn = await client.connect()
            stats.add(time.perf_counter() - scheduled, 0, False)
            return
        finally:
            pool.put_nowait(conn)
        done = time.perf_counter()
        stats.add(done - scheduled, reply.status, ok(reply))
        stats.timeline.append((scheduled - start, done - scheduled))

    cut = None
    for i in range(int(rate * duration)):
        scheduled = start + i / rate
        if len(tasks) >= max_backlog:
            cut = scheduled - start
            break
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(scheduled, next_request()))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)
    stats.elapsed = time.perf_counter() - start
    while not pool.empty():
        pool.get_nowait().close()
    return stats, cut


def paced_text(stats: Latencies, cut: float | None) -> str:
    """An open loop's latencies, rate achieved, per-second p99s; where it fell behind."""
    windows = stats.windows_ms(99) or [float("nan")]
    over = sum(1 for w in windows if w > TARGET_P99_MS)
    text = (
        f"{lat(stats, 50, 99)}; achieved {stats.rate:,.0f}/s; p99 of each second: median "
        f"{ms(statistics.median(windows))}, worst {ms(max(windows))}, {over} of "
        f"{len(windows)} seconds over {TARGET_P99_MS:.0f} ms"
    )
    if cut is not None:
        text += f"; fell behind: {MAX_BACKLOG:,} waiting at {cut:.1f} s, schedule stopped"
    if stats.errors:
        text += f"; {stats.errors} errors {dict(stats.statuses)}"
    return text


def section(out: report.Report, title: str, text: str) -> None:
    print(f"  {title}: {text}", flush=True)
    out.section(title, text)


def truncate(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE customer_events, customer_activity, activity_changes")
        conn.execute("CHECKPOINT")


def count_rows(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM customer_events").fetchone()
        return int(row[0]) if row else 0


def per_min(events: float, seconds: float) -> float:
    return events / seconds * 60 if seconds else float("nan")


def fmt_min(x: float) -> str:
    return f"{x:,.0f} events/min ({x / 60:,.0f}/s)"


# ------------------------------------------------------------------------------- phases


def seed(url: str) -> list[uuid.UUID]:
    """Customers in the read model; the ids of the bulk organization's consenting ones."""
    from bench.seeding import seed_parallel
    from projections.runner import Projector
    from service.settings import get_settings

    print(f"\n== seeding {CUSTOMERS:,} customers", flush=True)
    done, seconds = seed_parallel(url, CUSTOMERS, processes=2)
    started = time.perf_counter()
    projector = Projector(get_settings())
    try:
        projector.run_once()
    finally:
        projector.close()
    print(
        f"    {done:,} seeded in {seconds:.1f} s, projected in "
        f"{time.perf_counter() - started:.1f} s",
        flush=True,
    )
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT id, (doc #>> '{preferences,privacySettings,analyticsTracking}') = 'true'"
            " FROM customers_docs WHERE org_id = %s",
            (BULK_ORG,),
        ).fetchall()
        conn.execute("VACUUM ANALYZE customers_view, customers_docs, customer_keys")
    ids = [cid for cid, consent in rows if consent]
    print(f"    {len(ids):,} of {len(rows):,} in {BULK_ORG} with analytics consent", flush=True)
    return ids


def baselines(out: report.Report, url: str, ids: list[uuid.UUID]) -> tuple[float, float]:
    """(COPY events/s, in-process writer events/s)."""
    from domain.activity import ONE
    from service.settings import get_settings
    from write_api.tracking import ActivityWriter, Submission, _row

    print("\n== baselines", flush=True)
    rng = random.Random(5)
    now = datetime.now(UTC)
    events = [ONE.validate_python(event(rng, rng.choice(ids), now)) for _ in range(20_000)]
    rows = 200_000
    data = [_row(BULK_ORG, uuid4(), events[i % len(events)], now, 0)[:10] for i in range(rows)]
    # The writer creates a month's partition on demand; create them here the same way.
    writer = ActivityWriter(get_settings())
    writer.submit(Submission(BULK_ORG, events[:100], now))
    writer.close()
    truncate(url)
    columns = (
        "id, customer_id, org_id, event_type, event_data, channel, occurred_at, received_at,"
        " session_id, device_info"
    )
    types = (
        "uuid", "uuid", "text", "text", "jsonb", "text", "timestamptz", "timestamptz", "uuid",
        "jsonb",
    )  # fmt: skip
    with psycopg.connect(url, autocommit=True) as conn:
        started = time.perf_counter()
        for lo in range(0, rows, 50_000):
            with (
                conn.transaction(),
                conn.cursor() as cur,
                cur.copy(f"COPY customer_events ({columns}) FROM STDIN (FORMAT BINARY)") as copy,
            ):
                copy.set_types(types)
                for r in data[lo : lo + 50_000]:
                    copy.write_row(r)
        copy_rate = rows / (time.perf_counter() - started)
    out.add(
        "Baseline: binary COPY of the same rows into customer_events (1 connection, "
        "50,000 per transaction)",
        fmt_min(copy_rate * 60),
    )
    truncate(url)

    # Events without an id: the writer gives each row a new one, so reusing them is fine.
    subs = [
        Submission(BULK_ORG, events[lo : lo + BATCH], now)
        for lo in itertools.islice(itertools.cycle(range(0, len(events), BATCH)), 120)
    ]
    writer = ActivityWriter(get_settings())
    try:
        started = time.perf_counter()
        writer.submit_many(subs)
        writer_rate = len(subs) * BATCH / (time.perf_counter() - started)
    finally:
        writer.close()
    stored = count_rows(url)
    out.add(
        "Baseline: ActivityWriter in process (120 submissions of 1,000 validated events "
        "queued at once; no HTTP, no NATS)",
        f"{fmt_min(writer_rate * 60)}; {stored:,} rows stored",
    )
    truncate(url)
    return copy_rate, writer_rate


async def batch_load(client: Client, bodies: list[bytes], duration: float) -> tuple[Latencies, int]:
    raws = itertools.cycle([client.build("POST", BATCH_PATH, b) for b in bodies])
    accepted = 0

    def counted(reply: Reply) -> None:
        nonlocal accepted
        if reply.status == 202:
            accepted += orjson.loads(reply.body)["accepted"]

    stats = await closed_loop(
        client,
        concurrency=CONNECTIONS,
        duration=duration,
        next_request=lambda: next(raws),
        ok=lambda r: r.status == 202,
        on_reply=counted,
    )
    return stats, accepted


def http_phases(
    out: report.Report, url: str, e: env.Environment, ids: list[uuid.UUID], floors: str
) -> None:
    from service.auth import issue_token
    from service.settings import get_settings

    port = free_port()
    server = env.Child(
        "write-api-tracking",
        env.python_argv("-m", "service.cli", "serve", "write-api"),
        e,
        DATABASE_URL=url,
        CUSTOMERS_WORKERS=str(WORKERS),
        CUSTOMERS_HOST="127.0.0.1",
        CUSTOMERS_WRITE_API_PORT=str(port),
    )
    token = issue_token(get_settings(), sub="bench", org=BULK_ORG, roles=["service"])
    client = Client(f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {token}"})
    try:
        env.wait_http(server, port, "/ready")
        groups = {"client (bench process)": [os.getpid()], "write-api": [server.pid]}

        # ---- single events, open loop, beside /health at the same rate
        rng = random.Random(9)
        now = datetime.now(UTC)
        singles = []
        for _ in range(20_000):
            cid = rng.choice(ids)
            body = orjson.dumps(event(rng, None, now))
            singles.append(client.build("POST", f"/api/v1/customers/{cid}/track", body))
        health = client.build("GET", "/health")

        def paced(
            rate: float, seconds: float, request: Callable[[], bytes], status: int
        ) -> tuple[Latencies, float | None]:
            return asyncio.run(
                open_loop_bounded(
                    client,
                    rate=rate,
                    duration=seconds,
                    next_request=request,
                    ok=lambda r: r.status == status,
                )
            )

        print(f"\n== /health, open loop {TRACK_RATE:,.0f} req/s, {TRACK_SECONDS:.0f} s", flush=True)
        paced(TRACK_RATE, 2, lambda: health, 200)
        base, base_cut = paced(TRACK_RATE, TRACK_SECONDS, lambda: health, 200)
        health_text = f"{lat(base, 50, 99)}, achieved {base.rate:,.0f}/s"
        if base_cut is not None:
            health_text += f" (fell behind: schedule stopped at {base_cut:.1f} s)"
        print(f"    {health_text}", flush=True)

        cycle = itertools.cycle(singles)
        paced(LOW_RATE, 2, lambda: next(cycle), 202)
        print(
            f"\n== single track, open loop {LOW_RATE:,.0f} req/s, {LOW_SECONDS:.0f} s", flush=True
        )
        low, low_cut = paced(LOW_RATE, LOW_SECONDS, lambda: next(cycle), 202)

        print(f"\n== single track, open loop {TRACK_RATE:,.0f} req/s", flush=True)
        one, cut = paced(TRACK_RATE, TRACK_SECONDS, lambda: next(cycle), 202)

        print("\n== single track capacity: closed loop, 16 connections", flush=True)
        with Meter(groups) as cpu, Waits(url) as waits:
            capacity = asyncio.run(
                closed_loop(
                    client,
                    concurrency=16,
                    duration=CAPACITY_SECONDS,
                    next_request=lambda: next(cycle),
                    ok=lambda r: r.status == 202,
                )
            )
        out.add(
            f"Single track, open loop {TRACK_RATE:,.0f} req/s for {TRACK_SECONDS:.0f} s "
            f"({WORKERS} write-api processes)",
            paced_text(one, cut),
            baseline=f"GET /health of the same process at the same rate: {health_text}",
            target=f"p99 ≤ {TARGET_P99_MS:.0f} ms",
            ok=one.ms(99) <= TARGET_P99_MS and not one.errors and cut is None,
        )
        out.add(
            f"Single track, open loop {LOW_RATE:,.0f} req/s for {LOW_SECONDS:.0f} s (below the "
            "process's capacity)",
            paced_text(low, low_cut),
            baseline=f"the process's single-track capacity (16 connections, closed loop) "
            f"{capacity.rate:,.0f}/s, {lat(capacity, 50, 99)}",
        )
        section(
            out,
            "CPU during single track at capacity (closed loop, 16 connections)",
            f"{cpu.summary(per=capacity.count)}.\n\n{waits.summary()}",
        )

        # ---- batches, closed loop
        bodies = batches(ids, 60, seed=21)
        size = statistics.mean(len(b) for b in bodies) / 1024
        print(
            f"\n== batch endpoint, {CONNECTIONS} connections x {BATCH:,} events "
            f"(~{size:.0f} KB per request), {DURATION:.0f} s",
            flush=True,
        )
        asyncio.run(batch_load(client, bodies, 5.0))
        truncate(url)
        with Meter(groups) as cpu, Waits(url) as waits:
            stats, accepted = asyncio.run(batch_load(client, bodies, DURATION))
        stored = count_rows(url)
        rate = per_min(accepted, stats.elapsed)
        errors = f"; {stats.errors} errors {dict(stats.statuses)}" if stats.errors else ""
        out.add(
            f"Batch endpoint, {BATCH:,} mixed events per request, {CONNECTIONS} connections, "
            f"{DURATION:.0f} s ({WORKERS} write-api processes)",
            f"{fmt_min(rate)}; per request {lat(stats, 50, 99)}; {stored:,} rows stored{errors}",
            baseline=floors,
            target=f"≥ {TARGET_PER_MIN:,} events/min",
            ok=rate >= TARGET_PER_MIN and not stats.errors,
        )
        section(
            out,
            "CPU during batch ingestion over HTTP",
            f"{cpu.summary(per=accepted, unit='event')}.\n\n{waits.summary()}",
        )
    finally:
        server.stop()


async def nats_phase(
    out: report.Report, url: str, e: env.Environment, ids: list[uuid.UUID], floors: str
) -> None:
    import nats
    from nats.js.errors import NotFoundError

    from service.settings import get_settings
    from write_api.background import ingest

    settings = get_settings()
    stream, prefix = ingest.names(settings)
    subject = f"{prefix}.{BULK_ORG}"
    bodies = batches(ids, 60, seed=33)
    nc = await nats.connect(e.nats_url, name="bench-tracking")
    js = nc.jetstream()
    children: list[env.Child] = []
    try:
        await ingest.ensure_stream(js, settings)
        # As `customers serve` runs them: CUSTOMERS_WORKERS ingesters on one durable consumer.
        children = [
            env.Child(
                f"ingest-tracking-{n}",
                env.python_argv("-m", "service.cli", "serve", "ingest"),
                e,
                DATABASE_URL=url,
            )
            for n in range(WORKERS)
        ]
        deadline = time.monotonic() + 30
        while True:
            try:
                await js.consumer_info(stream, ingest.DURABLE)
                break
            except NotFoundError:
                dead = [c for c in children if not c.alive()]
                if dead or time.monotonic() > deadline:
                    tail = dead[0].tail() if dead else ""
                    raise RuntimeError(f"ingester did not start:\n{tail}") from None
                await asyncio.sleep(0.1)

        async def lag() -> int:
            info = await js.consumer_info(stream, ingest.DURABLE)
            return (info.num_pending or 0) + (info.num_ack_pending or 0)

        # Warm-up: a few messages through, then the table emptied.
        for body in bodies[:5]:
            await js.publish(subject, body)
        while await lag():
            await asyncio.sleep(0.1)
        truncate(url)

        print(
            f"\n== NATS: {NATS_OFFERED:,} events/s offered ({BATCH:,} per message) to {subject},"
            f" {DURATION:.0f} s",
            flush=True,
        )
        interval = BATCH / NATS_OFFERED
        groups = {
            "publisher (bench process)": [os.getpid()],
            "ingest": [c.pid for c in children],
            "nats-server (all)": env.pids_named("nats-server"),
        }
        published = 0
        with Meter(groups) as cpu, Waits(url) as waits:
            start = time.perf_counter()
            for i in itertools.count():
                scheduled = start + i * interval
                if scheduled >= start + DURATION:
                    break
                delay = scheduled - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                await js.publish(subject, bodies[i % len(bodies)])
                published += BATCH
            stored = count_rows(url)
            elapsed = time.perf_counter() - start
            behind = await lag() * BATCH
        rate = per_min(stored, elapsed)
        print(f"    stored {stored:,} of {published:,} published; lag {behind:,}", flush=True)
        drain_start = time.perf_counter()
        left = behind
        while left and time.perf_counter() - drain_start < DRAIN_SECONDS:
            await asyncio.sleep(0.5)
            left = await lag() * BATCH
        drained = time.perf_counter() - drain_start
        total = count_rows(url)
        info = await js.consumer_info(stream, ingest.DURABLE)
        # Deliveries beyond one per message (the stream started at 1 with the warm-up).
        redelivered = (info.delivered.consumer_seq or 0) - (info.delivered.stream_seq or 0)
        after = (
            f"drained in {drained:.0f} s"
            if not left
            else f"{left:,} still pending {drained:.0f} s later"
        )
        out.add(
            f"NATS ingestion ({WORKERS} x customers serve ingest), {BATCH:,} events per message, "
            f"{NATS_OFFERED:,} events/s offered, {DURATION:.0f} s",
            f"{fmt_min(rate)} stored; lag at the end {behind:,} events ({after}; "
            f"{total:,} of {published:,} stored in all; {redelivered:,} messages delivered "
            "again after the 10 s ack wait)",
            baseline=floors,
            target=f"≥ {TARGET_PER_MIN:,} events/min",
            ok=rate >= TARGET_PER_MIN,
        )
        section(
            out,
            "CPU during NATS ingestion",
            f"{cpu.summary(per=max(1, stored), unit='event')}.\n\n{waits.summary()}",
        )
    finally:
        for c in children:
            c.stop()
        try:
            await js.delete_stream(stream)
        finally:
            await nc.close()


def run(out: report.Report, url: str) -> None:
    e = env.Environment(
        admin_url=env.with_database(url, "postgres"),
        database_url=url,
        nats_url=os.environ["NATS_URL"],
        pg_origin="",
        nats_origin="",
    )
    ids = seed(url)
    copy_rate, writer_rate = baselines(out, url, ids)
    floors = (
        f"COPY {copy_rate * 60:,.0f}/min; ActivityWriter in process {writer_rate * 60:,.0f}/min"
    )
    http_phases(out, url, e, ids, floors)
    truncate(url)
    asyncio.run(nats_phase(out, url, e, ids, floors))


if __name__ == "__main__":
    sys.exit(main())
