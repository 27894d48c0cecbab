"""What a bulk update may change on every selected customer, and how a change applies.

A patch is partial: tags added or removed, a status, some preferences, the source fields of
the metadata. The patched profile is validated as a whole by `Profile`, so a bulk update
keeps every rule of a single update, and the customer's own `update` decides the rest
(status transitions, modifiability). Consents are not patchable: each consent statement is
recorded one by one, with its source and policy version, through the consent endpoint.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    field_validator,
    model_validator,
)

from domain.constraints import any_member
from domain.errors import invalid
from domain.values import (
    Choice,
    Currency,
    CustomerStatus,
    FreeForm,
    Language,
    Model,
    Profile,
    ShortText,
    Tag,
    Timezone,
)

Tags = Annotated[list[Tag], Field(max_length=100)]


class Action(Choice):
    """What a bulk segments job does with the selected customers."""

    ADD = "add"
    REMOVE = "remove"


class TagChange(Model):
    add: Tags = Field(default_factory=list)
    remove: Tags = Field(default_factory=list)

    @model_validator(mode="after")
    def _disjoint(self) -> TagChange:
        if set(self.add) & set(self.remove):
            raise ValueError("a tag cannot be added and removed at once")
        return self


class NotificationPatch(Model):
    email_notifications: StrictBool | None = None
    sms_notifications: StrictBool | None = None
    push_notifications: StrictBool | None = None
    marketing_emails: StrictBool | None = None
    system_alerts: StrictBool | None = None


class PreferencesPatch(Model):
    language: Language | None = None
    currency: Currency | None = None
    timezone: Timezone | None = None
    notification_settings: NotificationPatch | None = None
    custom_preferences: FreeForm | None = Field(
        default=None, description="merged into the customer's; a null value removes the key"
    )


class MetadataPatch(Model):
    source: ShortText | None = None
    referral_source: ShortText | None = None


class ProfilePatch(Model):
    model_config = ConfigDict(json_schema_extra=any_member)

    tags: TagChange | None = None
    status: CustomerStatus | None = None
    preferences: PreferencesPatch | None = None
    metadata: MetadataPatch | None = None

    @field_validator("status")
    @classmethod
    def _settable(cls, value: CustomerStatus | None) -> CustomerStatus | None:
        if value in {CustomerStatus.DELETED, CustomerStatus.ANONYMIZED}:
            raise ValueError(f"{value} is reached only through its own request")
        return value

    @model_validator(mode="after")
    def _changes_something(self) -> ProfilePatch:
        if not self.model_dump(exclude_none=True):
            raise ValueError("the patch changes nothing")
        return self


def patched(profile: dict[str, Any], patch: ProfilePatch) -> Profile:
    """`profile` (the stored camelCase shape) with `patch` applied, validated as a whole;
    a broken rule is a DomainError naming the customer's field."""
    new = {**profile}
    if patch.tags is not None:
        kept = set(profile.get("tags", [])) - set(patch.tags.remove)
        new["tags"] = sorted(kept | set(patch.tags.add))
    if patch.preferences is not None:
        new["preferences"] = _merged(profile["preferences"], patch.preferences.dump())
    if patch.metadata is not None:
        new["metadata"] = _merged(profile.get("metadata", {}), patch.metadata.dump())
    try:
        return Profile.model_validate(new)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise invalid(where or "patch", str(first.get("msg", "invalid"))) from None


def _merged(current: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    """`change`'s non-null values over `current`, nested maps merged; in customPreferences
    a null value removes the key."""
    out = {**current}
    for key, value in change.items():
        if key == "customPreferences" and value is not None:
            merged = {**current.get(key, {}), **value}
            out[key] = {k: v for k, v in merged.items() if v is not None}
        elif isinstance(value, dict):
            out[key] = _merged(current.get(key) or {}, value)
        elif value is not None:
            out[key] = value
    return out
