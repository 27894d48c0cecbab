"""Physical backups: base backups (pg_basebackup, plain format with a manifest, checked by
pg_verifybackup) and continuous WAL streaming (pg_receivewal through a replication slot).

Layout of the backup dir (`Settings.backup_path`):

    base/<label>/        a base backup (a data directory), <label> = its UTC start time
    base/<label>.json    what it is: epoch, timeline, start and finish times, size
    wal/<epoch>/         WAL streamed while the store was in that epoch (0 = never restored)
    restores.jsonl       one line per restore (service/restore.py); its count is the epoch
    erasure-ledger.jsonl every erasure (eventstore/erasure_ledger.py)

A restore starts a new epoch: the restored server is on a new timeline whose WAL goes to a
new directory, so that pg_receivewal does not resume from the old timeline's last segment,
and a base backup of the old epoch stays restorable to any time the old epoch covered.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import subprocess
import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import psycopg

from eventstore.erasure_ledger import append_synced
from service.settings import Settings

log = logging.getLogger(__name__)

SLOT = "customers_backup"
RESTORES_FILE = "restores.jsonl"
_LABEL_FORMAT = "%Y%m%dT%H%M%SZ"


# --------------------------------------------------------------------------- programs


def pg_bin_dir(settings: Settings, database_url: str) -> Path:
    """The client programs matching the server's major version."""
    if settings.backup_pg_bin_dir is not None:
        return settings.backup_pg_bin_dir
    with psycopg.connect(database_url, connect_timeout=10) as conn:
        row = conn.execute("SHOW server_version_num").fetchone()
    assert row is not None
    return bin_dir_for(int(row[0]) // 10_000)


def bin_dir_for(major: int) -> Path:
    candidates = []
    with contextlib.suppress(ImportError):
        import pgserver._commands as pg_commands

        candidates.append(Path(pg_commands.POSTGRES_BIN_PATH))
    candidates.append(Path(f"/usr/lib/postgresql/{major}/bin"))
    for candidate in candidates:
        if _major_of(candidate) == major:
            return candidate
    raise RuntimeError(
        f"no PostgreSQL {major} client programs found (tried {', '.join(map(str, candidates))});"
        " set CUSTOMERS_BACKUP_PG_BIN_DIR"
    )


def _major_of(bin_dir: Path) -> int | None:
    program = bin_dir / "pg_basebackup"
    if not program.exists():
        return None
    out = subprocess.run(  # noqa: S603 — a PostgreSQL program, fixed arguments
        [str(program), "--version"], capture_output=True, text=True, check=False
    ).stdout
    try:
        return int(out.split()[-1].split(".")[0])
    except (IndexError, ValueError):
        return None


def _run(argv: list[str], timeout: float | None = None) -> None:
    done = subprocess.run(  # noqa: S603 — PostgreSQL programs, arguments we build
        argv, capture_output=True, text=True, check=False, timeout=timeout
    )
    if done.returncode != 0:
        name = Path(argv[0]).name
        raise RuntimeError(f"{name} failed ({done.returncode}): {done.stderr[-2000:]}")


# --------------------------------------------------------------------------- the archive


@dataclass(frozen=True)
class BaseBackup:
    label: str
    epoch: int
    timeline: int
    started_at: datetime
    finished_at: datetime  # restorable from here (the backup is consistent by then)
    size: int

    def to_json(self) -> bytes:
        data = asdict(self)
        data["started_at"] = self.started_at.isoformat()
        data["finished_at"] = self.finished_at.isoformat()
        return orjson.dumps(data)

    @classmethod
    def from_json(cls, raw: bytes) -> BaseBackup:
        data = orjson.loads(raw)
        data["started_at"] = datetime.fromisoformat(data["started_at"])
        data["finished_at"] = datetime.fromisoformat(data["finished_at"])
        return cls(**data)


@dataclass(frozen=True)
class Restorable:
    backup: BaseBackup
    until: datetime | None  # the last WAL of its epoch received; None: none after it yet


class Archive:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.base = root / "base"
        self.wal_root = root / "wal"

    def wal(self, epoch: int) -> Path:
        return self.wal_root / str(epoch)

    def restores(self) -> list[dict[str, object]]:
        path = self.root / RESTORES_FILE
        if not path.exists():
            return []
        return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]

    def epoch(self) -> int:
        """The current epoch: how many restores there have been."""
        return len(self.restores())

    def record_restore(self, entry: dict[str, object]) -> None:
        append_synced(self.root / RESTORES_FILE, orjson.dumps(entry))

    def backups(self) -> list[BaseBackup]:
        """The complete, verified base backups, oldest first."""
        if not self.base.exists():
            return []
        found = [BaseBackup.from_json(p.read_bytes()) for p in self.base.glob("*.json")]
        return sorted(found, key=lambda b: b.started_at)

    def wal_until(self, epoch: int) -> datetime | None:
        """When WAL of `epoch` was last received (pg_receivewal fsyncs each write)."""
        directory = self.wal(epoch)
        if not directory.exists():
            return None
        times = [p.stat().st_mtime for p in directory.iterdir() if p.is_file()]
        return datetime.fromtimestamp(max(times), UTC) if times else None

    def restorable(self) -> list[Restorable]:
        """Each backup, with how far its epoch's WAL reaches; None when the archive does not
        hold the WAL from the backup's start on (taken before streaming began)."""
        found = []
        for b in self.backups():
            first = self.first_segment(b.epoch)
            covered = first is not None and first[8:] <= self.start_segment(b)[8:]
            until = self.wal_until(b.epoch) if covered else None
            # Nothing archived since it finished (a quiet moment): restorable once WAL comes.
            found.append(Restorable(b, until if until and until >= b.finished_at else None))
        return found

    def first_segment(self, epoch: int) -> str | None:
        directory = self.wal(epoch)
        if not directory.exists():
            return None
        names = [
            p.name[:24] for p in directory.iterdir() if len(p.name) >= 24 and p.name[:24].isalnum()
        ]
        return min(names) if names else None

    def start_segment(self, backup: BaseBackup) -> str:
        """The WAL file the backup starts in (its backup_label)."""
        text = (self.base / backup.label / "backup_label").read_text()
        return text.split("(file ", 1)[1].split(")", 1)[0]

    def choose(self, target: datetime) -> Restorable | None:
        """The latest base backup finished by `target` whose epoch's WAL reaches it."""
        best = None
        for item in self.restorable():
            b = item.backup
            if b.finished_at <= target and (item.until is not None and target <= item.until):
                best = item
        # An epoch ends where the next begins: a backup of an older epoch only covers the
        # times before that epoch's restore; the newest epoch covering `target` wins.
        return best


# --------------------------------------------------------------------------- base backups


def take_backup(settings: Settings, database_url: str) -> BaseBackup:
    """A base backup now: streamed, with its WAL (self-contained), verified, then published
    under base/ (a crash leaves a `.partial` dir that the next prune removes)."""
    archive = Archive(settings.backup_path)
    archive.base.mkdir(parents=True, exist_ok=True)
    bin_dir = pg_bin_dir(settings, database_url)
    started = datetime.now(UTC)
    label = started.strftime(_LABEL_FORMAT)
    while (archive.base / label).exists() or (archive.base / f"{label}.partial").exists():
        time.sleep(1)  # one per second at most: the label is the second it started
        started = datetime.now(UTC)
        label = started.strftime(_LABEL_FORMAT)
    partial = archive.base / f"{label}.partial"
    _run(
        [
            str(bin_dir / "pg_basebackup"),
            "-d", database_url, "-D", str(partial), "-F", "p", "-X", "stream",
            "-c", "fast", "-l", f"customers {label}",
        ]
    )  # fmt: skip
    finished = datetime.now(UTC)  # consistent from its end, before the check
    _run([str(bin_dir / "pg_verifybackup"), "-q", str(partial)])
    timeline = _timeline(partial)
    size = sum(p.stat().st_size for p in partial.rglob("*") if p.is_file())
    backup = BaseBackup(label, archive.epoch(), timeline, started, finished, size)
    partial.rename(archive.base / label)
    meta = archive.base / f"{label}.json"
    meta.with_suffix(".tmp").write_bytes(backup.to_json())
    meta.with_suffix(".tmp").replace(meta)
    log.info("base backup taken", extra={"label": label, "size": size, "epoch": backup.epoch})
    return backup


def _timeline(data_dir: Path) -> int:
    """From the manifest's WAL ranges (the timeline the backup starts on)."""
    manifest = orjson.loads((data_dir / "backup_manifest").read_bytes())
    return int(manifest["WAL-Ranges"][0]["Timeline"])


def prune(settings: Settings, now: datetime | None = None) -> list[str]:
    """Remove the base backups beyond retention, and WAL no kept backup needs; returns the
    labels removed. The newest backup is always kept."""
    archive = Archive(settings.backup_path)
    now = now or datetime.now(UTC)
    backups = archive.backups()
    keep_age = timedelta(hours=settings.backup_retention_hours)
    newest = backups[-settings.backup_retention_count :]
    removed = []
    for b in backups:
        if b in newest or (keep_age and now - b.finished_at < keep_age):
            continue
        (archive.base / f"{b.label}.json").unlink()
        shutil.rmtree(archive.base / b.label, ignore_errors=True)
        removed.append(b.label)
    if archive.base.exists():
        for stale in archive.base.glob("*.partial"):
            shutil.rmtree(stale, ignore_errors=True)
    kept = archive.backups()
    kept_epochs = {b.epoch for b in kept}
    current = archive.epoch()
    if archive.wal_root.exists():
        for directory in archive.wal_root.iterdir():
            if directory.name.isdigit() and int(directory.name) not in kept_epochs | {current}:
                shutil.rmtree(directory, ignore_errors=True)
    for epoch in kept_epochs:
        oldest = min((b for b in kept if b.epoch == epoch), key=lambda b: b.started_at)
        _clean_wal_before(settings, archive, oldest)
    if removed:
        log.info("pruned base backups", extra={"labels": removed})
    return removed


def _clean_wal_before(settings: Settings, archive: Archive, backup: BaseBackup) -> None:
    """WAL segments older than the backup's first (pg_archivecleanup keeps .history)."""
    wal = archive.wal(backup.epoch)
    if not wal.exists():
        return
    first = archive.start_segment(backup)
    bin_dir = settings.backup_pg_bin_dir or Path(shutil.which("pg_archivecleanup") or "").parent
    program = bin_dir / "pg_archivecleanup"
    if not program.exists():
        with contextlib.suppress(ImportError):
            import pgserver._commands as pg_commands

            program = Path(pg_commands.POSTGRES_BIN_PATH) / "pg_archivecleanup"
    if program.exists():
        _run([str(program), str(wal), first])


# --------------------------------------------------------------------------- WAL streaming


class WalReceiver:
    """pg_receivewal into wal/<epoch>/, through a physical slot (the server keeps WAL the
    receiver has not had yet), fsyncing every write (--synchronous): what the server has
    committed is in the archive within moments. Restarted with backoff when it exits."""

    def __init__(self, settings: Settings, database_url: str) -> None:
        self.settings = settings
        self.url = database_url
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        archive = Archive(self.settings.backup_path)
        directory = archive.wal(archive.epoch())
        directory.mkdir(parents=True, exist_ok=True)
        program = str(pg_bin_dir(self.settings, self.url) / "pg_receivewal")
        common = ["-d", self.url, "-S", SLOT]
        _run([program, *common, "--create-slot", "--if-not-exists"])
        log_file = (self.settings.backup_path / "pg_receivewal.log").open("ab")
        self.process = subprocess.Popen(  # noqa: S603 — our argv
            [program, *common, "-D", str(directory), "--synchronous", "-n"],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
        )
        log_file.close()

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def archived(database_url: str) -> bool:
    """Whether pg_receivewal has flushed every WAL the server has written so far."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT bool_or(flush_lsn >= pg_current_wal_lsn()) FROM pg_stat_replication"
            " WHERE application_name = 'pg_receivewal'"
        ).fetchone()
    return bool(row and row[0])


class BackupAgent:
    """In `customers serve` when backups are enabled: keeps pg_receivewal running, takes a
    base backup when the epoch has none or the last is `backup_interval_hours` old, prunes."""

    def __init__(self, settings: Settings, database_url: str) -> None:
        self.settings = settings
        self.url = database_url
        self.receiver = WalReceiver(settings, database_url)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="backups", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        self.receiver.stop()

    def _loop(self) -> None:
        delay = 1.0
        while not self._stop.is_set():
            try:
                if not self.receiver.running():
                    self.receiver.start()
                if self._due():
                    take_backup(self.settings, self.url)
                    prune(self.settings)
                delay = 1.0
            except Exception:
                log.exception("backups: failed; retrying in %.0fs", delay)
                delay = min(delay * 2, 300.0)
            self._stop.wait(delay)

    def _due(self) -> bool:
        archive = Archive(self.settings.backup_path)
        epoch = archive.epoch()
        mine = [b for b in archive.backups() if b.epoch == epoch]
        if not mine:
            return True
        age = datetime.now(UTC) - mine[-1].started_at
        return age >= timedelta(hours=self.settings.backup_interval_hours)


def listing(settings: Settings) -> list[dict[str, object]]:
    """`customers backups`: each base backup and the time range it can restore to."""
    rows = []
    for item in Archive(settings.backup_path).restorable():
        b = item.backup
        rows.append(
            {
                "label": b.label,
                "epoch": b.epoch,
                "timeline": b.timeline,
                "bytes": b.size,
                "restorableFrom": b.finished_at.isoformat(),
                "restorableUntil": item.until.isoformat() if item.until else None,
            }
        )
    return rows
