"""Mixed workload: `python -m bench.mixed` (also run by `make bench`).

The service as deployed: `customers serve gateway` with CUSTOMERS_WORKERS=2 (two uvicorn
processes on one port, SO_REUSEPORT), `customers serve projector`, `relay` (to its own
JetStream stream, deleted at the end) and `segments`, as separate processes on a database of
its own seeded with `--customers` (100,000 by default; `bench.seeding`, 95 % in the bulk
organization), projected and vacuumed, with a few dynamic segments calculated. Then N clients,
closed loop, one keep-alive connection each (`bench.client`), at 200 and at 1,000 clients;
each client draws its next operation from this mix:

  60 % get by id          other services (campaigns, the rules engine, checkout) look a
                          customer up far more often than anything else happens
  15 % list, two filters  CRM users searching (`bench.workloads.list_shapes`, q prefix included)
  10 % create             sign-ups and imports by API (`bench.workloads.CreateBodies`)
   8 % update, If-Match   profile edits: the customer's last known version, tags and age
                          changed (each customer edited by one client at a time: no 412s)
   5 % track one event    storefront events sent one by one (high-volume producers batch)
   1 % list segments      the segment screen (spec "Get Segments")
   1 % segment preview    a marketer trying criteria: a count over the organization

Per operation: count, throughput, p50, p99 (of the successful answers) and errors, beside the
spec's response-time target (read as p99). Baselines in the same run: each operation alone
(one client, the service otherwise idle), and at the same number of clients uvicorn's bare
ASGI hello (one process) and the same gateway answering only gets by id. CPU per process group
and PostgreSQL's wait events during each run. Memory per process: VmRSS sampled every 0.5 s
during each run and VmHWM, from /proc/<pid>/status.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import random
import resource
import secrets
import signal
import time
import urllib.request
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson
import psycopg
from psycopg import sql

from bench import baselines, env, report, workloads
from bench.client import Call, Client, Latencies, Reply, closed_loop
from bench.report import lat, rate
from bench.segments import CRITERIA
from bench.tracking import Waits, event
from service.embedded import free_port, with_database
from service.seed import CustomerFactory

DB = "customers_bench_mixed"
PREFIX = workloads.PREFIX
SEGMENTS = PREFIX + "/segments"
WORKERS = 2  # CUSTOMERS_WORKERS: one per core of this machine
PROFILE_KEYS = ("email", "name", "age", "gender", "location", "preferences", "tags", "metadata")


@dataclass(frozen=True)
class Op:
    name: str
    share: int  # percent of requests
    target_ms: float | None  # the spec's response-time target, read as p99
    status: int  # the answer that counts as success


OPS = (
    Op("get by id", 60, 100, 200),
    Op("list, two filters", 15, 300, 200),
    Op("create", 10, 200, 201),
    Op("update (If-Match)", 8, 150, 200),
    Op("track one event", 5, 50, 202),
    Op("list segments", 1, 200, 200),
    Op("segment preview", 1, None, 200),
)


def options(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(customers=100_000)
    parser.add_argument("--clients", default="200,1000", help="concurrent clients per run")
    parser.add_argument("--duration", type=float, default=30.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds before measuring")
    parser.add_argument(
        "--pool-size",
        type=int,
        default=8,
        help="CUSTOMERS_DB_POOL_SIZE (default: the product's; about 52 connections at 200 clients)",
    )


def main(argv: list[str] | None = None) -> int:
    tag = secrets.token_hex(4)
    os.environ.update(
        {
            "CUSTOMERS_RATE_LIMIT_TRACKING_PER_MINUTE": "0",  # policy, not capacity
            "CUSTOMERS_NATS_STREAM": f"BENCHMIX_{tag}",  # the relay's own, deleted at the end
            "CUSTOMERS_NATS_SUBJECT_PREFIX": f"benchmix_{tag}",
        }
    )

    def terminate(*_: object) -> None:
        raise KeyboardInterrupt  # SIGTERM: stop the child processes, drop the database

    signal.signal(signal.SIGTERM, terminate)
    args, execute = env.focused_bench("python -m bench.mixed", __doc__, DB, "mixed", argv, options)
    return execute(lambda out, url: run(out, url, args))


# ------------------------------------------------------------------------------- the machine


def raise_fd_limit(needed: int) -> str:
    """Raise the soft limit on open files to the hard one when below `needed` (the client
    holds one socket per client; the servers, started after, inherit the limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return f"open files: soft limit {soft}, hard {hard} (≥ {needed} needed)"
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise SystemExit(f"open files: hard limit {hard} < {needed} needed (ulimit -Hn)")
    new = needed if hard == resource.RLIM_INFINITY else hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return f"open files: soft limit raised {soft} → {new} (hard {hard})"


def connect(url: str, patience: float = 60.0) -> psycopg.Connection[Any]:
    """An autocommit connection, waiting while a shared server has no connection to spare."""
    deadline = time.monotonic() + patience
    while True:
        try:
            return psycopg.connect(url, autocommit=True)
        except psycopg.OperationalError as e:
            if "too many clients" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def status_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in kB; (0, 0) when it is gone."""
    rss = hwm = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    except OSError:
        pass
    return rss, hwm


class Memory(env.DatabaseSampler):
    """VmRSS of named processes sampled every 0.5 s while in the `with` block (the peak kept),
    and the database's connections from this bench's processes (the peak kept)."""

    def __init__(self, processes: dict[str, int], url: str) -> None:
        super().__init__(url)
        self.processes = processes
        self.peak: dict[str, int] = dict.fromkeys(processes, 0)
        self.connections = 0

    def sample(self, conn: psycopg.Connection[Any]) -> None:
        for name, pid in self.processes.items():
            self.peak[name] = max(self.peak[name], status_kb(pid)[0])
        row = conn.execute(
            "SELECT count(*) - 1 FROM pg_stat_activity WHERE datname = current_database()"
        ).fetchone()
        self.connections = max(self.connections, int(row[0]) if row else 0)


def mib(kb: int) -> str:
    return f"{kb / 1024:,.0f} MiB"


# ------------------------------------------------------------------------------- the data


@dataclass
class Known:
    """A customer an update may edit: the version it names in If-Match, and its profile."""

    id: str
    version: int
    profile: dict[str, Any]


@dataclass
class Data:
    ids: list[str]  # every customer of the bulk organization
    tracked: list[str]  # those with analytics-tracking consent
    editable: deque[Known] = field(default_factory=deque)
    setup: str = ""  # what seeding and projecting took


def seed(url: str, customers: int) -> Data:
    """Seeded, projected, vacuumed, relayed; what the clients will ask for."""
    from bench.seeding import seed_parallel
    from eventstore.relay import POSITION_NAME
    from projections.runner import Projector
    from service.settings import get_settings

    print(f"\n== seeding {customers:,} customers (2 processes)", flush=True)
    done, seconds = seed_parallel(url, customers, processes=2)
    print(f"    {done:,} seeded in {seconds:.1f} s", flush=True)
    started = time.perf_counter()
    projector = Projector(get_settings())
    try:
        events = projector.run_once()
    finally:
        projector.close()
    projected = time.perf_counter() - started
    print(f"    {events:,} events projected in {projected:.1f} s", flush=True)
    with connect(url) as conn:
        # The seeded history was published long ago in a deployment: the relay starts at the
        # end of the log (publishing it now would only lengthen the run).
        conn.execute(
            "INSERT INTO positions (name, position, updated_at)"
            " SELECT %s, coalesce(max(notification_id), 0), now() FROM customers_events",
            (POSITION_NAME,),
        )
        for table in (*env.READ_MODEL_TABLES, "customer_keys", "customer_facts"):
            conn.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(table)))
        conn.execute("CHECKPOINT")
        rows = conn.execute(
            "SELECT id::text, (doc::jsonb #>> '{preferences,privacySettings,analyticsTracking}')"
            " = 'true' FROM customers_docs WHERE org_id = %s",
            (workloads.BULK_ORG,),
        ).fetchall()
        editable = conn.execute(
            "SELECT id::text, version, doc::jsonb FROM customers_docs WHERE org_id = %s"
            " ORDER BY random() LIMIT 2000",  # far more than clients editing at once
            (workloads.BULK_ORG,),
        ).fetchall()
    data = Data(ids=[r[0] for r in rows], tracked=[r[0] for r in rows if r[1]])
    data.setup = (
        f"{done:,} customers seeded ({len(rows):,} in {workloads.BULK_ORG}, where the clients "
        f"work; {len(data.tracked):,} of them with analytics-tracking consent) in {seconds:.0f} s; "
        f"{events:,} events projected in {projected:.0f} s"
    )
    for cid, version, doc in editable:
        profile = {k: doc[k] for k in PROFILE_KEYS if doc.get(k) is not None}
        data.editable.append(Known(cid, version, profile))
    print(
        f"    {len(data.ids):,} customers in {workloads.BULK_ORG}, {len(data.tracked):,} tracked",
        flush=True,
    )
    return data


# ------------------------------------------------------------------------------- the mix


class Mix:
    """The next request of any client: an operation drawn by its share, ready to send."""

    def __init__(self, client: Client, data: Data, seeded_from: datetime) -> None:
        self.client = client
        self.data = data
        self.rng = random.Random(17)
        self.stats: dict[str, Latencies] = {}
        self.builders: dict[str, Callable[[], Call]] = {
            "get by id": self.get,
            "list, two filters": self.list,
            "create": self.create,
            "update (If-Match)": self.update,
            "track one event": self.track,
            "list segments": self.segments,
            "segment preview": self.preview,
        }
        self.names = [op.name for op in OPS]
        self.weights = list(itertools.accumulate(op.share for op in OPS))
        self.creates = workloads.CreateBodies(client, {}, start=10**9, seed=23)
        self.creates.prepare(5_000)
        first_names = CustomerFactory(random.Random(7)).first
        self.shapes = workloads.list_shapes(first_names, seeded_from, datetime.now(UTC))
        now = datetime.now(UTC)
        self.events = [orjson.dumps(event(self.rng, None, now)) for _ in range(2_000)]
        self.edits = 0
        self.reset()

    def reset(self) -> None:
        self.stats = {op.name: Latencies() for op in OPS}

    def __call__(self) -> Call:
        (name,) = self.rng.choices(self.names, cum_weights=self.weights)
        return self.builders[name]()

    def call(
        self, name: str, raw: bytes, then: Callable[[Reply | None], None] | None = None
    ) -> Call:
        status = next(op.status for op in OPS if op.name == name)
        return Call(raw, self.stats[name], lambda r: r.status == status, then)

    def get(self) -> Call:
        cid = self.rng.choice(self.data.ids)
        return self.call("get by id", self.client.build("GET", f"{PREFIX}/{cid}"))

    def list(self) -> Call:
        params = workloads.list_params(self.rng.choice(self.shapes), self.rng)
        raw = self.client.build("GET", f"{PREFIX}?{urlencode(params)}")
        return self.call("list, two filters", raw)

    def create(self) -> Call:
        return self.call("create", self.creates())

    def update(self) -> Call:
        if not self.data.editable:  # every editable customer is being edited: read one
            return self.get()
        known = self.data.editable.popleft()
        self.edits += 1
        tags = [t for t in known.profile.get("tags", []) if not t.startswith("edit-")]
        profile = {
            **known.profile,
            "tags": [*tags, f"edit-{self.edits % 7}"],
            "age": self.rng.randint(18, 80),
        }
        raw = self.client.build(
            "PUT",
            f"{PREFIX}/{known.id}",
            orjson.dumps(profile),
            {"If-Match": f'"{known.version}"'},
        )

        def then(reply: Reply | None) -> None:
            if reply is not None and reply.status == 200:
                known.version = int(orjson.loads(reply.body)["version"])
                known.profile = profile
            if reply is None or reply.status == 200:
                self.data.editable.append(known)  # otherwise (reported) not edited again

        return self.call("update (If-Match)", raw, then)

    def track(self) -> Call:
        cid = self.rng.choice(self.data.tracked)
        body = self.rng.choice(self.events)
        return self.call(
            "track one event", self.client.build("POST", f"{PREFIX}/{cid}/track", body)
        )

    def segments(self) -> Call:
        return self.call("list segments", self.client.build("GET", f"{SEGMENTS}?limit=50"))

    def preview(self) -> Call:
        low = self.rng.randint(18, 50)
        criteria = {**CRITERIA, "demographics": {"ageRange": {"min": low, "max": low + 20}}}
        body = orjson.dumps({"criteria": criteria, "sampleSize": 10})
        return self.call("segment preview", self.client.build("POST", f"{SEGMENTS}/preview", body))


# ------------------------------------------------------------------------------- the service


SETTLED = """
SELECT (SELECT coalesce(max(notification_id), 0) FROM customers_events)
     - (SELECT coalesce(min(position), 0) FROM positions),
       (SELECT count(*) FROM segment_jobs WHERE state IN ('QUEUED', 'RUNNING'))
"""


def settle(url: str, background: list[int], timeout: float = 180.0) -> float:
    """Until every position has reached the end of the log (projector views, relay), no
    segment job is open, and the background processes and PostgreSQL rest (< 0.05 and < 0.1
    core over a second: a model fit, say, is over), so the next phase starts from a quiet
    service; seconds waited."""
    started = time.monotonic()
    with connect(url) as conn:
        while time.monotonic() - started < timeout:
            row = conn.execute(SETTLED).fetchone()
            with env.CpuMeter({"background": background}, database=DB) as cpu:
                time.sleep(1.0)
            busy = {name: used / cpu.wall for name, used in cpu.used.items()}
            if row == (0, 0) and busy["background"] < 0.05 and max(busy.values()) < 0.1:
                return time.monotonic() - started
    raise TimeoutError(f"the service did not settle within {timeout:.0f} s (lag, jobs: {row})")


def post(base: str, path: str, headers: dict[str, str], body: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        base + path,
        data=orjson.dumps(body),
        headers={**headers, "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        return orjson.loads(resp.read())


def create_segments(base: str, headers: dict[str, str]) -> None:
    """A few dynamic segments, calculated by the segments process before the runs (creates and
    updates during the runs then move members incrementally, as in production)."""
    variants = [
        CRITERIA,
        {"demographics": {"ageRange": {"min": 18, "max": 30}}},
        {"geographic": {"countries": ["Germany", "Austria"]}},
        {"behavioral": {"lastPurchaseDays": {"max": 365}}},
    ]
    for n, criteria in enumerate(variants):
        post(
            base, SEGMENTS, headers, {"name": f"Mixed {n}", "ruleId": "bench", "criteria": criteria}
        )


# ------------------------------------------------------------------------------- the run


def run(out: report.Report, url: str, args: argparse.Namespace) -> None:
    from service.auth import issue_token
    from service.settings import get_settings

    levels = [int(c) for c in args.clients.split(",")]
    fds = raise_fd_limit(max(levels) + 1000)
    print(f"\n== {fds}", flush=True)
    e = env.Environment(
        admin_url=with_database(url, "postgres"),
        database_url=url,
        nats_url=os.environ["NATS_URL"],
        pg_origin="",
        nats_origin="",
    )
    seeded_from = datetime.now(UTC)
    data = seed(url, args.customers)
    children: list[env.Child] = []

    def start(name: str, kind: str, **extra: str) -> env.Child:
        child = env.Child(
            f"mixed-{name}",
            env.python_argv("-m", "service.cli", "serve", kind),
            e,
            CUSTOMERS_DB_POOL_SIZE=str(args.pool_size),
            **extra,
        )
        children.append(child)
        return child

    try:
        print("\n== baseline: uvicorn bare ASGI hello (1 process)", flush=True)
        port = free_port()
        hello = env.Child(
            "mixed-hello",
            env.python_argv(
                "-m", "uvicorn", "bench.hello:raw_app", f"--port={port}", "--no-access-log",
                "--log-level=warning",
            ),
            e,
        )  # fmt: skip
        children.append(hello)
        env.wait_http(hello, port, "/")
        hellos = {
            c: baselines.hello_rate(
                f"http://127.0.0.1:{port}", path="/", concurrency=c, seconds=5.0
            )
            for c in levels
        }
        hello.stop()
        children.remove(hello)
        for c, h in hellos.items():
            print(f"    {c:,} clients: {rate(h.rate)}; {lat(h, 50, 99)}", flush=True)

        print(f"\n== service: gateway ({WORKERS} workers), projector, relay, segments", flush=True)
        port = free_port()
        gateway = start(
            "gateway",
            "gateway",
            CUSTOMERS_WORKERS=str(WORKERS),
            CUSTOMERS_HOST="127.0.0.1",
            CUSTOMERS_HTTP_PORT=str(port),
        )
        background = [start(kind, kind) for kind in ("projector", "relay", "segments")]
        env.wait_http(gateway, port, "/ready")
        base = f"http://127.0.0.1:{port}"
        token = issue_token(
            get_settings(), sub="bench", org=workloads.BULK_ORG, roles=["admin"], ttl_seconds=7200
        )
        headers = {"Authorization": f"Bearer {token}"}
        create_segments(base, headers)
        waited = settle(url, [c.pid for c in background])
        print(f"    settled in {waited:.0f} s (relay caught up, segments calculated)", flush=True)
        out.section(
            "Data set",
            f"{data.setup}; 4 dynamic segments created and calculated ({waited:.0f} s). "
            f"{fds}. Connections: closed loop, one keep-alive connection per client; "
            f"CUSTOMERS_WORKERS={WORKERS}, CUSTOMERS_DB_POOL_SIZE={args.pool_size}, request "
            "logs at INFO to a file, rate limits off.",
        )
        workers = env.descendants(gateway.pid)
        processes = {
            "gateway supervisor": gateway.pid,
            **{f"gateway worker {n}": pid for n, pid in enumerate(workers, 1)},
            **{c.name.removeprefix("mixed-"): c.pid for c in background},
            "load generator (bench process)": os.getpid(),
        }
        idle = {name: status_kb(pid)[0] for name, pid in processes.items()}
        client = Client(base, headers)
        runs = Runs(out, url, client, Mix(client, data, seeded_from), args, processes, background)
        alone = runs.alone()
        memory = {c: runs.level(c, hellos[c], alone) for c in levels}
        hwm = {name: status_kb(pid)[1] for name, pid in processes.items()}
        memory_section(out, processes, idle, memory, hwm, args.pool_size)
    finally:
        for child in reversed(children):
            child.stop()
        asyncio.run(env.delete_streams(e.nats_url, os.environ["CUSTOMERS_NATS_STREAM"]))


@dataclass
class Runs:
    """The measured phases against the running service."""

    out: report.Report
    url: str
    client: Client
    mix: Mix
    args: argparse.Namespace
    processes: dict[str, int]
    background: list[env.Child]

    def settle(self) -> None:
        settle(self.url, [c.pid for c in self.background])

    def alone(self, seconds: float = 3.0) -> dict[str, Latencies]:
        """Each operation by itself, one client, on the idle service (baseline)."""
        print(f"\n== each operation alone: 1 client, {seconds:.0f} s each", flush=True)
        alone = {}
        for op in OPS:
            asyncio.run(
                closed_loop(
                    self.client,
                    concurrency=1,
                    duration=seconds,
                    warmup=0.5,
                    next_request=self.mix.builders[op.name],
                    ok=lambda r: r.status < 400,
                )
            )
            alone[op.name] = self.mix.stats[op.name]
            print(f"    {op.name}: {lat(alone[op.name], 50, 99)}", flush=True)
        self.mix.reset()
        self.settle()
        return alone

    def level(self, clients: int, hello: Latencies, alone: dict[str, Latencies]) -> Memory:
        """One concurrency: gets only (baseline), then the mix; rows and sections added."""
        args, mix = self.args, self.mix
        print(f"\n== {clients:,} clients: gets by id only (baseline), 10 s", flush=True)
        gets = asyncio.run(
            closed_loop(
                self.client,
                concurrency=clients,
                duration=10.0,
                warmup=3.0,
                next_request=mix.get,
                ok=lambda r: r.status == 200,
            )
        )
        print(f"    {rate(gets.rate)}; {lat(gets, 50, 99)}; {gets.errors} errors", flush=True)
        self.settle()
        mix.reset()
        print(
            f"\n== {clients:,} clients: the mix, {args.warmup:.0f} s warm-up + "
            f"{args.duration:.0f} s",
            flush=True,
        )
        groups = {
            "client (bench process)": [os.getpid()],
            f"gateway ({WORKERS} workers)": [self.processes["gateway supervisor"]],
            **{c.name.removeprefix("mixed-"): [c.pid] for c in self.background},
        }
        with (
            env.CpuMeter(groups, database=DB) as cpu,
            Memory(self.processes, self.url) as memory,
            Waits(self.url) as waits,
        ):
            total = asyncio.run(
                closed_loop(
                    self.client,
                    concurrency=clients,
                    duration=args.duration,
                    warmup=args.warmup,
                    next_request=mix,
                    ok=lambda r: r.status < 400,
                )
            )
        answered = (total.count + total.errors) / total.elapsed
        errors = (
            f"; {total.errors:,} errors {dict(sorted(total.statuses.items()))}, all answers "
            f"{rate(answered)}"
        )
        self.out.add(
            f"{clients:,} clients, closed loop, the mix ({args.duration:.0f} s after "
            f"{args.warmup:.0f} s warm-up)",
            f"{rate(total.rate)} successful; {lat(total, 50, 99)}"
            + (errors if total.errors else ""),
            baseline=f"same service, gets by id only: {rate(gets.rate)}, {lat(gets, 50, 99)}; "
            f"uvicorn bare hello (1 process): {rate(hello.rate)}",
        )
        for op in OPS:
            stats = mix.stats[op.name]
            stats.elapsed = total.elapsed
            failed = (
                f"; {stats.errors:,} errors {dict(sorted(stats.statuses.items()))}"
                if stats.errors
                else "; 0 errors"
            )
            self.out.add(
                f"{clients:,} clients: {op.name} ({op.share} %)",
                f"{stats.count:,} ({rate(stats.rate)}); {lat(stats, 50, 99)}{failed}",
                baseline=f"alone (1 client, idle service): {lat(alone[op.name], 50, 99)}",
                target=f"p99 < {op.target_ms:.0f} ms" if op.target_ms else "",
                ok=None
                if op.target_ms is None
                else stats.ms(99) < op.target_ms and not stats.errors,
            )
        # Answers (errors included) at the measured rate over the meter's time, warm-up included.
        summary = f"{cpu.summary(round(answered * cpu.wall), 'answer')}.\n\n{waits.summary()}"
        self.out.section(f"CPU during the mix, {clients:,} clients", summary)
        print(f"    {summary}; at most {memory.connections} database connections", flush=True)
        return memory


def memory_section(
    out: report.Report,
    processes: dict[str, int],
    idle: dict[str, int],
    runs: dict[int, Memory],
    hwm: dict[str, int],
    pool_size: int,
) -> None:
    head = " | ".join(f"peak VmRSS, {c:,} clients" for c in runs)
    lines = [
        f"| process | VmRSS before the runs | {head} | VmHWM at the end |",
        "|---|---|" + "---|" * len(runs) + "---|",
    ]
    for name in processes:
        peaks = " | ".join(mib(m.peak[name]) for m in runs.values())
        lines.append(f"| {name} | {mib(idle[name])} | {peaks} | {mib(hwm[name])} |")
    connections = ", ".join(f"{c:,} clients {m.connections}" for c, m in runs.items())
    text = "\n".join(lines) + (
        f"\n\nVmRSS sampled every 0.5 s during each run (warm-up included) from "
        f"/proc/<pid>/status; VmHWM is each process's peak since it started. PostgreSQL "
        f"connections to the bench database at most (CUSTOMERS_DB_POOL_SIZE={pool_size}): "
        f"{connections}."
    )
    out.section("Memory per process", text)
    print("\n" + text, flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
