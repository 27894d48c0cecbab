"""Customer imports: CSV (RFC 4180, header row, UTF-8 with or without BOM) or NDJSON, as jobs.

The upload is streamed into `import_chunks` (1 MiB each, never whole in memory) and the job
queued; the segments process runs it: the file is read back chunk by chunk, every record
validated by the rules of `POST /customers`, and the valid ones saved 500 per transaction.
Each transaction also carries the job's checkpoint (the next record's line, the counts) and
the rejected rows, so a job interrupted at any point resumes after the last committed batch
and counts nothing twice. E-mail is the key: `create` skips a customer whose e-mail is
registered, `upsert` replaces its profile (unchanged rows count as skipped), so importing a
file twice gives the same customers. `dryRun` validates and counts without saving.

CSV columns are the export's (`GET /customers/export`): nested fields as dotted names
(`location.city`), lists and maps as JSON text; server-owned columns (`id`, `status`, …) are
ignored. Invalid UTF-8 is rejected row by row (the bytes become lone surrogates, which the
profile's rules refuse), naming the field.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any
from uuid import UUID

import orjson
import psycopg
from eventsourcing import persistence
from eventsourcing.persistence import IntegrityError
from psycopg.rows import tuple_row
from pydantic import ValidationError

from domain.customer import Customer
from domain.errors import DomainError, invalid
from domain.values import Profile
from eventstore.application import Customers
from eventstore.jobs import (
    IMPORT_COLUMNS,
    LOCK_JOB,
    UNLOCK_JOB,
    render_import,
    requeue_orphans,
)
from eventstore.recorder import Claim
from service.problems import field_path
from service.settings import Settings
from write_api.customers import EMAIL

log = logging.getLogger(__name__)

Connection = psycopg.Connection[Any]

CHUNK_BYTES = 1 << 20
BATCH = 500
IGNORED = frozenset(
    {
        "id",
        "version",
        "status",
        "createdAt",
        "updatedAt",
        "lastActivity",
        "segments",
        "pendingEmail",
        "activeOrders",
        "location.countryCode",
    }
)
_RETRIES = 5
# Cells the export prefixed with "'" (read_api/export.py), so that no spreadsheet runs them.
_FORMULA_GUARDED = frozenset({"=", "+", "-", "@", "\t", "\r", "'"})


class Format(StrEnum):
    CSV = "csv"
    NDJSON = "ndjson"


class Mode(StrEnum):
    CREATE = "create"
    UPSERT = "upsert"


START = (
    "INSERT INTO import_jobs (id, org_id, format, mode, dry_run, state, requested_by)"
    " VALUES (%s, %s, %s, %s, %s, 'RECEIVING', %s)"
)
ADD_CHUNK = "INSERT INTO import_chunks (job_id, seq, data) VALUES (%s, %s, %s)"
RECEIVED = (
    "UPDATE import_jobs SET state = 'QUEUED', bytes = %s, sha256 = %s WHERE id = %s"  # noqa: S608
    f" RETURNING {IMPORT_COLUMNS}"
)
ABANDON = "UPDATE import_jobs SET state = 'FAILED', error = %s, finished_at = now() WHERE id = %s"
CLAIM = (
    "UPDATE import_jobs SET state = 'RUNNING', started_at = coalesce(started_at, now())"
    " WHERE id = (SELECT id FROM import_jobs WHERE state = 'QUEUED' ORDER BY created_at"
    " FOR UPDATE SKIP LOCKED LIMIT 1)"
    " RETURNING id, org_id, format, mode, dry_run, requested_by, next_line"
)
RUNNING = "SELECT id FROM import_jobs WHERE state = 'RUNNING'"
REQUEUE = "UPDATE import_jobs SET state = 'QUEUED' WHERE id = %s AND state = 'RUNNING'"
# Uploads whose process died while receiving: their chunks are all there is.
STALE_UPLOADS = (
    "UPDATE import_jobs SET state = 'FAILED', error = 'upload interrupted',"
    " finished_at = now() WHERE state = 'RECEIVING' AND created_at < now() - interval '1 hour'"
    " RETURNING id"
)
LOCK_SPACE = 1  # of eventstore.jobs.LOCK_JOB
CHUNK = "SELECT data FROM import_chunks WHERE job_id = %s AND seq = %s"
CHECKPOINT = (
    "UPDATE import_jobs SET next_line = %s, bytes_done = %s, rows_read = rows_read + %s,"
    " created = created + %s, updated = updated + %s, skipped = skipped + %s,"
    " failed = failed + %s WHERE id = %s"
)
REJECT = (
    "INSERT INTO import_rejections (job_id, line, field, reason)"
    " SELECT %s, unnest(%s::int[]), unnest(%s::text[]), unnest(%s::text[])"
    " ON CONFLICT DO NOTHING"
)
FINISH = "UPDATE import_jobs SET state = %s, error = %s, finished_at = now() WHERE id = %s"
# The file holds personal data: it goes when its job ends.
DROP_CHUNKS = "DELETE FROM import_chunks WHERE job_id = %s"
OWNERS = (
    "SELECT key_hash, owner_id FROM unique_claims"
    " WHERE scope = %s AND org_id = %s AND key_hash = ANY(%s)"
)


# --------------------------------------------------------------------------- upload


def check_header(first: bytes, fmt: Format) -> None:
    """422 for what can be told from the file's start: nothing in it, unknown columns."""
    if not first.strip():
        raise invalid("body", "the file is empty")
    if fmt is Format.CSV:
        text = first.decode("utf-8-sig", errors="surrogateescape")
        header = next(csv.reader(io.StringIO(text)), [])
        unknown = [c for c in header if c not in IGNORED and not known_column(c)]
        if unknown:
            raise invalid("columns", f"unknown column {unknown[0]!r}")
        if "email" not in header:
            raise invalid("columns", "the header has no 'email' column")


def known_column(name: str) -> bool:
    """A dotted path through the customer body's fields (camelCase)."""
    model: Any = Profile
    for part in name.split("."):
        fields = {f.alias or n: f for n, f in model.model_fields.items()}
        if part not in fields:
            return False
        annotation = fields[part].annotation
        options = getattr(annotation, "__args__", (annotation,))
        model = next((t for t in options if hasattr(t, "model_fields")), None)
        if model is None:
            return part == name.rsplit(".", maxsplit=1)[-1]
    return True


@dataclass(frozen=True)
class Job:
    id: UUID
    org_id: str
    fmt: Format
    mode: Mode
    dry_run: bool
    requested_by: str
    next_line: int


@dataclass
class Upload:
    """An upload being stored: the caller feeds it the body's pieces, then finishes it (or
    abandons it). The job row is written with the first chunk, after the header passed."""

    conn: Connection
    job: Job
    seq: int = 0
    size: int = 0
    checked: bool = False
    buffer: bytearray = field(default_factory=bytearray)
    digest: Any = field(default_factory=hashlib.sha256)

    def feed(self, piece: bytes) -> None:
        self.buffer += piece
        self.digest.update(piece)
        self.size += len(piece)
        while len(self.buffer) >= CHUNK_BYTES:
            self._store(bytes(self.buffer[:CHUNK_BYTES]))
            del self.buffer[:CHUNK_BYTES]

    def finish(self) -> dict[str, Any]:
        self._store(bytes(self.buffer))
        row = self.conn.execute(RECEIVED, (self.size, self.digest.digest(), self.job.id))
        return render_import(tuple(row.fetchone() or ()))

    def abandon(self, reason: str) -> None:
        if self.checked:
            self.conn.execute(ABANDON, (reason, self.job.id))
            self.conn.execute(DROP_CHUNKS, (self.job.id,))

    def _store(self, data: bytes) -> None:
        if not self.checked:
            check_header(data, self.job.fmt)
            j = self.job
            self.conn.execute(START, (j.id, j.org_id, j.fmt, j.mode, j.dry_run, j.requested_by))
            self.checked = True
        if data:
            self.conn.execute(ADD_CHUNK, (self.job.id, self.seq, data))
            self.seq += 1


# --------------------------------------------------------------------------- reading


class _Chunks(io.RawIOBase):
    """The stored file as a byte stream, one chunk in memory at a time."""

    def __init__(self, conn: Connection, job_id: UUID) -> None:
        self._conn, self._job_id = conn, job_id
        self._seq, self._data, self._offset = 0, b"", 0
        self.position = 0  # bytes handed out so far

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._offset >= len(self._data):
            row = self._conn.execute(CHUNK, (self._job_id, self._seq)).fetchone()
            if row is None:
                return 0
            self._data, self._offset, self._seq = bytes(row[0]), 0, self._seq + 1
        n = min(len(buffer), len(self._data) - self._offset)
        buffer[:n] = self._data[self._offset : self._offset + n]
        self._offset += n
        self.position += n
        return n


@dataclass(frozen=True)
class Record:
    line: int
    data: dict[str, Any] | None  # None: unreadable (reason says why)
    reason: str | None = None
    field: str | None = None


def records(stream: _Chunks, fmt: Format) -> Iterator[Record]:
    """The file's records with the line each starts on (1 = the first line)."""
    text = io.TextIOWrapper(
        io.BufferedReader(stream), encoding="utf-8-sig", errors="surrogateescape", newline=""
    )
    if fmt is Format.NDJSON:
        for number, line in enumerate(text, start=1):
            if not line.strip():
                continue
            try:
                value = orjson.loads(line.encode("utf-8", errors="surrogateescape"))
            except orjson.JSONDecodeError as e:
                yield Record(number, None, f"not JSON: {e.msg}")
                continue
            if isinstance(value, dict):
                yield Record(number, value)
            else:
                yield Record(number, None, "not a JSON object")
        return
    reader = csv.reader(text, strict=True)
    header = next(reader, None)
    if header is None:
        return
    end = reader.line_num
    while True:
        start = end + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            end = reader.line_num
            yield Record(start, None, f"malformed CSV: {e}")
            continue
        end = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            reason = f"expected {len(header)} columns, found {len(row)}"
            yield Record(start, None, reason)
            continue
        yield Record(start, nested(header, row))


def nested(header: list[str], row: list[str]) -> dict[str, Any]:
    """Dotted columns as nested objects; empty cells left out; JSON text for lists/maps."""
    out: dict[str, Any] = {}
    for name, raw in zip(header, row, strict=True):
        if name in IGNORED or raw == "":
            continue
        # The export's guard against spreadsheet formulas comes off.
        cell = raw[1:] if raw[:1] == "'" and raw[1:2] in _FORMULA_GUARDED else raw
        value: Any = cell
        if cell[:1] in "[{":
            try:
                value = orjson.loads(cell.encode("utf-8", errors="surrogateescape"))
            except orjson.JSONDecodeError:
                value = cell  # not JSON: validation will say what is wrong with it
        target = out
        *parents, leaf = name.split(".")
        for p in parents:
            target = target.setdefault(p, {})
        target[leaf] = value
    return out


# --------------------------------------------------------------------------- running


@dataclass
class Batch:
    """Valid profiles (line, profile) and the rows refused so far, up to the next commit."""

    profiles: list[tuple[int, Profile]] = field(default_factory=list)
    rejected: list[tuple[int, str | None, str]] = field(default_factory=list)
    read: int = 0


def connect(settings: Settings) -> Connection:
    assert settings.database_url
    return psycopg.connect(settings.database_url, autocommit=True, row_factory=tuple_row)


class Importer:
    """Claims and runs queued import jobs, one at a time, on its own connection."""

    def __init__(self, app: Customers) -> None:
        self.app = app
        self._conn: Connection | None = None

    def _connection(self) -> Connection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self.close()
            self._conn = connect(self.app.settings)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def recover(self) -> None:
        """Queue again the RUNNING jobs whose worker is gone (its advisory lock with it)."""
        conn = self._connection()
        requeue_orphans(conn, RUNNING, REQUEUE, LOCK_SPACE)
        for (jid,) in conn.execute(STALE_UPLOADS).fetchall():
            conn.execute(DROP_CHUNKS, (jid,))

    def run_next(self) -> bool:
        conn = self._connection()
        with conn.transaction():
            row = conn.execute(CLAIM).fetchone()
            if row is None:
                return False
            jid, org, fmt, mode, dry, by, next_line = row
            conn.execute(LOCK_JOB, (jid, LOCK_SPACE))  # session lock: outlives the transaction
        job = Job(jid, org, Format(fmt), Mode(mode), dry, by, next_line)
        try:
            self._run(job)
            outcome: tuple[str, str | None] = ("SUCCEEDED", None)
        except (psycopg.OperationalError, persistence.OperationalError):
            # The database refused or lost a connection: nothing is wrong with the job. It
            # runs again from its checkpoint, here or (if this connection is gone too, taking
            # the lock with it) after another worker's recovery.
            log.warning("import interrupted; it will resume", extra={"job": str(job.id)})
            with contextlib.suppress(psycopg.Error):
                conn.execute(REQUEUE, (job.id,))
                conn.execute(UNLOCK_JOB, (job.id, LOCK_SPACE))
            raise
        except Exception as e:
            log.exception("import failed", extra={"job": str(job.id)})
            outcome = ("FAILED", type(e).__name__)
        conn.execute(FINISH, (*outcome, job.id))
        conn.execute(DROP_CHUNKS, (job.id,))
        conn.execute(UNLOCK_JOB, (job.id, LOCK_SPACE))
        return True

    def _run(self, job: Job) -> None:
        stream = _Chunks(connect(self.app.settings), job.id)
        seen: dict[bytes, int] = {}  # e-mail claim hash -> first line, in this run
        batch = Batch()
        try:
            for record in records(stream, job.fmt):
                if record.line < job.next_line:
                    continue
                batch.read += 1
                self._admit(job, record, batch, seen)
                if len(batch.profiles) + len(batch.rejected) >= BATCH:
                    self._commit(job, batch, record.line + 1, stream.position)
                    batch = Batch()
            self._commit(job, batch, 2**31 - 1, stream.position)
        finally:
            stream._conn.close()

    def _admit(self, job: Job, record: Record, batch: Batch, seen: dict[bytes, int]) -> None:
        if record.data is None:
            batch.rejected.append((record.line, record.field, record.reason or "unreadable"))
            return
        try:
            profile = Profile.model_validate(record.data)
        except ValidationError as e:
            first = e.errors()[0]
            where = field_path(tuple(first.get("loc", ())))
            batch.rejected.append((record.line, where, str(first.get("msg", "invalid"))))
            return
        key = self.app.keys.claim_hash(EMAIL, job.org_id, profile.email)
        if key in seen:
            reason = f"duplicate e-mail in this file (first on line {seen[key]})"
            batch.rejected.append((record.line, "email", reason))
            return
        seen[key] = record.line
        batch.profiles.append((record.line, profile))

    def _commit(self, job: Job, batch: Batch, next_line: int, position: int) -> None:
        """Save the batch's customers with the checkpoint and the rejections, as one."""
        for _ in range(_RETRIES):
            try:
                self._save(job, batch, next_line, position)
                return
            except IntegrityError:
                continue  # an e-mail was registered meanwhile: decide the batch again
        raise RuntimeError("e-mail claims kept changing under the import")

    def _save(self, job: Job, batch: Batch, next_line: int, position: int) -> None:
        org, actor = job.org_id, f"import:{job.id}"
        keys = {line: self.app.keys.claim_hash(EMAIL, org, p.email) for line, p in batch.profiles}
        conn = self._connection()
        owners = dict(conn.execute(OWNERS, (EMAIL, org, list(keys.values()))).fetchall())
        new: list[Customer] = []
        changed: list[Customer] = []
        skipped = 0
        rejected = list(batch.rejected)
        now = datetime.now(UTC)
        for line, profile in batch.profiles:
            owner = owners.get(keys[line])
            if owner is None:
                new.append(Customer.register(org, profile, actor))
            elif job.mode is Mode.CREATE:
                skipped += 1
            else:
                customer: Customer = self.app.repository.get(owner)
                try:
                    customer.update(
                        profile,
                        status=None,
                        actor=actor,
                        actor_is_admin=False,
                        now=now,
                        verification_ttl=timedelta(
                            hours=self.app.settings.email_verification_ttl_hours
                        ),
                    )
                except DomainError as e:
                    rejected.append((line, e.field, e.detail))
                    continue
                if customer.pending_events:
                    changed.append(customer)
                else:
                    skipped += 1
        counts = (len(new), len(changed), skipped, len(rejected))
        statements: list[tuple[Any, Any]] = [
            (CHECKPOINT, (next_line, position, batch.read, *counts, job.id))
        ]
        if rejected:
            lines, fields, reasons = zip(*rejected, strict=True)
            statements.append((REJECT, (job.id, list(lines), list(fields), list(reasons))))
        if job.dry_run or not (new or changed):
            with conn.transaction():
                for query, params in statements:
                    conn.execute(query, params)
            return
        self.app.save(
            *new,
            *changed,
            new_keys=[self.app.keys.create(c.id, org) for c in new],
            claims=[Claim(EMAIL, org, keys[line], c.id) for (line, _), c in _pairs(batch, new)],
            statements=statements,
        )


def _pairs(batch: Batch, new: list[Customer]) -> list[tuple[tuple[int, Profile], Customer]]:
    """The new customers with the (line, profile) each was registered from."""
    by_email = {c.email: c for c in new}
    return [(lp, by_email[lp[1].email]) for lp in batch.profiles if lp[1].email in by_email]


def work(importer: Importer, stop: threading.Event, poll: float = 1.0) -> None:
    """The segments process's import thread: run queued jobs until `stop`."""
    backoff = 0.1
    next_recovery = 0.0
    while not stop.is_set():
        try:
            if time.monotonic() >= next_recovery:
                importer.recover()
                next_recovery = time.monotonic() + 10.0
            if not importer.run_next():
                importer.close()  # idle: give the connection back (imports are rare)
                stop.wait(poll)
            backoff = 0.1
        except Exception:
            log.exception("import worker error; retrying")
            importer.close()
            stop.wait(backoff)
            backoff = min(backoff * 2, 5.0)
