"""Bulk operations as jobs: a patch, a lifecycle deletion or a static segment's membership
applied to selected customers (ids, list filters or a segment's members).

The selection is resolved once, when the job first runs (ids: when it is queued), into
`job_targets`: the job then works through that fixed list in batches of 500, each customer
decided by its own aggregate under the rules of the single-customer command, and each batch
saved with the job's checkpoint and its per-customer failures in one transaction. A failure
(a rule, a customer gone) is reported and the job goes on; a restarted job resumes after the
last committed batch, and a job runs on the targets it resolved, not on a new selection.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any
from uuid import UUID, uuid4

from eventsourcing.persistence import IntegrityError
from psycopg import sql
from psycopg.rows import tuple_row
from psycopg.types.json import Jsonb

from domain.access import Principal
from domain.bulk import Action, ProfilePatch, patched
from domain.customer import Customer
from domain.errors import Code, DomainError
from domain.membership import Change, Reason, events
from domain.segment import Segment
from domain.selection import CustomerSelection, filter_params, filter_reads
from domain.values import CustomerStatus
from eventstore.jobs import CUSTOMER_JOB_COLUMNS, Rejection, Tally, render_customer_job
from projections import segments as segments_view
from projections.customers import VIEW, selection_sql
from write_api.customers import CustomerCommands
from write_api.jobs import Connection, Job, JobFailed, JobRunner
from write_api.segments import check_assignable, membership_snapshot

BATCH = 500
_RETRIES = 5


class Kind(StrEnum):
    UPDATE = "bulk_update"
    DELETE = "bulk_delete"
    SEGMENTS = "bulk_segments"


QUEUE = (
    "INSERT INTO customer_jobs"  # noqa: S608
    " (id, org_id, kind, dry_run, state, requested_by, spec, total, next_line)"
    " VALUES (%s, %s, %s, %s, 'QUEUED', %s, %s, %s, %s)"
    f" RETURNING {CUSTOMER_JOB_COLUMNS}"
)
ADD_TARGETS = (
    "INSERT INTO job_targets (job_id, seq, customer_id)"
    " SELECT %s, t.seq, t.id FROM unnest(%s::uuid[]) WITH ORDINALITY AS t(id, seq)"
)
RESOLVE = (
    "INSERT INTO job_targets (job_id, seq, customer_id)"
    " SELECT %(job)s, row_number() OVER (ORDER BY id), id FROM {view}"
    " WHERE org_id = %(org)s AND status <> 'DELETED' {selection}"
)
RESOLVED = (
    "UPDATE customer_jobs SET next_line = 1,"
    " total = (SELECT count(*) FROM job_targets WHERE job_id = %s) WHERE id = %s"
)
TARGETS = (
    "SELECT seq, customer_id FROM job_targets WHERE job_id = %s AND seq >= %s ORDER BY seq LIMIT %s"
)


# --------------------------------------------------------------------------- queueing


def queue(
    conn: Connection,
    principal: Principal,
    kind: Kind,
    selection: CustomerSelection,
    details: dict[str, Any],
    *,
    dry_run: bool,
) -> dict[str, Any]:
    """Queue a bulk job (the caller checked its permission); the job as the API shows it.
    `details` (the patch, the segment and action) go into the job's spec as given."""
    spec: dict[str, Any] = {**details}
    ids: list[UUID] | None = None
    if selection.ids is not None:
        ids = list(dict.fromkeys(selection.ids))
        spec["selection"] = {"ids": len(ids)}
    elif selection.filters is not None:
        principal.require_visible(filter_reads(selection.filters, "selection.filters"))
        spec["selection"] = {"filters": filter_params(selection.filters, "selection.filters")}
    else:
        found = conn.execute(segments_view.EXISTS, (principal.org, selection.segment_id))
        if found.fetchone() is None:
            raise DomainError(
                Code.NOT_FOUND,
                f"segment {selection.segment_id} not found",
                field="selection.segmentId",
            )
        spec["selection"] = {"segmentId": str(selection.segment_id)}
    job_id = uuid4()
    with conn.transaction(), conn.cursor(row_factory=tuple_row) as cur:
        # Ids need no resolving: the targets are written now and the job starts at the first.
        total, next_line = (len(ids), 1) if ids is not None else (None, 0)
        row = cur.execute(
            QUEUE,
            (job_id, principal.org, kind, dry_run, principal.sub, Jsonb(spec), total, next_line),
        ).fetchone()
        if ids is not None:
            cur.execute(ADD_TARGETS, (job_id, ids))
    assert row is not None
    return render_customer_job(tuple(row))


# --------------------------------------------------------------------------- running


def run(runner: JobRunner, job: Job) -> None:
    """Apply the job to its targets from its checkpoint to the end."""
    assert job.spec is not None
    conn = runner.conn
    next_line = job.next_line
    if next_line == 0:
        _resolve(conn, job)
        next_line = 1
    apply = {Kind.UPDATE: _update, Kind.DELETE: _delete, Kind.SEGMENTS: _assign}[Kind(job.kind)]
    targets = conn.execute(TARGETS, (job.id, next_line, BATCH)).fetchall()
    while targets:
        next_line = targets[-1][0] + 1
        for _ in range(_RETRIES):
            try:
                apply(runner, job, targets, next_line)
                break
            except IntegrityError:
                continue  # a customer or the segment moved on meanwhile: decide again
        else:
            raise JobFailed("the selected customers kept changing under the job")
        targets = conn.execute(TARGETS, (job.id, next_line, BATCH)).fetchall()
        if targets:
            runner.between_batches(job)


def _resolve(conn: Connection, job: Job) -> None:
    """The selection's customers as the job's numbered targets, and the job's total."""
    assert job.spec is not None
    where, params = selection_sql(job.spec["selection"], "id")
    query = sql.SQL(RESOLVE).format(view=sql.Identifier(VIEW), selection=where)
    with conn.transaction():
        conn.execute(query, {**params, "job": job.id, "org": job.org_id})
        conn.execute(RESOLVED, (job.id, job.id))


def _update(runner: JobRunner, job: Job, targets: Sequence[Any], next_line: int) -> None:
    assert job.spec is not None
    patch = ProfilePatch.model_validate(job.spec["patch"])
    admin = bool(job.spec["admin"])  # the requester's role decides status transitions
    now = datetime.now(UTC)
    ttl = timedelta(hours=runner.app.settings.email_verification_ttl_hours)

    def decide(customer: Customer) -> None:
        customer.update(
            patched(customer.profile, patch),
            status=patch.status,
            actor=_actor(job),
            actor_is_admin=admin,
            now=now,
            verification_ttl=ttl,
        )

    changed, tally = _decide_each(runner, job, targets, decide)
    runner.commit(job, changed, tally, next_line)


def _delete(runner: JobRunner, job: Job, targets: Sequence[Any], next_line: int) -> None:
    def decide(customer: Customer) -> None:
        if customer.status != CustomerStatus.DELETED:  # already deleted: nothing to do
            customer.delete(actor=_actor(job))

    changed, tally = _decide_each(runner, job, targets, decide)
    commands = CustomerCommands(runner.app)
    releases = [commands.email_release(job.org_id, c.email) for c in changed]
    runner.commit(job, changed, tally, next_line, releases=releases)


def _decide_each(
    runner: JobRunner, job: Job, targets: Sequence[Any], decide: Callable[[Customer], None]
) -> tuple[list[Customer], Tally]:
    """Each target customer loaded and decided on; failures reported, not raised."""
    commands = CustomerCommands(runner.app)
    principal = Principal(sub=_actor(job), org=job.org_id, roles=frozenset())
    tally = Tally(read=len(targets))
    changed: list[Customer] = []
    for seq, customer_id in targets:
        try:
            customer = commands.load(principal, customer_id)
            decide(customer)
        except DomainError as e:
            tally.rejected.append(Rejection(seq, customer_id, e.field, e.detail))
            continue
        if customer.pending_events:
            changed.append(customer)
        else:
            tally.skipped += 1
    tally.updated = len(changed)
    return changed, tally


def _assign(runner: JobRunner, job: Job, targets: Sequence[Any], next_line: int) -> None:
    """Add or remove the targets as members of the job's STATIC segment."""
    assert job.spec is not None
    app = runner.app
    segment_id = UUID(job.spec["segmentId"])
    segment: Any = app.repository.get(segment_id)
    assert isinstance(segment, Segment) and segment.org_id == job.org_id
    try:
        check_assignable(segment)
    except DomainError as e:
        raise JobFailed(e.detail) from None
    ids = [customer_id for _, customer_id in targets]
    live, members, version = membership_snapshot(app, job.org_id, segment_id, ids)
    adding = job.spec["action"] == Action.ADD
    tally = Tally(read=len(targets))
    moved: list[str] = []
    for seq, customer_id in targets:
        member = customer_id in members
        # A member deleted since it joined can still be removed; only live ones are added.
        if customer_id not in live and not (member and not adding):
            tally.rejected.append(Rejection(seq, customer_id, None, "customer not found"))
        elif member != adding:
            moved.append(str(customer_id))
        else:
            tally.skipped += 1  # already a member / not a member
    tally.updated = len(moved)
    joined, left = (moved, []) if adding else ([], moved)
    change = Change(job.org_id, segment_id, joined, left, Reason.MANUAL, _actor(job))
    new = list(events(change, version, datetime.now(UTC))) if change else []
    runner.commit(job, new, tally, next_line, membership=[change])


def _actor(job: Job) -> str:
    return f"bulk:{job.id}"
