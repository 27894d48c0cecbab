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

import csv
import hashlib
import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any
from uuid import UUID, uuid4

import orjson
import psycopg
from eventsourcing.persistence import IntegrityError
from pydantic import ValidationError

from domain.customer import Customer
from domain.errors import DomainError, invalid
from domain.values import Profile
from eventstore.application import Customers
from eventstore.jobs import CUSTOMER_JOB_COLUMNS, Rejection, Tally, render_customer_job
from eventstore.recorder import OWNERS, Claim
from service.problems import field_path
from write_api.customers import EMAIL
from write_api.jobs import Job, JobRunner, connect, drop_input

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
    "INSERT INTO customer_jobs (id, org_id, format, mode, dry_run, state, requested_by)"
    " VALUES (%s, %s, %s, %s, %s, 'RECEIVING', %s)"
)
ADD_CHUNK = "INSERT INTO import_chunks (job_id, seq, data) VALUES (%s, %s, %s)"
RECEIVED = (
    "UPDATE customer_jobs SET state = 'QUEUED', bytes = %s, sha256 = %s WHERE id = %s"  # noqa: S608
    f" RETURNING {CUSTOMER_JOB_COLUMNS}"
)
ABANDON = "UPDATE customer_jobs SET state = 'FAILED', error = %s, finished_at = now() WHERE id = %s"
CHUNK = "SELECT data FROM import_chunks WHERE job_id = %s AND seq = %s"


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


def new_job(org: str, fmt: Format, mode: Mode, dry_run: bool, requested_by: str) -> Job:
    return Job(uuid4(), "import", org, fmt, mode, dry_run, requested_by, 0)


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
        return render_customer_job(tuple(row.fetchone() or ()))

    def abandon(self, reason: str) -> None:
        if self.checked:
            self.conn.execute(ABANDON, (reason, self.job.id))
            drop_input(self.conn, self.job.id)

    def _store(self, data: bytes) -> None:
        if not self.checked:
            check_header(data, Format(str(self.job.fmt)))
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
    """Valid profiles (line, profile) and the outcome so far, up to the next commit."""

    profiles: list[tuple[int, Profile]] = field(default_factory=list)
    tally: Tally = field(default_factory=Tally)

    def reject(self, line: int, field: str | None, reason: str) -> None:
        self.tally.rejected.append(Rejection(line, None, field, reason))

    @property
    def size(self) -> int:
        return len(self.profiles) + len(self.tally.rejected)


def run(runner: JobRunner, job: Job) -> None:
    """Import the job's file from its checkpoint to the end."""
    app = runner.app
    stream = _Chunks(connect(app.settings), job.id)
    seen: dict[bytes, int] = {}  # e-mail claim hash -> first line, in this run
    batch = Batch()
    try:
        for record in records(stream, Format(str(job.fmt))):
            if record.line < job.next_line:
                continue
            batch.tally.read += 1
            _admit(app, job, record, batch, seen)
            if batch.size >= BATCH:
                _commit(runner, job, batch, record.line + 1, stream.position)
                batch = Batch()
        _commit(runner, job, batch, 2**31 - 1, stream.position)
    finally:
        stream._conn.close()


def _admit(app: Customers, job: Job, record: Record, batch: Batch, seen: dict[bytes, int]) -> None:
    if record.data is None:
        batch.reject(record.line, record.field, record.reason or "unreadable")
        return
    try:
        profile = Profile.model_validate(record.data)
    except ValidationError as e:
        first = e.errors()[0]
        where = field_path(tuple(first.get("loc", ())))
        batch.reject(record.line, where, str(first.get("msg", "invalid")))
        return
    key = app.keys.claim_hash(EMAIL, job.org_id, profile.email)
    if key in seen:
        reason = f"duplicate e-mail in this file (first on line {seen[key]})"
        batch.reject(record.line, "email", reason)
        return
    seen[key] = record.line
    batch.profiles.append((record.line, profile))


def _commit(runner: JobRunner, job: Job, batch: Batch, next_line: int, position: int) -> None:
    """Save the batch's customers with the checkpoint and the rejections, as one."""
    for _ in range(_RETRIES):
        try:
            _save(runner, job, batch, next_line, position)
            return
        except IntegrityError:
            continue  # an e-mail was registered meanwhile: decide the batch again
    raise RuntimeError("e-mail claims kept changing under the import")


def _save(runner: JobRunner, job: Job, batch: Batch, next_line: int, position: int) -> None:
    app, org, actor = runner.app, job.org_id, f"import:{job.id}"
    keys = {line: app.keys.claim_hash(EMAIL, org, p.email) for line, p in batch.profiles}
    conn = runner.conn
    owners = dict(conn.execute(OWNERS, (list(keys.values()), EMAIL, org)).fetchall())
    new: list[Customer] = []
    changed: list[Customer] = []
    tally = replace(batch.tally, rejected=list(batch.tally.rejected))
    now = datetime.now(UTC)
    ttl = timedelta(hours=app.settings.email_verification_ttl_hours)
    for line, profile in batch.profiles:
        owner = owners.get(keys[line])
        if owner is None:
            new.append(Customer.register(org, profile, actor))
        elif job.mode == Mode.CREATE:
            tally.skipped += 1
        else:
            customer: Customer = app.repository.get(owner)
            try:
                customer.update(
                    profile,
                    status=None,
                    actor=actor,
                    actor_is_admin=False,
                    now=now,
                    verification_ttl=ttl,
                )
            except DomainError as e:
                tally.rejected.append(Rejection(line, None, e.field, e.detail))
                continue
            if customer.pending_events:
                changed.append(customer)
            else:
                tally.skipped += 1
    tally.created, tally.updated = len(new), len(changed)
    side_writes: dict[str, Any] = {}
    if not job.dry_run:
        by_email = {c.email: c for c in new}
        side_writes["new_keys"] = [app.keys.create(c.id, org) for c in new]
        side_writes["claims"] = [
            Claim(EMAIL, org, keys[line], by_email[p.email].id)
            for line, p in batch.profiles
            if p.email in by_email
        ]
    statements = tally.statements(job.id, next_line, position)
    runner.commit(job, [*new, *changed], statements, **side_writes)
