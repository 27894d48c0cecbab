"""A private PostgreSQL primary and a streaming replica of it (`pg_basebackup -R`) on
loopback ports: what the read-replica tests and benchmark run on, never the shared server.

The binaries are the embedded PostgreSQL's (the pgserver wheel ships initdb, pg_ctl and
pg_basebackup of one major version, as a primary and its replica need). PostgreSQL refuses
to run as root, so as root they run as pgserver's system user. Trust authentication,
127.0.0.1 only, fsync off: for tests and benchmarks, not for data anyone keeps.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import psycopg

from service.embedded import _import_pgserver, free_port, with_database

_USER = "pgserver"  # the system user pgserver itself creates when run as root
_LSN_REACHED = "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn"


class StreamingPair:
    """`start()` a primary and its replica under `data_dir`; `stop()` both and delete it."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.primary_port = free_port()
        self.replica_port = free_port()
        _import_pgserver()  # its quiet import, or the message saying how to install it
        from pgserver._commands import POSTGRES_BIN_PATH

        self._bin = Path(POSTGRES_BIN_PATH)

    def url(self, dbname: str = "postgres", *, replica: bool = False) -> str:
        port = self.replica_port if replica else self.primary_port
        return with_database(f"postgresql://postgres@127.0.0.1:{port}/postgres", dbname)

    def _run(self, exe: str, *args: str) -> None:
        user = _USER if os.geteuid() == 0 else None
        # Output to a file, not a pipe: pg_ctl's server may hold a pipe open.
        with (self.data_dir / "commands.log").open("ab") as out:
            subprocess.run(  # noqa: S603 (fixed argv, the wheel's own binaries)
                [str(self._bin / exe), *args],
                check=True,
                user=user,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                timeout=120,
            )

    def _start(self, pgdata: Path, port: int, *options: str) -> None:
        settings = [
            f"-p {port}",
            "-c listen_addresses=127.0.0.1",
            f"-c unix_socket_directories={shlex.quote(str(self.data_dir))}",
            "-c fsync=off",
            "-c shared_buffers=32MB",
            *(f"-c {o}" for o in options),
        ]
        log = str(self.data_dir / f"{pgdata.name}.log")
        self._run("pg_ctl", "-D", str(pgdata), "-w", "-l", log, "-o", " ".join(settings), "start")

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            from pgserver.utils import ensure_prefix_permissions, ensure_user_exists

            ensure_user_exists(_USER)
            # The server's user must reach the wheel's binaries and the data directory, as
            # pgserver itself arranges for its own servers (a checkout in a 0700 directory).
            ensure_prefix_permissions(self._bin)
            ensure_prefix_permissions(self.data_dir)
            shutil.chown(self.data_dir, _USER, _USER)
        primary, replica = self.data_dir / "primary", self.data_dir / "replica"
        self._run("initdb", "-D", str(primary), "-U", "postgres", "--auth=trust", "-E", "utf8")
        self._start(primary, self.primary_port, "wal_level=replica", "max_wal_senders=4")
        self._run(
            "pg_basebackup",
            *("-h", "127.0.0.1", "-p", str(self.primary_port), "-U", "postgres"),
            *("-D", str(replica), "-R", "-X", "stream"),
        )
        self._start(replica, self.replica_port, "hot_standby=on")

    def stop(self) -> None:
        for name in ("replica", "primary"):
            pgdata = self.data_dir / name
            if (pgdata / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(pgdata), "-w", "-m", "fast", "stop")
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def set_apply_delay(self, milliseconds: int) -> None:
        """Hold the replica back: it applies each commit this long after the primary made it
        (`recovery_min_apply_delay`), while still receiving the WAL at once."""
        with psycopg.connect(self.url(replica=True), autocommit=True) as conn:
            conn.execute(f"ALTER SYSTEM SET recovery_min_apply_delay = '{int(milliseconds)}ms'")
            conn.execute("SELECT pg_reload_conf()")

    def pause_replay(self, paused: bool = True) -> None:
        with psycopg.connect(self.url(replica=True), autocommit=True) as conn:
            conn.execute(
                "SELECT pg_wal_replay_pause()" if paused else "SELECT pg_wal_replay_resume()"
            )

    def wait_replayed(self, timeout: float = 60.0) -> None:
        """Returns once the replica has replayed everything the primary has written so far."""
        with psycopg.connect(self.url(), autocommit=True) as conn:
            row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        assert row is not None
        deadline = time.monotonic() + timeout
        with psycopg.connect(self.url(replica=True), autocommit=True) as conn:
            while not (conn.execute(_LSN_REACHED, (row[0],)).fetchone() or (False,))[0]:
                if time.monotonic() > deadline:
                    raise TimeoutError("the replica did not catch up with the primary")
                time.sleep(0.05)
