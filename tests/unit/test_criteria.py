"""Segment criteria: validation (precise field paths), facts, the Python predicate, and the
shape/safety of the compiled SQL (no database needed)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import pytest
from psycopg import sql
from pydantic import ValidationError

from domain.criteria import (
    FIELDS,
    OPERATORS,
    FieldType,
    Operator,
    SegmentCriteria,
    explain,
    lower,
    matches,
)
from domain.segment_facts import (
    CustomerFacts,
    customer_facts,
    days_since,
    purchase_aggregates,
)
from domain.values import Profile
from projections.segment_sql import COLUMNS, TYPES, compile_criteria, compile_where, facts_row
from service.problems import field_path

AS_OF = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
US = timedelta(microseconds=1)

SPEC_EXAMPLE = {
    "demographics": {"ageRange": {"min": 25, "max": 65}, "gender": ["MALE", "FEMALE"]},
    "behavioral": {
        "averageOrderValue": {"min": 100.00, "currency": "EUR"},
        "purchaseFrequency": {"min": 2, "period": "MONTHLY"},
    },
    "geographic": {"countries": ["Spain", "France", "Italy"]},
    "customRules": [{"field": "lifetimeValue", "operator": "greater_than", "value": 1000.00}],
}


def errors(data: Any) -> dict[str, str]:
    """field path (as the 422 answer names it, under `criteria`) -> message."""
    with pytest.raises(ValidationError) as info:
        SegmentCriteria.model_validate(data)
    return {field_path(("body", "criteria", *e["loc"])): e["msg"] for e in info.value.errors()}


def crit(data: dict[str, Any]) -> SegmentCriteria:
    return SegmentCriteria.model_validate(data)


def rule(field: str, operator: str, value: Any = None) -> SegmentCriteria:
    r: dict[str, Any] = {"field": field, "operator": operator}
    if value is not None:
        r["value"] = value
    return crit({"customRules": [r]})


def facts(**over: Any) -> CustomerFacts:
    return CustomerFacts(**{"status": "active", **over})


# --------------------------------------------------------------------------- validation


def test_spec_example_is_valid_and_normalized() -> None:
    c = crit(SPEC_EXAMPLE)
    assert c.geographic is not None
    assert c.geographic.countries == ["ES", "FR", "IT"]
    dumped = c.dump()
    assert dumped["behavioral"]["averageOrderValue"] == {
        "min": 100.0,
        "max": None,
        "currency": "EUR",
    }
    assert SegmentCriteria.model_validate(dumped) == c  # stored shape round-trips


@pytest.mark.parametrize("data", [{}, {"customRules": []}])
def test_at_least_one_criterion(data: dict[str, Any]) -> None:
    got = errors(data)
    assert list(got) == ["criteria"]
    assert "at least one criterion" in got["criteria"]


@pytest.mark.parametrize(
    ("data", "field", "fragment"),
    [
        ({"demographics": {}}, "criteria.demographics", "at least one of ageRange"),
        ({"behavioral": {}}, "criteria.behavioral", "purchaseFrequency"),
        ({"geographic": {}}, "criteria.geographic", "distanceFrom"),
        ({"purchaseHistory": {}}, "criteria.purchaseHistory", "orderCount"),
        (
            {"demographics": {"ageRange": {"min": 50, "max": 20}}},
            "criteria.demographics.ageRange",
            "min must not exceed max",
        ),
        (
            {"demographics": {"ageRange": {}}},
            "criteria.demographics.ageRange",
            "give min, max or both",
        ),
        (
            {"demographics": {"ageRange": {"min": 151}}},
            "criteria.demographics.ageRange.min",
            "less than or equal to 150",
        ),
        ({"demographics": {"gender": ["MAN"]}}, "criteria.demographics.gender.0", "MALE"),
        ({"demographics": {"gender": []}}, "criteria.demographics.gender", "at least 1"),
        (
            {"demographics": {"incomeRange": {"min": 10.005}}},
            "criteria.demographics.incomeRange.min",
            "decimal places",
        ),
        (
            {"demographics": {"incomeRange": {"min": 1, "currency": "ABC"}}},
            "criteria.demographics.incomeRange.currency",
            "ISO 4217",
        ),
        ({"demographics": {"education": []}}, "criteria.demographics.education", "at least 1"),
        (
            {"demographics": {"occupation": ["ok", "nul\x00"]}},
            "criteria.demographics.occupation.1",
            "control characters",
        ),
        (
            {"demographics": {"occupation": ["x" * 121]}},
            "criteria.demographics.occupation.0",
            "at most 120",
        ),
        (
            {"behavioral": {"purchaseFrequency": {"min": 1, "period": "HOURLY"}}},
            "criteria.behavioral.purchaseFrequency.period",
            "MONTHLY",
        ),
        (
            {"behavioral": {"purchaseFrequency": {"min": -1}}},
            "criteria.behavioral.purchaseFrequency.min",
            "greater than or equal to 0",
        ),
        (
            {"behavioral": {"averageOrderValue": {"max": -5}}},
            "criteria.behavioral.averageOrderValue.max",
            "greater than or equal to 0",
        ),
        (
            {"behavioral": {"lastPurchaseDays": {"max": 40_000}}},
            "criteria.behavioral.lastPurchaseDays.max",
            "36500",
        ),
        (
            {"behavioral": {"productCategories": ["  "]}},
            "criteria.behavioral.productCategories.0",
            "at least 1 character",
        ),
        (
            {"behavioral": {"brandPreferences": "acme"}},
            "criteria.behavioral.brandPreferences",
            "valid list",
        ),
        (
            {"geographic": {"countries": ["Spain", "Atlantis"]}},
            "criteria.geographic.countries.1",
            "not a known country",
        ),
        (
            {"geographic": {"distanceFrom": {"latitude": 91, "longitude": 0, "radiusKm": 5}}},
            "criteria.geographic.distanceFrom.latitude",
            "less than or equal to 90",
        ),
        (
            {"geographic": {"distanceFrom": {"latitude": 0, "longitude": 0, "radiusKm": 0}}},
            "criteria.geographic.distanceFrom.radiusKm",
            "greater than 0",
        ),
        (
            {"geographic": {"distanceFrom": {"latitude": 0, "longitude": 0}}},
            "criteria.geographic.distanceFrom.radiusKm",
            "required",
        ),
        (
            {"purchaseHistory": {"orderCount": {"min": 3, "max": 1}}},
            "criteria.purchaseHistory.orderCount",
            "min must not exceed max",
        ),
        (
            {"purchaseHistory": {"firstPurchaseDays": {"min": -1}}},
            "criteria.purchaseHistory.firstPurchaseDays.min",
            "greater than or equal to 0",
        ),
        ({"somethingElse": 1}, "criteria.somethingElse", "Extra inputs"),
    ],
)
def test_group_errors_name_the_field(data: dict[str, Any], field: str, fragment: str) -> None:
    got = errors(data)
    assert field in got, got
    assert fragment in got[field], got[field]


@pytest.mark.parametrize(
    ("rule_", "field", "fragment"),
    [
        ({"field": "password", "operator": "equals", "value": "x"}, "field", "unknown field"),
        ({"field": "age", "operator": "regex", "value": "x"}, "operator", "'equals'"),
        ({"field": "age", "operator": "contains", "value": 3}, "operator", "does not apply"),
        ({"field": "tags", "operator": "equals", "value": "vip"}, "operator", "does not apply"),
        ({"field": "city", "operator": "greater_than", "value": "m"}, "operator", "allowed"),
        ({"field": "age", "operator": "equals", "value": "30"}, "value", "needs a number"),
        ({"field": "age", "operator": "equals", "value": True}, "value", "needs a number"),
        ({"field": "age", "operator": "equals"}, "value", "needs a value"),
        ({"field": "age", "operator": "less_than", "value": 1e16}, "value", "finite number"),
        ({"field": "age", "operator": "between", "value": [40, 20]}, "value", "low <= high"),
        ({"field": "age", "operator": "between", "value": 30}, "value", "[low, high]"),
        ({"field": "age", "operator": "in", "value": []}, "value", "list of 1 to 500"),
        ({"field": "age", "operator": "in", "value": [1, "x"]}, "value", "item 1"),
        ({"field": "age", "operator": "exists", "value": True}, "value", "takes no value"),
        ({"field": "city", "operator": "equals", "value": 3}, "value", "needs a text"),
        ({"field": "city", "operator": "contains", "value": "  "}, "value", "1 to 120"),
        ({"field": "city", "operator": "starts_with", "value": "a\x00"}, "value", "NUL"),
        ({"field": "marketingConsent", "operator": "equals", "value": 1}, "value", "true or false"),
        ({"field": "daysSinceCreated", "operator": "equals", "value": 1.5}, "value", "whole"),
        ({"field": "daysSinceCreated", "operator": "less_than", "value": -1}, "value", "between"),
        ({"field": "tags", "operator": "contains", "value": ["vip"]}, "value", "needs a text"),
        ({"field": "age", "operator": "equals", "value": 3, "extra": 1}, "extra", "Extra"),
    ],
)
def test_custom_rule_errors_name_the_part(rule_: dict[str, Any], field: str, fragment: str) -> None:
    data = {"customRules": [{"field": "age", "operator": "exists"}, rule_]}
    got = errors(data)
    key = f"criteria.customRules.1.{field}"
    assert key in got, got
    assert fragment in got[key], got[key]
    assert len(got) == 1


def test_every_allowed_field_and_operator_validates_and_lowers() -> None:
    samples: dict[FieldType, dict[Operator, Any]] = {
        FieldType.NUMBER: {Operator.BETWEEN: [1, 2.5], Operator.IN: [1, 2]},
        FieldType.DAYS: {Operator.BETWEEN: [1, 2], Operator.IN: [1, 2]},
        FieldType.TEXT: {Operator.IN: ["a", "B"]},
        FieldType.TAGS: {Operator.IN: ["a", "B"]},
        FieldType.BOOLEAN: {},
    }
    scalar = {
        FieldType.NUMBER: 3,
        FieldType.DAYS: 3,
        FieldType.TEXT: "Ab",
        FieldType.TAGS: "Ab",
        FieldType.BOOLEAN: True,
    }
    for name, spec in FIELDS.items():
        for op in OPERATORS[spec.type]:
            if op in (Operator.EXISTS, Operator.NOT_EXISTS):
                value = None
            elif op in (Operator.NOT_IN, Operator.IN, Operator.BETWEEN):
                value = samples[spec.type][Operator.IN if op == Operator.NOT_IN else op]
            else:
                value = scalar[spec.type]
            c = rule(name, op.value, value)
            assert len(lower(c)) == 1
            compile_criteria(c, "org", AS_OF)


# --------------------------------------------------------------------------- facts


def profile(**over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "email": "ann@example.com",
        "name": "Ann",
        "age": 34,
        "gender": "FEMALE",
        "location": {
            "country": "Spain",
            "city": "  Málaga ",
            "region": "Andalucía",
            "postalCode": "29001",
            "latitude": 36.72,
            "longitude": -4.42,
        },
        "preferences": {
            "marketingConsent": True,
            "dataProcessingConsent": True,
            "language": "es",
            "currency": "EUR",
            "customPreferences": {
                "income": 42000,
                "incomeCurrency": "eur",
                "education": "Master",
                "occupation": "Engineer",
            },
        },
        "tags": ["VIP", "newsletter"],
        "metadata": {
            "source": "Website",
            "loginCount": 7,
            "lifetimeValue": {"amount": 1234.5, "currency": "EUR"},
            "purchaseHistory": [
                purchase(0.1, "EUR", "Acme Phone 3", "Electronics", AS_OF - 40 * DAY),
                purchase(0.2, "EUR", "acme TV", "electronics", AS_OF - 10 * DAY),
                purchase(99.99, "EUR", "Globex Laptop", "Computers", AS_OF - 20 * DAY),
            ],
        },
    }
    data.update(over)
    return Profile.model_validate(data).dump()


def purchase(
    amount: float, currency: str, product: str, category: str, when: datetime
) -> dict[str, Any]:
    return {
        "id": f"p{amount}{when.timestamp()}",
        "amount": {"amount": amount, "currency": currency},
        "product": product,
        "category": category,
        "purchaseDate": when.isoformat(),
    }


def test_customer_facts_from_profile() -> None:
    f = customer_facts(
        profile(), status="ACTIVE", created_at=AS_OF - 400 * DAY, last_activity=AS_OF
    )
    assert f.status == "active"
    assert (f.age, f.gender, f.country_code, f.country) == (34, "female", "es", "spain")
    assert (f.city, f.region, f.postal_code) == ("málaga", "andalucía", "29001")
    assert (f.latitude, f.longitude) == (36.72, -4.42)
    assert (f.income, f.income_currency, f.education, f.occupation) == (
        42000.0,
        "eur",
        "master",
        "engineer",
    )
    assert f.tags == {"vip", "newsletter"}
    assert (f.source, f.language, f.currency, f.login_count) == ("website", "es", "eur", 7)
    assert (f.lifetime_value, f.lifetime_value_currency) == (1234.5, "eur")
    assert f.order_count == 3
    assert f.spend_currency == "eur"
    assert f.total_spent_cents == 10029  # exact: 0.10 + 0.20 + 99.99
    assert f.total_spent == 100.29
    assert f.average_order_value == 10029 / 3 / 100
    assert f.first_purchase_at == AS_OF - 40 * DAY
    assert f.last_purchase_at == AS_OF - 10 * DAY
    assert f.categories == {"electronics", "computers"}
    assert f.brands == {"acme", "globex"}


def test_purchase_aggregates_edge_cases() -> None:
    none = purchase_aggregates([])
    assert (none.order_count, none.total_spent_cents, none.spend_currency) == (0, 0, None)
    assert none.average_order_value is None and none.last_purchase_at is None
    mixed = purchase_aggregates(
        [
            purchase(10, "EUR", "A", "x", AS_OF),
            purchase(10, "USD", "B", "y", AS_OF - DAY),
        ]
    )
    assert mixed.order_count == 2
    assert (mixed.spend_currency, mixed.total_spent_cents, mixed.average_order_value) == (
        None,
        None,
        None,
    )
    assert mixed.first_purchase_at == AS_OF - DAY


def test_unusable_texts_and_numbers_are_missing() -> None:
    p = profile()
    p["preferences"]["customPreferences"] = {
        "income": "42000",
        "education": "  ",
        "occupation": "a\x00b",
        "incomeCurrency": 5,
    }
    f = customer_facts(p, status="ACTIVE", created_at=AS_OF, last_activity=AS_OF)
    assert (f.income, f.education, f.occupation, f.income_currency) == (None, None, None, None)
    p["preferences"]["customPreferences"] = {"income": True}
    assert customer_facts(p, status="ACTIVE", created_at=None, last_activity=None).income is None
    p["preferences"]["customPreferences"] = {"income": 1e300}
    assert customer_facts(p, status="ACTIVE", created_at=None, last_activity=None).income is None


def test_days_since_floors() -> None:
    assert days_since(AS_OF - 3 * DAY, AS_OF) == 3
    assert days_since(AS_OF - 3 * DAY + US, AS_OF) == 2
    assert days_since(AS_OF + US, AS_OF) == -1


def test_facts_row_matches_columns() -> None:
    f = customer_facts(profile(), status="ACTIVE", created_at=AS_OF, last_activity=AS_OF)
    row = facts_row("org", uuid4(), 3, f)
    assert len(row) == len(COLUMNS) == len(TYPES)
    assert row[COLUMNS.index("tags")] == ["newsletter", "vip"]


# --------------------------------------------------------------------------- predicate


def test_spec_example_predicate() -> None:
    c = crit(SPEC_EXAMPLE)
    yes = facts(
        age=30,
        gender="female",
        country_code="es",
        lifetime_value=1500.0,
        order_count=4,
        spend_currency="eur",
        total_spent_cents=40_000,
        first_purchase_at=AS_OF - 60 * DAY,
    )
    assert matches(c, yes, AS_OF)
    # 4 orders over 60 days = 2 per 30 days: exactly the minimum
    assert not matches(c, facts(**{**_dict(yes), "first_purchase_at": AS_OF - 61 * DAY}), AS_OF)
    assert not matches(c, facts(**{**_dict(yes), "spend_currency": "usd"}), AS_OF)
    assert not matches(c, facts(**{**_dict(yes), "status": "deleted"}), AS_OF)
    assert explain(c, facts(**{**_dict(yes), "age": 70}), AS_OF) == [
        ("status", True),
        ("demographics.ageRange", False),
        ("demographics.gender", True),
        ("behavioral.purchaseFrequency", True),
        ("behavioral.averageOrderValue", True),
        ("geographic.countries", True),
        ("customRules.0", True),
    ]


def _dict(f: CustomerFacts) -> dict[str, Any]:
    return {name: getattr(f, name) for name in f.__dataclass_fields__}


@pytest.mark.parametrize(
    ("criteria", "yes", "no"),
    [
        ({"demographics": {"ageRange": {"min": 30}}}, {"age": 30}, [{"age": 29}, {}]),
        ({"demographics": {"ageRange": {"max": 30}}}, {"age": 0}, [{"age": 31}, {}]),
        (
            {"demographics": {"gender": ["MALE", "OTHER"]}},
            {"gender": "other"},
            [{"gender": "female"}, {}],
        ),
        (
            {"demographics": {"incomeRange": {"min": 1000, "max": 2000.5, "currency": "EUR"}}},
            {"income": 2000.5, "income_currency": "eur"},
            [{"income": 2000.51, "income_currency": "eur"}, {"income": 1500.0}, {}],
        ),
        (
            {"demographics": {"education": ["Master", "PhD"]}},
            {"education": "phd"},
            [{"education": "bachelor"}, {}],
        ),
        (
            {"geographic": {"cities": ["MÁLAGA", "straße"]}},
            {"city": "strasse"},  # casefold: ß == ss
            [{"city": "madrid"}, {}],
        ),
        (
            {"geographic": {"regions": ["Andalucía"], "postalCodes": ["29001"]}},
            {"region": "andalucía", "postal_code": "29001"},
            [{"region": "andalucía"}, {"postal_code": "29001"}],
        ),
        (
            {"geographic": {"countries": ["es"]}},
            {"country_code": "es"},
            [{"country_code": "fr"}, {}],
        ),
        (
            # Madrid -> Toledo is about 67 km
            {
                "geographic": {
                    "distanceFrom": {"latitude": 40.4168, "longitude": -3.7038, "radiusKm": 70}
                }
            },
            {"latitude": 39.8628, "longitude": -4.0273},
            [{"latitude": 41.3874, "longitude": 2.1686}, {"latitude": 39.8628}, {}],
        ),
        (
            {"geographic": {"distanceFrom": {"latitude": 0, "longitude": 0, "radiusKm": 20040}}},
            {"latitude": 0.0, "longitude": 180.0},
            [{"longitude": 1.0}],
        ),
        (
            {"behavioral": {"productCategories": ["Books", "Toys"]}},
            {"categories": frozenset({"toys", "games"})},
            [{"categories": frozenset({"games"})}, {}],
        ),
        (
            {"behavioral": {"brandPreferences": ["ACME"]}},
            {"brands": frozenset({"acme"})},
            [{"brands": frozenset({"acm"})}],
        ),
        (
            {"behavioral": {"lastPurchaseDays": {"min": 2, "max": 5}}},
            {"last_purchase_at": AS_OF - 6 * DAY + US},  # 5 days and 23:59:59.999999
            [{"last_purchase_at": AS_OF - 6 * DAY}, {"last_purchase_at": AS_OF - 2 * DAY + US}, {}],
        ),
        (
            {"behavioral": {"averageOrderValue": {"min": 33.33, "max": 33.34}}},
            {"order_count": 3, "total_spent_cents": 10_000},  # 33.333...
            [
                {"order_count": 3, "total_spent_cents": 9_998},  # 33.3266...
                {"order_count": 0, "total_spent_cents": 0},
                {"order_count": 2, "total_spent_cents": None},
            ],
        ),
        (
            {"behavioral": {"purchaseFrequency": {"max": 1, "period": "WEEKLY"}}},
            {"order_count": 1, "first_purchase_at": AS_OF + DAY},  # tenure: one period
            [{"order_count": 2, "first_purchase_at": AS_OF - 13 * DAY}, {"order_count": 0}],
        ),
        (
            {"purchaseHistory": {"orderCount": {"max": 0}}},
            {"order_count": 0},
            [{"order_count": 1}],
        ),
        (
            {"purchaseHistory": {"totalSpent": {"max": 10, "currency": "USD"}}},
            {"order_count": 0, "total_spent_cents": 0},  # nothing bought: 0 in any currency
            [
                {"order_count": 1, "total_spent_cents": 500, "spend_currency": "eur"},
                {"order_count": 1, "total_spent_cents": 1001, "spend_currency": "usd"},
                {"order_count": 2, "total_spent_cents": None},
            ],
        ),
        (
            {"purchaseHistory": {"firstPurchaseDays": {"min": 30}}},
            {"first_purchase_at": AS_OF - 30 * DAY},
            [{"first_purchase_at": AS_OF - 30 * DAY + US}, {}],
        ),
    ],
)
def test_criterion_semantics(
    criteria: dict[str, Any], yes: dict[str, Any], no: list[dict[str, Any]]
) -> None:
    c = crit(criteria)
    assert matches(c, facts(**yes), AS_OF)
    for other in no:
        assert not matches(c, facts(**other), AS_OF), other


@pytest.mark.parametrize(
    ("field", "op", "value", "yes", "no"),
    [
        ("age", "equals", 30, [{"age": 30}], [{"age": 31}, {}]),
        ("age", "not_equals", 30, [{"age": 31}], [{"age": 30}, {}]),  # missing: no match
        ("age", "greater_than", 30, [{"age": 31}], [{"age": 30}, {}]),
        ("age", "greater_or_equal", 30, [{"age": 30}], [{"age": 29}]),
        ("age", "less_than", 30, [{"age": 29}], [{"age": 30}]),
        ("age", "less_or_equal", 30, [{"age": 30}], [{"age": 31}]),
        ("age", "between", [20, 30], [{"age": 20}, {"age": 30}], [{"age": 31}, {}]),
        ("age", "in", [20, 30], [{"age": 20}], [{"age": 25}, {}]),
        ("age", "not_in", [20, 30], [{"age": 25}], [{"age": 20}, {}]),
        ("age", "exists", None, [{"age": 0}], [{}]),
        ("age", "not_exists", None, [{}], [{"age": 0}]),
        ("lifetimeValue", "greater_than", 1000.0, [{"lifetime_value": 1000.01}], [{}]),
        ("city", "equals", " MADRID ", [{"city": "madrid"}], [{"city": "madrid norte"}, {}]),
        ("city", "not_equals", "Madrid", [{"city": "lyon"}], [{"city": "madrid"}, {}]),
        ("city", "in", ["a", "B"], [{"city": "b"}], [{"city": "c"}]),
        ("city", "not_in", ["a", "B"], [{"city": "c"}], [{"city": "b"}, {}]),
        ("city", "contains", "DRI", [{"city": "madrid"}], [{"city": "lyon"}, {}]),
        ("city", "starts_with", "Ma", [{"city": "madrid"}], [{"city": "lima"}, {}]),
        ("city", "not_exists", None, [{}], [{"city": "x"}]),
        ("marketingConsent", "equals", True, [{"marketing_consent": True}], [{}]),
        ("marketingConsent", "not_equals", True, [{}], [{"marketing_consent": True}]),
        ("tags", "contains", "VIP", [{"tags": frozenset({"vip"})}], [{}]),
        ("tags", "in", ["vip", "b2b"], [{"tags": frozenset({"b2b", "x"})}], [{}]),
        (
            "tags",
            "not_in",
            ["vip"],
            [{}, {"tags": frozenset({"x"})}],
            [{"tags": frozenset({"vip"})}],
        ),
        ("tags", "exists", None, [{"tags": frozenset({"x"})}], [{}]),
        ("tags", "not_exists", None, [{}], [{"tags": frozenset({"x"})}]),
        (
            "daysSinceLastPurchase",
            "less_or_equal",
            7,
            [{"last_purchase_at": AS_OF - 8 * DAY + US}, {"last_purchase_at": AS_OF + DAY}],
            [{"last_purchase_at": AS_OF - 8 * DAY}, {}],
        ),
        (
            "daysSinceCreated",
            "equals",
            0,
            [{"created_at": AS_OF}, {"created_at": AS_OF - DAY + US}],
            [{"created_at": AS_OF + US}, {"created_at": AS_OF - DAY}],
        ),
        (
            "daysSinceCreated",
            "less_than",
            0,
            [{"created_at": AS_OF + US}],
            [{"created_at": AS_OF}],
        ),
        (
            "daysSinceCreated",
            "not_in",
            [1, 2],
            [{"created_at": AS_OF}],
            [{"created_at": AS_OF - 2 * DAY}, {}],
        ),
        ("daysSinceLastLogin", "not_exists", None, [{}], [{"last_login_at": AS_OF}]),
    ],
)
def test_custom_rule_semantics(
    field: str, op: str, value: Any, yes: list[dict[str, Any]], no: list[dict[str, Any]]
) -> None:
    c = rule(field, op, value)
    for f in yes:
        assert matches(c, facts(**f), AS_OF), f
    for f in no:
        assert not matches(c, facts(**f), AS_OF), f


def test_as_of_must_be_aware() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        matches(crit(SPEC_EXAMPLE), facts(), datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        compile_criteria(crit(SPEC_EXAMPLE), "org", datetime(2026, 1, 1))


# --------------------------------------------------------------------------- SQL shape


def test_client_text_never_reaches_the_sql_text() -> None:
    evil = "x'); DROP TABLE segment_facts; --"
    c = crit(
        {
            "demographics": {"education": [evil]},
            "geographic": {"cities": [evil]},
            "customRules": [
                {"field": "city", "operator": "contains", "value": evil},
                {"field": "tags", "operator": "in", "value": [evil]},
            ],
        }
    )
    query, params = compile_criteria(c, "org'--", AS_OF)
    text = query.as_string(None)
    assert "DROP" not in text and "org'" not in text
    assert text.count("%s") == len(params)
    assert params[0] == "org'--"
    assert evil.casefold() in params[-1]


def test_where_composes_with_caller_sql() -> None:
    where, params = compile_where(crit(SPEC_EXAMPLE), AS_OF)
    query = sql.SQL("SELECT count(*) FROM segment_facts f WHERE f.org_id = %s AND {}").format(where)
    assert query.as_string(None).count("%s") == len(params) + 1


def test_days_are_counted_on_the_utc_instant_even_across_dst() -> None:
    from zoneinfo import ZoneInfo

    as_of = datetime(2026, 3, 29, 12, 0, tzinfo=ZoneInfo("Europe/Madrid"))  # DST began at 02:00
    c = rule("daysSinceCreated", "equals", 1)
    exactly_one_day = as_of.astimezone(UTC) - DAY
    assert matches(c, facts(created_at=exactly_one_day), as_of)
    assert not matches(c, facts(created_at=exactly_one_day + US), as_of)
    _, params = compile_criteria(c, "org", as_of)
    assert exactly_one_day in params and exactly_one_day - DAY in params
