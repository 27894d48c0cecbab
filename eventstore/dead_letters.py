"""Dead letters: events a follower of the notification log could not process.

A follower (projector view, write auditor, segment evaluator, relay) that meets an event it
cannot decode or apply records it in `dead_letters` with the reason, in the transaction that
advances its position, and goes on: one bad event must not stop the follower for every other
customer and organization. Failures of the infrastructure (a lost connection, a master key
that is not configured) are not the event's fault: they still stop the follower, which
retries with backoff, so nothing is passed over because PostgreSQL restarted.

The reason holds the error's class and message with quoted values cut out, never event data.
/ready and /metrics report the count per follower (read_api/figures.py); a view's dead
letters are cleared when the view is rebuilt, which re-applies them under the current code.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, TypeVar
from uuid import UUID

import psycopg
from eventsourcing import persistence

from eventstore.keys import MasterKeyUnavailable
from service.logs import redact
from service.metrics import DEAD_LETTERS

log = logging.getLogger(__name__)

Connection = psycopg.Connection[Any]
T = TypeVar("T")

RECORD = (
    "INSERT INTO dead_letters (follower, notification_id, originator_id, topic, reason)"
    " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (follower, notification_id) DO NOTHING"
)
CLEAR = "DELETE FROM dead_letters WHERE follower = %s"
COUNT_BY_FOLLOWER = "SELECT follower, count(*) FROM dead_letters GROUP BY follower"
LIST = (
    "SELECT follower, notification_id, originator_id, topic, reason, recorded_at"
    " FROM dead_letters ORDER BY recorded_at, follower, notification_id"
)

# Not the event's fault: the follower stops and retries instead of passing the event over.
INFRASTRUCTURE: tuple[type[BaseException], ...] = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    persistence.OperationalError,
    persistence.InterfaceError,
    MasterKeyUnavailable,
)
_QUOTED = re.compile(r"""(["'])(?:(?!\1).)*\1""")
_REASON_LENGTH = 300


class Notified(Protocol):
    """What a dead letter names of an event: a notification of the log."""

    @property
    def id(self) -> int: ...

    @property
    def originator_id(self) -> Any: ...

    @property
    def topic(self) -> str: ...


def poisoned(exc: BaseException) -> bool:
    """True when `exc` is the event's fault (passed over), False for an outage (retried)."""
    return isinstance(exc, Exception) and not isinstance(exc, INFRASTRUCTURE)


def reason(exc: BaseException) -> str:
    sqlstate = getattr(exc, "sqlstate", None)
    message = _QUOTED.sub(r"\1…\1", redact(str(exc).splitlines()[0] if str(exc) else ""))
    text = f"{type(exc).__name__}{f' [{sqlstate}]' if sqlstate else ''}: {message}"
    return text[:_REASON_LENGTH]


def record(conn: Connection, follower: str, notification: Notified, exc: BaseException) -> None:
    """Record one dead letter (in the caller's transaction, if any)."""
    why = reason(exc)
    conn.execute(
        RECORD,
        (follower, notification.id, UUID(str(notification.originator_id)), notification.topic, why),
    )
    DEAD_LETTERS.labels(follower).inc()
    log.error(
        "event passed over as a dead letter",
        extra={
            "follower": follower,
            "notification_id": notification.id,
            "topic": notification.topic,
            "reason": why,
        },
    )


def decode_each(
    notifications: Iterable[T], decode: Callable[[T], Any]
) -> tuple[list[tuple[T, Any]], list[tuple[T, Exception]]]:
    """Decode every notification: (decoded pairs, the ones that failed with their error).
    Outages are raised."""
    decoded: list[tuple[T, Any]] = []
    failed: list[tuple[T, Exception]] = []
    for n in notifications:
        try:
            decoded.append((n, decode(n)))
        except Exception as exc:
            if not poisoned(exc):
                raise
            failed.append((n, exc))
    return decoded, failed


def apply_isolated(
    conn: Connection,
    follower: str,
    items: Sequence[tuple[Notified, T]],
    apply: Callable[[Connection, list[T]], object],
) -> None:
    """Apply all items at once, inside the caller's transaction. When that fails because of
    an item, apply them one by one, each in a savepoint, and record the ones that fail."""
    if not items:
        return
    try:
        with conn.transaction():
            apply(conn, [item for _, item in items])
        return
    except Exception as exc:
        if not poisoned(exc):
            raise
        if len(items) == 1:
            record(conn, follower, items[0][0], exc)
            return
    for notification, item in items:
        try:
            with conn.transaction():
                apply(conn, [item])
        except Exception as exc:
            if not poisoned(exc):
                raise
            record(conn, follower, notification, exc)


def clear(conn: Connection, follower: str) -> None:
    conn.execute(CLEAR, (follower,))
