"""Customer metrics and insights from tracked activity and profile facts:
`GET /customers/{id}/analytics` and `GET /customers/{id}/insights`.

Totals come from `customer_facts` (profile purchase history + tracked events, the values
segment criteria see); engagement windows, channels, types and devices are counted from
`customer_events` on read (windows slide with the clock).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from fastapi import APIRouter, Request
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from domain import rfm
from domain.access import Permission, Principal
from domain.errors import Code, DomainError
from domain.values import utc_iso
from projections import purchase_models
from projections.customers import VIEW
from read_api import paging
from read_api.consistency import READ_PROBLEMS, once_settled
from service.auth import CanRead
from service.problems import problem_responses

router = APIRouter(prefix="/api/v1/customers", tags=["analytics"])
_ERRORS = {
    **problem_responses({404: "No such customer in the caller's organization"}),
    **READ_PROBLEMS,
}

FACTS = (
    "SELECT order_count, upper(spend_currency), total_spent, average_order_value,"
    " first_purchase_at, last_purchase_at, login_count, last_login_at, last_activity,"
    " created_at, categories"
    " FROM customer_facts WHERE id = %s AND org_id = %s AND status <> 'DELETED'"
)
ENGAGEMENT = (
    "SELECT event_type, channel, count(*),"
    " count(*) FILTER (WHERE occurred_at > now() - interval '7 days'),"
    " count(*) FILTER (WHERE occurred_at > now() - interval '30 days'),"
    " count(*) FILTER (WHERE occurred_at > now() - interval '90 days')"
    " FROM customer_events WHERE customer_id = %s GROUP BY event_type, channel"
)
DEVICES = (
    "SELECT device_info->>'type', device_info->>'os', device_info->>'browser', count(*),"
    " min(occurred_at), max(occurred_at)"
    " FROM customer_events WHERE customer_id = %s AND device_info IS NOT NULL"
    " GROUP BY 1, 2, 3 ORDER BY max(occurred_at) DESC"
)


def money(amount: float | None, currency: str | None) -> dict[str, Any] | None:
    if amount is None or currency is None:
        return None
    return {"amount": round(amount, 2), "currency": currency}


def days_since(moment: datetime | None, now: datetime) -> int | None:
    return None if moment is None else max(0, (now - moment).days)


@router.get(
    "/{id}/analytics",
    responses={
        200: {
            "description": "lifetimeValue, orderCount, averageOrderValue, purchaseFrequency"
            " (orders per 30 days since the first), recencyDays, tenureDays, engagement by"
            " window, type and channel, devices"
        },
        **_ERRORS,
    },
)
async def customer_analytics(request: Request, principal: CanRead, id: UUID) -> dict[str, Any]:
    """The customer's metrics. Money is in the customer's one purchase currency; with
    purchases in several currencies, amounts are null (no exchange rates). Device details
    (OS, browser) need the personal-data permission; without it devices are counted by type."""
    pool = paging.pool(request)
    return await once_settled(request, VIEW, id, lambda: analytics(pool, principal, id))


async def analytics(
    pool: AsyncConnectionPool[Any], principal: Principal, id: UUID
) -> dict[str, Any]:
    async with pool.connection() as conn:
        row = await (await conn.execute(FACTS, (id, principal.org))).fetchone()
        if row is None:
            raise DomainError(Code.NOT_FOUND, f"customer {id} not found")
        engagement = await (await conn.execute(ENGAGEMENT, (id,))).fetchall()
        devices = await (await conn.execute(DEVICES, (id,))).fetchall()
    orders, currency, spent, aov, first, last, logins, last_login, active, created, cats = row
    now = datetime.now(UTC)
    tenure = days_since(created, now)
    since_first = days_since(first, now)
    by_type: dict[str, int] = {}
    by_channel: dict[str, int] = {}
    windows = {"last7Days": 0, "last30Days": 0, "last90Days": 0}
    for kind, channel, total, d7, d30, d90 in engagement:
        by_type[kind] = by_type.get(kind, 0) + total
        key = channel or "unknown"
        by_channel[key] = by_channel.get(key, 0) + total
        for name, n in zip(windows, (d7, d30, d90), strict=True):
            windows[name] += n
    personal = principal.can(Permission.PERSONAL_DATA)
    return {
        "customerId": str(id),
        "lifetimeValue": money(spent, currency),
        "orderCount": orders,
        "averageOrderValue": money(aov, currency),
        "purchaseFrequency": None
        if since_first is None
        else round(orders * 30 / max(since_first, 30), 4),
        "firstPurchaseAt": first and utc_iso(first),
        "lastPurchaseAt": last and utc_iso(last),
        "recencyDays": days_since(last, now),
        "tenureDays": tenure,
        "categories": sorted(cats),
        "loginCount": logins,
        "lastLogin": last_login and utc_iso(last_login),
        "lastActivity": active and utc_iso(active),
        "engagement": {**windows, "byType": by_type, "byChannel": by_channel},
        "devices": _devices(devices, personal),
    }


def _devices(rows: list[Any], personal: bool) -> list[dict[str, Any]]:
    if personal:
        return [
            {
                "type": kind,
                "os": os or None,
                "browser": browser or None,
                "events": n,
                "firstSeen": utc_iso(seen_first),
                "lastSeen": utc_iso(seen_last),
            }
            for kind, os, browser, n, seen_first, seen_last in rows
        ]
    by_type: dict[str, int] = {}
    for kind, _, _, n, _, _ in rows:
        by_type[kind] = by_type.get(kind, 0) + n
    return [{"type": k, "events": n} for k, n in sorted(by_type.items())]


INSIGHT_FACTS = (
    "SELECT order_count, last_purchase_at, total_spent, upper(spend_currency)"
    " FROM customer_facts WHERE id = %s AND org_id = %s AND status <> 'DELETED'"
)
# The customer's purchase days as the model fits count them.
OCCASIONS = sql.SQL(purchase_models.OCCASIONS).format(
    where=sql.SQL(" AND customer_id = %(customer)s")
)
# Preferred channel and category (most frequent; ties by name), and the events of the last
# 30 days against the 30 before.
HABITS = """
SELECT
    (SELECT channel FROM customer_events WHERE customer_id = %(id)s AND channel IS NOT NULL
        GROUP BY channel ORDER BY count(*) DESC, channel LIMIT 1),
    (SELECT event_data->>'category' FROM customer_events
        WHERE customer_id = %(id)s AND event_type = 'PURCHASE'
        AND coalesce(event_data->>'category', '') <> ''
        GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1),
    count(*) FILTER (WHERE occurred_at > now() - interval '30 days'),
    count(*) FILTER (WHERE occurred_at <= now() - interval '30 days')
FROM customer_events
WHERE customer_id = %(id)s AND occurred_at > now() - interval '60 days'
"""


def trend(recent: int, previous: int) -> str:
    if recent == previous == 0:
        return "inactive"
    if previous == 0 or recent > 1.25 * previous:
        return "rising"
    return "declining" if recent < 0.8 * previous else "steady"


@router.get(
    "/{id}/insights",
    responses={
        200: {
            "description": "rfm, probabilityAlive, expectedPurchases90Days,"
            " predictedValue12Months, preferredChannel, preferredCategory, engagementTrend"
        },
        **_ERRORS,
    },
)
async def customer_insights(request: Request, principal: CanRead, id: UUID) -> dict[str, Any]:
    """RFM scores against the organization's buyers and the predictions of the model in use
    (its latest whole-base fit) from the customer's tracked purchase days: null until a model
    is fitted, for customers without a tracked purchase, and, for value, for customers buying
    in another currency than the model's."""
    pool = paging.pool(request)
    return await once_settled(request, VIEW, id, lambda: insights(pool, principal, id))


async def insights(
    pool: AsyncConnectionPool[Any], principal: Principal, id: UUID
) -> dict[str, Any]:
    now = datetime.now(UTC)
    async with pool.connection() as conn:
        facts = await (await conn.execute(INSIGHT_FACTS, (id, principal.org))).fetchone()
        if facts is None:
            raise DomainError(Code.NOT_FOUND, f"customer {id} not found")
        row = await (await conn.execute(purchase_models.LOAD, (principal.org,))).fetchone()
        habits = await (await conn.execute(HABITS, {"id": id})).fetchone()
        params = {"org": principal.org, "until": now, "customer": id}
        days = await (await conn.execute(OCCASIONS, params)).fetchone()
        latest = None
        if row is None:  # say why: the latest fit's error, if one failed
            latest = await (await conn.execute(purchase_models.LIST, (principal.org, 1))).fetchone()
    assert habits is not None
    channel, category, recent, previous = habits
    model = purchase_models.load(row)
    scores = rfm_scores(model, facts, now) if model is not None else None
    predicted = predictions(model, days)
    return {
        "customerId": str(id),
        "asOf": utc_iso(now),
        "rfm": scores,
        **predicted,
        "preferredChannel": channel,
        "preferredCategory": category,
        "engagementTrend": {
            "trend": trend(recent, previous),
            "last30Days": recent,
            "previous30Days": previous,
        },
        "model": model and model.summary(),
        "reason": reason(model, purchase_models.load(latest), days, scores, predicted),
    }


def reason(
    model: purchase_models.Model | None,
    latest: purchase_models.Model | None,
    days: tuple[Any, ...] | None,
    scores: dict[str, Any] | None,
    predicted: dict[str, Any],
) -> str | None:
    """Why model-based figures of the insights are null (None: none is)."""
    if model is None:
        if latest is not None and latest.state == "FAILED" and latest.error:
            return f"{purchase_models.NO_MODEL}; the latest fit failed: {latest.error}"
        return purchase_models.NO_MODEL
    if days is None or scores is None:
        return "the customer has no tracked purchase up to now: RFM and predictions need one"
    if predicted["predictedValue12Months"] is None:
        return (
            "predictedValue12Months: the customer's purchases are not all in the model's"
            f" currency ({model.currency})"
        )
    return None


def rfm_scores(
    model: purchase_models.Model, facts: tuple[Any, ...], now: datetime
) -> dict[str, Any] | None:
    orders, last, spent, currency = facts
    base = model.rfm_base
    if not orders or last is None or not base.get("recency") or not base.get("frequency"):
        return None
    r = rfm.quintile((now - last).total_seconds() / 86400, base["recency"], higher_is_better=False)
    f = rfm.quintile(float(orders), base["frequency"])
    same_money = currency == model.currency and spent is not None and "monetary" in base
    m = rfm.quintile(float(spent), base["monetary"]) if same_money else None
    return {"recency": r, "frequency": f, "monetary": m, "segment": rfm.segment_name(r, f)}


def finite(value: float) -> float | None:
    """Rounded; None where a degenerate fit leaves the model without a number."""
    return round(value, 6) if math.isfinite(value) else None


def predictions(
    model: purchase_models.Model | None, days: tuple[Any, ...] | None
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "probabilityAlive": None,
        "expectedPurchases90Days": None,
        "predictedValue12Months": None,
    }
    if model is None or model.bgnbd is None or days is None:
        return out
    _, x, t_x, age, repeat_mean, currency = days
    x, t_x, age = float(x), float(t_x), float(age)
    out["probabilityAlive"] = finite(model.bgnbd.p_alive(x, t_x, age))
    out["expectedPurchases90Days"] = finite(model.bgnbd.expected_purchases(90, x, t_x, age))
    gg = model.gamma_gamma
    if gg is not None and currency is not None and currency == model.currency:
        # Without a repeat occasion of positive value, the population's mean spend applies.
        mean = float(repeat_mean or 0)
        spend = gg.expected_average_value(x if mean > 0 else 0.0, mean)
        value = finite(model.bgnbd.expected_purchases(365, x, t_x, age) * spend)
        out["predictedValue12Months"] = money(value, currency)
    return out
