"""Purchase occasions are calendar days, and so are the BG/NBD inputs T and t_x: every
purchase's time of day shifted (from just after midnight to just before the next) gives the
same fit, and so does a calibration end at another time of the same day (after that day's
purchases)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, time, timedelta
from typing import Any

import numpy as np
import psycopg

from domain.activity import ONE
from eventstore.application import Customers
from projections import purchase_models
from projections.runner import Projector
from service.settings import Settings
from tests.integration.test_erasure import people
from write_api.tracking import ActivityWriter, Submission

BUYERS = 60


def histories() -> list[list[tuple[int, float]]]:
    """Per buyer, its purchase days (days before today) and amounts: a first purchase 40-300
    days ago, repeats at random gaps, some stopping."""
    rng = np.random.default_rng(17)
    out = []
    for _ in range(BUYERS):
        age = int(rng.integers(40, 300))
        days = [age]
        while rng.random() < 0.7 and days[-1] > 3:
            days.append(days[-1] - int(rng.integers(1, 40)))
        out.append([(d, round(float(rng.gamma(4, 8)), 2)) for d in days if d > 0])
    return out


def track(settings: Settings, app: Customers, org: str, at: time, now: datetime) -> None:
    buyers = people(app, org, BUYERS)
    Projector(settings, app=app).run_once()
    today = datetime.combine(now.date(), time(), tzinfo=UTC)
    events: list[Any] = []
    for customer, purchases in zip(buyers, histories(), strict=True):
        for n, (days_ago, amount) in enumerate(purchases):
            stamp = datetime.combine((today - timedelta(days=days_ago)).date(), at, tzinfo=UTC)
            data = {"orderId": f"o{n}", "amount": amount, "currency": "EUR", "product": "Tea"}
            event = {
                "type": "PURCHASE",
                "customerId": str(customer.id),
                "timestamp": stamp.isoformat(),
                "data": data,
            }
            events.append(ONE.validate_python(event))
    writer = ActivityWriter(settings)
    try:
        for start in range(0, len(events), 500):
            submitted = writer.submit(Submission(org, events[start : start + 500], now))
            assert submitted.accepted == len(events[start : start + 500])
    finally:
        writer.close()


# Every purchase of the organization moved to another time of the same day.
SHIFT = (
    "UPDATE customer_events SET occurred_at = date_trunc('day', occurred_at AT TIME ZONE 'UTC')"
    " AT TIME ZONE 'UTC' + %s WHERE org_id = %s AND event_type = 'PURCHASE'"
)


def test_the_time_of_day_of_purchases_and_of_the_end_moves_no_fit(
    settings: Settings, app: Customers
) -> None:
    now = datetime.now(UTC)
    org = f"org-{uuid.uuid4().hex[:6]}"
    track(settings, app, org, time(0, 0, 1), now)
    yesterday = datetime.combine(now.date() - timedelta(days=1), time(), tzinfo=UTC)
    end, noon = (
        yesterday + timedelta(hours=23, minutes=59, seconds=59),
        yesterday + timedelta(hours=12),
    )
    with psycopg.connect(str(settings.database_url), autocommit=True) as conn:
        fits = [purchase_models.fit(conn, org, end), purchase_models.fit(conn, org, noon)]
        shifted = conn.execute(SHIFT, (timedelta(hours=23, minutes=59, seconds=58), org))
        assert shifted.rowcount == sum(len(h) for h in histories())
        fits.append(purchase_models.fit(conn, org, end))
    for done in fits:
        assert done["state"] == "SUCCEEDED", done["error"]
        assert done["customers"] == BUYERS
    bgnbd = [done["bgnbd"].obj for done in fits]
    assert bgnbd[0]["a"] > 0 and bgnbd[0]["b"] > 0
    assert bgnbd[1] == bgnbd[0]  # the end at noon instead of midnight: T the same
    assert bgnbd[2] == bgnbd[0]  # every purchase just before midnight instead of just after
    assert fits[2]["gg"].obj == fits[0]["gg"].obj
