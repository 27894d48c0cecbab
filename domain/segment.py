"""The Segment aggregate: a named, rule-backed set of customers of one organization."""

from __future__ import annotations

from typing import Annotated, Any

from eventsourcing.domain import Aggregate, event
from pydantic import ConfigDict, Field, StringConstraints, ValidationInfo, field_validator

from domain.constraints import criteria_by_kind
from domain.criteria import CustomRule, Operator, SegmentCriteria
from domain.errors import Code, DomainError
from domain.values import Choice, Model, utc_iso


class SegmentStatus(Choice):
    ACTIVE = "ACTIVE"
    INACTIVE = "INACTIVE"
    CALCULATING = "CALCULATING"
    ERROR = "ERROR"


class SegmentPurpose(Choice):
    GENERAL = "general"
    MARKETING = "marketing"  # members need marketing consent (withdrawal = leaving)


class SegmentKind(Choice):
    DYNAMIC = "DYNAMIC"  # members are whoever matches the criteria
    STATIC = "STATIC"  # members are assigned explicitly


SegmentName = Annotated[str, StringConstraints(min_length=1, max_length=255)]


class SegmentDefinition(Model):
    """What a client sets on a segment (create and full update share it)."""

    model_config = ConfigDict(json_schema_extra=criteria_by_kind)

    name: SegmentName
    description: Annotated[str, StringConstraints(max_length=2000)] = ""
    rule_id: Annotated[str, StringConstraints(min_length=1, max_length=255)] | None = Field(
        default=None, description="checked against the rules engine when set"
    )
    kind: SegmentKind = SegmentKind.DYNAMIC
    purpose: SegmentPurpose = SegmentPurpose.GENERAL
    criteria: SegmentCriteria | None = Field(default=None, validate_default=True)

    @field_validator("criteria")
    @classmethod
    def _criteria_match_kind(
        cls, criteria: SegmentCriteria | None, info: ValidationInfo
    ) -> SegmentCriteria | None:
        kind = info.data.get("kind")
        if kind == SegmentKind.DYNAMIC and criteria is None:
            raise ValueError("a DYNAMIC segment needs criteria")
        if kind == SegmentKind.STATIC and criteria is not None:
            raise ValueError("a STATIC segment has no criteria; assign members instead")
        return criteria


_MARKETING_CONSENT = CustomRule(field="marketingConsent", operator=Operator.EQUALS, value=True)


def effective_criteria(definition: dict[str, Any]) -> SegmentCriteria | None:
    """What members must match: the criteria, plus marketing consent for a marketing
    segment (as a custom rule, so both evaluators and explanations include it)."""
    raw = definition.get("criteria")
    if raw is None:
        return None
    criteria = SegmentCriteria.model_validate(raw)
    if definition.get("purpose") != SegmentPurpose.MARKETING:
        return criteria
    return criteria.model_copy(
        update={"custom_rules": [*criteria.custom_rules, _MARKETING_CONSENT]}
    )


def name_key(name: str) -> str:
    """Uniqueness is case- and whitespace-insensitive: 'VIP  Buyers' == 'vip buyers'."""
    return " ".join(name.split()).casefold()


class Segment(Aggregate):
    @event("Created")
    def __init__(self, org_id: str, definition: dict[str, Any], actor: str) -> None:
        self.org_id = org_id
        self.definition = definition
        self.created_by = actor
        self.status = SegmentStatus.ACTIVE
        self.deleted = False

    @classmethod
    def define(cls, org_id: str, definition: SegmentDefinition, actor: str) -> Segment:
        return cls(org_id=org_id, definition=definition.dump(), actor=actor)

    @property
    def name(self) -> str:
        return str(self.definition["name"])

    def redefine(self, definition: SegmentDefinition, actor: str) -> None:
        self._check_live()
        new = definition.dump()
        if new["kind"] != self.definition["kind"]:
            raise DomainError(Code.CONFLICT, "a segment's kind cannot change", field="kind")
        changes = {k: v for k, v in new.items() if self.definition.get(k) != v}
        if changes:
            self._redefine(changes=changes, actor=actor)

    def set_status(self, status: SegmentStatus, actor: str) -> None:
        """Clients switch between ACTIVE and INACTIVE; the engine owns CALCULATING / ERROR."""
        self._check_live()
        if status not in {SegmentStatus.ACTIVE, SegmentStatus.INACTIVE}:
            raise DomainError(
                Code.INVALID, "status can be set to ACTIVE or INACTIVE only", field="status"
            )
        if status != self.status:
            self._change_status(status=status, actor=actor)

    def delete(self, actor: str) -> None:
        self._check_live()
        self._delete(actor=actor)

    def _check_live(self) -> None:
        if self.deleted:
            raise DomainError(Code.NOT_FOUND, f"segment {self.id} not found")

    def public(self) -> dict[str, Any]:
        return representation(
            segment_id=str(self.id),
            definition=self.definition,
            status=self.status,
            created_by=self.created_by,
            created_at=utc_iso(self.created_on),
            updated_at=utc_iso(self.modified_on),
            version=self.version,
        )

    @event("Redefined")
    def _redefine(self, changes: dict[str, Any], actor: str) -> None:
        self.definition = {**self.definition, **changes}

    @event("StatusChanged")
    def _change_status(self, status: SegmentStatus, actor: str) -> None:
        self.status = SegmentStatus(status)

    @event("Deleted")
    def _delete(self, actor: str) -> None:
        self.deleted = True


class SegmentPublic(Model):
    """A segment as every API answer shows it."""

    id: str
    name: str
    description: str
    rule_id: str | None
    kind: SegmentKind
    purpose: SegmentPurpose
    criteria: dict[str, Any] | None
    customer_count: int
    status: SegmentStatus
    created_by: str
    created_at: str
    updated_at: str
    last_calculated: str | None
    version: int


def representation(
    *,
    segment_id: str,
    definition: dict[str, Any],
    status: str,
    created_by: str,
    created_at: str,
    updated_at: str,
    version: int,
    customer_count: int = 0,
    last_calculated: str | None = None,
) -> dict[str, Any]:
    """The public JSON of a segment; shared by write answers and the segments view."""
    return {
        "id": segment_id,
        "name": definition["name"],
        "description": definition["description"],
        "ruleId": definition.get("ruleId"),
        "kind": definition["kind"],
        "purpose": definition.get("purpose", SegmentPurpose.GENERAL),
        "criteria": definition["criteria"],
        "customerCount": customer_count,
        "status": status,
        "createdBy": created_by,
        "createdAt": created_at,
        "updatedAt": updated_at,
        "lastCalculated": last_calculated,
        "version": version,
    }
