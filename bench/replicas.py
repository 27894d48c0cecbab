"""Read replicas: `python -m bench.replicas` (also run by `make bench`).

A private PostgreSQL primary and a streaming replica of it (service.replication:
`pg_basebackup -R`, loopback, never the shared server), one projector, and two gateways on the
same primary, taking turns: one without replicas (the baseline) and one reading from the
replica (CUSTOMERS_READ_REPLICA_URLS). The same closed-loop workload against each: writers
that create a customer and at once read it with the creation's consistency token (a
token-gated read), and readers that read random existing customers without a token.

Figures: the share of reads the replica answered (the gateway's
customers_reads_served_total), and the latency of token-gated and of untokened reads beside
the same reads with every read on the primary. Everything shares this machine's cores: it
shows what the routing costs and where reads go, not capacity gained.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shlex
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from bench import env, report
from bench.client import Client, HttpConnection, Latencies
from bench.report import lat
from bench.workloads import BULK_ORG, CreateBodies
from service.embedded import free_port

TOKEN = "X-Consistency-Token"
SEEDED = 200
HELD_BACK_MS = 500  # within the default 1 s lag bound: token reads wait for the replica


@dataclass
class Phase:
    token_reads: Latencies = field(default_factory=Latencies)
    plain_reads: Latencies = field(default_factory=Latencies)
    writes: Latencies = field(default_factory=Latencies)
    served: dict[tuple[str, str], float] = field(default_factory=dict)

    def merge(self, other: Phase) -> None:
        self.token_reads.merge(other.token_reads)
        self.plain_reads.merge(other.plain_reads)
        self.writes.merge(other.writes)
        for key, n in other.served.items():
            self.served[key] = self.served.get(key, 0.0) + n


def served(base: str) -> dict[tuple[str, str], float]:
    """customers_reads_served_total by (target, token), as the gateway's /metrics says."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    found: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "customers_reads_served":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    key = (sample.labels["target"], sample.labels["token"])
                    found[key] = found.get(key, 0.0) + sample.value
    return found


async def workload(
    base: str, headers: dict[str, str], ids: list[str], args: argparse.Namespace, seed: int
) -> Phase:
    client = Client(base, headers)
    bodies = CreateBodies(client, {}, start=seed * 1_000_000, seed=seed)
    bodies.prepare(2000)
    phase = Phase()
    deadline = time.perf_counter() + args.duration

    async def writer(conn: HttpConnection) -> None:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            created = await conn.request(bodies())
            phase.writes.add(time.perf_counter() - t0, created.status, created.status == 201)
            if created.status != 201:
                continue
            location = created.headers[b"location"].decode()
            token = created.headers[b"x-consistency-token"].decode()
            t0 = time.perf_counter()
            read = await conn.request(client.build("GET", location, headers={TOKEN: token}))
            phase.token_reads.add(time.perf_counter() - t0, read.status, read.status == 200)
            ids.append(location)

    async def reader(conn: HttpConnection, rng: random.Random) -> None:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            read = await conn.request(client.build("GET", rng.choice(ids)))
            phase.plain_reads.add(time.perf_counter() - t0, read.status, read.status == 200)

    writers = [await client.connect() for _ in range(args.writers)]
    readers = [await client.connect() for _ in range(args.readers)]
    started = time.perf_counter()
    await asyncio.gather(
        *(writer(c) for c in writers),
        *(reader(c, random.Random(seed * 100 + n)) for n, c in enumerate(readers)),
    )
    elapsed = time.perf_counter() - started
    for stats in (phase.token_reads, phase.plain_reads, phase.writes):
        stats.elapsed = elapsed
    for c in (*writers, *readers):
        c.close()
    return phase


def share(phase: Phase, token: str) -> str:
    replica = phase.served.get(("replica", token), 0.0)
    total = replica + phase.served.get(("primary", token), 0.0)
    return f"{replica / total:.1%} of {total:,.0f}" if total else "n/a"


def run(out: report.Report, args: argparse.Namespace, e: env.Environment) -> dict[str, str]:
    """Measures into `out`; returns the machine's facts (the private primary's settings)."""
    from eventstore.application import Customers
    from service.auth import issue_token
    from service.replication import StreamingPair
    from service.settings import get_settings

    data_dir = Path(tempfile.mkdtemp(prefix="customers-bench-replicas-", dir="/var/tmp"))
    pair = StreamingPair(data_dir)
    children: list[env.Child] = []
    try:
        pair.start()
        import psycopg

        with psycopg.connect(pair.url(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE customers")
        primary, replica = pair.url("customers"), pair.url("customers", replica=True)
        os.environ["DATABASE_URL"] = primary
        get_settings.cache_clear()
        env.migrate()
        Customers(get_settings(), create_table=True).close()
        e.database_url = primary
        e.pg_origin = "a private primary and its streaming replica, fsync off"
        facts = env.machine(e)
        argv = env.python_argv("-m", "service.cli", "serve", "projector")
        projector = env.Child("replicas-projector", argv, e)
        children.append(projector)
        token = issue_token(get_settings(), sub="bench", org=BULK_ORG, roles=["admin"])
        headers = {"Authorization": f"Bearer {token}"}

        def gateway(replicas: bool) -> tuple[env.Child, str]:
            port = free_port()
            extra = {"CUSTOMERS_READ_REPLICA_URLS": replica} if replicas else {}
            child = env.Child(
                f"replicas-gateway-{'replica' if replicas else 'primary'}",
                env.python_argv("-m", "service.cli", "serve", "gateway"),
                e,
                CUSTOMERS_WORKERS="1",
                CUSTOMERS_HTTP_PORT=str(port),
                CUSTOMERS_DB_POOL_SIZE=str(args.pool_size),
                **extra,
            )
            children.append(child)
            env.wait_http(child, port, "/ready")
            return child, f"http://127.0.0.1:{port}"

        ids: list[str] = []
        child, base = gateway(False)
        seeding = argparse.Namespace(**{**vars(args), "duration": 5.0, "readers": 0})
        while len(ids) < SEEDED:
            asyncio.run(workload(base, headers, ids, seeding, seed=99))
        child.stop()
        children.remove(child)
        seeded = len(ids)
        print(f"\n== {seeded} customers created; {args.rounds} rounds", flush=True)

        results = {False: Phase(), True: Phase()}
        for n in range(args.rounds):
            for replicas in (False, True):
                child, base = gateway(replicas)
                time.sleep(1.5)  # the replica watcher's first polls
                before = served(base)
                phase = asyncio.run(workload(base, headers, ids, args, seed=n * 2 + replicas))
                after = served(base)
                phase.served = {k: after[k] - before.get(k, 0.0) for k in after}
                child.stop()
                children.remove(child)
                results[replicas].merge(phase)
                name = "replica" if replicas else "primary only"
                print(f"    round {n + 1}, {name}: {lat(phase.token_reads, 50, 99)}", flush=True)
        print(f"\n== the replica held back {HELD_BACK_MS} ms", flush=True)
        pair.set_apply_delay(HELD_BACK_MS)
        try:
            child, base = gateway(True)
            time.sleep(1.5)
            before = served(base)
            held = asyncio.run(workload(base, headers, ids, args, seed=2 * args.rounds))
            after = served(base)
            held.served = {k: after[k] - before.get(k, 0.0) for k in after}
            child.stop()
            children.remove(child)
        finally:
            pair.set_apply_delay(0)
        on_replica, baseline = results[True], results[False]
        out.add(
            "21. Reads without a token answered by the replica (max lag 1 s)",
            share(on_replica, "false"),
            baseline="0% without replicas",
        )
        out.add(
            "21. Token-gated reads (GET with the create's token, at once) answered by the replica",
            share(on_replica, "true"),
            baseline="0% without replicas",
        )
        out.add(
            "21. Token-gated read right after its write, with a replica",
            lat(on_replica.token_reads, 50, 90, 99),
            baseline=f"every read on the primary {lat(baseline.token_reads, 50, 90, 99)}",
        )
        out.add(
            "21. Read without a token, with a replica",
            lat(on_replica.plain_reads, 50, 99),
            baseline=f"every read on the primary {lat(baseline.plain_reads, 50, 99)}",
        )
        out.add(
            f"21. The same with the replica held back {HELD_BACK_MS} ms"
            " (recovery_min_apply_delay): answered by the replica",
            f"without a token {share(held, 'false')}; token-gated {share(held, 'true')}",
        )
        out.add(
            f"21. Token-gated read right after its write, replica held back {HELD_BACK_MS} ms",
            lat(held.token_reads, 50, 90, 99),
            baseline=f"every read on the primary {lat(baseline.token_reads, 50, 90, 99)}",
        )
        errors = sum(
            s.errors
            for p in (*results.values(), held)
            for s in (p.token_reads, p.plain_reads, p.writes)
        )
        out.section(
            "Read replicas: workload",
            f"{args.writers} writers (create, then GET with its token) and {args.readers} "
            f"readers (GET of a random customer created so far, no token: {seeded:,} at the "
            f"start, {len(ids):,} at the end), closed loop, {args.rounds} rounds of "
            f"{args.duration:g} s against each gateway in turn, then one more with the replica "
            f"held back {HELD_BACK_MS} ms "
            f"(CUSTOMERS_WORKERS=1, CUSTOMERS_DB_POOL_SIZE={args.pool_size}); writes "
            f"{lat(on_replica.writes, 50, 99)} with a replica, "
            f"{lat(baseline.writes, 50, 99)} without; {errors} errors. Primary, replica, "
            "projector, gateway and client share the machine.",
        )
        return facts
    finally:
        for child in children:
            child.stop()
        pair.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.replicas",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--output", default=str(env.REPO / "docs" / "performance.md"))
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--readers", type=int, default=8)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per turn")
    parser.add_argument("--rounds", type=int, default=2, help="turns of each gateway")
    parser.add_argument("--pool-size", type=int, default=8)
    args = parser.parse_args(argv)
    command = "python -m bench.replicas " + shlex.join(argv if argv is not None else sys.argv[1:])
    e = env.prepare()  # secrets and NATS; the database is the private primary
    out = report.Report()
    try:
        facts = run(out, args, e)
    finally:
        e.close()
    print("\n" + out.table())
    if not args.no_write:
        report.write(Path(args.output), out.markdown(facts, command.strip(), None), "replicas")
        print(f"\nwritten: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
