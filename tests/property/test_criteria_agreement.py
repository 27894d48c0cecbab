"""Two evaluators, one meaning: for generated customers and generated criteria, the compiled
SQL over a real `segment_facts` table returns exactly the customers the Python predicate
accepts.

Customers are generated as valid profiles (then `Profile`-validated, as the write side does),
turned into facts by `domain.segment_facts.customer_facts` and written with the projector's
row function and COPY types. Values are drawn from small pools with deliberate boundaries
(moments exactly N days +- 1 us before `as_of`, averages exactly on a cent bound, frequencies
exactly on the minimum, case/Unicode variants of texts) so that both sides are pushed onto
the edges where they could disagree. Coordinates have two decimals so that no point sits
within float rounding of a radius.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st
from psycopg import sql

from domain.criteria import FIELDS, OPERATORS, FieldType, Operator, SegmentCriteria, predicate
from domain.segment import effective_criteria
from domain.segment_facts import (
    EARTH_RADIUS_KM,
    CustomerFacts,
    customer_facts,
    days_since,
    haversine_a,
)
from domain.values import Gender, Profile
from projections import segment_sql
from read_api.segments import PREVIEW_COUNT, Preview, preview_where
from service.settings import Settings
from write_api.schemas import SegmentCreate

AS_OF = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)

# --------------------------------------------------------------------------- pools

TEXTS = ["Madrid", "MADRID", " madrid", "Málaga", "MÁLAGA", "Straße", "STRASSE", "Lyon", "İzmir"]
NEEDLES = ["ma", "MA", "Ð", "strasse", "ß", "á", "lyon", "z"]
TAGS = ["vip", "VIP", "b2b", "loyal", "churn-risk"]
CATEGORIES = ["Books", "books", "Electronics", "Toys"]
PRODUCTS = ["Acme Phone", "acme TV", "Globex Laptop", "Initech Stapler"]
CURRENCIES = ["EUR", "EUR", "USD"]
CENTS = [1, 999, 1000, 3333, 5000, 9999, 10000, 12345]
COUNTRIES = ["ES", "FR", "DE", "GB"]
CENTRES = [(40.42, -3.70), (48.86, 2.35), (0.0, 179.99), (89.9, 0.0)]
DAY_COUNTS = [0, 1, 2, 7, 29, 30, 31, 60, 90, 91, 365, 400]
NUMBERS = [0, 1, 18, 25, 30, 42, 65, 100, 1000, 1234.5, 42000]

days = st.sampled_from(DAY_COUNTS)
jitter = st.sampled_from(
    [
        timedelta(0),
        timedelta(0),
        timedelta(microseconds=1),
        -timedelta(microseconds=1),
        timedelta(hours=13),
    ]
)


@st.composite
def moments(draw: st.DrawFn) -> datetime:
    """A moment N days (+- 1 us, or + half a day) before AS_OF; sometimes after it."""
    sign = draw(st.sampled_from([1, 1, 1, -1]))
    return AS_OF - sign * draw(days) * DAY + draw(jitter)


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


@st.composite
def purchases(draw: st.DrawFn, n: int) -> dict[str, Any]:
    return {
        "id": f"p{n}",
        "amount": {
            "amount": draw(st.sampled_from(CENTS)) / 100,
            "currency": draw(st.sampled_from(CURRENCIES)),
        },
        "product": draw(st.sampled_from(PRODUCTS)),
        "category": draw(st.sampled_from(CATEGORIES)),
        "purchaseDate": draw(moments()).isoformat(),
    }


offsets = st.integers(-150, 150)


def near(centre: float, hundredths: int, limit: float) -> float:
    """A coordinate with two decimals close to `centre`, clamped to [-limit, limit]."""
    return max(-limit, min(limit, round(centre + hundredths / 100, 2)))


def drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


@st.composite
def customers(draw: st.DrawFn, n: int) -> CustomerFacts:
    location = None
    if draw(st.integers(0, 2)) > 0:
        lat0, lon0 = draw(st.sampled_from(CENTRES))
        shape = draw(st.sampled_from(["both", "both", "both", "lat", "lon"]))
        location = drop_none(
            {
                "country": draw(st.sampled_from(COUNTRIES)),
                "city": draw(maybe(st.sampled_from(TEXTS))),
                "region": draw(maybe(st.sampled_from(TEXTS))),
                "postalCode": draw(
                    maybe(st.sampled_from(["28001", "28001 ", "SW1A 1AA", "sw1a 1aa"]))
                ),
                "latitude": None if shape == "lon" else near(lat0, draw(offsets), 90),
                "longitude": None if shape == "lat" else near(lon0, draw(offsets), 180),
            }
        )
    custom = drop_none(
        {
            "income": draw(maybe(st.sampled_from([0, 1000, 2000.5, 42000, "42000"]))),
            "incomeCurrency": draw(maybe(st.sampled_from(["EUR", "eur", "USD"]))),
            "education": draw(maybe(st.sampled_from(TEXTS))),
            "occupation": draw(maybe(st.sampled_from(TEXTS))),
        }
    )
    history = [draw(purchases(i)) for i in range(draw(st.integers(0, 4)))]
    profile = drop_none(
        {
            "email": f"c{n}@example.com",
            "name": f"C {n}",
            "age": draw(maybe(st.sampled_from([0, 18, 25, 29, 30, 31, 65, 150]))),
            "gender": draw(maybe(st.sampled_from(list(Gender)))),
            "location": location,
            "preferences": {
                "marketingConsent": draw(st.booleans()),
                "dataProcessingConsent": draw(st.booleans()),
                "language": draw(st.sampled_from(["es", "en", "EN"])),
                "customPreferences": custom,
            },
            "tags": draw(st.lists(st.sampled_from(TAGS), max_size=3)),
            "metadata": drop_none(
                {
                    "source": draw(st.sampled_from(["api", "Website"])),
                    "loginCount": draw(st.sampled_from([0, 1, 30, 1000])),
                    "lastLogin": draw(maybe(moments().map(datetime.isoformat))),
                    "lifetimeValue": draw(
                        maybe(
                            st.fixed_dictionaries(
                                {
                                    "amount": st.sampled_from(CENTS).map(lambda c: c / 100),
                                    "currency": st.sampled_from(CURRENCIES),
                                }
                            )
                        )
                    ),
                    "purchaseHistory": history,
                }
            ),
        }
    )
    dumped = Profile.model_validate(profile).dump()
    created = draw(moments())
    return customer_facts(
        dumped,
        status=draw(st.sampled_from(["ACTIVE", "ACTIVE", "INACTIVE", "SUSPENDED", "DELETED"])),
        created_at=created,
        last_activity=max(created, draw(moments())),
    )


# --------------------------------------------------------------------------- criteria


def _bounds(pair: tuple[Any, Any]) -> dict[str, Any]:
    low, high = pair
    if low is not None and high is not None and low > high:
        low, high = high, low
    return drop_none({"min": low, "max": high})


def ranges(values: list[Any]) -> st.SearchStrategy[dict[str, Any]]:
    bound = st.sampled_from(values)
    return st.tuples(maybe(bound), maybe(bound)).filter(lambda t: t != (None, None)).map(_bounds)


money = st.sampled_from(CENTS).map(lambda c: c / 100)


def money_range() -> st.SearchStrategy[dict[str, Any]]:
    return st.tuples(
        ranges([c / 100 for c in CENTS] + [33.33, 33.34, 0]), maybe(st.sampled_from(["EUR", "USD"]))
    ).map(lambda t: {**t[0], **({"currency": t[1]} if t[1] else {})})


texts = st.lists(st.sampled_from(TEXTS), min_size=1, max_size=3)

CRITERIA: list[tuple[str, str, st.SearchStrategy[Any]]] = [
    ("demographics", "ageRange", ranges([0, 18, 25, 30, 31, 65, 150])),
    (
        "demographics",
        "gender",
        st.lists(st.sampled_from([g.value for g in Gender]), min_size=1, max_size=2),
    ),
    (
        "demographics",
        "incomeRange",
        st.tuples(
            ranges([0, 999.99, 1000, 2000.5, 2000.49, 42000]),
            maybe(st.sampled_from(["EUR", "USD"])),
        ).map(lambda t: {**t[0], **({"currency": t[1]} if t[1] else {})}),
    ),
    ("demographics", "education", texts),
    ("demographics", "occupation", texts),
    (
        "behavioral",
        "purchaseFrequency",
        st.tuples(
            ranges([0.1, 0.5, 1, 1.5, 2, 3, 30]),
            st.sampled_from(["DAILY", "WEEKLY", "MONTHLY", "QUARTERLY", "YEARLY"]),
        ).map(lambda t: {**t[0], "period": t[1]}),
    ),
    ("behavioral", "averageOrderValue", money_range()),
    ("behavioral", "lastPurchaseDays", ranges(DAY_COUNTS)),
    (
        "behavioral",
        "productCategories",
        st.lists(st.sampled_from([*CATEGORIES, "none"]), min_size=1, max_size=2),
    ),
    (
        "behavioral",
        "brandPreferences",
        st.lists(st.sampled_from(["ACME", "globex", "initech", "x"]), min_size=1, max_size=2),
    ),
    ("geographic", "countries", st.lists(st.sampled_from(COUNTRIES), min_size=1, max_size=2)),
    ("geographic", "cities", texts),
    ("geographic", "regions", texts),
    (
        "geographic",
        "postalCodes",
        st.lists(st.sampled_from(["28001", "SW1A 1AA"]), min_size=1, max_size=2),
    ),
    (
        "geographic",
        "distanceFrom",
        st.tuples(
            st.sampled_from(CENTRES),
            st.integers(-50, 50),
            st.integers(-50, 50),
            st.sampled_from([1, 5, 50, 100.5, 150, 1000, 20040]),
        ).map(
            lambda t: {
                "latitude": near(t[0][0], t[1], 90),
                "longitude": near(t[0][1], t[2], 180),
                "radiusKm": t[3],
            }
        ),
    ),
    ("purchaseHistory", "orderCount", ranges([0, 1, 2, 3, 4])),
    ("purchaseHistory", "totalSpent", money_range()),
    ("purchaseHistory", "firstPurchaseDays", ranges(DAY_COUNTS)),
    (
        "purchaseHistory",
        "categories",
        st.lists(st.sampled_from(CATEGORIES), min_size=1, max_size=2),
    ),
]

SCALARS: dict[FieldType, st.SearchStrategy[Any]] = {
    FieldType.NUMBER: st.sampled_from([*NUMBERS, 0.1 + 0.2, 12.34, 33.33]),
    FieldType.DAYS: days,
    FieldType.TEXT: st.sampled_from(TEXTS + NEEDLES + ["active", "es", "eur", "website", "Spain"]),
    FieldType.TAGS: st.sampled_from(TAGS + [c.lower() for c in CATEGORIES] + ["acme", "globex"]),
    FieldType.BOOLEAN: st.booleans(),
}


@st.composite
def custom_rules(draw: st.DrawFn) -> dict[str, Any]:
    name = draw(st.sampled_from(sorted(FIELDS)))
    kind = FIELDS[name].type
    op = draw(st.sampled_from(sorted(OPERATORS[kind])))
    scalar = SCALARS[kind]
    if kind == FieldType.TEXT and op in (Operator.CONTAINS, Operator.STARTS_WITH):
        scalar = st.sampled_from(NEEDLES + TEXTS)
    rule: dict[str, Any] = {"field": name, "operator": op.value}
    if op in (Operator.EXISTS, Operator.NOT_EXISTS):
        return rule
    if op == Operator.BETWEEN:
        pair = sorted(draw(st.lists(scalar, min_size=2, max_size=2)))
        rule["value"] = pair
    elif op in (Operator.IN, Operator.NOT_IN):
        rule["value"] = draw(st.lists(scalar, min_size=1, max_size=3))
    else:
        rule["value"] = draw(scalar)
    return rule


MOMENTS = {
    "created_at": "daysSinceCreated",
    "last_activity": "daysSinceLastActivity",
    "last_login_at": "daysSinceLastLogin",
    "first_purchase_at": "daysSinceFirstPurchase",
    "last_purchase_at": "daysSinceLastPurchase",
}
TYPED_DAYS = {
    "first_purchase_at": ("purchaseHistory", "firstPurchaseDays"),
    "last_purchase_at": ("behavioral", "lastPurchaseDays"),
}
PERIODS = {"DAILY": 1, "WEEKLY": 7, "MONTHLY": 30, "QUARTERLY": 91, "YEARLY": 365}


def one_sided(draw: st.DrawFn, value: Any) -> dict[str, Any]:
    side = draw(st.sampled_from(["min", "max", "both"]))
    return {"min": value, "max": value} if side == "both" else {side: value}


@st.composite
def anchored(draw: st.DrawFn, people: tuple[CustomerFacts, ...]) -> dict[str, Any]:
    """A criterion whose bound sits on (or one unit beside) a generated customer's value."""
    f = draw(st.sampled_from(people))
    step = draw(st.sampled_from([-1, 0, 0, 1]))
    kind = draw(
        st.sampled_from(
            [
                *("days", "days", "money", "money", "frequency"),
                *("rule", "rule", "age", "distance", "distance"),
            ]
        )
    )
    if kind == "days":
        present = [k for k in MOMENTS if getattr(f, k) is not None]
        fact = draw(st.sampled_from(present))
        d = max(0, days_since(getattr(f, fact), AS_OF) + step)
        if fact in TYPED_DAYS and draw(st.booleans()):
            group, key = TYPED_DAYS[fact]
            return {group: {key: one_sided(draw, d)}}
        op = draw(st.sampled_from(sorted(OPERATORS[FieldType.DAYS] - {Operator.EXISTS})))
        value: Any = None
        if op == Operator.BETWEEN:
            value = [d, d + draw(st.sampled_from([0, 1]))]
        elif op in (Operator.IN, Operator.NOT_IN):
            value = [d]
        elif op != Operator.NOT_EXISTS:
            value = d
        return {
            "customRules": [
                drop_none({"field": MOMENTS[fact], "operator": op.value, "value": value})
            ]
        }
    if kind == "money" and f.order_count > 0 and f.total_spent_cents is not None:
        currency = draw(st.sampled_from([None, (f.spend_currency or "eur").upper()]))
        if draw(st.booleans()):
            total = max(0, f.total_spent_cents + step)
            bound = {**one_sided(draw, total / 100), **({"currency": currency} if currency else {})}
            return {"purchaseHistory": {"totalSpent": bound}}
        whole, rest = divmod(f.total_spent_cents, f.order_count)
        cents = max(0, whole + draw(st.sampled_from([0, 1 if rest else 0])) + step)
        bound = {**one_sided(draw, cents / 100), **({"currency": currency} if currency else {})}
        return {"behavioral": {"averageOrderValue": bound}}
    if kind == "frequency" and f.first_purchase_at is not None:
        period = draw(st.sampled_from(sorted(PERIODS)))
        tenure = max(days_since(f.first_purchase_at, AS_OF), PERIODS[period])
        rate = f.order_count * PERIODS[period] / tenure
        if rate <= 1e6:
            return {
                "behavioral": {"purchaseFrequency": {**one_sided(draw, rate), "period": period}}
            }
    if kind == "distance" and f.latitude is not None and f.longitude is not None:
        lat0, lon0 = draw(st.sampled_from(CENTRES))
        a = haversine_a(f.latitude, f.longitude, lat0, lon0)
        km = 2 * EARTH_RADIUS_KM * math.asin(math.sqrt(min(1.0, a)))
        radius = round(km + draw(st.sampled_from([-0.01, 0, 0.01])), 2)
        if 0 < radius <= 20040:
            centre = {"latitude": lat0, "longitude": lon0, "radiusKm": radius}
            return {"geographic": {"distanceFrom": centre}}
    if kind == "age" and f.age is not None:
        return {"demographics": {"ageRange": one_sided(draw, min(150, max(0, f.age + step)))}}
    # a custom rule anchored on one of the customer's scalar or set values
    name = draw(
        st.sampled_from(sorted(n for n, spec in FIELDS.items() if spec.type != FieldType.DAYS))
    )
    spec = FIELDS[name]
    v = getattr(f, spec.fact)
    if spec.type == FieldType.TAGS:
        v = draw(st.sampled_from(sorted(v))) if v else None
    if v is None or draw(st.integers(0, 3)) == 0:
        presence = draw(st.sampled_from(["exists", "not_exists"]))
        return {"customRules": [{"field": name, "operator": presence}]}
    op = draw(
        st.sampled_from(sorted(OPERATORS[spec.type] - {Operator.EXISTS, Operator.NOT_EXISTS}))
    )
    if spec.type == FieldType.NUMBER:
        v = v + step
    elif spec.type in (FieldType.TEXT, FieldType.TAGS):
        inside = op in (Operator.CONTAINS, Operator.STARTS_WITH) and draw(st.booleans())
        if inside and spec.type == FieldType.TEXT and len(v) > 1:
            v = v[draw(st.integers(1, len(v) - 1)) :]  # a part of it that is not a prefix
        elif op == Operator.STARTS_WITH:
            v = v[: draw(st.integers(1, len(v)))]
        if draw(st.booleans()):
            v = v.upper()
        v = v if v.strip() else "x"
    if op == Operator.BETWEEN:
        value = (
            sorted([v, v + draw(st.sampled_from([0, 1]))])
            if spec.type == FieldType.NUMBER
            else [v, v]
        )
    elif op in (Operator.IN, Operator.NOT_IN):
        value = [v]
    else:
        value = v
    return {"customRules": [{"field": name, "operator": op.value, "value": value}]}


@st.composite
def criteria(draw: st.DrawFn, people: tuple[CustomerFacts, ...]) -> SegmentCriteria:
    data: dict[str, Any] = {"customRules": []}
    for _ in range(draw(st.integers(1, 2))):
        if people and draw(st.integers(0, 2)) > 0:
            part = draw(anchored(people))
        elif draw(st.integers(0, 3)) == 0:
            part = {"customRules": [draw(custom_rules())]}
        else:
            group, key, strategy = draw(st.sampled_from(CRITERIA))
            part = {group: {key: draw(strategy)}}
        for group, value in part.items():
            if group == "customRules":
                data["customRules"] += value
            else:
                data.setdefault(group, {}).update(value)
    return SegmentCriteria.model_validate(data)


# --------------------------------------------------------------------------- the test


@pytest.fixture(scope="module")
def conn(migrated: Settings) -> Iterator[psycopg.Connection[Any]]:
    assert migrated.database_url
    with psycopg.connect(migrated.database_url, autocommit=True) as c:
        yield c


def insert(conn: psycopg.Connection[Any], org: str, rows: dict[uuid.UUID, CustomerFacts]) -> None:
    columns = ", ".join(segment_sql.COLUMNS)
    with conn.cursor().copy(f"COPY segment_facts ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(segment_sql.TYPES)
        for cid, facts in rows.items():
            copy.write_row(segment_sql.facts_row(org, cid, 1, facts))


@given(data=st.data())
def test_sql_and_python_agree(conn: psycopg.Connection[Any], data: st.DataObject) -> None:
    size = data.draw(st.integers(0, 30), label="customers")
    people = data.draw(st.tuples(*(customers(i) for i in range(size))), label="people")
    many = data.draw(st.lists(criteria(people), min_size=8, max_size=32), label="criteria")
    org = f"prop-{uuid.uuid4()}"
    rows = {uuid.uuid4(): facts for facts in people}
    with conn.transaction(force_rollback=True):
        insert(conn, org, rows)
        # stored and reloaded facts are the facts (the incremental path reads them back)
        assert segment_sql.load_facts(conn, rows) == rows
        for c in many:
            query, params = segment_sql.compile_criteria(c, org, AS_OF)
            got = {r[0] for r in conn.execute(query, params)}
            holds = predicate(c, AS_OF)
            expected = {cid for cid, facts in rows.items() if holds(facts)}
            assert got == expected, c.dump()


@given(data=st.data())
def test_a_preview_selects_what_a_calculation_of_the_same_body_selects(
    conn: psycopg.Connection[Any], data: st.DataObject
) -> None:
    """`POST /customers/segments/preview` with a create body (purpose included) counts the
    customers a calculation of the segment that body creates would make members."""
    size = data.draw(st.integers(0, 20), label="customers")
    people = data.draw(st.tuples(*(customers(i) for i in range(size))), label="people")
    many = data.draw(st.lists(criteria(people), min_size=4, max_size=12), label="criteria")
    org = f"prop-{uuid.uuid4()}"
    rows = {uuid.uuid4(): facts for facts in people}
    with conn.transaction(force_rollback=True):
        insert(conn, org, rows)
        for c in many:
            purpose = data.draw(st.sampled_from(["general", "marketing"]), label="purpose")
            body = {"name": "previewed", "purpose": purpose, "criteria": c.dump()}
            where, params = preview_where(Preview.model_validate(body), AS_OF)
            count_sql = sql.SQL(PREVIEW_COUNT).format(where=where)
            ids_sql = sql.SQL("SELECT f.id FROM customer_facts f WHERE f.org_id = %s AND {}")
            previewed = {r[0] for r in conn.execute(ids_sql.format(where), [org, *params])}
            counted = conn.execute(count_sql, [org, *params]).fetchone()
            # What the calculation of the created segment evaluates
            # (write_api.background.calculation).
            calculated = effective_criteria(SegmentCreate.model_validate(body).dump())
            assert calculated is not None
            query, calc_params = segment_sql.compile_criteria(calculated, org, AS_OF)
            members = {r[0] for r in conn.execute(query, calc_params)}
            holds = predicate(calculated, AS_OF)
            expected = {cid for cid, facts in rows.items() if holds(facts)}
            assert previewed == members == expected, body
            assert counted == (len(expected),)
