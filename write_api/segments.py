"""Segment use cases: definitions with organization-unique names and a referenced rule,
calculation jobs, and the explicit members of STATIC segments."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from eventsourcing.persistence import IntegrityError
from psycopg.rows import tuple_row

from domain.access import Permission, Principal
from domain.criteria import criteria_reads
from domain.errors import Code, DomainError, invalid
from domain.membership import Change, Reason, events
from domain.segment import Segment, SegmentDefinition, SegmentKind, SegmentStatus, name_key
from eventstore.application import Customers
from eventstore.jobs import render_job
from eventstore.recorder import OWNERS, Claim, JobRequest, Release
from service.rules_engine import RulesEngine
from write_api.background import calculation
from write_api.background.membership import append, stream_versions
from write_api.commands import Commands, Outcome

SEGMENT = "segment"  # unique_claims scope of segment names
# Which of the given customers are live customers of the organization, and which of them
# are members of the segment now.
_LIVE_CUSTOMERS = (
    "SELECT id FROM segment_facts WHERE org_id = %s AND id = ANY(%s) AND status <> 'DELETED'"
)
_MEMBERS_AMONG = (
    "SELECT customer_id FROM segment_members WHERE segment_id = %s AND customer_id = ANY(%s)"
)
_RETRIES = 5


def _require_visible(principal: Principal, definition: SegmentDefinition, field: str) -> None:
    if definition.criteria is not None:
        principal.require_visible(criteria_reads(definition.criteria, field))


class SegmentCommands(Commands[Segment]):
    kind = "segment"
    aggregate_type = Segment
    claim_conflict = DomainError(
        Code.CONFLICT, "a segment with this name already exists", field="name"
    )

    def __init__(self, app: Customers, rules: RulesEngine) -> None:
        super().__init__(app)
        self.rules = rules

    def create(self, principal: Principal, definition: SegmentDefinition) -> Outcome:
        principal.require(Permission.SEGMENTS)
        _require_visible(principal, definition, "criteria")
        if definition.rule_id is not None:
            self.rules.check_rule(definition.rule_id)
        segment = Segment.define(principal.org, definition, principal.sub)
        jobs = self._recalculation(principal, segment)
        token = self.save(
            segment,
            claims=[self._claim(principal.org, segment.name, segment.id)],
            jobs=jobs,
        )
        return Outcome(self._shown(segment, jobs), segment.version, token, created=True)

    def update(
        self,
        principal: Principal,
        segment_id: UUID,
        definition: SegmentDefinition,
        status: SegmentStatus | None,
        if_match: int | None,
    ) -> Outcome:
        principal.require(Permission.SEGMENTS)
        _require_visible(principal, definition, "criteria")

        jobs: list[JobRequest] = []

        def decide(segment: Segment) -> dict[str, Any]:
            previous = segment.name
            before = _membership_inputs(segment)
            if definition.rule_id not in (None, segment.definition.get("ruleId")):
                self.rules.check_rule(definition.rule_id)
            segment.redefine(definition, principal.sub)
            if status is not None:
                segment.set_status(status, principal.sub)
            jobs[:] = []
            if _membership_inputs(segment) != before:
                jobs.extend(self._recalculation(principal, segment))
            writes: dict[str, Any] = {"jobs": list(jobs)}
            if name_key(previous) != name_key(segment.name):
                writes["releases"] = [self._release(principal.org, previous)]
                writes["claims"] = [self._claim(principal.org, segment.name, segment.id)]
            return writes

        outcome = self.command(principal, segment_id, if_match, decide)
        if jobs and outcome.body is not None:
            return replace(outcome, body={**outcome.body, "status": SegmentStatus.CALCULATING})
        return outcome

    def import_definitions(
        self, principal: Principal, definitions: Sequence[SegmentDefinition], *, upsert: bool
    ) -> list[dict[str, Any]]:
        """Create each definition (as GET /customers/segments/export writes them); one whose
        name the organization already uses is skipped, or with `upsert` redefined. Checked
        whole before anything is created: a name given twice, an unknown rule."""
        principal.require(Permission.SEGMENTS)
        keys = [name_key(d.name) for d in definitions]
        for i, key in enumerate(keys):
            if key in keys[:i]:
                raise invalid(f"segments.{i}.name", "the name is given twice in this document")
        checked: set[str] = set()
        for i, definition in enumerate(definitions):
            _require_visible(principal, definition, f"segments.{i}.criteria")
            if definition.rule_id is None or definition.rule_id in checked:
                continue
            try:
                self.rules.check_rule(definition.rule_id)
            except DomainError as e:
                if e.code != Code.INVALID:
                    raise
                raise invalid(f"segments.{i}.ruleId", e.detail) from None
            checked.add(definition.rule_id)
        owners = self._owners(principal.org, [d.name for d in definitions])
        results = []
        for definition in definitions:
            owner = owners.get(name_key(definition.name))
            if owner is None:
                created = self.create(principal, definition)
                outcome, shown = "created", created.body
            elif upsert:
                before = self.load(principal, owner).version
                updated = self.update(principal, owner, definition, None, None)
                outcome = "updated" if updated.version != before else "unchanged"
                shown = updated.body
            else:
                outcome, shown = "skipped", {"id": str(owner)}
            assert shown is not None
            results.append({"name": definition.name, "outcome": outcome, "id": shown["id"]})
        return results

    def delete(self, principal: Principal, segment_id: UUID, if_match: int | None) -> Outcome:
        principal.require(Permission.SEGMENTS)

        def decide(segment: Segment) -> dict[str, Any]:
            segment.delete(principal.sub)
            return {"releases": [self._release(principal.org, segment.name)]}

        return self.command(principal, segment_id, if_match, decide)

    def calculate(self, principal: Principal, segment_id: UUID) -> dict[str, Any]:
        """Queue a whole-base calculation; the job (to poll) as the API shows it."""
        principal.require(Permission.SEGMENTS)
        segment = self.load(principal, segment_id)
        if segment.deleted:
            raise DomainError(Code.NOT_FOUND, f"segment {segment_id} not found")
        return calculation.queue(
            self.app, principal.org, segment_id, Reason.CALCULATION, principal.sub
        )

    def cancel(self, principal: Principal, segment_id: UUID, job_id: UUID) -> dict[str, Any]:
        """Cancel a queued job at once, a running one before it commits (then it changed
        nothing); a finished job stays as it ended."""
        principal.require(Permission.SEGMENTS)
        with (
            self.app.datastore.get_connection() as conn,
            conn.cursor(row_factory=tuple_row) as cur,
        ):
            row = cur.execute(calculation.CANCEL, (principal.org, segment_id, job_id)).fetchone()
        if row is None:
            raise DomainError(Code.NOT_FOUND, f"job {job_id} not found")
        return render_job(row)

    def assign(
        self,
        principal: Principal,
        segment_id: UUID,
        add: Sequence[UUID],
        remove: Sequence[UUID],
    ) -> dict[str, Any]:
        """Add and remove members of a STATIC segment (reason "manual"). Adding a member or
        removing a non-member is a no-op; every added id must be a live customer of the
        organization (422 naming the first that is not)."""
        principal.require(Permission.SEGMENTS)
        check_assignable(self.load(principal, segment_id))
        overlap = set(add) & set(remove)
        if overlap:
            raise DomainError(
                Code.INVALID, "a customer cannot be added and removed at once", field="remove"
            )
        for _ in range(_RETRIES):
            live, members, version = membership_snapshot(
                self.app, principal.org, segment_id, [*add, *remove]
            )
            for i, cid in enumerate(add):
                if cid not in live:
                    raise DomainError(Code.INVALID, f"customer {cid} not found", field=f"add.{i}")
            change = Change(
                principal.org,
                segment_id,
                [str(c) for c in dict.fromkeys(add) if c not in members],
                [str(c) for c in dict.fromkeys(remove) if c in members],
                Reason.MANUAL,
                principal.sub,
            )
            try:
                append(self.app, [change], list(events(change, version, datetime.now(UTC))))
            except IntegrityError:
                continue
            return {"joined": len(change.joined), "left": len(change.left)}
        raise DomainError(Code.CONFLICT, "the segment's members are being changed concurrently")

    def _recalculation(self, principal: Principal, segment: Segment) -> list[JobRequest]:
        """The automatic recalculation of an active dynamic segment whose criteria (or
        status) changed, queued with the change."""
        if segment.definition["kind"] != SegmentKind.DYNAMIC:
            return []
        if segment.status != SegmentStatus.ACTIVE:
            return []
        return [
            JobRequest(
                uuid.uuid4(), principal.org, segment.id, Reason.CRITERIA_CHANGE, principal.sub
            )
        ]

    @staticmethod
    def _shown(segment: Segment, jobs: Sequence[JobRequest]) -> dict[str, Any]:
        body = segment.public()
        return {**body, "status": SegmentStatus.CALCULATING} if jobs else body

    def _claim(self, org: str, name: str, segment_id: UUID) -> Claim:
        return Claim(
            SEGMENT, org, self.app.keys.claim_hash(SEGMENT, org, name_key(name)), segment_id
        )

    def _owners(self, org: str, names: Sequence[str]) -> dict[str, UUID]:
        """The segments holding these names now, by name key."""
        hashes = {self.app.keys.claim_hash(SEGMENT, org, name_key(n)): name_key(n) for n in names}
        with (
            self.app.datastore.get_connection() as conn,
            conn.cursor(row_factory=tuple_row) as cur,
        ):
            rows = cur.execute(OWNERS, (list(hashes), SEGMENT, org)).fetchall()
        return {hashes[bytes(key)]: owner for key, owner in rows}

    def _release(self, org: str, name: str) -> Release:
        return Release(SEGMENT, org, self.app.keys.claim_hash(SEGMENT, org, name_key(name)))


def check_assignable(segment: Segment) -> None:
    """Members are assigned by hand to live STATIC segments only."""
    if segment.deleted:
        raise DomainError(Code.NOT_FOUND, f"segment {segment.id} not found")
    if segment.definition["kind"] != SegmentKind.STATIC:
        raise DomainError(
            Code.CONFLICT, "members of a DYNAMIC segment follow its criteria", field="kind"
        )


def membership_snapshot(
    app: Customers, org: str, segment_id: UUID, ids: Sequence[UUID]
) -> tuple[set[UUID], set[UUID], int]:
    """Which of `ids` are live customers of `org`, which are members of the segment, and
    the membership stream's version, read in one snapshot (a change built on them is
    appended at that version, so a concurrent change makes it fail and be decided again)."""
    with app.datastore.transaction(commit=False) as cur:
        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        live = {r["id"] for r in cur.execute(_LIVE_CUSTOMERS, (org, list(ids)))}
        members = {r["customer_id"] for r in cur.execute(_MEMBERS_AMONG, (segment_id, list(ids)))}
        version = stream_versions(cur.connection, [segment_id])[segment_id]
    return live, members, version


def _membership_inputs(segment: Segment) -> tuple[Any, ...]:
    """What a segment's members depend on: a change of it queues a recalculation."""
    return (segment.definition["criteria"], segment.definition.get("purpose"), segment.status)
