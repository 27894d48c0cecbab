"""The private cluster of `make chaos`: its own PostgreSQL and NATS, the service's processes.

Everything lives in one temporary directory under /var/tmp (pgserver must not work under the
repository or /root; see service/embedded.py): a pgserver PostgreSQL listening on a unix
socket in that directory only, a `nats-server -js` on a free loopback port, and the
service's processes started as `customers serve <kind>`, each its own OS process. The faults
are aimed at these alone: `pg_ctl` is always given this cluster's pgdata, nats-server is the
child process this module started, and the service processes are killed by their own pids.
The machine's shared PostgreSQL (127.0.0.1:5432) and NATS (127.0.0.1:4222) are never touched.
"""

from __future__ import annotations

import atexit
import base64
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from bench import env
from service.embedded import (
    EmbeddedNats,
    _import_pgserver,
    free_port,
    start_postgres,
    with_database,
)

DATABASE = "customers_chaos"
ORG = "chaos"
# Every process kind the suite runs, in the order they are killed. `gateway` is not run: the
# write and read APIs run as their own processes, and the client routes like the gateway does
# (service/gateway.py), so a kill of either is a fault of its own.
HTTP_KINDS = ("write-api", "read-api")
BACKGROUND_KINDS = ("projector", "relay", "segments", "ingest")
KINDS = (*HTTP_KINDS, *BACKGROUND_KINDS)


def customers_command() -> list[str]:
    """The `customers` console script of this interpreter's environment."""
    script = Path(sys.executable).parent / "customers"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "service.cli"]


@dataclass
class Process:
    """One `customers serve <kind>` with its log (appended to across restarts)."""

    kind: str
    env: dict[str, str]
    log_path: Path
    port: int | None = None
    popen: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self) -> None:
        assert self.popen is None or self.popen.poll() is not None
        with self.log_path.open("ab") as log:
            log.write(f"\n----- start {self.starts + 1} at {time.time():.3f}\n".encode())
            log.flush()
            self.popen = subprocess.Popen(
                [*customers_command(), "serve", self.kind],
                cwd=env.REPO,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.starts += 1

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill9(self) -> None:
        """SIGKILL this process (its own pid only) and reap it."""
        if self.popen is not None and self.popen.poll() is None:
            os.kill(self.popen.pid, signal.SIGKILL)
            self.popen.wait()

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (drain), SIGKILL after `timeout`."""
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill9()

    @property
    def name(self) -> str:
        return self.kind

    def wait_ready(self, timeout: float = 60.0) -> None:
        """HTTP kinds: until /health answers 200. Others: until alive for a moment."""
        if self.port is not None:
            env.wait_http(self, self.port, timeout=timeout)
            return
        time.sleep(0.3)
        if not self.alive():
            raise RuntimeError(f"{self.kind} exited at start:\n{self.tail()}")

    def tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


@dataclass
class Cluster:
    root: Path
    admin_url: str = ""
    database_url: str = ""
    nats: EmbeddedNats | None = None
    env: dict[str, str] = field(default_factory=dict)
    processes: dict[str, Process] = field(default_factory=dict)
    write_port: int = 0
    read_port: int = 0
    pg_version: str = ""

    # ------------------------------------------------------------------ set-up

    @classmethod
    def create(cls) -> Cluster:
        root = Path(tempfile.mkdtemp(prefix="customers-chaos-", dir="/var/tmp"))
        cluster = cls(root=root)
        (root / "logs").mkdir()
        return cluster

    @property
    def pgdata(self) -> Path:
        return self.root / "pg"

    def start_servers(self) -> None:
        """Private PostgreSQL (unix socket in our pgdata) and NATS (free loopback port)."""
        self.admin_url = start_postgres(self.root, stop_at_exit=False)
        host = str(conninfo_to_dict(self.admin_url).get("host", ""))
        if not host.startswith(str(self.root)):
            raise RuntimeError(f"private PostgreSQL is not on our socket: {self.admin_url}")
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
            row = conn.execute("SHOW server_version").fetchone()
            self.pg_version = str(row[0]) if row else "?"
        self.database_url = with_database(self.admin_url, DATABASE)
        self.nats = EmbeddedNats(self.root, free_port())
        self.nats.start()

    def configure(self) -> None:
        """The environment of the service's processes (and of this one: tokens, checks)."""
        assert self.nats is not None
        self.write_port, self.read_port = free_port(), free_port()
        self.env = {
            **os.environ,
            "PYTHONPATH": str(env.REPO),
            "DATABASE_URL": self.database_url,
            "NATS_URL": self.nats.url,
            "CUSTOMERS_DATA_DIR": str(self.root / "data"),
            "CUSTOMERS_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
            "CUSTOMERS_JWT_SECRET": secrets.token_urlsafe(48),
            "CUSTOMERS_HOST": "127.0.0.1",
            "CUSTOMERS_WRITE_API_PORT": str(self.write_port),
            "CUSTOMERS_READ_API_PORT": str(self.read_port),
            "CUSTOMERS_HTTP_PORT": str(free_port()),
            "CUSTOMERS_WORKERS": "1",
            "CUSTOMERS_DB_POOL_SIZE": "4",
            # One client address sends everything: limits are a policy, not under test.
            "CUSTOMERS_RATE_LIMIT_READS_PER_MINUTE": "0",
            "CUSTOMERS_RATE_LIMIT_WRITES_PER_MINUTE": "0",
            "CUSTOMERS_RATE_LIMIT_EXPORTS_PER_MINUTE": "0",
            "CUSTOMERS_RATE_LIMIT_TRACKING_PER_MINUTE": "0",
            # No lifecycle deletions run, but keep erasure out of the picture anyway.
            "CUSTOMERS_ERASURE_GRACE_HOURS": "720",
            "CUSTOMERS_LOG_LEVEL": "INFO",
        }
        os.environ.update({k: v for k, v in self.env.items() if k != "PYTHONPATH"})
        # For a post-mortem of a kept run (--keep): the events cannot be read without them.
        fd = os.open(self.root / "service.env", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            for name in (
                "DATABASE_URL",
                "NATS_URL",
                "CUSTOMERS_MASTER_KEY",
                "CUSTOMERS_JWT_SECRET",
            ):
                out.write(f"{name}={self.env[name]}\n")
        from service.settings import get_settings

        get_settings.cache_clear()

    def migrate(self) -> None:
        from service.cli import migrate
        from service.settings import get_settings

        migrate(get_settings())

    def start_processes(self) -> None:
        for kind in KINDS:
            port = {"write-api": self.write_port, "read-api": self.read_port}.get(kind)
            proc = Process(kind, self.env, self.root / "logs" / f"{kind}.log", port)
            self.processes[kind] = proc
            proc.start()
        for proc in self.processes.values():
            proc.wait_ready()

    # ------------------------------------------------------------------ faults

    def kill9(self, kind: str) -> None:
        self.processes[kind].kill9()

    def restart(self, kind: str) -> None:
        proc = self.processes[kind]
        if proc.alive():
            proc.kill9()
        proc.start()

    def _pg_ctl(self, args: list[str], timeout: float = 60.0) -> None:
        pgdata = self.pgdata.resolve()
        if self.root.resolve() not in pgdata.parents:  # never any other cluster
            raise RuntimeError(f"refusing pg_ctl on {pgdata}")
        pgserver = _import_pgserver()
        user = "pgserver" if os.geteuid() == 0 else None
        pgserver.pg_ctl(args, pgdata=pgdata, user=user, timeout=timeout)

    def pg_stop_immediate(self) -> None:
        """`pg_ctl stop -m immediate` on the private instance: no checkpoint, crash recovery
        at the next start."""
        self._pg_ctl(["-w", "-m", "immediate", "stop"])

    def pg_start(self) -> None:
        """Start the private instance again with pgserver's options (same socket dir)."""
        socket_dir = str(conninfo_to_dict(self.admin_url)["host"])
        log = str(self.pgdata / "log")
        self._pg_ctl(["-w", "-o", '-h ""', "-o", f"-k {socket_dir}", "-l", log, "start"])

    def nats_restart(self, *, hard: bool) -> None:
        assert self.nats is not None
        self.nats.restart(hard=hard)

    # ------------------------------------------------------------------ tear-down

    def stop_processes(self) -> None:
        for proc in self.processes.values():
            if proc.alive():
                assert proc.popen is not None
                proc.popen.send_signal(signal.SIGTERM)
        for proc in self.processes.values():
            proc.stop()

    def close(self, keep: bool) -> None:
        """Stop everything this cluster started; remove its directory unless `keep`."""
        self.stop_processes()
        if self.nats is not None:
            self.nats.stop()
        if (self.pgdata / "postmaster.pid").exists():
            try:
                self._pg_ctl(["-w", "-m", "fast", "stop"])
            except Exception as e:  # already stopped, or stopping failed: say so
                print(f"chaos: stopping the private PostgreSQL: {e}", file=sys.stderr)
        pgserver = _import_pgserver()
        handle = pgserver.PostgresServer._instances.pop(self.pgdata.resolve(), None)
        if handle is not None:  # its exit hook would read the pgdata we remove
            atexit.unregister(handle._cleanup)
        if not keep:
            shutil.rmtree(self.root, ignore_errors=True)
