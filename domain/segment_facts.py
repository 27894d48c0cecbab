"""What segment criteria read about one customer: `CustomerFacts`, built in ONE place.

`customer_facts()` turns a customer's public profile dict (the camelCase shape of
`domain.values.Profile.dump()`) plus its lifecycle fields into a flat, normalized record.
The same record is

- what the Python predicate (`domain.criteria.matches`) evaluates, and
- one row of the `segment_facts` read model (projections/customers.py writes it, column for
  column, through `projections.segment_sql.facts_row`), which the compiled SQL evaluates.

So both evaluators read identical values; they differ only in how they compare them.

Normalization (done here, never in SQL):

- Texts are `str.strip().casefold()`-ed; an empty text, a non-string, or one containing NUL
  or unencodable surrogates is *missing* (None). Case-insensitive comparison therefore is
  plain equality on both sides, independent of the database's collation/ctype.
- Sets of texts (tags, purchase categories, brands) are frozensets of folded texts; never
  missing, possibly empty.
- Numbers are floats (or ints), finite, |x| <= 1e15; anything else is missing.

Sources of facts the spec's Customer model lacks:

- income, incomeCurrency, education, occupation: `preferences.customPreferences` keys of those
  names. `income` must be a JSON number (a numeric string is missing).
- purchase aggregates: `metadata.purchaseHistory` (until tracked purchase events feed them):
  `order_count` = number of records; `spend_currency` = the one currency of all records
  (None when there are none or several); `total_spent_cents` = exact sum in cents, 0 for a
  customer without purchases, None when currencies are mixed (no exchange rates: such a sum
  means nothing); `average_order_value` = total / count (None without purchases or with
  mixed currencies); first/last purchase = min/max `purchaseDate`; `categories` = the records'
  categories; `brands` = the first word of each record's `product` (e.g. "Acme Phone 3" ->
  "acme") — a stand-in until purchase events carry a brand.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

DAY = timedelta(days=1)
MAX_NUMBER = 1e15  # |x| above this is treated as missing (well inside exact float range)

# Haversine on a sphere of the IUGG mean Earth radius. Both evaluators compute the same
# float operations in the same order (see `haversine_a`).
EARTH_RADIUS_KM = 6371.0088
RADIANS_PER_DEGREE = math.pi / 180.0


def fold(value: Any) -> str | None:
    """Case-insensitive form of a text fact or criterion value; None = missing/unusable."""
    if not isinstance(value, str):
        return None
    text = value.strip().casefold()
    if not text or "\x00" in text:
        return None
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return None
    return text


def fold_set(values: Iterable[Any]) -> frozenset[str]:
    return frozenset(f for f in map(fold, values) if f is not None)


def number(value: Any) -> float | None:
    """A finite JSON number as float; bools, strings, NaN, inf, huge values are missing."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    result = float(value)
    if not math.isfinite(result) or abs(result) > MAX_NUMBER:
        return None
    return result


def moment(value: Any) -> datetime | None:
    """An ISO-8601 timestamp with offset; naive or unparsable values are missing."""
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return None
    else:
        return None
    return parsed if parsed.tzinfo is not None else None


def cents(amount: Any) -> int | None:
    """Exact cents of a money amount (the profile keeps at most two decimals).

    For a float k/100 with |k| < 2^53 / 100, round(x * 100) recovers k exactly (the error of
    x * 100 stays far below one half); other types go through Decimal."""
    if isinstance(amount, float):
        if not math.isfinite(amount) or abs(amount) > MAX_NUMBER:
            return None
        return round(amount * 100)
    if isinstance(amount, bool) or not isinstance(amount, int | Decimal | str):
        return None
    try:
        exact = Decimal(str(amount)) * 100
    except InvalidOperation:
        return None
    if not exact.is_finite():
        return None
    return int(exact.to_integral_value())


def brand_of(product: Any) -> str | None:
    """The brand a purchase record stands for: the product name's first word, folded."""
    text = fold(product)
    return text.split()[0] if text else None


def days_since(when: datetime, as_of: datetime) -> int:
    """Whole days elapsed from `when` to `as_of`, floored (negative if `when` is later)."""
    return (as_of - when) // DAY


def haversine_a(lat: float, lon: float, lat0: float, lon0: float) -> float:
    """The haversine term `a` between (lat, lon) and the centre (lat0, lon0), in degrees.

    Distance = 2 R asin(sqrt(a)); comparing `a` with `radius_threshold(r)` is the same test
    without asin/sqrt. The SQL compiler writes exactly these operations in this order.
    """
    phi0 = lat0 * RADIANS_PER_DEGREE
    lam0 = lon0 * RADIANS_PER_DEGREE
    phi = lat * RADIANS_PER_DEGREE
    s1 = math.sin((phi - phi0) / 2.0)
    s2 = math.sin((lon * RADIANS_PER_DEGREE - lam0) / 2.0)
    return s1 * s1 + math.cos(phi0) * math.cos(phi) * s2 * s2


def radius_threshold(radius_km: float) -> float | None:
    """sin²(r / 2R): a point is within r of the centre iff its `a` <= this. None when the
    circle covers the whole sphere (every located customer matches)."""
    half = radius_km / (2.0 * EARTH_RADIUS_KM)
    if half >= math.pi / 2.0:
        return None
    s = math.sin(half)
    return s * s


@dataclass(frozen=True, slots=True)
class PurchaseAggregates:
    order_count: int = 0
    spend_currency: str | None = None
    total_spent_cents: int | None = 0
    total_spent: float | None = 0.0
    average_order_value: float | None = None
    first_purchase_at: datetime | None = None
    last_purchase_at: datetime | None = None
    categories: frozenset[str] = frozenset()
    brands: frozenset[str] = frozenset()


NO_PURCHASES = PurchaseAggregates()


def purchase_aggregates(history: Iterable[Mapping[str, Any]]) -> PurchaseAggregates:
    """The per-customer purchase aggregates; the ONLY place they are computed."""
    count = 0
    currencies: set[str | None] = set()
    total = 0
    total_known = True
    dates: list[datetime] = []
    categories: set[str] = set()
    brands: set[str] = set()
    for record in history:
        count += 1
        money = record.get("amount") or {}
        currencies.add(fold(money.get("currency")))
        amount = cents(money.get("amount"))
        if amount is None:
            total_known = False
        else:
            total += amount
        when = moment(record.get("purchaseDate"))
        if when is not None:
            dates.append(when)
        category = fold(record.get("category"))
        if category is not None:
            categories.add(category)
        brand = brand_of(record.get("product"))
        if brand is not None:
            brands.add(brand)
    if count == 0:
        return NO_PURCHASES
    single = len(currencies) == 1 and None not in currencies
    spend_currency = next(iter(currencies)) if single else None
    total_cents = total if single and total_known else None
    return PurchaseAggregates(
        order_count=count,
        spend_currency=spend_currency,
        total_spent_cents=total_cents,
        total_spent=None if total_cents is None else total_cents / 100,
        average_order_value=None if total_cents is None else total_cents / count / 100,
        first_purchase_at=min(dates) if dates else None,
        last_purchase_at=max(dates) if dates else None,
        categories=frozenset(categories),
        brands=frozenset(brands),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class CustomerFacts(PurchaseAggregates):
    """One customer as criteria see it (its purchase aggregates included). Field names ==
    `segment_facts` column names."""

    status: str
    age: int | None = None
    gender: str | None = None
    income: float | None = None
    income_currency: str | None = None
    education: str | None = None
    occupation: str | None = None
    country_code: str | None = None
    country: str | None = None
    city: str | None = None
    region: str | None = None
    postal_code: str | None = None
    latitude: float | None = None
    longitude: float | None = None
    tags: frozenset[str] = frozenset()
    marketing_consent: bool = False
    data_processing_consent: bool = False
    source: str | None = None
    language: str | None = None
    currency: str | None = None
    login_count: int = 0
    last_login_at: datetime | None = None
    lifetime_value: float | None = None
    lifetime_value_currency: str | None = None
    created_at: datetime | None = None
    last_activity: datetime | None = None


FACT_NAMES: tuple[str, ...] = tuple(CustomerFacts.__dataclass_fields__)
_PURCHASE_NAMES: tuple[str, ...] = tuple(PurchaseAggregates.__dataclass_fields__)

# The customer field (a dotted path of the customer JSON) each fact is taken from, as
# `customer_facts` reads it: a criterion on the fact reads that field (domain.masking).
_CUSTOM = "preferences.customPreferences."
FACT_SOURCES: dict[str, str] = {
    "status": "status",
    "age": "age",
    "gender": "gender",
    "income": _CUSTOM + "income",
    "income_currency": _CUSTOM + "incomeCurrency",
    "education": _CUSTOM + "education",
    "occupation": _CUSTOM + "occupation",
    "country_code": "location.countryCode",
    "country": "location.country",
    "city": "location.city",
    "region": "location.region",
    "postal_code": "location.postalCode",
    "latitude": "location.latitude",
    "longitude": "location.longitude",
    "tags": "tags",
    "marketing_consent": "preferences.marketingConsent",
    "data_processing_consent": "preferences.dataProcessingConsent",
    "source": "metadata.source",
    "language": "preferences.language",
    "currency": "preferences.currency",
    "login_count": "metadata.loginCount",
    "last_login_at": "metadata.lastLogin",
    "lifetime_value": "metadata.lifetimeValue.amount",
    "lifetime_value_currency": "metadata.lifetimeValue.currency",
    "created_at": "createdAt",
    "last_activity": "lastActivity",
    **dict.fromkeys(_PURCHASE_NAMES, "metadata.purchaseHistory"),
}
assert FACT_SOURCES.keys() == set(FACT_NAMES)


def _int(value: Any, low: int, high: int) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if low <= value <= high else None


def customer_facts(
    profile: Mapping[str, Any],
    *,
    status: str,
    created_at: datetime | None,
    last_activity: datetime | None,
    purchases: PurchaseAggregates | None = None,
) -> CustomerFacts:
    """Facts of a customer from its public profile dict and lifecycle fields.

    `purchases` defaults to the aggregates of `metadata.purchaseHistory`; a caller holding
    aggregates from another source (tracked purchase events) passes them instead.
    """
    location = profile.get("location") or {}
    prefs = profile.get("preferences") or {}
    custom = prefs.get("customPreferences") or {}
    meta = profile.get("metadata") or {}
    lifetime = meta.get("lifetimeValue") or {}
    if purchases is None:
        purchases = purchase_aggregates(meta.get("purchaseHistory") or ())
    login_count = _int(meta.get("loginCount"), 0, 2**31 - 1)
    return CustomerFacts(
        status=fold(status) or "",
        age=_int(profile.get("age"), 0, 150),
        gender=fold(profile.get("gender")),
        income=number(custom.get("income")),
        income_currency=fold(custom.get("incomeCurrency")),
        education=fold(custom.get("education")),
        occupation=fold(custom.get("occupation")),
        country_code=fold(location.get("countryCode")),
        country=fold(location.get("country")),
        city=fold(location.get("city")),
        region=fold(location.get("region")),
        postal_code=fold(location.get("postalCode")),
        latitude=number(location.get("latitude")),
        longitude=number(location.get("longitude")),
        tags=fold_set(profile.get("tags") or ()),
        marketing_consent=prefs.get("marketingConsent") is True,
        data_processing_consent=prefs.get("dataProcessingConsent") is True,
        source=fold(meta.get("source")),
        language=fold(prefs.get("language")),
        currency=fold(prefs.get("currency")),
        login_count=login_count or 0,
        last_login_at=moment(meta.get("lastLogin")),
        lifetime_value=number(lifetime.get("amount")),
        lifetime_value_currency=fold(lifetime.get("currency")),
        created_at=created_at,
        last_activity=last_activity,
        **{name: getattr(purchases, name) for name in _PURCHASE_NAMES},
    )
