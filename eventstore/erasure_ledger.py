"""The erasure ledger: one JSON line per erasure (customer id and time, nothing personal),
appended and fsynced in the backup directory, outside the database a restore replaces.

A restore to a time before an erasure brings the customer's data key back; the ledger is how
the restored service knows to destroy it again (service/restore.py `after_restore`). The
line is written before the erasure commits: a committed erasure is always in the ledger, and
an entry whose erasure then failed is completed at the next start (it was a valid request).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

import orjson

LEDGER_FILE = "erasure-ledger.jsonl"


def ledger_path(backup_dir: Path) -> Path:
    return backup_dir / LEDGER_FILE


def append(path: Path, customer_id: UUID, at: datetime | None = None) -> None:
    line = orjson.dumps(
        {"customerId": str(customer_id), "erasedAt": (at or datetime.now(UTC)).isoformat()}
    )
    append_synced(path, line)


def append_synced(path: Path, line: bytes) -> None:
    """One line, written with a single O_APPEND write and fsynced before returning."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)


def entries(path: Path) -> Iterator[tuple[UUID, datetime]]:
    """Every entry, oldest first; a torn last line (a crash mid-write) is skipped."""
    if not path.exists():
        return
    with path.open("rb") as fh:
        for raw in fh:
            try:
                entry = orjson.loads(raw)
                yield UUID(entry["customerId"]), datetime.fromisoformat(entry["erasedAt"])
            except (orjson.JSONDecodeError, KeyError, ValueError, TypeError):
                continue
