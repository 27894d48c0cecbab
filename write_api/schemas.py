"""Request bodies of the command side (the response shape is domain.values.CustomerPublic)."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import AwareDatetime, Field, StrictBool

from domain.access import Role
from domain.bulk import Action, ProfilePatch
from domain.segment import SegmentDefinition, SegmentStatus
from domain.selection import CustomerFilters, CustomerSelection
from domain.values import CustomerStatus, Instant, Model, Profile


class CustomerCreate(Profile):
    pass


class CustomerUpdate(Profile):
    """The body of `PUT /customers/{id}` (and a merge-patched customer): the profile, a status,
    and the answer's server-made fields, so that the body GET returned can be sent back. They
    are accepted when they say what the customer is (`id`, `createdAt`, `activeOrders`,
    `pendingEmail`; `version` is an If-Match); `segments`, `updatedAt` and `lastActivity`, which
    move without the customer changing, are ignored."""

    status: CustomerStatus | None = None
    id: UUID | None = None
    version: Annotated[int, Field(ge=1)] | None = None
    created_at: AwareDatetime | None = None
    active_orders: Annotated[int, Field(ge=0)] | None = None
    pending_email: str | None = None
    segments: Annotated[list[UUID], Field(max_length=10_000)] | None = None
    updated_at: AwareDatetime | None = None
    last_activity: AwareDatetime | None = None

    def profile(self) -> CustomerCreate:
        return CustomerCreate.model_validate(self.model_dump(include=_PROFILE_FIELDS))

    def echoed(self) -> dict[str, Any]:
        """The server-made fields given that must match the customer, by their JSON names."""
        return {
            type(self).model_fields[name].alias or name: getattr(self, name)
            for name in _COMPARED
            if name in self.model_fields_set
        }


_PROFILE_FIELDS = set(Profile.model_fields)
_COMPARED = ("id", "created_at", "active_orders", "pending_email")


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
    calibration_end: Instant | None = Field(
        default=None, description="purchases up to this instant are fitted; default: now"
    )
    holdout_end: Instant | None = Field(
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
    dry_run: StrictBool = Field(default=False, description="decide and count, change nothing")


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
