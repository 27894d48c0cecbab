"""Request bodies of the command side (the response shape is domain.values.CustomerPublic)."""

from __future__ import annotations

from typing import Annotated, Literal
from uuid import UUID

from pydantic import AwareDatetime, Field

from domain.bulk import Action, ProfilePatch
from domain.segment import SegmentDefinition, SegmentStatus
from domain.selection import CustomerFilters, CustomerSelection
from domain.values import CustomerStatus, Model, Profile
from service.auth import Role


class CustomerCreate(Profile):
    pass


class CustomerUpdate(Profile):
    status: CustomerStatus | None = None


class EmailVerification(Model):
    token: Annotated[str, Field(min_length=1, max_length=256)]


class ActiveOrders(Model):
    active_orders: Annotated[int, Field(ge=0, le=1_000_000)]


class SegmentCreate(SegmentDefinition):
    pass


class SegmentUpdate(SegmentDefinition):
    status: SegmentStatus | None = None


class MemberAssignment(Model):
    add: Annotated[list[UUID], Field(default_factory=list, max_length=10_000)]
    remove: Annotated[list[UUID], Field(default_factory=list, max_length=10_000)]


class ApiKeyCreate(Model):
    name: Annotated[str, Field(min_length=1, max_length=120)]
    roles: Annotated[list[Role], Field(min_length=1, max_length=6)]


class ModelFitRequest(Model):
    calibration_end: AwareDatetime | None = Field(
        default=None, description="purchases up to this instant are fitted; default: now"
    )
    holdout_end: AwareDatetime | None = Field(
        default=None, description="validate predictions against (calibrationEnd, holdoutEnd]"
    )
    segment_id: UUID | None = Field(
        default=None, description="fit the segment's current members only (not with filters)"
    )
    filters: CustomerFilters | None = Field(
        default=None, description="fit the customers the list filters select"
    )


class BulkDelete(Model):
    selection: CustomerSelection
    dry_run: bool = Field(default=False, description="decide and count, change nothing")


class BulkUpdate(BulkDelete):
    patch: ProfilePatch


class BulkSegments(BulkDelete):
    segment_id: UUID = Field(description="a STATIC segment")
    action: Action


class SegmentImport(Model):
    """A document of GET /customers/segments/export."""

    version: Literal[1]
    exported_at: str | None = None
    segments: Annotated[list[SegmentCreate], Field(min_length=1, max_length=1000)]
