"""Field-level access as data (domain.masking): the fields `masked` hides are exactly those
`hidden` names, and a principal without the personal-data permission may filter, search,
sort or build criteria on none of them, on every surface that takes filters or criteria."""

from __future__ import annotations

from typing import Any

import pytest

from domain.access import Principal
from domain.criteria import FIELDS, CustomRule, Operator, SegmentCriteria, criteria_reads
from domain.customer import representation
from domain.errors import Code, DomainError
from domain.masking import hidden, masked
from domain.segment_facts import FACT_SOURCES
from domain.selection import CustomerFilters, filter_reads
from domain.values import Profile
from read_api.customers import listing_reads

ANALYST = Principal(sub="a", org="o", roles=frozenset({"analyst"}))
READERS = [Principal(sub="r", org="o", roles=frozenset({r})) for r in ("manager", "support")]
DEVICE = {
    "type": "mobile",
    "os": "iOS",
    "firstSeen": "2026-01-01T00:00:00Z",
    "lastSeen": "2026-01-02T00:00:00Z",
}
PROFILE = Profile.model_validate(
    {
        "email": "jane@example.com",
        "name": "Jane Roe",
        "age": 41,
        "gender": "FEMALE",
        "location": {
            "country": "Spain",
            "city": "Madrid",
            "region": "Madrid",
            "postalCode": "28001",
            "timezone": "Europe/Madrid",
            "latitude": 40.4168,
            "longitude": -3.7038,
        },
        "preferences": {"marketingConsent": True, "dataProcessingConsent": True},
        "tags": ["vip"],
        "metadata": {"source": "web", "deviceInfo": [DEVICE], "loginCount": 2},
    }
)
NOW = "2026-06-01T00:00:00Z"
FULL = representation(
    customer_id="c",
    profile=PROFILE.dump(),
    status="ACTIVE",
    version=3,
    created_at=NOW,
    updated_at=NOW,
    last_activity=NOW,
    pending_email="jane.new@example.com",
    active_orders=1,
)


def leaves(value: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted path → value of every leaf (a list or an empty object is one leaf)."""
    if isinstance(value, dict) and value:
        found: dict[str, Any] = {}
        for key, inner in value.items():
            found |= leaves(inner, f"{prefix}{key}.")
        return found
    return {prefix.rstrip("."): value}


def test_hidden_names_exactly_what_masked_changes() -> None:
    before, after = leaves(FULL), leaves(masked(FULL))
    changed = {path for path, value in before.items() if after.get(path, ...) != value}
    assert changed == {path for path in before if hidden(path)}
    assert changed == {
        "email",
        "name",
        "pendingEmail",
        "location.city",
        "location.region",
        "location.postalCode",
        "location.timezone",
        "location.latitude",
        "location.longitude",
        "metadata.deviceInfo",
    }
    assert hidden("location") and hidden("metadata.deviceInfo.0.os")
    assert not hidden("location.countryCode") and not hidden("metadata.source")


def refused(principal: Principal, reads: list[tuple[str, str]]) -> str | None:
    """The parameter a 403 names, or None when the reads are allowed."""
    try:
        principal.require_visible(reads)
    except DomainError as e:
        assert e.code == Code.FORBIDDEN and e.field is not None
        return e.field
    return None


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_custom_rules_on_masked_fields_are_refused(name: str) -> None:
    rule = CustomRule(field=name, operator=Operator.EXISTS)
    reads = criteria_reads(SegmentCriteria(custom_rules=[rule]), "criteria")
    masked_field = hidden(FACT_SOURCES[FIELDS[name].fact])
    assert refused(ANALYST, reads) == ("criteria.customRules.0" if masked_field else None)
    assert all(refused(reader, reads) is None for reader in READERS)
    assert masked_field == (name in {"city", "region", "postalCode", "latitude", "longitude"})


@pytest.mark.parametrize(
    ("geographic", "allowed"),
    [
        ({"countries": ["ES"]}, True),
        ({"cities": ["Madrid"]}, False),
        ({"regions": ["Madrid"]}, False),
        ({"postalCodes": ["28001"]}, False),
        ({"distanceFrom": {"latitude": 40, "longitude": -3, "radiusKm": 5}}, False),
    ],
)
def test_geographic_criteria_below_the_country_are_refused(
    geographic: dict[str, Any], allowed: bool
) -> None:
    criteria = SegmentCriteria.model_validate({"geographic": geographic})
    reads = criteria_reads(criteria, "segments.2.criteria")
    expected = None if allowed else f"segments.2.criteria.geographic.{next(iter(geographic))}"
    assert refused(ANALYST, reads) == expected
    assert all(refused(reader, reads) is None for reader in READERS)


def test_filters_name_their_parameter_on_every_surface() -> None:
    body = CustomerFilters.model_validate({"country": "ES", "ageMin": 20, "city": "Madrid"})
    assert refused(ANALYST, filter_reads(body, "selection.filters")) == "selection.filters.city"
    unmasked = CustomerFilters.model_validate({"country": "ES", "tags": ["vip"], "ageMax": 50})
    assert refused(ANALYST, filter_reads(unmasked, "filters")) is None
    query = {"tags": ["vip"], "age_min": 20, "created_from": NOW, "city": "madrid"}
    assert listing_reads(query) == [
        ("tags", "tags"),
        ("ageMin", "age"),
        ("createdFrom", "createdAt"),
        ("city", "location.city"),
    ]
    assert refused(ANALYST, listing_reads(query)) == "city"
    assert all(refused(reader, filter_reads(body, "filters")) is None for reader in READERS)
