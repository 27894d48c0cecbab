"""Point-in-time restore (`customers restore`) and what a restored store does before serving
(`after_restore`, from `customers migrate` and the start of `customers serve`).

A restore copies the chosen base backup into a data directory, and has PostgreSQL replay the
archived WAL up to the target time (recovery_target_time, restore_command reading the WAL
archive, recovery_target_action=promote). For the embedded server it does all of it with the
service stopped, keeping the previous data directory aside as pg.before-restore-<time>; for
an external server it prepares a directory (`--into`) for the operator to start.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

import psycopg
from psycopg import sql

from eventstore import erasure_ledger
from service.backups import Archive, Restorable
from service.settings import Settings

log = logging.getLogger(__name__)

EVENTS_TABLE = "customers_events"
_NOT_REACHED = "recovery ended before configured recovery target was reached"
_RECOVERY_SETTINGS = (
    "restore_command",
    "recovery_target_time",
    "recovery_target_action",
    "recovery_target_timeline",
)


class RestoreError(Exception):
    """A restore that cannot be done as asked (the message says why, naming the option)."""


def parse_target(text: str) -> datetime:
    try:
        target = datetime.fromisoformat(text)
    except ValueError:
        raise RestoreError(f"--target-time {text!r} is not an ISO 8601 date-time") from None
    if target.tzinfo is None:
        raise RestoreError("--target-time needs a UTC offset (e.g. 2026-01-31T12:00:00Z)")
    return target.astimezone(UTC)


def choose(archive: Archive, target: datetime) -> Restorable:
    chosen = archive.choose(target)
    if chosen is None:
        ranges = [
            f"{r.backup.finished_at.isoformat()} .. {r.until.isoformat() if r.until else '?'}"
            for r in archive.restorable()
        ]
        raise RestoreError(
            f"--target-time {target.isoformat()} is not in any restorable range"
            f" ({'; '.join(ranges) or 'no base backups'}): see `customers backups`"
        )
    return chosen


def restore_command(archive: Archive) -> str:
    """Looks for a file in every epoch's WAL dir (timeline history files of later epochs
    make a promotion pick a timeline never used before), then for the newest `.partial`
    segment pg_receivewal was writing."""
    dirs = " ".join(
        f'"{d}"' for d in sorted(archive.wal_root.iterdir(), key=lambda p: p.name, reverse=True)
    )
    return (
        f'for d in {dirs}; do if [ -f "$d/%f" ]; then exec cp "$d/%f" "%p"; fi; done; '
        f'for d in {dirs}; do if [ -f "$d/%f.partial" ]; then exec cp "$d/%f.partial" "%p"; fi;'
        " done; exit 1"
    )


def _recovery_conf(archive: Archive, target: datetime | None) -> str:
    lines = [
        f"restore_command = '{restore_command(archive)}'",
        "recovery_target_timeline = 'current'",
    ]
    if target is not None:
        lines += [
            f"recovery_target_time = '{target.isoformat()}'",
            "recovery_target_action = 'promote'",
        ]
    return "\n# customers restore\n" + "\n".join(lines) + "\n"


def prepare(archive: Archive, chosen: Restorable, target: datetime | None, into: Path) -> None:
    """`into` (absent or empty) becomes a copy of the base backup set up to recover."""
    if into.exists() and any(into.iterdir()):
        raise RestoreError(f"--into {into} is not empty")
    into.parent.mkdir(parents=True, exist_ok=True)
    if into.exists():
        into.rmdir()
    shutil.copytree(archive.base / chosen.backup.label, into, symlinks=True)
    # pgserver's handle list and log, the copy's manifest, and the lock file of a socket in
    # the data dir (pgserver puts it there; its PID, reused by another process, would make
    # the restored server refuse to start).
    leftovers = [into / ".handle_pids.json", into / "log", into / "backup_manifest"]
    for path in [*leftovers, *into.glob(".s.PGSQL.*.lock")]:
        if path.is_file():
            path.unlink()
    (into / "recovery.signal").touch()
    _set_recovery(into, archive, target)
    into.chmod(0o700)


def _set_recovery(pgdata: Path, archive: Archive, target: datetime | None) -> None:
    auto = pgdata / "postgresql.auto.conf"
    kept = auto.read_text().split("\n# customers restore\n")[0] if auto.exists() else ""
    auto.write_text(kept.rstrip("\n") + "\n" + _recovery_conf(archive, target))


@dataclass
class Outcome:
    epoch: int
    backup: str
    target: datetime
    reached: str  # "target" or "end of archive" (no commit after the target was archived)
    aside: Path | None
    seconds: float
    copy_seconds: float = 0.0  # the base backup into place
    replay_seconds: float = 0.0  # recovery: WAL replayed to the target, promoted, stopped


def restore_into(settings: Settings, target: datetime, into: Path) -> Outcome:
    """For an external server: prepare `into`; the operator starts PostgreSQL on it."""
    started = time.monotonic()
    archive = Archive(settings.backup_path)
    chosen = choose(archive, target)
    prepare(archive, chosen, target, into)
    epoch = _record(archive, chosen, target, "target (when started)")
    return Outcome(epoch, chosen.backup.label, target, "pending", None, time.monotonic() - started)


def restore_embedded(settings: Settings, target: datetime) -> Outcome:
    """Into the embedded data directory: the service must be stopped."""
    from service import embedded

    started = time.monotonic()
    archive = Archive(settings.backup_path)
    chosen = choose(archive, target)
    if embedded.reachable(settings.host, settings.http_port):
        raise RestoreError(
            f"the service answers on {settings.host}:{settings.http_port}: stop it first"
        )
    data_dir = settings.data_dir.expanduser().resolve()
    pgdata = data_dir / "pg"
    embedded.stop_postgres(data_dir)
    aside = data_dir / f"pg.before-restore-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"
    if pgdata.exists():
        pgdata.rename(aside)
    try:
        copying = time.monotonic()
        prepare(archive, chosen, target, pgdata)
        replaying = time.monotonic()
        reached = _recover(archive, pgdata, target)
        timings = (replaying - copying, time.monotonic() - replaying)
    except BaseException:
        shutil.rmtree(pgdata, ignore_errors=True)
        if aside.exists():
            aside.rename(pgdata)
        raise
    epoch = _record(archive, chosen, target, reached)
    seconds = time.monotonic() - started
    return Outcome(epoch, chosen.backup.label, target, reached, aside, seconds, *timings)


def _record(archive: Archive, chosen: Restorable, target: datetime, reached: str) -> int:
    epoch = archive.epoch() + 1
    archive.record_restore(
        {
            "epoch": epoch,
            "targetTime": target.isoformat(),
            "restoredAt": datetime.now(UTC).isoformat(),
            "backup": chosen.backup.label,
            "reached": reached,
        }
    )
    return epoch


def _recover(archive: Archive, pgdata: Path, target: datetime) -> str:
    """Run the embedded server on `pgdata` until recovery has promoted it, then stop it.
    When the archive holds no commit after the target (a quiet moment), PostgreSQL stops
    short of it; replaying to the end of the archive is then the same state."""
    from pgserver._commands import POSTGRES_BIN_PATH

    user = "pgserver" if os.geteuid() == 0 else None
    if user is not None:
        entry = pwd.getpwnam(user)
        for path in [pgdata, *pgdata.rglob("*")]:
            os.lchown(path, entry.pw_uid, entry.pw_gid)
        _readable_by(archive.wal_root, entry.pw_uid, entry.pw_gid)
        unreadable = subprocess.run(  # noqa: S603 — fixed argv
            ["find", str(archive.wal_root), "!", "-readable"],  # noqa: S607
            user=user,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        if unreadable.strip():
            raise RestoreError(f"the server's user {user} cannot read {unreadable.split()[0]}")
    socket_dir = Path(tempfile.mkdtemp(prefix="customers-restore-"))
    socket_dir.chmod(0o777)
    logfile = socket_dir / "recovery.log"
    bin_dir = Path(POSTGRES_BIN_PATH)
    url = f"postgresql://postgres@/postgres?host={socket_dir}"
    try:
        for attempt in ("target", "end of archive"):
            if attempt == "end of archive":
                (pgdata / "recovery.signal").touch()
                _set_recovery(pgdata, archive, None)
            _pg_ctl(bin_dir, pgdata, user, ["-l", str(logfile), "-o", _server_options(socket_dir)])
            if _wait_promoted(url, bin_dir, pgdata, user):
                with psycopg.connect(url, autocommit=True) as conn:
                    for name in _RECOVERY_SETTINGS:
                        conn.execute(sql.SQL("ALTER SYSTEM RESET {}").format(sql.Identifier(name)))
                _pg_ctl(bin_dir, pgdata, user, ["-m", "fast"], action="stop")
                return attempt
            text = logfile.read_text(errors="replace") if logfile.exists() else ""
            if _NOT_REACHED not in text:
                raise RestoreError(f"recovery failed:\n{text[-3000:]}")
        raise RestoreError("recovery did not finish")
    finally:
        shutil.rmtree(socket_dir, ignore_errors=True)


def _readable_by(wal_root: Path, uid: int, gid: int) -> None:
    """The WAL archive, owned by the server's user, whose restore_command reads it (this
    process, root, keeps writing to it)."""
    for path in [wal_root, *wal_root.rglob("*")]:
        os.chown(path, uid, gid)


def _server_options(socket_dir: Path) -> str:
    return f"-k {socket_dir} -c listen_addresses=''"


def _pg_ctl(
    bin_dir: Path, pgdata: Path, user: str | None, args: list[str], action: str = "start"
) -> None:
    argv = [str(bin_dir / "pg_ctl"), "-D", str(pgdata), "-W" if action == "start" else "-w"]
    subprocess.run(  # noqa: S603 — the embedded server's pg_ctl, our arguments
        [*argv, *args, action], check=True, user=user, capture_output=True, timeout=600
    )


def _wait_promoted(url: str, bin_dir: Path, pgdata: Path, user: str | None) -> bool:
    """True once the server is out of recovery; False when it exited first."""
    while True:
        if not (pgdata / "postmaster.pid").exists():
            time.sleep(0.5)
            if not (pgdata / "postmaster.pid").exists():
                return False
        try:
            with psycopg.connect(url, connect_timeout=2) as conn:
                row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
                if row is not None and not row[0]:
                    return True
        except psycopg.OperationalError:
            pass
        time.sleep(0.2)


# --------------------------------------------------------------------------- after a restore


@dataclass
class AfterRestore:
    epoch: int | None  # the restore this store was registered as the result of, if new
    erased_again: list[UUID]


KEYS_ALIVE = (
    "SELECT customer_id, org_id FROM customer_keys"
    " WHERE customer_id = ANY(%s) AND wrapped_key IS NOT NULL"
)
LAST_EPOCH = "SELECT max(epoch) FROM store_restores"
REGISTER = (
    "INSERT INTO store_restores (epoch, position, target_time, restored_at)"
    " SELECT %s, COALESCE((SELECT max(notification_id) FROM {}), 0), %s, %s"
    " ON CONFLICT (epoch) DO NOTHING"
)


def after_restore(settings: Settings) -> AfterRestore:
    """Before serving: register the latest restore (the relay's epoch) if this store is its
    result, and re-apply every erasure of the ledger whose customer's key is alive again.
    Cheap when there is nothing to do (one query per 10,000 ledger entries)."""
    assert settings.database_url
    archive = Archive(settings.backup_path)
    epoch = _register(settings.database_url, archive)
    ledger = erasure_ledger.ledger_path(settings.backup_path)
    ids = list(dict.fromkeys(cid for cid, _ in erasure_ledger.entries(ledger)))
    alive: list[tuple[UUID, str]] = []
    if ids:
        with psycopg.connect(settings.database_url) as conn:
            for i in range(0, len(ids), 10_000):
                alive += conn.execute(KEYS_ALIVE, (ids[i : i + 10_000],)).fetchall()
    if alive:
        _erase_again(settings, alive)
    return AfterRestore(epoch, [cid for cid, _ in alive])


def _register(database_url: str, archive: Archive) -> int | None:
    restores = archive.restores()
    if not restores:
        return None
    latest = restores[-1]
    epoch = int(str(latest["epoch"]))
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(LAST_EPOCH).fetchone()
        if row is not None and row[0] is not None and row[0] >= epoch:
            return None
        conn.execute(
            sql.SQL(REGISTER).format(sql.Identifier(EVENTS_TABLE)),
            (epoch, latest["targetTime"], latest["restoredAt"]),
        )
    log.info("registered a restore", extra={"epoch": epoch})
    return epoch


def _erase_again(settings: Settings, alive: list[tuple[UUID, str]]) -> None:
    """Through the erasure's own code path, then the projector catches up so that no read
    model answers for them once serving starts (the relay publishes `customer.erased`)."""
    from domain.errors import DomainError
    from eventstore.application import Customers
    from projections.runner import Projector
    from write_api.customers import CustomerCommands

    app = Customers(settings, pool_size=2)
    try:
        commands = CustomerCommands(app)
        for customer_id, org in alive:
            try:
                commands.erase_again(customer_id, org)
            except DomainError as e:  # anonymized meanwhile: its key is gone too
                log.info("not erased again", extra={"customerId": str(customer_id), "code": e.code})
        projector = Projector(settings, app=app)
        try:
            projector.run_once()
        finally:
            projector.close()
    finally:
        app.close()
    log.info("re-applied erasures from the ledger", extra={"count": len(alive)})
