"""`python -m bench [--customers N] [--duration S]`: see bench/__init__.py and
docs/performance.md."""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shlex
import signal
import statistics
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from psycopg import sql

from bench import baselines, env, report, workloads
from bench.client import Client, Latencies, closed_loop, open_loop
from bench.report import lat, ms, rate
from service.embedded import free_port
from service.seed import CustomerFactory

HELLO_SECONDS = 5.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--customers", type=int, default=1_000_000, help="seeded for lists")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per HTTP phase")
    parser.add_argument("--concurrency", type=int, default=32, help="create clients")
    parser.add_argument("--get-rate", type=float, default=500.0, help="open-loop GET req/s")
    parser.add_argument("--samples", type=int, default=300, help="visibility samples (each)")
    parser.add_argument("--seeders", type=int, default=2, help="parallel seeding processes")
    parser.add_argument("--output", type=Path, default=env.REPO / "docs" / "performance.md")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--keep-db", action="store_true", help="keep customers_bench")
    args = parser.parse_args(argv)
    command = "python -m bench " + shlex.join(argv if argv is not None else sys.argv[1:])

    def terminate(*_: object) -> None:
        raise KeyboardInterrupt  # SIGTERM: stop the child processes and drop the database too

    signal.signal(signal.SIGTERM, terminate)
    bench = Bench(args)
    failed = False
    try:
        bench.run()
    except (Exception, KeyboardInterrupt):
        failed = True
        traceback.print_exc()
    finally:
        bench.cleanup()
    print("\n" + bench.out.table())
    if failed:
        print(f"\nthe run failed; {args.output} left as it was", file=sys.stderr)
        return 1
    if not args.no_write:
        report.write(args.output, bench.out.markdown(bench.machine, command.strip(), None))
        print(f"\nwritten: {args.output}")
    return 0


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = report.Report()
        self.machine: dict[str, str] = {}
        self.children: list[env.Child] = []
        self.env: env.Environment | None = None

    # ------------------------------------------------------------------------- plumbing

    def step(self, title: str) -> None:
        print(f"\n== {title}", flush=True)

    def start(self, name: str, argv: list[str], **extra: str) -> env.Child:
        assert self.env is not None
        child = env.Child(name, argv, self.env, **extra)
        self.children.append(child)
        return child

    def stop(self, *children: env.Child) -> None:
        for child in children:
            child.stop()
            if child in self.children:
                self.children.remove(child)

    def gateway(self, workers: int) -> tuple[env.Child, str]:
        port = free_port()
        if workers == 1:
            argv = env.python_argv("-m", "service.cli", "serve", "gateway")
        else:
            # Not `uvicorn --workers`: it loses TCP_NODELAY (see bench/multiworker.py).
            argv = env.python_argv(
                "-m", "bench.multiworker", f"--port={port}", f"--workers={workers}"
            )
        child = self.start(
            f"gateway-{workers}w", argv, CUSTOMERS_HOST="127.0.0.1", CUSTOMERS_HTTP_PORT=str(port)
        )
        env.wait_http(child, port, "/ready")
        return child, f"http://127.0.0.1:{port}"

    def projector(self) -> env.Child:
        assert self.env is not None
        child = self.start("projector", env.python_argv("-m", "service.cli", "serve", "projector"))
        deadline = time.monotonic() + 30
        with psycopg.connect(self.env.database_url, autocommit=True) as conn:
            while time.monotonic() < deadline:
                if not child.alive():
                    raise RuntimeError(f"projector exited:\n{child.tail()}")
                if conn.execute("SELECT 1 FROM positions WHERE name = 'customers_view'").fetchone():
                    return child
                time.sleep(0.1)
        raise TimeoutError("projector did not start")

    def auth(self, org: str = workloads.BULK_ORG) -> dict[str, str]:
        from service.auth import issue_token
        from service.settings import get_settings

        token = issue_token(get_settings(), sub="bench", org=org, roles=["admin"], ttl_seconds=7200)
        return {"Authorization": f"Bearer {token}"}

    def cleanup(self) -> None:
        for child in reversed(self.children):
            child.stop()
        self.children.clear()
        if self.env is not None:
            if not self.args.keep_db:
                try:
                    env.drop_database(env=self.env)
                except psycopg.Error as e:
                    print(f"could not drop {env.BENCH_DB}: {e}", file=sys.stderr)
            self.env.close()

    # ------------------------------------------------------------------------- the run

    def run(self) -> None:
        self.step("environment")
        self.env = e = env.prepare()
        env.recreate_database(e)
        env.migrate()
        self.machine = env.machine(e)
        for k, v in self.machine.items():
            print(f"  {k}: {v}")
        print(f"  child-process logs: {e.log_dir}")

        self.baselines()
        self.write_side()
        self.seed_rebuild_list()
        self.relay()

    def baselines(self) -> None:
        assert self.env is not None
        url = self.env.database_url
        self.step("baselines: PostgreSQL")
        rows = 200_000
        self.copy_rate, ids = baselines.copy_rate(url, rows)
        self.out.add(
            "Baseline: psycopg binary COPY (customer-shaped rows, ~1 KB)", rate(self.copy_rate)
        )
        self.point = baselines.point_select(url, ids, 5.0)
        self.out.add(
            "Baseline: prepared point SELECT by primary key, 1 connection",
            f"{rate(self.point.rate)}; {lat(self.point, 50, 99)}",
        )

        self.step("baselines: stock eventsourcing (one save() per aggregate)")
        self.stock1 = baselines.stock_save_rate(url, threads=1, seconds=8)
        self.out.add("Baseline: stock eventsourcing, 1 thread", rate(self.stock1.rate))
        self.stock32 = baselines.stock_save_rate(url, threads=self.args.concurrency, seconds=8)
        self.out.add(
            f"Baseline: stock eventsourcing, {self.args.concurrency} threads",
            f"{rate(self.stock32.rate)}; {lat(self.stock32, 50, 99)}",
        )

        self.step("baselines: HTTP (uvicorn on this machine, same client, 32 connections)")
        c = self.args.concurrency
        port = free_port()
        hello = self.start(
            "hello-raw",
            env.python_argv(
                "-m",
                "uvicorn",
                "bench.hello:raw_app",
                f"--port={port}",
                "--no-access-log",
                "--log-level=warning",
            ),
        )
        env.wait_http(hello, port, "/")
        base = f"http://127.0.0.1:{port}"
        self.hello_raw = baselines.hello_rate(base, path="/", concurrency=c, seconds=HELLO_SECONDS)
        self.hello_httpx = baselines.hello_rate(
            base, path="/", concurrency=c, seconds=HELLO_SECONDS, use_httpx=True
        )
        self.stop(hello)
        self.out.add(
            "Baseline: uvicorn bare ASGI hello, raw asyncio client",
            f"{rate(self.hello_raw.rate)}; {lat(self.hello_raw, 50, 99)}",
        )
        self.out.add(
            "Baseline: same server, httpx.AsyncClient",
            f"{rate(self.hello_httpx.rate)}; {lat(self.hello_httpx, 50, 99)}",
            baseline=f"raw client is {self.hello_raw.rate / self.hello_httpx.rate:.1f}x faster",
        )
        port = free_port()
        hello = self.start(
            "hello-fastapi",
            env.python_argv(
                "-m",
                "uvicorn",
                "bench.hello:create_fastapi_app",
                "--factory",
                f"--port={port}",
                "--no-access-log",
                "--log-level=warning",
            ),
        )
        env.wait_http(hello, port, "/hello")
        self.hello_fastapi = baselines.hello_rate(
            f"http://127.0.0.1:{port}", path="/hello", concurrency=c, seconds=HELLO_SECONDS
        )
        self.stop(hello)
        self.out.add(
            "Baseline: FastAPI hello + the service's request-log middleware",
            f"{rate(self.hello_fastapi.rate)}; {lat(self.hello_fastapi, 50, 99)}",
        )

    def write_side(self) -> None:
        """Creates (1 and 2 gateway workers), then visibility, on an almost empty store."""
        a = self.args
        headers = self.auth()
        proj = self.projector()
        self.creates: dict[int, Latencies] = {}
        for workers in (1, 2):
            self.step(f"create customer over HTTP: gateway with {workers} worker(s) + projector")
            gw, url = self.gateway(workers)
            client = Client(url)
            bodies = workloads.CreateBodies(
                client, headers, start=10**9 + workers * 10**7, seed=100 + workers
            )
            bodies.prepare(int(a.duration * 2500) + 6000)

            async def load(seconds: float, client: Client = client, bodies=bodies) -> Latencies:
                return await closed_loop(
                    client,
                    concurrency=a.concurrency,
                    duration=seconds,
                    next_request=bodies,
                    ok=lambda r: r.status == 201,
                )

            asyncio.run(load(3.0))  # warm-up: connections, pools, caches
            with env.CpuMeter(
                {"client": [os.getpid()], "gateway": [gw.pid], "projector": [proj.pid]}
            ) as cpu:
                stats = asyncio.run(load(a.duration))
            self.creates[workers] = stats
            ok = stats.rate >= 1000 and stats.ms(99) <= 200
            self.out.add(
                f"1. Create customer over HTTP, {a.concurrency} clients, {workers} gateway "
                f"worker{'s' if workers > 1 else ''}",
                f"{rate(stats.rate)}; {lat(stats, 50, 99)}"
                + (f"; {stats.errors} errors {stats.statuses}" if stats.errors else ""),
                baseline=f"stock ES {rate(self.stock32.rate)} "
                f"({stats.rate / self.stock32.rate:.2f}x); "
                f"FastAPI hello {rate(self.hello_fastapi.rate)}",
                target="≥ 1,000/s, p99 ≤ 200 ms",
                ok=ok,
            )
            summary = cpu.summary(stats.count, "create")
            self.out.section(f"CPU during create, {workers} gateway worker(s)", summary)
            print(f"    {summary}")

            if workers == 1:
                self.step("write→read visibility (sequential, 1 gateway worker)")
                vis = asyncio.run(workloads.visibility(client, headers, bodies, samples=a.samples))
                polls = sorted(vis.polls_per_sample)
                self.out.add(
                    "4. Visibility: POST answered → GET (no token, polled every 2 ms) shows it",
                    lat(vis.poll, 50, 99)
                    + f"; median {polls[len(polls) // 2] if polls else 0} GETs"
                    + (f"; {vis.poll.errors} failed" if vis.poll.errors else ""),
                    target="p99 ≤ 100 ms",
                    ok=vis.poll.ms(99) <= 100 and not vis.poll.errors,
                )
                self.out.add(
                    "4. GET with X-Consistency-Token right after the POST",
                    lat(vis.token, 50, 99)
                    + (
                        f"; {vis.token.errors} failed {vis.token.statuses}"
                        if vis.token.errors
                        else ""
                    ),
                    target="p99 ≤ 100 ms",
                    ok=vis.token.ms(99) <= 100 and not vis.token.errors,
                )
            self.stop(gw)
        self.stop(proj)

    def seed_rebuild_list(self) -> None:
        assert self.env is not None
        a = self.args
        url = self.env.database_url
        from bench.seeding import seed_parallel

        self.step(f"seed {a.customers:,} customers ({a.seeders} processes, service.seed.seed)")
        seeded_from = datetime.now(UTC)
        with env.CpuMeter({}, reaped="seeding processes") as cpu:
            count, seconds = seed_parallel(url, a.customers, a.seeders)
        seeded_to = datetime.now(UTC)
        self.seed_rate = count / seconds
        self.out.add(
            f"3. Seed {count:,} customers (service.seed.seed, {a.seeders} processes, "
            "500 per save())",
            f"{rate(self.seed_rate)} ({seconds:.0f} s)",
            baseline=f"stock ES 1 save/aggregate {rate(self.stock1.rate)}; "
            f"COPY {rate(self.copy_rate)}",
        )
        summary = cpu.summary(count, "customer")
        self.out.section("CPU during seeding", summary)
        print(f"    {summary}")

        self.step("projection catch-up from zero (every view: truncate, reset, replay)")
        from eventstore.application import Customers
        from projections.runner import rebuild_view, views
        from service.settings import get_settings

        settings = get_settings()
        app = Customers(settings, pool_size=2)
        per_view: list[tuple[str, int, float]] = []
        try:
            log_length = app.recorder.max_notification_id() or 0
            with env.CpuMeter({"projector (bench process)": [os.getpid()]}) as cpu:
                started = time.perf_counter()
                for view in views():  # one after the other, as the projector process does
                    t0 = time.perf_counter()
                    n = rebuild_view(app, view)
                    per_view.append((view.name, n, time.perf_counter() - t0))
                seconds = time.perf_counter() - started
        finally:
            app.close()
        self.rebuild_rate = log_length / seconds
        detail = ", ".join(f"{name} {rate(n / t)}" for name, n, t in per_view)
        self.out.add(
            f"3. Projection catch-up from zero: {log_length:,} events through all "
            f"{len(per_view)} views (batch {settings.projection_batch_size})",
            f"{rate(self.rebuild_rate)} ({seconds:.0f} s; per view: {detail})",
            baseline=f"COPY {rate(self.copy_rate)}",
            target="≥ 10,000 events/s",
            ok=self.rebuild_rate >= 10_000,
        )
        summary = cpu.summary(log_length, "event")
        self.out.section("CPU during projection catch-up", summary)
        print(f"    {summary}")
        with psycopg.connect(url, autocommit=True) as conn:
            started = time.perf_counter()
            # Every table the rebuild filled: autovacuum must not start during the read phases.
            for table in env.READ_MODEL_TABLES:
                conn.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(table)))
            vacuum = time.perf_counter() - started
            try:  # flush the seeding's dirty pages now, not during the read phases
                conn.execute("CHECKPOINT")
            except psycopg.Error as e:
                print(f"    CHECKPOINT not allowed ({e}); continuing")
            sizes = conn.execute(
                "SELECT pg_size_pretty(pg_total_relation_size('customers_events')),"
                " pg_size_pretty(pg_total_relation_size('customers_view')),"
                " pg_size_pretty(pg_total_relation_size('customers_docs'))"
            ).fetchone()
            ids = [
                str(r[0])
                for r in conn.execute(
                    "SELECT id FROM customers_view WHERE org_id = %s ORDER BY random() LIMIT 20000",
                    (workloads.BULK_ORG,),
                )
            ]
            orgs = conn.execute(
                "SELECT org_id, count(*) FROM customers_view GROUP BY 1 ORDER BY 2 DESC"
            ).fetchall()
        print(f"    VACUUM ANALYZE of the view tables: {vacuum:.1f} s; sizes {sizes}; orgs {orgs}")
        self.out.section(
            "Data set",
            f"Customers per organization: {', '.join(f'{o} {n:,}' for o, n in orgs)}. "
            f"Sizes: customers_events {sizes[0] if sizes else '?'}, customers_view "
            f"{sizes[1] if sizes else '?'}, customers_docs {sizes[2] if sizes else '?'}. "
            f"`VACUUM ANALYZE` of the read-model tables after the rebuild took {vacuum:.0f} s "
            "(not counted in the catch-up rate).",
        )

        headers = self.auth()
        proj = self.projector()
        first_names = CustomerFactory(random.Random(7)).first
        shapes = workloads.list_shapes(first_names, seeded_from, seeded_to)
        self.gets: dict[int, Latencies] = {}
        for workers in (1, 2):
            gw, gw_url = self.gateway(workers)
            client = Client(gw_url)
            rng = random.Random(5)

            def next_get(client: Client = client, rng: random.Random = rng) -> bytes:
                return client.build("GET", f"{workloads.PREFIX}/{rng.choice(ids)}", headers=headers)

            async def gets(seconds: float, client: Client = client, next_get=next_get) -> Latencies:
                return await open_loop(
                    client,
                    rate=a.get_rate,
                    duration=seconds,
                    next_request=next_get,
                    ok=lambda r: r.status == 200,
                )

            self.step(f"get by id, open loop {a.get_rate:g}/s, {workers} gateway worker(s)")
            asyncio.run(gets(2.0))
            with env.CpuMeter({"client": [os.getpid()], "gateway": [gw.pid]}) as cpu:
                stats = asyncio.run(gets(max(5.0, a.duration / 2)))
            self.gets[workers] = stats
            windows = stats.windows_ms(99) or [float("nan")]

            async def capacity(client: Client = client, next_get=next_get) -> Latencies:
                return await closed_loop(
                    client,
                    concurrency=a.concurrency,
                    duration=5.0,
                    next_request=next_get,
                    ok=lambda r: r.status == 200,
                )

            most = asyncio.run(capacity())
            self.out.add(
                f"2. Get by id, open loop {a.get_rate:g} req/s, {workers} gateway "
                f"worker{'s' if workers > 1 else ''} ({a.customers:,} customers)",
                f"{lat(stats, 50, 99)}; achieved {rate(stats.rate)}; p99 of each second: "
                f"median {ms(statistics.median(windows))}, worst {ms(max(windows))}, "
                f"{sum(w > 20 for w in windows)} of {len(windows)} seconds over 20 ms"
                + (f"; {stats.errors} errors {stats.statuses}" if stats.errors else ""),
                baseline=f"point SELECT {lat(self.point, 50, 99)}; the gateway's GET capacity "
                f"({a.concurrency} clients, closed loop) {rate(most.rate)}",
                target="p99 ≤ 20 ms",
                ok=stats.ms(99) <= 20 and not stats.errors,
            )
            summary = cpu.summary(stats.count)
            self.out.section(f"CPU during get by id, {workers} gateway worker(s)", summary)
            print(f"    {summary}")

            if workers == 1:
                self.step(f"list with two filters over {a.customers:,} customers (sequential)")
                per_shape = asyncio.run(
                    workloads.list_mix(client, headers, shapes, duration=a.duration)
                )
                total = Latencies()
                for s in per_shape.values():
                    total.merge(s)
                self.out.add(
                    f"3. List with two filters, {len(shapes)} query shapes x sorts, sequential "
                    f"({total.count:,} requests)",
                    lat(total, 50, 95, 99)
                    + (f"; {total.errors} errors {total.statuses}" if total.errors else ""),
                    baseline=f"point SELECT {lat(self.point, 99)}",
                    target="p99 ≤ 100 ms",
                    ok=total.ms(99) <= 100 and not total.errors,
                )
                lines = [
                    "| query shape | requests | p50 | p95 | p99 | max |",
                    "|---|---|---|---|---|---|",
                ]
                for label, s in per_shape.items():
                    lines.append(
                        f"| {label} | {s.count} | {ms(s.ms(50))} | {ms(s.ms(95))} | "
                        f"{ms(s.ms(99))} | {ms(s.ms(100))} |"
                    )
                table = "\n".join(lines)
                self.out.section("List latency per query shape", table)
                print(table)
            self.stop(gw)
        self.stop(proj)

    def relay(self) -> None:
        assert self.env is not None
        self.step("relay to JetStream (own stream and position, Relay.run_once)")
        result = asyncio.run(relay_phase(self.env))
        publish_rate, events, seconds, published, skipped, summary = result
        self.out.add(
            f"5. Relay to JetStream ({events:,} events, batch 500)",
            f"{rate(events / seconds)} ({seconds:.0f} s; {published:,} published, "
            f"{skipped:,} skipped)",
            baseline=f"nats-py publish_async, batches of 500 with acks: {rate(publish_rate)}",
        )
        self.out.section("CPU during the relay", summary)
        print(f"    {summary}")


async def relay_phase(e: env.Environment) -> tuple[float, int, float, int, int, str]:
    from eventstore.application import Customers
    from eventstore.relay import Relay
    from service.settings import Settings

    settings = Settings(nats_stream=f"BENCH_{e.tag.upper()}", nats_subject_prefix=f"bench_{e.tag}")
    app = Customers(settings, pool_size=2)
    relay = Relay(settings, app, name=f"bench_relay_{e.tag}")
    try:
        # Creates the stream; then the raw NATS baseline on a subject of that stream.
        await relay._ensure_connected()
        publish_rate = await _publish_baseline(e.nats_url, settings.nats_stream, f"bench_{e.tag}")
        groups = {
            "relay (bench process)": [os.getpid()],
            "nats-server (all)": env.pids_named("nats-server"),
        }
        with env.CpuMeter(groups) as cpu:
            started = time.perf_counter()
            events = await relay.run_once()
            seconds = time.perf_counter() - started
        summary = cpu.summary(events, "event")
        return publish_rate, events, seconds, relay.published, relay.skipped, summary
    finally:
        await relay.close()
        app.close()
        await env.delete_streams(e.nats_url, settings.nats_stream)


async def _publish_baseline(url: str, stream: str, prefix: str, count: int = 50_000) -> float:
    import nats
    import orjson

    payload = orjson.dumps(
        {
            "id": "00000000-0000-0000-0000-000000000000:1",
            "type": "customer.created",
            "customerId": "00000000-0000-0000-0000-000000000000",
            "organizationId": "bench",
            "version": 1,
            "occurredAt": datetime.now(UTC).isoformat(),
            "changed": ["email", "name", "location", "preferences", "tags", "metadata"],
        }
    )
    nc = await nats.connect(url)
    try:
        js = nc.jetstream(timeout=10)
        started = time.perf_counter()
        for lo in range(0, count, 500):
            futures = [
                await js.publish_async(
                    f"{prefix}.baseline.published",
                    payload,
                    stream=stream,
                    headers={"Nats-Msg-Id": f"baseline-{i}", "Customers-Notification-Id": str(i)},
                )
                for i in range(lo, lo + 500)
            ]
            await asyncio.gather(*futures)
        return count / (time.perf_counter() - started)
    finally:
        await nc.close()


if __name__ == "__main__":
    sys.exit(main())
