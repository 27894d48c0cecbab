"""Retention of tracked activity (this module's own database): whole monthly partitions older
than the retention are dropped, running totals keep counting them, and events older than
the retention are refused before they reach the log."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import psycopg

from domain.activity import ONE, check_times
from eventstore.application import Customers
from projections.runner import Projector
from service.settings import Settings
from tests.integration.test_erasure import people
from write_api.tracking import ActivityWriter, Submission, drop_expired


def partitions(conn: psycopg.Connection[object]) -> set[str]:
    rows = conn.execute(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'customer_events'::regclass"
    )
    return {str(r[0]) for r in rows}


def test_old_partitions_are_dropped_and_totals_kept(settings: Settings, app: Customers) -> None:
    org = f"org-{uuid.uuid4().hex[:6]}"
    (customer,) = people(app, org, 1)
    Projector(settings, app=app).run_once()
    now = datetime.now(UTC)
    ages = (0, 70, 430)  # days: this month or the last, two months back, over a year back
    events = [
        ONE.validate_python(
            {
                "type": "PURCHASE",
                "customerId": str(customer.id),
                "timestamp": (now - timedelta(days=days)).isoformat(),
                "data": {"orderId": str(days), "amount": 10, "currency": "EUR", "product": "Hat"},
            }
        )
        for days in ages
    ]
    writer = ActivityWriter(settings)
    try:
        assert writer.submit(Submission(org, events, now)).accepted == 3
    finally:
        writer.close()
    old = now - timedelta(days=430)
    old_name = f"customer_events_y{old.year:04d}m{old.month:02d}"
    with psycopg.connect(str(settings.database_url), autocommit=True) as conn:
        assert old_name in partitions(conn)
        assert drop_expired(conn, 0, now) == []
        assert drop_expired(conn, 12, now) == [old_name]
        assert old_name not in partitions(conn)
        kept = conn.execute(
            "SELECT count(*) FROM customer_events WHERE customer_id = %s", (customer.id,)
        ).fetchone()
        totals = conn.execute(
            "SELECT purchase_count FROM customer_activity WHERE customer_id = %s", (customer.id,)
        ).fetchone()
    assert kept == (2,) and totals == (3,)

    assert check_times(events, now, 12) == [
        ("events.2.timestamp", "older than the activity retention period")
    ]
    assert check_times(events, now, 0) == []
