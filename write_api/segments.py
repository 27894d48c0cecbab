"""Segment use cases: definitions with organization-unique names and a referenced rule."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from domain.errors import Code, DomainError
from domain.segment import Segment, SegmentDefinition, SegmentStatus, name_key
from eventstore.application import Customers
from eventstore.recorder import Claim, Release
from service.auth import Permission, Principal
from service.rules_engine import RulesEngine
from write_api.commands import Commands, Outcome

SEGMENT = "segment"  # unique_claims scope of segment names


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
        self.rules.check_rule(definition.rule_id)
        segment = Segment.define(principal.org, definition, principal.sub)
        token = self.save(segment, claims=[self._claim(principal.org, segment.name, segment.id)])
        return Outcome(segment.public(), segment.version, token, status=201)

    def update(
        self,
        principal: Principal,
        segment_id: UUID,
        definition: SegmentDefinition,
        status: SegmentStatus | None,
        if_match: int | None,
    ) -> Outcome:
        principal.require(Permission.SEGMENTS)

        def decide(segment: Segment) -> dict[str, Any]:
            previous = segment.name
            if definition.rule_id != segment.definition["ruleId"]:
                self.rules.check_rule(definition.rule_id)
            segment.redefine(definition, principal.sub)
            if status is not None:
                segment.set_status(status, principal.sub)
            if name_key(previous) == name_key(segment.name):
                return {}
            return {
                "releases": [self._release(principal.org, previous)],
                "claims": [self._claim(principal.org, segment.name, segment.id)],
            }

        return self.command(principal, segment_id, if_match, decide)

    def delete(self, principal: Principal, segment_id: UUID, if_match: int | None) -> Outcome:
        principal.require(Permission.SEGMENTS)

        def decide(segment: Segment) -> dict[str, Any]:
            segment.delete(principal.sub)
            return {"releases": [self._release(principal.org, segment.name)]}

        return self.command(principal, segment_id, if_match, decide)

    def _claim(self, org: str, name: str, segment_id: UUID) -> Claim:
        return Claim(
            SEGMENT, org, self.app.keys.claim_hash(SEGMENT, org, name_key(name)), segment_id
        )

    def _release(self, org: str, name: str) -> Release:
        return Release(SEGMENT, org, self.app.keys.claim_hash(SEGMENT, org, name_key(name)))
