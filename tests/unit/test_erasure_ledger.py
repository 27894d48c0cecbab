"""The erasure ledger file: appended lines read back in order, a torn last line skipped."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from uuid import uuid4

from eventstore import erasure_ledger


def test_entries_come_back_in_order_and_a_torn_line_is_skipped(tmp_path: Path) -> None:
    path = erasure_ledger.ledger_path(tmp_path / "backups")
    first, second = uuid4(), uuid4()
    at = datetime(2026, 1, 31, 12, tzinfo=UTC)
    erasure_ledger.append(path, first, at)
    erasure_ledger.append(path, second)
    with path.open("ab") as fh:
        fh.write(b'{"customerId": "' + str(uuid4()).encode()[:10])  # a crash mid-write
    entries = list(erasure_ledger.entries(path))
    assert [cid for cid, _ in entries] == [first, second]
    assert entries[0][1] == at
    lines = path.read_bytes().splitlines()[:2]
    assert all(set(json.loads(line)) == {"customerId", "erasedAt"} for line in lines)
    assert path.stat().st_mode & 0o077 == 0
