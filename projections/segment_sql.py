"""The `segment_facts` read model and the SQL evaluator of segment criteria.

`segment_facts` holds one row per customer: exactly the fields of
`domain.segment_facts.CustomerFacts` (same names, same normalized values), written by the
customers projection (projections/customers.py) in the same transaction as customers_view.

`compile_criteria` turns validated criteria into ONE parameterized query over it. It
interprets the conditions of `domain.criteria.lower` — the same ones the Python predicate
evaluates — and must mean the same (tests/property/test_criteria_agreement.py). Safety: the
SQL text is assembled only from fixed fragments of this module and column identifiers checked
against the CustomerFacts field names; every client-supplied value travels as a parameter.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import fields
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql

from domain.criteria import (
    DELETED_STATUS,
    SET_FACTS,
    AllOf,
    AnyOf,
    AverageOrderValue,
    Cmp,
    Compare,
    Condition,
    Contains,
    DaysAgo,
    Frequency,
    Near,
    OneOf,
    Overlaps,
    Present,
    SegmentCriteria,
    StartsWith,
    check_as_of,
    lower,
)
from domain.segment_facts import (
    DAY,
    EARTH_RADIUS_KM,
    FACT_NAMES,
    RADIANS_PER_DEGREE,
    CustomerFacts,
)

TABLE = "segment_facts"  # written by the customers projection
# What criteria are evaluated over: TABLE combined with tracked activity (migrations/0010).
FACTS_VIEW = "customer_facts"

# Binary COPY types of the fact columns, in CustomerFacts field order.
_SQL_TYPES = {
    "str": "text",
    "str | None": "text",
    "int": "int4",
    "int | None": "int4",
    "float | None": "float8",
    "bool": "bool",
    "datetime | None": "timestamptz",
    "frozenset[str]": "text[]",
}
_WIDE = {"total_spent_cents": "int8"}  # exact cents of up to 1000 purchases of 10^12
FACT_TYPES: tuple[str, ...] = tuple(
    _WIDE.get(f.name) or _SQL_TYPES[str(f.type)] for f in fields(CustomerFacts)
)
COLUMNS: tuple[str, ...] = ("org_id", "id", "version", *FACT_NAMES)
TYPES: tuple[str, ...] = ("text", "uuid", "int4", *FACT_TYPES)


def facts_row(
    org_id: str, customer_id: UUID, version: int, facts: CustomerFacts
) -> tuple[Any, ...]:
    """The segment_facts row of a customer, in COLUMNS order (sets as sorted lists)."""
    values = [getattr(facts, name) for name in FACT_NAMES]
    return (
        org_id,
        customer_id,
        version,
        *(sorted(v) if isinstance(v, frozenset) else v for v in values),
    )


def facts_from_row(row: Sequence[Any]) -> CustomerFacts:
    """CustomerFacts from the fact columns of a segment_facts row (FACT_NAMES order)."""
    values: dict[str, Any] = {
        name: frozenset(v) if name in SET_FACTS else v
        for name, v in zip(FACT_NAMES, row, strict=True)
    }
    return CustomerFacts(**values)


# id, org and the fact columns of some customers (rows[2:] -> facts_from_row).
LOAD_FACTS = sql.SQL("SELECT id, org_id, {} FROM {} WHERE id = ANY(%s)").format(
    sql.SQL(", ").join(map(sql.Identifier, FACT_NAMES)), sql.Identifier(FACTS_VIEW)
)


def load_facts(conn: psycopg.Connection[Any], ids: Iterable[UUID]) -> dict[UUID, CustomerFacts]:
    """The stored facts of some customers (absent: erased or not projected yet)."""
    return {row[0]: facts_from_row(row[2:]) for row in conn.execute(LOAD_FACTS, (list(ids),))}


# --------------------------------------------------------------------------- compiler

_FACTS = frozenset(FACT_NAMES)
_OPS = {op: sql.SQL(op.value) for op in Cmp}


def _column(fact: str) -> sql.Composable:
    if fact not in _FACTS:  # conditions come from domain.criteria.lower; defence in depth
        raise ValueError(f"not a fact column: {fact!r}")
    return sql.SQL("f.{}").format(sql.Identifier(fact))


class _Value(sql.Composable):
    """A parameter slot: replaced by a positional `%s` (and its value) in text order."""

    def __init__(self, key: int) -> None:
        super().__init__(key)
        self.key = key

    def as_bytes(self, context: Any = None) -> bytes:
        raise TypeError("unresolved criteria parameter")


class _Compiler:
    """Conditions -> SQL. Fragments may be reused (a slot repeats its value)."""

    def __init__(self, as_of: datetime) -> None:
        self.as_of = as_of
        self.values: list[Any] = []

    def param(self, value: Any, cast: str) -> sql.Composable:
        """A slot for `value`, cast to `cast` (one of this module's fixed type names)."""
        self.values.append(value)
        return sql.Composed([_Value(len(self.values) - 1), sql.SQL("::" + cast)])

    def finish(self, query: sql.Composable) -> tuple[sql.Composed, list[Any]]:
        """Slots -> positional placeholders, and the parameter list in text order."""
        params: list[Any] = []

        def walk(node: sql.Composable) -> sql.Composable:
            if isinstance(node, _Value):
                params.append(self.values[node.key])
                return sql.Placeholder()
            if isinstance(node, sql.Composed):
                return sql.Composed([walk(n) for n in node])
            return node

        return sql.Composed([walk(query)]), params

    def days_ago(self, days: int) -> sql.Composable:
        return self.param(self.as_of - days * DAY, "timestamptz")

    def condition(self, c: Condition) -> sql.Composable:
        match c:
            case Compare(fact, op, value):
                cast = (
                    "boolean"
                    if isinstance(value, bool)
                    else ("int8" if isinstance(value, int) else "float8")
                )
                return sql.SQL("{} {} {}").format(_column(fact), _OPS[op], self.param(value, cast))
            case OneOf(fact, values, negate):
                cast = "text[]" if isinstance(values[0], str) else "float8[]"
                test = sql.SQL("{} = ANY({})").format(_column(fact), self.param(list(values), cast))
                return sql.SQL("NOT ({})").format(test) if negate else test
            case Overlaps(fact, values, negate):
                test = sql.SQL("{} && {}").format(_column(fact), self.param(list(values), "text[]"))
                return sql.SQL("NOT ({})").format(test) if negate else test
            case Contains(fact, text):
                return sql.SQL("strpos({}, {}) > 0").format(_column(fact), self.param(text, "text"))
            case StartsWith(fact, text):
                return sql.SQL("starts_with({}, {})").format(
                    _column(fact), self.param(text, "text")
                )
            case Present(fact, negate):
                if fact in SET_FACTS:
                    form = "cardinality({}) = 0" if negate else "cardinality({}) > 0"
                else:
                    form = "{} IS NULL" if negate else "{} IS NOT NULL"
                return sql.SQL(form).format(_column(fact))
            case DaysAgo(fact, low, high, negate):
                # days_since >= low  <=>  moment <= as_of - low days
                # days_since <= high <=>  moment >  as_of - (high + 1) days
                col = _column(fact)
                bounds = []
                if low is not None:
                    bounds.append(sql.SQL("{} <= {}").format(col, self.days_ago(low)))
                if high is not None:
                    bounds.append(sql.SQL("{} > {}").format(col, self.days_ago(high + 1)))
                inside = sql.SQL("({})").format(sql.SQL(" AND ").join(bounds))
                return sql.SQL("NOT {}").format(inside) if negate else inside
            case Frequency(period, low, high):
                return self.frequency(period, low, high)
            case AverageOrderValue(low, high):
                return self.average_order_value(low, high)
            case Near(lat0, lon0, radius_km, threshold):
                if threshold is None:
                    return sql.SQL("(f.latitude IS NOT NULL AND f.longitude IS NOT NULL)")
                return self.near(lat0, lon0, radius_km, threshold)
            case AllOf(parts):
                return sql.SQL("({})").format(
                    sql.SQL(" AND ").join(self.condition(p) for p in parts)
                )
            case AnyOf(parts):
                return sql.SQL("({})").format(
                    sql.SQL(" OR ").join(self.condition(p) for p in parts)
                )
        raise AssertionError(c)

    def frequency(self, period: int, low: float | None, high: float | None) -> sql.Composable:
        """order_count * period >= low * tenure (and/or <= high * tenure), in float8.

        tenure = greatest(trunc(days since first purchase), period): trunc equals the Python
        floor wherever it is >= 0, and below 0 greatest() picks period in both."""
        terms: list[sql.Composable] = [sql.SQL("f.first_purchase_at IS NOT NULL")]
        for bound, sign in ((low, ">="), (high, "<=")):
            if bound is None:
                continue
            orders = sql.SQL("(f.order_count::int8 * {})::float8").format(
                self.param(period, "int8")
            )
            tenure = sql.SQL(
                "greatest(div(extract(epoch FROM ({} - f.first_purchase_at)), 86400), {})::float8"
            ).format(self.param(self.as_of, "timestamptz"), self.param(period, "int8"))
            terms.append(
                sql.SQL("{} " + sign + " {} * {}").format(
                    orders, self.param(bound, "float8"), tenure
                )
            )
        return sql.SQL("({})").format(sql.SQL(" AND ").join(terms))

    def average_order_value(self, low: int | None, high: int | None) -> sql.Composable:
        """Exact: total_spent_cents >= low * order_count (and/or <= high * order_count)."""
        terms: list[sql.Composable] = [sql.SQL("f.order_count > 0")]
        for bound, sign in ((low, ">="), (high, "<=")):
            if bound is not None:
                terms.append(
                    sql.SQL("f.total_spent_cents::numeric " + sign + " {} * f.order_count").format(
                        self.param(bound, "numeric")
                    )
                )
        return sql.SQL("({})").format(sql.SQL(" AND ").join(terms))

    def near(self, lat0: float, lon0: float, radius_km: float, threshold: float) -> sql.Composable:
        """domain.segment_facts.haversine_a, operation for operation, <= threshold; after a
        latitude band that can only drop points farther than the radius (cheap pre-filter)."""
        k = RADIANS_PER_DEGREE
        phi0, lam0 = lat0 * k, lon0 * k
        band = math.degrees(radius_km / EARTH_RADIUS_KM) * (1 + 1e-9) + 1e-6
        phi = sql.SQL("(f.latitude * {})").format(self.param(k, "float8"))
        s1 = sql.SQL("sin(({} - {}) / 2.0::float8)").format(phi, self.param(phi0, "float8"))
        s2 = sql.SQL("sin((f.longitude * {} - {}) / 2.0::float8)").format(
            self.param(k, "float8"), self.param(lam0, "float8")
        )
        a = sql.SQL("({s1} * {s1} + {c0} * cos({phi}) * {s2} * {s2})").format(
            s1=s1, s2=s2, phi=phi, c0=self.param(math.cos(phi0), "float8")
        )
        return sql.SQL(
            "(f.latitude BETWEEN {} AND {} AND f.longitude IS NOT NULL AND {} <= {})"
        ).format(
            self.param(lat0 - band, "float8"),
            self.param(lat0 + band, "float8"),
            a,
            self.param(threshold, "float8"),
        )


def _where(c: _Compiler, criteria: SegmentCriteria) -> sql.Composable:
    parts: list[sql.Composable] = [
        sql.SQL("f.status <> {}").format(c.param(DELETED_STATUS, "text"))
    ]
    parts += [c.condition(condition) for _, condition in lower(criteria)]
    return sql.SQL(" AND ").join(parts)


def compile_where(criteria: SegmentCriteria, as_of: datetime) -> tuple[sql.Composed, list[Any]]:
    """The criteria (and "not deleted") as one condition over `customer_facts f`, with `%s`
    placeholders; for composing counts, samples or joins with the caller's own SQL."""
    c = _Compiler(check_as_of(as_of))
    return c.finish(sql.SQL("({})").format(_where(c, criteria)))


def compile_criteria(
    criteria: SegmentCriteria, org_id: str, as_of: datetime
) -> tuple[sql.Composed, list[Any]]:
    """`SELECT f.id FROM customer_facts f WHERE f.org_id = %s AND ...` and its parameters:
    the ids of the organization's customers that match as of `as_of`."""
    c = _Compiler(check_as_of(as_of))
    query = sql.SQL("SELECT f.id FROM {} f WHERE f.org_id = {} AND {}").format(
        sql.Identifier(FACTS_VIEW), c.param(org_id, "text"), _where(c, criteria)
    )
    return c.finish(query)
