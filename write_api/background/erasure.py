"""Retention, in the segments process: erasure of lifecycle-deleted customers once
`CUSTOMERS_ERASURE_GRACE_HOURS` have passed since their deletion (0: at the next sweep, every
few seconds), and hourly, dropping the activity partitions older than
`CUSTOMERS_ACTIVITY_RETENTION_MONTHS`."""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any

from psycopg.rows import tuple_row

from domain.access import Principal, Role
from domain.errors import DomainError
from write_api.customers import CustomerCommands
from write_api.tracking import drop_expired

log = logging.getLogger(__name__)

DUE = (
    "SELECT id, org_id FROM customers_view WHERE status = 'DELETED'"
    " AND updated_at <= now() - make_interval(secs => %s) ORDER BY updated_at LIMIT %s"
)
SWEEP_SECONDS = 5.0
PRUNE_SECONDS = 3600.0
_BATCH = 500


def sweep(commands: CustomerCommands, grace_seconds: float) -> int:
    """Erase the customers due now; returns how many were erased."""
    with (
        commands.app.datastore.get_connection() as conn,
        conn.cursor(row_factory=tuple_row) as cur,
    ):
        due: list[tuple[Any, str]] = cur.execute(DUE, (grace_seconds, _BATCH)).fetchall()
    erased = 0
    for customer_id, org_id in due:
        retention = Principal(sub="retention", org=org_id, roles=frozenset({Role.ADMIN.value}))
        try:
            commands.erase(retention, customer_id)
            erased += 1
        except DomainError as e:  # erased meanwhile (404) or active orders again (409)
            log.info("not erased", extra={"customerId": str(customer_id), "reason": e.code})
    if erased:
        log.info("erased deleted customers after the grace period", extra={"count": erased})
    return erased


def sweep_forever(
    commands: CustomerCommands, grace_seconds: float, retention_months: int, stop: threading.Event
) -> None:
    pruned = 0.0
    while not stop.wait(SWEEP_SECONDS):
        try:
            sweep(commands, grace_seconds)
            if time.monotonic() - pruned > PRUNE_SECONDS:
                with commands.app.datastore.get_connection() as conn, conn.transaction():
                    dropped = drop_expired(conn, retention_months, datetime.now(UTC))
                pruned = time.monotonic()
                if dropped:
                    log.info("dropped expired activity", extra={"partitions": dropped})
        except Exception:
            log.exception("retention sweep failed; retrying")
