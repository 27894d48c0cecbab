"""Consent per purpose (GDPR Art. 7): where each purpose lives in the customer's preferences,
and what a consent change asks for. Pure functions over the public preferences dict."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, IPvAnyAddress, StringConstraints

from domain.values import Choice, Model


class Purpose(Choice):
    MARKETING = "marketing"
    DATA_PROCESSING = "dataProcessing"
    ANALYTICS_TRACKING = "analyticsTracking"
    PERSONALIZATION = "personalization"
    DATA_SHARING = "dataSharing"
    THIRD_PARTY_SHARING = "thirdPartySharing"


# purpose -> path inside `preferences`
_PATHS: dict[Purpose, tuple[str, ...]] = {
    Purpose.MARKETING: ("marketingConsent",),
    Purpose.DATA_PROCESSING: ("dataProcessingConsent",),
    Purpose.ANALYTICS_TRACKING: ("privacySettings", "analyticsTracking"),
    Purpose.PERSONALIZATION: ("privacySettings", "personalization"),
    Purpose.DATA_SHARING: ("privacySettings", "dataSharing"),
    Purpose.THIRD_PARTY_SHARING: ("privacySettings", "thirdPartySharing"),
}


def consents(preferences: dict[str, Any]) -> dict[str, bool]:
    """Every purpose's current state as the preferences hold it."""
    out: dict[str, bool] = {}
    for purpose, path in _PATHS.items():
        value: Any = preferences
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        out[purpose.value] = bool(value)
    return out


def with_consents(preferences: dict[str, Any], changes: dict[str, bool]) -> dict[str, Any]:
    """The preferences with some purposes granted or withdrawn (a new dict)."""
    result = {**preferences, "privacySettings": dict(preferences.get("privacySettings") or {})}
    for purpose, granted in changes.items():
        path = _PATHS[Purpose(purpose)]
        target = result if len(path) == 1 else result["privacySettings"]
        target[path[-1]] = granted
    return result


class ConsentChange(Model):
    """`PUT /customers/{id}/consent`: purposes to grant (true) or withdraw (false), and how
    the choice was captured. Withdrawing takes the same call as granting."""

    consents: Annotated[dict[Purpose, bool], Field(min_length=1)]
    source: Annotated[str, StringConstraints(min_length=1, max_length=64)] = "api"
    policy_version: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    ip_address: IPvAnyAddress | None = Field(
        default=None,
        json_schema_extra={
            "anyOf": [
                {"type": "string", "format": "ipv4"},
                {"type": "string", "format": "ipv6"},
                {"type": "null"},
            ]
        },
    )
    user_agent: Annotated[str, StringConstraints(max_length=512)] | None = None
