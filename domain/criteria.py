"""Segment criteria: typed data, validated on write, never evaluated as code or SQL text.

One meaning, two evaluators. `lower(criteria)` turns validated criteria into a list of
`(path, Condition)` pairs over the fields of `domain.segment_facts.CustomerFacts`; the Python
predicate here (`matches`, `explain`, `predicate`) and the SQL compiler
(`projections.segment_sql.compile_criteria`) each interpret those few condition types. A
hypothesis test (tests/property/test_criteria_agreement.py) checks that they agree.

Meaning
-------
- A customer matches when it is not DELETED and every given criterion holds (AND). Each
  field of a group (`demographics.ageRange`, `geographic.cities`, ...) and each custom rule is
  one criterion. A group given but empty, and criteria with no criterion at all, are refused.
- A list inside a criterion matches any of its values (OR); for set-valued facts (tags,
  purchase categories, brands) "any" means the sets share at least one value.
- Ranges are inclusive, `min <= value <= max`; either bound may be omitted (not both).
- Texts compare case-insensitively (both sides `strip().casefold()`-ed; see segment_facts).
- Missing values: a customer without the measured value never matches a criterion about it —
  including `not_equals` and `not_in` (they mean "has a value, and it is not ..."), exactly
  SQL's three-valued WHERE. Only `not_exists` matches a missing value. Set-valued facts are
  never missing: `exists` = non-empty, `not_exists` = empty, `not_in` = shares no value (so an
  empty set matches `not_in`).
- Time is explicit: evaluation takes `as_of` (aware datetime). "Days since" a moment =
  floor((as_of - moment) / 1 day), negative for a moment after `as_of`.
- Purchase frequency (orders per period) = order_count * period_days / tenure_days, where
  tenure_days = max(days since the first purchase, period_days); compared without division:
  `order_count * period_days >= min * tenure_days` in float8 on both sides. A customer with
  no purchase has no frequency (a non-buyer is not an infrequent buyer; use
  `purchaseHistory.orderCount` for non-buyers).
- Money: `averageOrderValue` / `totalSpent` are exact (integer cents); they need all of the
  customer's purchases in one currency (no exchange rates). A customer with no purchase has
  spent 0 in any currency and has no average order value. `currency`, when given, must match
  the purchases' currency (or the income's, for `incomeRange`). Income compares as float8.
- Distance: haversine on a sphere of radius 6371.0088 km; inclusive; needs both coordinates.
- Demographics not in the spec's Customer model (income, incomeCurrency, education,
  occupation) come from `preferences.customPreferences` keys of those names.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from domain.constraints import any_member, at_least_one
from domain.segment_facts import (
    FACT_NAMES,
    FACT_SOURCES,
    MAX_NUMBER,
    CustomerFacts,
    days_since,
    fold,
    haversine_a,
    radius_threshold,
)
from domain.values import Choice, Currency, Gender, Model, lookup_country

MAX_VALUES = 500  # items in any list of a criterion
MAX_RULES = 50  # custom rules per segment
MAX_TEXT = 120  # characters of a text value
MAX_DAYS = 36_500


def check_text(value: str) -> str:
    """No control characters (NUL cannot be stored; others are never meant) or surrogates."""
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError("must not contain control characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text") from None
    if fold(value) is None:
        raise ValueError("must not be blank")
    return value


def country_code(value: str) -> str:
    return lookup_country(value)[0]


Text = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_TEXT), AfterValidator(check_text)
]
Values = Annotated[list[Text], Field(min_length=1, max_length=MAX_VALUES)]
Country = Annotated[Text, AfterValidator(country_code)]
Amount = Annotated[
    Decimal,
    Field(ge=0, le=Decimal(10**12), max_digits=14, decimal_places=2),
    PlainSerializer(float, return_type=float, when_used="json"),
]


class Period(Choice):
    DAILY = "DAILY"
    WEEKLY = "WEEKLY"
    MONTHLY = "MONTHLY"
    QUARTERLY = "QUARTERLY"
    YEARLY = "YEARLY"


PERIOD_DAYS: dict[Period, int] = {
    Period.DAILY: 1,
    Period.WEEKLY: 7,
    Period.MONTHLY: 30,
    Period.QUARTERLY: 91,
    Period.YEARLY: 365,
}


class _Range(Model):
    model_config = ConfigDict(json_schema_extra=at_least_one("min", "max"))

    @model_validator(mode="after")
    def _bounds(self) -> _Range:
        low, high = getattr(self, "min"), getattr(self, "max")  # noqa: B009
        if low is None and high is None:
            raise ValueError("give min, max or both")
        if low is not None and high is not None and low > high:
            raise ValueError("min must not exceed max")
        return self


class AgeRange(_Range):
    min: Annotated[int, Field(ge=0, le=150, strict=True)] | None = None
    max: Annotated[int, Field(ge=0, le=150, strict=True)] | None = None


class CountRange(_Range):
    min: Annotated[int, Field(ge=0, le=10_000_000, strict=True)] | None = None
    max: Annotated[int, Field(ge=0, le=10_000_000, strict=True)] | None = None


class DaysRange(_Range):
    min: Annotated[int, Field(ge=0, le=MAX_DAYS, strict=True)] | None = None
    max: Annotated[int, Field(ge=0, le=MAX_DAYS, strict=True)] | None = None


class ValueRange(_Range):
    """A money range: amounts with at most two decimals; optional ISO 4217 currency."""

    min: Amount | None = None
    max: Amount | None = None
    currency: Currency | None = None


IncomeRange = ValueRange  # the spec's name for the demographic one


class FrequencyRange(_Range):
    min: Annotated[float, Field(ge=0, le=1e6, strict=True)] | None = None
    max: Annotated[float, Field(ge=0, le=1e6, strict=True)] | None = None
    period: Period = Period.MONTHLY


class LocationRadius(Model):
    latitude: Annotated[float, Field(ge=-90, le=90)]
    longitude: Annotated[float, Field(ge=-180, le=180)]
    radius_km: Annotated[float, Field(gt=0, le=20_040)]


class _Group(Model):
    """A criteria group: at least one of its criteria must be given."""

    model_config = ConfigDict(json_schema_extra=any_member)

    @model_validator(mode="after")
    def _not_empty(self) -> _Group:
        if all(getattr(self, name) is None for name in type(self).model_fields):
            names = ", ".join(f.alias or n for n, f in type(self).model_fields.items())
            raise ValueError(f"give at least one of {names}")
        return self


class DemographicCriteria(_Group):
    age_range: AgeRange | None = None
    gender: Annotated[list[Gender], Field(min_length=1, max_length=10)] | None = None
    income_range: ValueRange | None = None
    education: Values | None = None
    occupation: Values | None = None


class BehavioralCriteria(_Group):
    purchase_frequency: FrequencyRange | None = None
    average_order_value: ValueRange | None = None
    last_purchase_days: DaysRange | None = None
    product_categories: Values | None = None
    brand_preferences: Values | None = None


class GeographicCriteria(_Group):
    countries: Annotated[list[Country], Field(min_length=1, max_length=MAX_VALUES)] | None = None
    cities: Values | None = None
    regions: Values | None = None
    postal_codes: Values | None = None
    distance_from: LocationRadius | None = None

    @field_validator("countries")
    @classmethod
    def _dedupe(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else sorted(set(value))


class PurchaseCriteria(_Group):
    order_count: CountRange | None = None
    total_spent: ValueRange | None = None
    first_purchase_days: DaysRange | None = None
    categories: Values | None = None


# --------------------------------------------------------------------------- custom rules


class Operator(Choice):
    EQUALS = "equals"
    NOT_EQUALS = "not_equals"
    GREATER_THAN = "greater_than"
    GREATER_OR_EQUAL = "greater_or_equal"
    LESS_THAN = "less_than"
    LESS_OR_EQUAL = "less_or_equal"
    BETWEEN = "between"
    IN = "in"
    NOT_IN = "not_in"
    CONTAINS = "contains"
    STARTS_WITH = "starts_with"
    EXISTS = "exists"
    NOT_EXISTS = "not_exists"


class FieldType(Choice):
    NUMBER = "number"
    TEXT = "text"
    BOOLEAN = "boolean"
    TAGS = "tags"  # a set of texts: contains / in / not_in work on membership
    DAYS = "days"  # whole days since a moment, as of the evaluation time (integer values)


_ORDERING = {
    Operator.GREATER_THAN,
    Operator.GREATER_OR_EQUAL,
    Operator.LESS_THAN,
    Operator.LESS_OR_EQUAL,
    Operator.BETWEEN,
}
_PRESENCE = {Operator.EXISTS, Operator.NOT_EXISTS}
_EQUALITY = {Operator.EQUALS, Operator.NOT_EQUALS, Operator.IN, Operator.NOT_IN}
OPERATORS: dict[FieldType, frozenset[Operator]] = {
    FieldType.NUMBER: frozenset(_EQUALITY | _ORDERING | _PRESENCE),
    FieldType.DAYS: frozenset(_EQUALITY | _ORDERING | _PRESENCE),
    FieldType.TEXT: frozenset(_EQUALITY | _PRESENCE | {Operator.CONTAINS, Operator.STARTS_WITH}),
    FieldType.BOOLEAN: frozenset(
        {Operator.EQUALS, Operator.NOT_EQUALS, Operator.EXISTS, Operator.NOT_EXISTS}
    ),
    FieldType.TAGS: frozenset(
        {Operator.CONTAINS, Operator.IN, Operator.NOT_IN, Operator.EXISTS, Operator.NOT_EXISTS}
    ),
}


@dataclass(frozen=True, slots=True)
class FieldSpec:
    type: FieldType
    fact: str  # the CustomerFacts attribute == the segment_facts column


# The allow-list of custom-rule fields (public camelCase name -> what it reads).
FIELDS: dict[str, FieldSpec] = {
    name: FieldSpec(kind, fact)
    for name, kind, fact in [
        ("age", FieldType.NUMBER, "age"),
        ("gender", FieldType.TEXT, "gender"),
        ("income", FieldType.NUMBER, "income"),
        ("incomeCurrency", FieldType.TEXT, "income_currency"),
        ("education", FieldType.TEXT, "education"),
        ("occupation", FieldType.TEXT, "occupation"),
        ("country", FieldType.TEXT, "country"),
        ("countryCode", FieldType.TEXT, "country_code"),
        ("city", FieldType.TEXT, "city"),
        ("region", FieldType.TEXT, "region"),
        ("postalCode", FieldType.TEXT, "postal_code"),
        ("latitude", FieldType.NUMBER, "latitude"),
        ("longitude", FieldType.NUMBER, "longitude"),
        ("status", FieldType.TEXT, "status"),
        ("tags", FieldType.TAGS, "tags"),
        ("marketingConsent", FieldType.BOOLEAN, "marketing_consent"),
        ("dataProcessingConsent", FieldType.BOOLEAN, "data_processing_consent"),
        ("source", FieldType.TEXT, "source"),
        ("language", FieldType.TEXT, "language"),
        ("currency", FieldType.TEXT, "currency"),
        ("loginCount", FieldType.NUMBER, "login_count"),
        ("lifetimeValue", FieldType.NUMBER, "lifetime_value"),
        ("lifetimeValueCurrency", FieldType.TEXT, "lifetime_value_currency"),
        ("orderCount", FieldType.NUMBER, "order_count"),
        ("totalSpent", FieldType.NUMBER, "total_spent"),
        ("averageOrderValue", FieldType.NUMBER, "average_order_value"),
        ("spendCurrency", FieldType.TEXT, "spend_currency"),
        ("productCategories", FieldType.TAGS, "categories"),
        ("brands", FieldType.TAGS, "brands"),
        ("daysSinceCreated", FieldType.DAYS, "created_at"),
        ("daysSinceLastActivity", FieldType.DAYS, "last_activity"),
        ("daysSinceLastLogin", FieldType.DAYS, "last_login_at"),
        ("daysSinceFirstPurchase", FieldType.DAYS, "first_purchase_at"),
        ("daysSinceLastPurchase", FieldType.DAYS, "last_purchase_at"),
    ]
}
SET_FACTS = frozenset({"tags", "categories", "brands"})
assert {s.fact for s in FIELDS.values()} <= set(FACT_NAMES)


def _number(value: Any) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("needs a number")
    if not math.isfinite(value) or abs(value) > MAX_NUMBER:
        raise ValueError(f"needs a finite number between -{MAX_NUMBER:g} and {MAX_NUMBER:g}")
    return value


def _days(value: Any) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("needs a whole number of days")
    if not 0 <= value <= MAX_DAYS:
        raise ValueError(f"needs a whole number of days between 0 and {MAX_DAYS}")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("needs a text")
    value = value.strip()
    if not value or len(value) > MAX_TEXT:
        raise ValueError(f"needs a text of 1 to {MAX_TEXT} characters")
    return check_text(value)


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("needs true or false")
    return value


_SCALAR: dict[FieldType, Callable[[Any], Any]] = {
    FieldType.NUMBER: _number,
    FieldType.DAYS: _days,
    FieldType.TEXT: _text,
    FieldType.TAGS: _text,
    FieldType.BOOLEAN: _boolean,
}


def _list(value: Any, item: Callable[[Any], Any]) -> list[Any]:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_VALUES:
        raise ValueError(f"needs a list of 1 to {MAX_VALUES} values")
    out = []
    for i, v in enumerate(value):
        try:
            out.append(item(v))
        except ValueError as e:
            raise ValueError(f"item {i}: {e}") from None
    return out


class CustomRule(Model):
    """`{field, operator, value}` over the allow-listed FIELDS; the value's shape depends on
    the operator: one value; `between`: [low, high]; `in`/`not_in`: a list; `exists`/
    `not_exists`: no value (absent or null)."""

    field: str
    operator: Operator
    value: Annotated[Any, Field(validate_default=True)] = None

    @field_validator("field")
    @classmethod
    def _known_field(cls, name: str) -> str:
        if name not in FIELDS:
            raise ValueError(f"unknown field {name!r}; allowed: {', '.join(sorted(FIELDS))}")
        return name

    @field_validator("operator")
    @classmethod
    def _operator_fits(cls, op: Operator, info: ValidationInfo) -> Operator:
        name = info.data.get("field")
        if name is None:
            return op  # the field itself is wrong and reported
        kind = FIELDS[name].type
        if op not in OPERATORS[kind]:
            allowed = ", ".join(sorted(OPERATORS[kind]))
            raise ValueError(
                f"operator {op.value!r} does not apply to {kind.value} field {name!r};"
                f" allowed: {allowed}"
            )
        return op

    @field_validator("value")
    @classmethod
    def _value_fits(cls, value: Any, info: ValidationInfo) -> Any:
        name, op = info.data.get("field"), info.data.get("operator")
        if name is None or op is None:
            return value  # reported on field/operator
        kind = FIELDS[name].type
        item = _SCALAR[kind]
        if op in _PRESENCE:
            if value is not None:
                raise ValueError(f"{op.value} takes no value")
            return None
        if op == Operator.BETWEEN:
            if not isinstance(value, list) or len(value) != 2:
                raise ValueError("between needs [low, high]")
            low, high = item(value[0]), item(value[1])
            if low > high:
                raise ValueError("between needs low <= high")
            return [low, high]
        if op in (Operator.IN, Operator.NOT_IN):
            return _list(value, item)
        if value is None:
            raise ValueError(f"{op.value} needs a value")
        return item(value)


class SegmentCriteria(Model):
    demographics: DemographicCriteria | None = None
    behavioral: BehavioralCriteria | None = None
    geographic: GeographicCriteria | None = None
    purchase_history: PurchaseCriteria | None = None
    custom_rules: Annotated[list[CustomRule], Field(max_length=MAX_RULES)] = Field(
        default_factory=list
    )

    @model_validator(mode="after")
    def _at_least_one(self) -> SegmentCriteria:
        groups = (self.demographics, self.behavioral, self.geographic, self.purchase_history)
        if all(g is None for g in groups) and not self.custom_rules:
            raise ValueError(
                "give at least one criterion (demographics, behavioral, geographic,"
                " purchaseHistory or customRules)"
            )
        return self


# --------------------------------------------------------------------------- conditions
# What criteria lower to: a handful of condition types over CustomerFacts fields. Values are
# already normalized (texts folded, money in cents), so interpreters only compare.


class Cmp(StrEnum):
    EQ = "="
    NE = "<>"
    GT = ">"
    GE = ">="
    LT = "<"
    LE = "<="


@dataclass(frozen=True, slots=True)
class Compare:
    """fact <op> value (numbers or booleans); missing -> no match."""

    fact: str
    op: Cmp
    value: int | float | bool


@dataclass(frozen=True, slots=True)
class OneOf:
    """A scalar fact equals one of values (negate: has a value equal to none of them)."""

    fact: str
    values: tuple[Any, ...]
    negate: bool = False


@dataclass(frozen=True, slots=True)
class Overlaps:
    """A set fact shares a value with values (negate: shares none; empty set matches)."""

    fact: str
    values: tuple[str, ...]
    negate: bool = False


@dataclass(frozen=True, slots=True)
class Contains:
    fact: str
    text: str


@dataclass(frozen=True, slots=True)
class StartsWith:
    fact: str
    text: str


@dataclass(frozen=True, slots=True)
class Present:
    """Scalar: not missing. Set: not empty. negate: the opposite."""

    fact: str
    negate: bool = False


@dataclass(frozen=True, slots=True)
class DaysAgo:
    """days_since(fact, as_of) in [low, high] (bounds optional); negate: has the moment and
    it is outside. Missing moment -> no match either way."""

    fact: str
    low: int | None
    high: int | None
    negate: bool = False


@dataclass(frozen=True, slots=True)
class Frequency:
    """order_count * period_days compared with bound * max(days since first purchase,
    period_days), in float8; needs a first purchase."""

    period_days: int
    low: float | None
    high: float | None


@dataclass(frozen=True, slots=True)
class AverageOrderValue:
    """total_spent_cents / order_count in [low, high] cents, compared exactly as
    total >= low * count; needs a known total and at least one order."""

    low_cents: int | None
    high_cents: int | None


@dataclass(frozen=True, slots=True)
class Near:
    """haversine_a(latitude, longitude, centre) <= threshold (None: any located customer)."""

    latitude: float
    longitude: float
    radius_km: float
    threshold: float | None


@dataclass(frozen=True, slots=True)
class AllOf:
    parts: tuple[Condition, ...]


@dataclass(frozen=True, slots=True)
class AnyOf:
    parts: tuple[Condition, ...]


Condition = (
    Compare
    | OneOf
    | Overlaps
    | Contains
    | StartsWith
    | Present
    | DaysAgo
    | Frequency
    | AverageOrderValue
    | Near
    | AllOf
    | AnyOf
)
DELETED_STATUS = "deleted"  # the folded status no segment ever matches


def _folded(values: Iterable[str]) -> tuple[str, ...]:
    out = []
    for v in values:
        f = fold(v)
        if f is not None and f not in out:
            out.append(f)
    return tuple(out)


def _cents(amount: Decimal | None) -> int | None:
    return None if amount is None else int(amount * 100)


def _range(fact: str, low: Any, high: Any) -> Condition:
    parts: list[Condition] = []
    if low is not None:
        parts.append(Compare(fact, Cmp.GE, low))
    if high is not None:
        parts.append(Compare(fact, Cmp.LE, high))
    return parts[0] if len(parts) == 1 else AllOf(tuple(parts))


def _with_currency(condition: Condition, fact: str, currency: str | None) -> Condition:
    if currency is None:
        return condition
    return AllOf((condition, OneOf(fact, _folded([currency]))))


def _money(criterion: ValueRange, fact: str, currency_fact: str) -> Condition:
    if fact == "income":  # float8 fact: float bounds
        low = None if criterion.min is None else float(criterion.min)
        high = None if criterion.max is None else float(criterion.max)
        return _with_currency(_range(fact, low, high), currency_fact, criterion.currency)
    # total_spent_cents: exact; a customer without purchases (no currency) spent 0 in any
    rng = _range(fact, _cents(criterion.min), _cents(criterion.max))
    if criterion.currency is None:
        return rng
    currency = OneOf(currency_fact, _folded([criterion.currency]))
    return AllOf((rng, AnyOf((Present(currency_fact, negate=True), currency))))


def _days_rule(fact: str, op: Operator, value: Any) -> Condition:
    match op:
        case Operator.EQUALS:
            return DaysAgo(fact, value, value)
        case Operator.NOT_EQUALS:
            return DaysAgo(fact, value, value, negate=True)
        case Operator.GREATER_THAN:
            return DaysAgo(fact, value + 1, None)
        case Operator.GREATER_OR_EQUAL:
            return DaysAgo(fact, value, None)
        case Operator.LESS_THAN:
            return DaysAgo(fact, None, value - 1)
        case Operator.LESS_OR_EQUAL:
            return DaysAgo(fact, None, value)
        case Operator.BETWEEN:
            return DaysAgo(fact, value[0], value[1])
        case Operator.IN:
            return AnyOf(tuple(DaysAgo(fact, v, v) for v in sorted(set(value))))
        case Operator.NOT_IN:
            return AllOf(tuple(DaysAgo(fact, v, v, negate=True) for v in sorted(set(value))))
    raise AssertionError(op)


_CMP = {
    Operator.EQUALS: Cmp.EQ,
    Operator.NOT_EQUALS: Cmp.NE,
    Operator.GREATER_THAN: Cmp.GT,
    Operator.GREATER_OR_EQUAL: Cmp.GE,
    Operator.LESS_THAN: Cmp.LT,
    Operator.LESS_OR_EQUAL: Cmp.LE,
}


def lower_rule(rule: CustomRule) -> Condition:
    spec = FIELDS[rule.field]
    fact, op, value = spec.fact, rule.operator, rule.value
    if op == Operator.EXISTS:
        return Present(fact)
    if op == Operator.NOT_EXISTS:
        return Present(fact, negate=True)
    match spec.type:
        case FieldType.DAYS:
            return _days_rule(fact, op, value)
        case FieldType.NUMBER:
            if op == Operator.BETWEEN:
                return _range(fact, float(value[0]), float(value[1]))
            if op in (Operator.IN, Operator.NOT_IN):
                floats = tuple(sorted({float(v) for v in value}))
                return OneOf(fact, floats, negate=op == Operator.NOT_IN)
            return Compare(fact, _CMP[op], float(value))
        case FieldType.BOOLEAN:
            return Compare(fact, _CMP[op], bool(value))
        case FieldType.TEXT:
            if op == Operator.CONTAINS:
                return Contains(fact, _folded([value])[0])
            if op == Operator.STARTS_WITH:
                return StartsWith(fact, _folded([value])[0])
            texts = _folded(value if isinstance(value, list) else [value])
            return OneOf(fact, texts, negate=op in (Operator.NOT_EQUALS, Operator.NOT_IN))
        case FieldType.TAGS:
            texts = _folded(value if isinstance(value, list) else [value])
            return Overlaps(fact, texts, negate=op == Operator.NOT_IN)
    raise AssertionError(spec)


Lowered = list[tuple[str, Condition]]


def _demographics(d: DemographicCriteria, out: Lowered) -> None:
    if d.age_range is not None:
        out.append(("demographics.ageRange", _range("age", d.age_range.min, d.age_range.max)))
    if d.gender is not None:
        out.append(("demographics.gender", OneOf("gender", _folded(d.gender))))
    if d.income_range is not None:
        income = _money(d.income_range, "income", "income_currency")
        out.append(("demographics.incomeRange", income))
    if d.education is not None:
        out.append(("demographics.education", OneOf("education", _folded(d.education))))
    if d.occupation is not None:
        out.append(("demographics.occupation", OneOf("occupation", _folded(d.occupation))))


def _behavioral(b: BehavioralCriteria, out: Lowered) -> None:
    if b.purchase_frequency is not None:
        f = b.purchase_frequency
        frequency = Frequency(PERIOD_DAYS[f.period], f.min, f.max)
        out.append(("behavioral.purchaseFrequency", frequency))
    if b.average_order_value is not None:
        v = b.average_order_value
        aov = AverageOrderValue(_cents(v.min), _cents(v.max))
        out.append(
            ("behavioral.averageOrderValue", _with_currency(aov, "spend_currency", v.currency))
        )
    if b.last_purchase_days is not None:
        r = b.last_purchase_days
        out.append(("behavioral.lastPurchaseDays", DaysAgo("last_purchase_at", r.min, r.max)))
    if b.product_categories is not None:
        cats = Overlaps("categories", _folded(b.product_categories))
        out.append(("behavioral.productCategories", cats))
    if b.brand_preferences is not None:
        out.append(
            ("behavioral.brandPreferences", Overlaps("brands", _folded(b.brand_preferences)))
        )


def _geographic(g: GeographicCriteria, out: Lowered) -> None:
    if g.countries is not None:
        out.append(("geographic.countries", OneOf("country_code", _folded(g.countries))))
    if g.cities is not None:
        out.append(("geographic.cities", OneOf("city", _folded(g.cities))))
    if g.regions is not None:
        out.append(("geographic.regions", OneOf("region", _folded(g.regions))))
    if g.postal_codes is not None:
        out.append(("geographic.postalCodes", OneOf("postal_code", _folded(g.postal_codes))))
    if g.distance_from is not None:
        c = g.distance_from
        near = Near(c.latitude, c.longitude, c.radius_km, radius_threshold(c.radius_km))
        out.append(("geographic.distanceFrom", near))


def _purchases(p: PurchaseCriteria, out: Lowered) -> None:
    if p.order_count is not None:
        count = _range("order_count", p.order_count.min, p.order_count.max)
        out.append(("purchaseHistory.orderCount", count))
    if p.total_spent is not None:
        spent = _money(p.total_spent, "total_spent_cents", "spend_currency")
        out.append(("purchaseHistory.totalSpent", spent))
    if p.first_purchase_days is not None:
        r = p.first_purchase_days
        first = DaysAgo("first_purchase_at", r.min, r.max)
        out.append(("purchaseHistory.firstPurchaseDays", first))
    if p.categories is not None:
        out.append(("purchaseHistory.categories", Overlaps("categories", _folded(p.categories))))


def lower(criteria: SegmentCriteria) -> Lowered:
    """Every criterion as (path, condition), in a fixed order; all must hold. Paths name the
    criterion as 422 errors do (camelCase, dotted, list indexes as numbers)."""
    out: Lowered = []
    if criteria.demographics is not None:
        _demographics(criteria.demographics, out)
    if criteria.behavioral is not None:
        _behavioral(criteria.behavioral, out)
    if criteria.geographic is not None:
        _geographic(criteria.geographic, out)
    if criteria.purchase_history is not None:
        _purchases(criteria.purchase_history, out)
    for i, rule in enumerate(criteria.custom_rules):
        out.append((f"customRules.{i}", lower_rule(rule)))
    return out


def _facts(condition: Condition) -> tuple[str, ...]:
    match condition:
        case AllOf(parts) | AnyOf(parts):
            return tuple(fact for part in parts for fact in _facts(part))
        case Frequency():
            return ("order_count", "first_purchase_at")
        case AverageOrderValue():
            return ("total_spent_cents", "order_count")
        case Near():
            return ("latitude", "longitude")
        case Compare(fact) | OneOf(fact) | Overlaps(fact) | Contains(fact) | StartsWith(fact):
            return (fact,)
        case Present(fact) | DaysAgo(fact):
            return (fact,)
    raise AssertionError(condition)


def criteria_reads(criteria: SegmentCriteria, field: str) -> list[tuple[str, str]]:
    """(`field`.<path of the criterion as `lower` names it>, customer field it reads) of every
    criterion, for service.auth.Principal.require_visible."""
    found = (
        (f"{field}.{path}", FACT_SOURCES[fact])
        for path, condition in lower(criteria)
        for fact in _facts(condition)
    )
    return list(dict.fromkeys(found))


# --------------------------------------------------------------------------- Python predicate


def check_as_of(as_of: datetime) -> datetime:
    """`as_of` in UTC: aware-datetime arithmetic in a zone with DST is wall-clock arithmetic,
    so both evaluators shift days from the UTC instant only."""
    if as_of.tzinfo is None or as_of.utcoffset() is None:
        raise ValueError("as_of must be timezone-aware")
    if not 1900 <= as_of.year <= 9000:
        raise ValueError("as_of must lie between the years 1900 and 9000")
    return as_of.astimezone(UTC)


def evaluate(condition: Condition, facts: CustomerFacts, as_of: datetime) -> bool:
    """The Python meaning of one condition (the SQL compiler mirrors it)."""
    match condition:
        case Compare(fact, op, value):
            v = getattr(facts, fact)
            if v is None:
                return False
            match op:
                case Cmp.EQ:
                    return bool(v == value)
                case Cmp.NE:
                    return bool(v != value)
                case Cmp.GT:
                    return bool(v > value)
                case Cmp.GE:
                    return bool(v >= value)
                case Cmp.LT:
                    return bool(v < value)
                case Cmp.LE:
                    return bool(v <= value)
            raise AssertionError(op)
        case OneOf(fact, values, negate):
            v = getattr(facts, fact)
            if v is None:
                return False
            return (v in values) != negate
        case Overlaps(fact, values, negate):
            s: frozenset[str] = getattr(facts, fact)
            return s.isdisjoint(values) == negate
        case Contains(fact, text):
            v = getattr(facts, fact)
            return v is not None and text in v
        case StartsWith(fact, text):
            v = getattr(facts, fact)
            return v is not None and bool(v.startswith(text))
        case Present(fact, negate):
            v = getattr(facts, fact)
            present = bool(v) if fact in SET_FACTS else v is not None
            return present != negate
        case DaysAgo(fact, low, high, negate):
            when: datetime | None = getattr(facts, fact)
            if when is None:
                return False
            days = days_since(when, as_of)
            inside = (low is None or days >= low) and (high is None or days <= high)
            return inside != negate
        case Frequency(period, low, high):
            first = facts.first_purchase_at
            if first is None:
                return False
            tenure = float(max(days_since(first, as_of), period))
            orders = float(facts.order_count * period)
            return (low is None or orders >= low * tenure) and (
                high is None or orders <= high * tenure
            )
        case AverageOrderValue(low, high):
            total, count = facts.total_spent_cents, facts.order_count
            if total is None or count <= 0:
                return False
            return (low is None or total >= low * count) and (high is None or total <= high * count)
        case Near(lat0, lon0, _, threshold):
            lat, lon = facts.latitude, facts.longitude
            if lat is None or lon is None:
                return False
            return threshold is None or haversine_a(lat, lon, lat0, lon0) <= threshold
        case AllOf(parts):
            return all(evaluate(p, facts, as_of) for p in parts)
        case AnyOf(parts):
            return any(evaluate(p, facts, as_of) for p in parts)
    raise AssertionError(condition)


def explain(
    criteria: SegmentCriteria, facts: CustomerFacts, as_of: datetime
) -> list[tuple[str, bool]]:
    """Criterion by criterion: (path, holds). The first entry is the status check."""
    as_of = check_as_of(as_of)
    verdicts = [("status", facts.status != DELETED_STATUS)]
    verdicts += [(path, evaluate(c, facts, as_of)) for path, c in lower(criteria)]
    return verdicts


def measured(criteria: SegmentCriteria, facts: CustomerFacts) -> list[dict[str, Any]]:
    """Criterion by criterion, in `explain`'s order (without its status entry): the
    customer's values each reads, by fact name."""
    return [{fact: getattr(facts, fact) for fact in _facts(c)} for _, c in lower(criteria)]


def operand(criteria: SegmentCriteria, path: str) -> Any:
    """The criterion at `path` (as `lower` names it) as the client wrote it, normalized."""
    found: Any = criteria.model_dump(mode="json", by_alias=True, exclude_none=True)
    for part in path.split("."):
        found = found[int(part)] if isinstance(found, list) else found[part]
    return found


def predicate(criteria: SegmentCriteria, as_of: datetime) -> Callable[[CustomerFacts], bool]:
    """Lower once, evaluate many customers."""
    as_of = check_as_of(as_of)
    conditions = [c for _, c in lower(criteria)]

    def holds(facts: CustomerFacts) -> bool:
        return facts.status != DELETED_STATUS and all(evaluate(c, facts, as_of) for c in conditions)

    return holds


def matches(criteria: SegmentCriteria, facts: CustomerFacts, as_of: datetime) -> bool:
    """Whether one customer belongs to the segment as of `as_of`."""
    return predicate(criteria, as_of)(facts)
