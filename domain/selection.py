"""A selection of customers by the listing's filters (`GET /customers`), as reports and model
fits take it in a body; `filter_params` turns it into the parameters of
projections.customers.FILTERS, with the same rules as the list."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from pydantic import ConfigDict, Field, StringConstraints, field_validator, model_validator

from domain.constraints import any_member, exactly_one
from domain.errors import invalid
from domain.values import CustomerStatus, Gender, Model, lookup_country

Tag = Annotated[str, StringConstraints(min_length=1, max_length=64)]
Country = Annotated[str, StringConstraints(min_length=1, max_length=100)]
City = Annotated[str, StringConstraints(min_length=1, max_length=255)]
Age = Annotated[int, Field(ge=0, le=150, strict=True)]


class CustomerFilters(Model):
    model_config = ConfigDict(json_schema_extra=any_member)

    status: CustomerStatus | None = None
    country: Country | None = Field(default=None, description="ISO 3166 code or English name")
    city: City | None = Field(default=None, description="case-insensitive")
    gender: Gender | None = None
    tags: Annotated[list[Tag], Field(max_length=20)] | None = Field(
        default=None, description="the customer has all of them"
    )
    age_min: Age | None = None
    age_max: Age | None = None

    @field_validator("status")
    @classmethod
    def _not_deleted(cls, value: CustomerStatus | None) -> CustomerStatus | None:
        if value is CustomerStatus.DELETED:
            raise ValueError("deleted customers are never selected")
        return value

    @model_validator(mode="after")
    def _at_least_one(self) -> CustomerFilters:
        # As its schema says: filters that are given name a filter (to select everyone, a
        # request leaves them out), so `{}` never selects everyone by accident.
        if not self.model_dump(exclude_none=True):
            raise ValueError("filters must name at least one filter")
        return self


# The customer field (a dotted path of the customer JSON) each filter reads, by its key in
# projections.customers.FILTERS: a caller who sees that field masked may not filter on it.
FILTERED_FIELDS = {
    "email": "email",
    "status": "status",
    "country": "location.countryCode",
    "city": "location.city",
    "gender": "gender",
    "tags": "tags",
    "age_min": "age",
    "age_max": "age",
    "created_from": "createdAt",
    "created_to": "createdAt",
}


def filter_reads(filters: CustomerFilters, field: str) -> list[tuple[str, str]]:
    """(`field`.<name>, customer field it reads) of each filter given, for
    service.auth.Principal.require_visible."""
    return [
        (f"{field}.{CustomerFilters.model_fields[key].alias}", FILTERED_FIELDS[key])
        for key in filters.model_dump(exclude_none=True)
    ]


def filter_params(filters: CustomerFilters, field: str) -> dict[str, Any]:
    """The parameters of projections.customers.FILTERS; errors name `field`.<name>."""
    params: dict[str, Any] = {}
    if filters.status is not None:
        params["status"] = filters.status.value
    if filters.country is not None:
        try:
            params["country"] = lookup_country(filters.country)[0]
        except ValueError as e:
            raise invalid(f"{field}.country", str(e)) from None
    if filters.city is not None:
        params["city"] = filters.city
    if filters.gender is not None:
        params["gender"] = filters.gender.value
    if filters.tags:
        params["tags"] = sorted(set(filters.tags))
    if filters.age_min is not None:
        params["age_min"] = filters.age_min
    if filters.age_max is not None:
        params["age_max"] = filters.age_max
        if filters.age_min is not None and filters.age_min > filters.age_max:
            raise invalid(f"{field}.ageMax", "must not be less than ageMin")
    return params


class CustomerSelection(Model):
    """The customers a bulk operation applies to: exactly one of ids, filters (at least one
    of them: an empty filter would select everyone by accident) or a segment's members."""

    model_config = ConfigDict(json_schema_extra=exactly_one("ids", "filters", "segmentId"))

    ids: Annotated[list[UUID], Field(min_length=1, max_length=10_000)] | None = None
    filters: CustomerFilters | None = None
    segment_id: UUID | None = Field(default=None, description="the segment's current members")

    @model_validator(mode="after")
    def _exactly_one(self) -> CustomerSelection:
        given = [n for n in ("ids", "filters", "segment_id") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of ids, filters, segmentId")
        return self
