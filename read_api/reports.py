"""`POST /api/v1/customers/reports`: an aggregate report over a selection of the caller's
customers (all of them, a segment's current members, or the listing filters of
`GET /customers`), as JSON, CSV or a self-contained HTML page (`Accept`).

Sections: customers (by status, country, source), acquisition per month, monthly retention
cohorts (any tracked activity), lifetime value percentiles in the main currency, RFM segments
and churn risk (from the organization's fitted purchase model, when there is one).

Everything that can be is aggregated in PostgreSQL (GROUPING SETS, date_trunc,
percentile_cont); for RFM and churn only the buyers' numbers travel, packed as big-endian
float8s in one bytea (16 or 24 bytes a buyer), and are scored with numpy in a worker thread.
All queries run on one pooled connection in one REPEATABLE READ snapshot, so the sections
agree. RFM scores and churn risk are the ones `GET /customers/{id}/insights` gives.
The answer holds aggregates only: no customer id, name, e-mail or any other profile value.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from typing import Annotated, Any
from uuid import UUID

import numpy as np
import orjson
from fastapi import APIRouter, Body, Request, Response
from psycopg import AsyncConnection, sql
from pydantic import Field, field_validator
from starlette.concurrency import run_in_threadpool

from domain import rfm
from domain.errors import Code, DomainError, invalid
from domain.selection import CustomerFilters, filter_params, filter_reads
from domain.values import CustomerStatus, Instant, Model, utc_iso
from projections import purchase_models
from projections.customers import FILTERS, VIEW
from projections.membership import VIEW as MEMBERSHIP
from projections.purchase_models import NO_MODEL
from projections.segments import EXISTS as SEGMENT_EXISTS
from read_api import paging
from read_api.consistency import READ_PROBLEMS, consistent_with
from read_api.customers import MASKED_FIELD_PROBLEMS
from service.auth import CanRead
from service.problems import problem_responses

router = APIRouter(
    prefix="/api/v1/customers",
    tags=["reports"],
    # The primary's: one snapshot over several statements, and a long one on a replica can
    # be cancelled by what it replays.
    dependencies=[consistent_with(VIEW, MEMBERSHIP, replicas=False)],
)

MAX_MONTHS = 120  # calendar months a report may cover (retention is quadratic in them)
MIN_YEAR, MAX_YEAR = 1970, 9998
PERCENTILES = ("p10", "p25", "p50", "p75", "p90", "p99")  # the fractions of _VALUE
LOW_RISK, HIGH_RISK = 0.3, 0.7  # churn risk = 1 - P(alive): low < 0.3 <= medium <= 0.7 < high
UNKNOWN = "unknown"  # the key of customers without a country / source
STATUSES = tuple(s.value for s in CustomerStatus if s is not CustomerStatus.DELETED)

# --------------------------------------------------------------------------- request


class ReportRequest(Model):
    segment_id: UUID | None = Field(
        default=None, description="the segment's current members (not with filters)"
    )
    filters: CustomerFilters | None = None
    from_: Instant | None = Field(
        default=None,
        alias="from",
        description="customers created at or after it; default: 12 months before `to`",
    )
    to: Instant | None = Field(
        default=None, description="customers created at or before it; default: now"
    )

    @field_validator("from_", "to")
    @classmethod
    def _in_range(cls, value: datetime | None) -> datetime | None:
        if value is not None and not MIN_YEAR <= value.year <= MAX_YEAR:
            raise ValueError(f"must be within the years {MIN_YEAR} to {MAX_YEAR}")
        return None if value is None else value.astimezone(UTC)


@dataclass(frozen=True)
class Selection:
    """A validated request: which customers, which months, with the SQL parameters."""

    params: dict[str, Any]
    filters: tuple[str, ...]  # keys of projections.customers.FILTERS
    segment: bool
    months: list[datetime]  # first instant (UTC) of every reported month
    shown: dict[str, Any]  # the selection as the report echoes it


def _month(moment: datetime) -> datetime:
    return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def _add_months(month: datetime, n: int) -> datetime:
    years, index = divmod(month.month - 1 + n, 12)
    return month.replace(year=month.year + years, month=index + 1)


def _year_before(moment: datetime) -> datetime:
    try:
        return moment.replace(year=moment.year - 1)
    except ValueError:  # 29 February
        return moment.replace(year=moment.year - 1, day=28)


def selection(body: ReportRequest, org: str, now: datetime) -> Selection:
    if body.segment_id is not None and body.filters is not None:
        raise invalid("filters", "segmentId and filters are mutually exclusive")
    to = body.to or now
    start = body.from_ or _year_before(to)
    if to <= start:
        raise invalid("to", "must be after from")
    first, last = _month(start), _month(to)
    count = (last.year - first.year) * 12 + last.month - first.month + 1
    if count > MAX_MONTHS:
        raise invalid("from", f"a report covers at most {MAX_MONTHS} calendar months")
    params: dict[str, Any] = {"org": org, "created_from": start, "created_to": to}
    shown_filters: dict[str, Any] | None = None
    if body.filters is not None:
        params |= filter_params(body.filters, "filters")
        shown_filters = body.filters.model_dump(mode="json", by_alias=True, exclude_none=True)
        if "country" in params:
            shown_filters["country"] = params["country"]
    if body.segment_id is not None:
        params["segment"] = body.segment_id
    params |= {"first_month": first, "now": now, "until": now}
    return Selection(
        params=params,
        filters=tuple(f for f in FILTERS if f in params),
        segment=body.segment_id is not None,
        months=[_add_months(first, k) for k in range(count)],
        shown={
            "segmentId": body.segment_id and str(body.segment_id),
            "filters": shown_filters,
            "from": utc_iso(start),
            "to": utc_iso(to),
        },
    )


# --------------------------------------------------------------------------- SQL

SNAPSHOT = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"
# For this transaction only: no JIT compilation, which costs these few big aggregations
# seconds (measured at 1M customers) and saves them little.
SETTINGS = "SELECT set_config('jit', 'off', true)"
# The selected customers; the filters (unqualified columns of customers_view) stay inside.
_SELECTED = "SELECT id, status, country_code, created_at FROM {view} WHERE {where}"
_IN_SEGMENT = (
    "id IN (SELECT customer_id FROM segment_membership"
    " WHERE segment_id = %(segment)s AND left_at IS NULL)"
)
# Months are UTC calendar months: date_trunc('month', t AT TIME ZONE 'UTC').
# Totals, by status, country, source and acquisition month, in one pass.
_PROFILE = """
WITH sel AS ({selected})
SELECT grouping(s.status), grouping(s.country_code), grouping(f.source), grouping(m.month),
    s.status, s.country_code, f.source, m.month, count(*)
FROM sel s
LEFT JOIN segment_facts f ON f.id = s.id
CROSS JOIN LATERAL (SELECT date_trunc('month', s.created_at AT TIME ZONE 'UTC') AS month) m
GROUP BY GROUPING SETS ((), (s.status), (s.country_code), (f.source), (m.month))
"""
# Per acquisition month (cohort) and later month: customers with any tracked event in it
# (events joined to the selection first, so a small selection reads few of them).
_RETENTION = """
WITH sel AS ({selected})
SELECT a.cohort, a.month, count(*) FROM (
    SELECT DISTINCT c.cohort, date_trunc('month', e.occurred_at AT TIME ZONE 'UTC') AS month,
        e.customer_id
    FROM sel s
    CROSS JOIN LATERAL (SELECT date_trunc('month', s.created_at AT TIME ZONE 'UTC') AS cohort) c
    JOIN customer_events e ON e.customer_id = s.id
    WHERE e.org_id = %(org)s AND e.occurred_at >= %(first_month)s
        AND e.occurred_at <= %(created_to)s AND e.occurred_at >= c.cohort AT TIME ZONE 'UTC'
) a
GROUP BY 1, 2
"""
# Buyers per spend currency (upper case; NULL: several currencies), with their spend's
# distribution (the fractions of PERCENTILES).
_VALUE = """
WITH sel AS ({selected})
SELECT upper(f.spend_currency), count(*),
    percentile_cont(ARRAY[0.1, 0.25, 0.5, 0.75, 0.9, 0.99])
        WITHIN GROUP (ORDER BY f.total_spent),
    avg(f.total_spent)
FROM sel s JOIN customer_facts f ON f.id = s.id
WHERE f.order_count > 0
GROUP BY 1
"""
# RFM: every buyer as 2 big-endian float8s, orders and days since the last purchase (the
# facts the insights score and the model's RFM samples are taken from).
_RFM = """
WITH sel AS ({selected})
SELECT count(*), coalesce(string_agg(
    float8send(f.order_count::float8)
    || float8send((extract(epoch FROM %(now)s - f.last_purchase_at) / 86400)::float8),
    ''::bytea), ''::bytea)
FROM sel s JOIN customer_facts f ON f.id = s.id
WHERE f.order_count > 0 AND f.last_purchase_at <= %(now)s
"""
# Churn: every buyer with a tracked purchase as 3 float8s, (x, t_x, T) of its purchase days
# up to now, exactly as the model was fitted and the insights predict (purchase_models).
_CHURN = """
SELECT count(*), coalesce(string_agg(
    float8send(o.x::float8) || float8send(o.t_x::float8) || float8send(o.age::float8),
    ''::bytea), ''::bytea)
FROM ({occasions}) AS o(customer_id, x, t_x, age, repeat_mean, currency)
"""


def _selected(chosen: Selection) -> sql.Composed:
    """The chosen customers (allow-listed SQL only; values are parameters)."""
    where: list[sql.Composable] = [
        sql.SQL("org_id = %(org)s"),
        sql.SQL("status <> 'DELETED'"),
        *(sql.SQL(FILTERS[f]) for f in chosen.filters),
    ]
    if chosen.segment:
        where.append(sql.SQL(_IN_SEGMENT))
    return sql.SQL(_SELECTED).format(view=sql.Identifier(VIEW), where=sql.SQL(" AND ").join(where))


def query(template: str, chosen: Selection) -> sql.Composed:
    """`template` over the chosen customers."""
    return sql.SQL(template).format(selected=_selected(chosen))


def churn_query(chosen: Selection) -> sql.Composed:
    members = sql.SQL(" AND customer_id IN (SELECT id FROM ({}) s)").format(_selected(chosen))
    occasions = sql.SQL(purchase_models.OCCASIONS).format(where=members)
    return sql.SQL(_CHURN).format(occasions=occasions)


@dataclass
class Fetched:
    profile: list[tuple[Any, ...]]
    retention: list[tuple[Any, ...]]
    value: list[tuple[Any, ...]]
    model: purchase_models.Model | None
    rfm: bytes  # (orders, recency) per buyer, big-endian float8s
    churn: bytes  # (x, t_x, T) per buyer with a tracked purchase


async def _packed(conn: AsyncConnection[Any], statement: sql.Composed, chosen: Selection) -> bytes:
    cur = await conn.execute(statement, chosen.params, prepare=False, binary=True)
    row = await cur.fetchone()
    assert row is not None
    return bytes(row[1])


async def fetch(conn: AsyncConnection[Any], chosen: Selection) -> Fetched:
    await conn.execute(SNAPSHOT)
    await conn.execute(SETTINGS)
    org = chosen.params["org"]
    if chosen.segment:
        found = await conn.execute(SEGMENT_EXISTS, (org, chosen.params["segment"]))
        if await found.fetchone() is None:
            raise DomainError(Code.NOT_FOUND, f"segment {chosen.params['segment']} not found")
    model = purchase_models.load(
        await (await conn.execute(purchase_models.LOAD, (org,))).fetchone()
    )
    p = chosen.params
    # Not prepared: a custom plan sees the filters' selectivity and prunes event partitions.
    profile = await (await conn.execute(query(_PROFILE, chosen), p, prepare=False)).fetchall()
    retention = await (await conn.execute(query(_RETENTION, chosen), p, prepare=False)).fetchall()
    value = await (await conn.execute(query(_VALUE, chosen), p, prepare=False)).fetchall()
    rfm_packed = churn_packed = b""
    if model is not None and _rfm_base(model) is not None:
        rfm_packed = await _packed(conn, query(_RFM, chosen), chosen)
    if model is not None and model.bgnbd is not None:
        churn_packed = await _packed(conn, churn_query(chosen), chosen)
    return Fetched(profile, retention, value, model, rfm_packed, churn_packed)


# --------------------------------------------------------------------------- sections


def _month_key(month: datetime) -> str:
    return f"{month.year:04d}-{month.month:02d}"


def _ranked(counts: dict[str, int]) -> dict[str, int]:
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def customers_section(
    rows: list[tuple[Any, ...]], months: list[datetime]
) -> tuple[dict[str, Any], dict[str, int]]:
    """The `customers` and the per-month acquisition counts."""
    total = 0
    by_status = dict.fromkeys(STATUSES, 0)
    by_country: dict[str, int] = {}
    by_source: dict[str, int] = {}
    by_month = {_month_key(m): 0 for m in months}
    for g_status, g_country, g_source, g_month, status, country, source, month, n in rows:
        if not g_status:
            by_status[status] = by_status.get(status, 0) + n
        elif not g_country:
            key = country or UNKNOWN
            by_country[key] = by_country.get(key, 0) + n
        elif not g_source:
            key = source or UNKNOWN
            by_source[key] = by_source.get(key, 0) + n
        elif not g_month:
            by_month[_month_key(month)] = by_month.get(_month_key(month), 0) + n
        else:
            total = n
    section = {
        "total": total,
        "byStatus": by_status,
        "byCountry": _ranked(by_country),
        "bySource": _ranked(by_source),
    }
    return section, by_month


def retention_section(
    rows: list[tuple[Any, ...]], months: list[datetime], sizes: dict[str, int]
) -> dict[str, Any]:
    active: dict[tuple[str, str], int] = {
        (_month_key(cohort), _month_key(month)): n for cohort, month, n in rows
    }
    keys = [_month_key(m) for m in months]
    by_cohort: dict[str, Any] = {}
    for i, cohort in enumerate(keys):
        size = sizes.get(cohort, 0)
        counts = [active.get((cohort, later), 0) for later in keys[i:]]
        by_cohort[cohort] = {
            "size": size,
            "active": counts,
            "shares": [round(n / size, 4) if size else None for n in counts],
        }
    return {"byCohort": by_cohort}


def _money(amount: float | None) -> float | None:
    return None if amount is None else round(float(amount), 2)


def value_section(
    rows: list[tuple[Any, ...]], model: purchase_models.Model | None
) -> dict[str, Any]:
    """Spend of the buyers in the main currency: the model's, else the most common one."""
    by_currency = {currency: (n, pcts, mean) for currency, n, pcts, mean in rows}
    buyers = sum(n for n, _, _ in by_currency.values())
    main = model.currency.upper() if model is not None and model.currency else None
    if main is None:
        known = [(-n, c) for c, (n, _, _) in by_currency.items() if c is not None]
        main = min(known)[1] if known else None
    n, pcts, mean = by_currency.get(main, (0, None, None)) if main else (0, None, None)
    return {
        "currency": main,
        "buyers": buyers,
        "customers": n,
        "excludedOtherCurrencies": buyers - n,
        "percentiles": {
            name: _money(pcts[i]) if pcts else None for i, name in enumerate(PERCENTILES)
        },
        "mean": _money(mean),
    }


def _rfm_base(model: purchase_models.Model) -> tuple[list[float], list[float]] | None:
    recency, frequency = model.rfm_base.get("recency"), model.rfm_base.get("frequency")
    return (recency, frequency) if recency and frequency else None


def _floats(packed: bytes, width: int) -> Any:
    """Columns of `width` big-endian float8s per row, as native float arrays."""
    return np.frombuffer(packed, dtype=">f8").reshape(-1, width).astype(np.float64).T


def rfm_section(model: purchase_models.Model | None, packed: bytes) -> dict[str, Any]:
    """Buyers per RFM segment, scored against the model's samples (numpy: off the loop)."""
    base = _rfm_base(model) if model is not None else None
    if base is None:
        return {"buyers": None, "segments": None, "reason": NO_MODEL}
    orders, recency = _floats(packed, 2)
    segments = dict.fromkeys(rfm.SEGMENT_NAMES, 0)
    if orders.size:
        r = rfm.quintiles(recency, base[0], higher_is_better=False)
        f = rfm.quintiles(orders, base[1])
        cells = np.bincount((r - 1) * 5 + (f - 1), minlength=25)
        for cell, n in enumerate(cells.tolist()):
            segments[rfm.segment_name(cell // 5 + 1, cell % 5 + 1)] += n
    return {"buyers": int(orders.size), "segments": segments, "reason": None}


def churn_section(model: purchase_models.Model | None, packed: bytes) -> dict[str, Any]:
    """Buyers by 1 - P(alive) under the model's BG/NBD fit (numpy: off the loop)."""
    fit = model.bgnbd if model is not None else None
    if fit is None:
        return {"buyers": None, "buckets": None, "reason": NO_MODEL}
    x, t_x, age = _floats(packed, 3)
    buckets = {"low": 0, "medium": 0, "high": 0}
    if x.size:
        risk = 1.0 - fit.p_alive(x, t_x, np.maximum(age, t_x))
        low, high = int((risk < LOW_RISK).sum()), int((risk > HIGH_RISK).sum())
        buckets = {"low": low, "medium": int(x.size) - low - high, "high": high}
    return {"buyers": int(x.size), "buckets": buckets, "reason": None}


def score(model: purchase_models.Model | None, fetched: Fetched) -> tuple[Any, Any]:
    return rfm_section(model, fetched.rfm), churn_section(model, fetched.churn)


# --------------------------------------------------------------------------- renderings

JSON, CSV, HTML = "application/json", "text/csv", "text/html"


def negotiate(accept: str | None) -> str:
    """JSON, CSV or HTML: the acceptable one with the highest q (first on ties); JSON when
    the client accepts none of them specifically (no header, */*, application/json...)."""
    best, best_q = JSON, 0.0
    for part in (accept or "").split(","):
        media, *options = (p.strip().lower() for p in part.split(";"))
        if media not in {JSON, CSV, HTML}:
            continue
        q = 1.0
        for option in options:
            name, _, number = option.partition("=")
            if name.strip() == "q":
                try:
                    q = float(number)
                except ValueError:
                    q = 0.0
        if q > best_q:
            best, best_q = media, q
    return best


def _cells(value: Any, path: str) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from _cells(inner, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for i, inner in enumerate(value):
            yield from _cells(inner, f"{path}.{i}" if path else str(i))
    else:
        yield path, value


def _safe_cell(text: str) -> str:
    """No formula injection when the file is opened in a spreadsheet."""
    return "'" + text if text[:1] in {"=", "+", "-", "@", "\t", "\r"} else text


def to_csv(report: dict[str, Any]) -> str:
    """One row per leaf of the JSON report: section, dotted key path, value (empty = null)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(("section", "key", "value"))
    for section, body in report.items():
        for key, value in _cells(body, ""):
            cell: Any = value
            if value is None:
                cell = ""
            elif not isinstance(value, int | float):
                cell = _safe_cell(str(value))
            writer.writerow((section, _safe_cell(key), cell))
    return out.getvalue()


_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;color:#222;max-width:60rem}
h1{font-size:1.5rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ccc}
h3{font-size:1rem;margin-bottom:.2rem}svg text{font-size:12px;fill:#222}
table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ddd;padding:2px 6px;
text-align:right}.muted{color:#666}
"""
_LABEL_WIDTH, _BAR_WIDTH, _ROW = 190, 360, 22
_MAX_BARS = 25


def _bars(title: str, items: list[tuple[str, float]], fmt: Callable[[float], str]) -> str:
    """A horizontal bar chart as inline SVG (labels and values escaped)."""
    if not items:
        return f"<h3>{escape(title)}</h3><p class='muted'>No data.</p>"
    if len(items) > _MAX_BARS:
        rest = sum(v for _, v in items[_MAX_BARS - 1 :])
        items = [*items[: _MAX_BARS - 1], ("(all others)", rest)]
    top = max(*(v for _, v in items), 0.0) or 1.0
    height = _ROW * len(items) + 4
    width = _LABEL_WIDTH + _BAR_WIDTH + 90
    parts = [
        f"<h3>{escape(title)}</h3>",
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}"'
        f' role="img" aria-label="{escape(title)}">',
    ]
    for i, (label, value) in enumerate(items):
        y = i * _ROW + 2
        w = _BAR_WIDTH * max(value, 0.0) / top
        shown = label if len(label) <= 30 else label[:29] + "…"
        parts += [
            f'<text x="{_LABEL_WIDTH - 6}" y="{y + 15}" text-anchor="end">{escape(shown)}</text>',
            f'<rect x="{_LABEL_WIDTH}" y="{y + 3}" width="{w:.1f}" height="{_ROW - 6}"'
            ' fill="#4e79a7"/>',
            f'<text x="{_LABEL_WIDTH + w + 4:.1f}" y="{y + 15}">{escape(fmt(value))}</text>',
        ]
    parts.append("</svg>")
    return "".join(parts)


def _count(value: float) -> str:
    return f"{int(value):,}"


def _percent(value: float) -> str:
    return f"{value * 100:.1f}%"


def _retention_html(section: dict[str, Any]) -> str:
    cohorts: dict[str, Any] = section["byCohort"]
    # Size-weighted share active k months after acquisition, over the cohorts that reach k.
    width = max((len(c["active"]) for c in cohorts.values()), default=0)
    average: list[tuple[str, float]] = []
    for k in range(width):
        reached = [c for c in cohorts.values() if len(c["active"]) > k and c["size"]]
        size = sum(c["size"] for c in reached)
        if size:
            average.append((f"month {k}", sum(c["active"][k] for c in reached) / size))
    head = "".join(f"<th>{k}</th>" for k in range(width))
    rows = []
    for month, c in cohorts.items():
        cells = "".join(
            "<td></td>"
            if share is None
            else f'<td style="background:rgba(78,121,167,{share:.3f})">{_percent(share)}</td>'
            for share in c["shares"]
        )
        rows.append(f"<tr><th>{escape(month)}</th><td>{c['size']:,}</td>{cells}</tr>")
    return (
        _bars("Active share by months since acquisition", average, _percent)
        + "<h3>Cohorts (share active k months after acquisition)</h3>"
        + f"<table><tr><th>cohort</th><th>size</th>{head}</tr>{''.join(rows)}</table>"
    )


def to_html(report: dict[str, Any]) -> str:
    meta, people = report["report"], report["customers"]
    value, segments, churn = report["lifetimeValue"], report["rfm"], report["churnRisk"]
    selection = "all customers"
    if meta["segmentId"]:
        selection = f"members of segment {meta['segmentId']}"
    elif meta["filters"]:
        shown = (
            f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in meta["filters"].items()
        )
        selection = "customers with " + "; ".join(shown)
    currency = value["currency"] or ""
    value_items = [(k, v) for k, v in value["percentiles"].items() if v is not None]
    if value["mean"] is not None:
        value_items.append(("mean", value["mean"]))

    def money(amount: float) -> str:
        return f"{amount:,.2f} {currency}"

    def model_part(title: str, body: dict[str, Any], key: str) -> str:
        if body[key] is None:
            return f"<p class='muted'>{escape(body['reason'])}</p>"
        items = [(k, float(n)) for k, n in body[key].items()]
        return f"<p>{body['buyers']:,} buyers scored.</p>" + _bars(title, items, _count)

    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<title>Customer report</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>Customer report</h1>",
        f"<p>{escape(selection)}; created {escape(meta['from'])} to {escape(meta['to'])};"
        f" as of {escape(meta['asOf'])}.</p>",
        f"<h2>Customers</h2><p>{people['total']:,} customers.</p>",
        _bars("By status", [(k, float(v)) for k, v in people["byStatus"].items()], _count),
        _bars("By country", [(k, float(v)) for k, v in people["byCountry"].items()], _count),
        _bars("By source", [(k, float(v)) for k, v in people["bySource"].items()], _count),
        "<h2>Acquisition</h2>",
        _bars(
            "Customers created per month",
            [(k, float(v)) for k, v in report["acquisition"]["byMonth"].items()],
            _count,
        ),
        "<h2>Retention</h2>",
        _retention_html(report["retention"]),
        "<h2>Lifetime value</h2>",
        f"<p>{value['customers']:,} buyers in {escape(currency or 'no currency')};"
        f" {value['excludedOtherCurrencies']:,} buying in other currencies left out.</p>",
        _bars("Total spent", value_items, money),
        "<h2>RFM segments</h2>",
        model_part("Buyers per segment", segments, "segments"),
        "<h2>Churn risk</h2>",
        model_part("Buyers per risk (1 - P(alive))", churn, "buckets"),
        "</body></html>",
    ]
    return "".join(parts)


_HTML_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
    "X-Content-Type-Options": "nosniff",
    "Vary": "Accept",
}

# --------------------------------------------------------------------------- endpoint

_REPORT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": [
        "report",
        "customers",
        "acquisition",
        "retention",
        "lifetimeValue",
        "rfm",
        "churnRisk",
    ],
}


@router.post(
    "/reports",
    response_class=Response,
    responses={
        200: {
            "description": "The report: JSON (default), CSV (`Accept: text/csv`: rows"
            " section,key,value) or an HTML page with charts (`Accept: text/html`)",
            "content": {
                JSON: {"schema": _REPORT_SCHEMA},
                CSV: {"schema": {"type": "string"}},
                HTML: {"schema": {"type": "string"}},
            },
        },
        **problem_responses({404: "No such segment in the caller's organization"}),
        **READ_PROBLEMS,
        **MASKED_FIELD_PROBLEMS,
    },
)
async def customer_report(
    request: Request,
    principal: CanRead,
    body: Annotated[ReportRequest | None, Body()] = None,
) -> Response:
    """Aggregates over the organization's customers (not DELETED) created in [`from`, `to`]:
    all of them, a segment's current members (`segmentId`) or those matching `filters` (the
    filters of `GET /customers`). Months are UTC calendar months."""
    now = datetime.now(UTC)
    if body is not None and body.filters is not None:
        principal.require_visible(filter_reads(body.filters, "filters"))
    chosen = selection(body or ReportRequest(), principal.org, now)
    async with paging.pool(request).connection() as conn, conn.transaction():
        fetched = await fetch(conn, chosen)
    people, acquired = customers_section(fetched.profile, chosen.months)
    model = fetched.model
    rfm_out, churn = await run_in_threadpool(score, model, fetched)
    report = {
        "report": {
            "asOf": utc_iso(now),
            **chosen.shown,
            "model": model and model.summary(),
        },
        "customers": people,
        "acquisition": {"byMonth": acquired},
        "retention": retention_section(fetched.retention, chosen.months, acquired),
        "lifetimeValue": value_section(fetched.value, model),
        "rfm": rfm_out,
        "churnRisk": churn,
    }
    media = negotiate(request.headers.get("accept"))
    if media == CSV:
        return Response(
            to_csv(report),
            media_type=CSV,
            headers={
                "Content-Disposition": 'attachment; filename="customer-report.csv"',
                "Vary": "Accept",
            },
        )
    if media == HTML:
        return Response(to_html(report), media_type=HTML, headers=_HTML_HEADERS)
    return Response(orjson.dumps(report), media_type=JSON, headers={"Vary": "Accept"})
