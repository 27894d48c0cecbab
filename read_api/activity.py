"""Customer metrics from tracked activity and profile facts: `GET /customers/{id}/analytics`.

Totals come from `customer_facts` (profile purchase history + tracked events, the values
segment criteria see); engagement windows, channels, types and devices are counted from
`customer_events` on read (windows slide with the clock).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from fastapi import APIRouter, Request

from domain.errors import Code, DomainError
from domain.values import utc_iso
from read_api import paging
from read_api.consistency import READ_PROBLEMS
from service.auth import CanRead, Permission
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
    async with paging.pool(request).connection() as conn:
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
