"""Customer imports: CSV (RFC 4180, header row, UTF-8 with or without BOM) or NDJSON, as jobs.

The upload is streamed into `import_chunks` (1 MiB each, never whole in memory) and the job
queued; the segments process runs it: the file is read back chunk by chunk, every record
validated by the rules of `POST /customers`, and the valid ones saved 500 per transaction.
Each transaction also carries the job's checkpoint (the next record's line and the byte it
starts at, the counts) and the rejected rows, so a job interrupted at any point, or yielding
its worker to another organization (write_api/jobs.py), resumes there and counts nothing
twice. A file that is mostly junk stops the job (FAILED) after a bounded number of rows.
E-mail is the key: `create` skips a customer whose e-mail is registered, `upsert` replaces its
profile (unchanged rows count as skipped), so importing a file twice gives the same customers.
`dryRun` validates and counts without saving.

CSV columns are the export's (`GET /customers/export`: nested fields as dotted names,
`location.city`, lists and maps as JSON text; server-owned columns, `id`, `status`, …, are
ignored), the flat names other tools write, or what the caller's mapping says: the column
mapping is decided from the header when the upload starts and kept with the job
(write_api/columns.py). Invalid UTF-8 is rejected row by row (the bytes become lone
surrogates, which the profile's rules refuse), naming the field.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import orjson
import psycopg
from eventsourcing.persistence import IntegrityError
from psycopg.types.json import Jsonb
from pydantic import ValidationError

from domain.access import Principal
from domain.customer import Customer
from domain.errors import Code, DomainError, invalid
from domain.values import Choice, Profile
from eventstore.application import Customers
from eventstore.jobs import CUSTOMER_JOB_COLUMNS, Rejection, Tally, render_customer_job
from eventstore.keys import EMAIL
from eventstore.recorder import OWNERS, Claim
from service.problems import field_path
from service.settings import Settings
from write_api import columns
from write_api.jobs import Job, JobFailed, JobRunner, connect, drop_input

log = logging.getLogger(__name__)

Connection = psycopg.Connection[Any]

CHUNK_BYTES = 1 << 20
BATCH = 500
_RETRIES = 5


class Format(Choice):
    CSV = "csv"
    NDJSON = "ndjson"


class Mode(Choice):
    CREATE = "create"
    UPSERT = "upsert"


# An import's `spec` holds its column mapping: [[column, field or null], …] in the header's
# order (jsonb would not keep an object's).
START = (
    "INSERT INTO customer_jobs (id, org_id, format, mode, dry_run, state, requested_by, spec)"
    " VALUES (%s, %s, %s, %s, %s, 'RECEIVING', %s, %s)"
)
ADD_CHUNK = "INSERT INTO import_chunks (job_id, seq, data) VALUES (%s, %s, %s)"
RECEIVED = (
    "UPDATE customer_jobs SET state = 'QUEUED', bytes = %s, sha256 = %s WHERE id = %s"  # noqa: S608
    f" RETURNING {CUSTOMER_JOB_COLUMNS}"
)
ABANDON = "UPDATE customer_jobs SET state = 'FAILED', error = %s, finished_at = now() WHERE id = %s"
CHUNK = "SELECT data FROM import_chunks WHERE job_id = %s AND seq = %s"


# --------------------------------------------------------------------------- upload


# Spreadsheets write CSV with the separator of their locale; the header's is the file's.
DELIMITERS = (",", ";", "\t", "|")


def delimiter(header_line: str) -> str:
    """The separator of a CSV file, told by its header line: the candidate it holds most of
    (column names hold none of them); a comma when it holds none."""
    counts = {d: header_line.count(d) for d in DELIMITERS}
    best = max(DELIMITERS, key=lambda d: counts[d])
    return best if counts[best] else ","


def check_header(
    first: bytes, fmt: Format, explicit: dict[str, str | None]
) -> list[tuple[str, str | None]] | None:
    """The column mapping (CSV) from what the file's start tells; 422 for an empty file and
    for columns that cannot be used (all of them named, with the fields closest to them)."""
    if not first.strip():
        raise invalid("body", "the file is empty")
    if fmt is not Format.CSV:
        if explicit:
            raise invalid("mapping", "a column mapping is for CSV files (NDJSON has no columns)")
        return None
    text = first.decode("utf-8-sig", errors="surrogateescape")
    line = text.splitlines()[0] if text else ""
    try:
        header = next(csv.reader(io.StringIO(text), delimiter=delimiter(line)), [])
    except csv.Error as e:  # e.g. a bare carriage return inside the header line
        raise invalid("body", f"the header line is not CSV: {e}") from None
    return columns.resolve(header, explicit)


def new_job(org: str, fmt: Format, mode: Mode, dry_run: bool, requested_by: str) -> Job:
    return Job(uuid4(), "import", org, fmt, mode, dry_run, requested_by, 0)


def size_limit(settings: Settings, principal: Principal) -> int:
    """The largest file the caller may import: the largest limit of its roles."""
    return max((settings.max_import_bytes.get(r, 0) for r in principal.roles), default=0)


def too_large(limit: int) -> DomainError:
    return DomainError(Code.TOO_LARGE, f"an import file may have at most {limit} bytes")


@dataclass
class Upload:
    """An upload being stored: the caller feeds it the body's pieces, then finishes it (or
    abandons it). The job row is written with the first chunk, after the header passed; a
    body over `limit` bytes is refused (413) as soon as it is."""

    conn: Connection
    job: Job
    limit: int
    explicit: dict[str, str | None] = field(default_factory=dict)  # the caller's mapping
    seq: int = 0
    size: int = 0
    checked: bool = False
    buffer: bytearray = field(default_factory=bytearray)
    digest: Any = field(default_factory=hashlib.sha256)

    def feed(self, piece: bytes) -> None:
        if self.size + len(piece) > self.limit:
            raise too_large(self.limit)
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
            pairs = check_header(data, Format(str(self.job.fmt)), self.explicit)
            spec = Jsonb({"mapping": pairs}) if pairs is not None else None
            j = self.job
            self.conn.execute(
                START, (j.id, j.org_id, j.fmt, j.mode, j.dry_run, j.requested_by, spec)
            )
            self.checked = True
        if data:
            self.conn.execute(ADD_CHUNK, (self.job.id, self.seq, data))
            self.seq += 1


# --------------------------------------------------------------------------- reading


class _File:
    """An import's stored file read back as lines from byte `position`, where line `line`
    starts; one chunk in memory at a time. `position` and `line` follow the lines handed out,
    so once a record is read they say where the next one starts: a job resumes there."""

    def __init__(self, conn: Connection, job_id: UUID, position: int = 0, line: int = 1) -> None:
        self._conn, self._job_id = conn, job_id
        self.position = position
        self.line = line

    def lines(self) -> Iterator[str]:
        """Lines with their endings (LF, CRLF or CR, as text files in universal-newline mode
        without translation); invalid UTF-8 as lone surrogates; the BOM dropped."""
        seq, skip = divmod(self.position, CHUNK_BYTES)  # chunks but the last are CHUNK_BYTES
        rest = b""
        while True:
            row = self._conn.execute(CHUNK, (self._job_id, seq)).fetchone()
            seq += 1
            pieces = (rest + (bytes(row[0])[skip:] if row else b"")).splitlines(keepends=True)
            skip = 0
            # The last piece may go on in the next chunk (a CR may be half of a CRLF).
            rest = pieces.pop() if row is not None and pieces else b""
            for piece in pieces:
                text = piece.decode("utf-8", errors="surrogateescape")
                if self.position == 0:
                    text = text.removeprefix("\ufeff")
                self.position += len(piece)
                self.line += 1
                yield text
            if row is None:
                return


@dataclass(frozen=True)
class Record:
    line: int
    data: dict[str, Any] | None  # None: unreadable (reason says why)
    reason: str | None = None
    field: str | None = None


def records(
    file: _File,
    fmt: Format,
    header: tuple[list[str], str] | None = None,
    mapping: list[tuple[str, str | None]] | None = None,
) -> Iterator[Record | None]:
    """The file's records from where `file` stands, with the line each starts on (1 = the
    first line); None for a blank one, which is no record, so that the caller sees the file
    go by even when it is nothing but blank lines. A CSV's header (columns and separator) is
    its first line, unless given (resuming mid-file); its cells go where `mapping` (the
    upload's, write_api/columns.py) says, by default where the columns' names say."""
    lines = file.lines()
    if fmt is Format.NDJSON:
        for text in lines:
            if not text.strip():
                yield None
                continue
            number = file.line - 1
            try:
                value = orjson.loads(text.encode("utf-8", errors="surrogateescape"))
            except orjson.JSONDecodeError as e:
                yield Record(number, None, f"not JSON: {e.msg}")
                continue
            if isinstance(value, dict):
                yield Record(number, value)
            else:
                yield Record(number, None, "not a JSON object")
        return
    if header is None:
        first = next(lines, None)
        if first is None:
            return
        header = parse_header(first)
    names, separator = header
    layout = columns.Layout.of(names, columns.resolve(names, {}) if mapping is None else mapping)
    reader = csv.reader(lines, delimiter=separator, strict=True)
    while True:
        start = file.line
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            yield Record(start, None, f"malformed CSV: {e}")
            continue
        if not any(cell.strip() for cell in row):
            yield None
            continue
        if len(row) != len(names):
            reason = f"expected {len(names)} columns, found {len(row)}"
            yield Record(start, None, reason)
            continue
        yield Record(start, layout.body(row))


def parse_header(line: str) -> tuple[list[str], str]:
    """A CSV file's columns and separator, from its first line."""
    separator = delimiter(line)
    return next(csv.reader([line], delimiter=separator, strict=True), []), separator


def csv_header(conn: Connection, job_id: UUID) -> tuple[list[str], str]:
    return parse_header(next(_File(conn, job_id).lines(), ""))


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
    """Import the job's file from its checkpoint to the end (or to the end of its turn)."""
    app = runner.app
    conn = connect(app.settings)
    fmt = Format(str(job.fmt))
    try:
        header, skip_before = None, 0
        if job.resume_offset is not None:
            file = _File(conn, job.id, job.resume_offset, max(job.next_line, 1))
            if fmt is Format.CSV and job.next_line > 1:
                header = csv_header(conn, job.id)
        else:  # a checkpoint from before resume offsets: read from the start up to it
            file, skip_before = _File(conn, job.id), job.next_line
        seen: dict[bytes, int] = {}  # e-mail claim hash -> first line, in this turn
        read, failed = job.rows_read, job.failed
        batch, batch_from = Batch(), file.position
        stored = (job.spec or {}).get("mapping")
        mapping = [(c, t) for c, t in stored] if stored is not None else None
        for record in records(file, fmt, header, mapping):
            if record is not None and record.line >= skip_before:
                batch.tally.read += 1
                _admit(app, job, record, batch, seen)
            # A batch ends at BATCH records, or at a chunk's worth of file however few records
            # it held (blank lines), so that every stretch of file is checkpointed and checked.
            if batch.size >= BATCH or file.position - batch_from >= CHUNK_BYTES:
                saved = _commit(runner, job, batch, file.line, file.position)
                read, failed = read + saved.read, failed + len(saved.rejected)
                _check_rejections(app.settings, read, failed)
                runner.between_batches(job)
                batch, batch_from = Batch(), file.position
        _commit(runner, job, batch, 2**31 - 1, file.position)
    finally:
        conn.close()


def _check_rejections(settings: Settings, read: int, rejected: int) -> None:
    """Stop an import that is mostly junk, or whose junk has no end: its report would only
    grow, and its worker is another organization's too."""
    most = settings.import_max_rejected_rows
    if rejected > most:
        raise JobFailed(f"stopped after {rejected} rejected rows (at most {most} are accepted)")
    ratio = settings.import_max_rejected_ratio
    if read >= settings.import_ratio_min_rows and rejected > ratio * read:
        raise JobFailed(
            f"stopped: {rejected} of the first {read} rows were rejected"
            f" (more than {ratio:.0%}); is it the right file?"
        )


def _admit(app: Customers, job: Job, record: Record, batch: Batch, seen: dict[bytes, int]) -> None:
    if record.data is None:
        batch.reject(record.line, record.field, record.reason or "unreadable")
        return
    try:
        profile = Profile.model_validate(record.data)
    except ValidationError as e:
        # Every error of the row at once: fixing one must not reveal the next.
        found = [(field_path(tuple(err.get("loc", ()))), str(err.get("msg"))) for err in e.errors()]
        fields = ", ".join(dict.fromkeys(where for where, _ in found))
        reasons = "; ".join(f"{where}: {message}" for where, message in found)
        batch.reject(record.line, fields, reasons if len(found) > 1 else found[0][1])
        return
    key = app.keys.claim_hash(EMAIL, job.org_id, profile.email)
    if key in seen:
        reason = f"duplicate e-mail in this file (first on line {seen[key]})"
        batch.reject(record.line, "email", reason)
        return
    seen[key] = record.line
    batch.profiles.append((record.line, profile))


def _commit(runner: JobRunner, job: Job, batch: Batch, next_line: int, position: int) -> Tally:
    """Save the batch's customers with the checkpoint and the rejections, as one; what was
    saved."""
    for _ in range(_RETRIES):
        try:
            return _save(runner, job, batch, next_line, position)
        except IntegrityError:
            continue  # an e-mail was registered meanwhile: decide the batch again
    raise RuntimeError("e-mail claims kept changing under the import")


def _save(runner: JobRunner, job: Job, batch: Batch, next_line: int, position: int) -> Tally:
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
    runner.commit(job, [*new, *changed], tally, next_line, position, **side_writes)
    return tally
