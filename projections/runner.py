"""Follows the notification log and feeds batches of decoded events to the views.

An event that a view cannot decode or apply is recorded as a dead letter and passed over
(eventstore/dead_letters.py); an outage stops the runner, which retries.

Exactly-once: a batch's view writes and the view's `positions` row commit in ONE transaction,
and the batch is applied only if the stored position is still the one the batch was read
after (`SELECT ... FOR UPDATE`), so a second runner of the same view, a rebuild or a crash at
any point can neither skip nor repeat an event.

`Projector` is the process: it wakes on the recorder's NOTIFY (channel = events table name),
with a fallback poll, and runs every view's `ViewRunner` until caught up. After each commit a
runner NOTIFYs `POSITIONS_CHANNEL` with "<view>:<position>" for consistency-token waiters.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Sequence
from typing import Any, Protocol
from uuid import UUID

import psycopg
from eventsourcing.persistence import Notification

from eventstore import dead_letters
from eventstore.application import EVENTS_TABLE, Customers
from eventstore.mapper import SHREDDING_TOPICS
from projections.consent import ConsentView
from projections.customers import CustomersView
from projections.membership import MembershipView
from projections.positions import (
    ENSURE_POSITION,
    LOCK_POSITION,
    POSITIONS_CHANNEL,
    SET_POSITION,
    Connection,
    follow,
    read_position,
)
from projections.segments import SegmentsView
from service.metrics import PROJECTED, PROJECTION_POSITION
from service.settings import Settings

log = logging.getLogger(__name__)

_NOTIFY_POSITION = "SELECT pg_notify(%s, %s)"


class View(Protocol):
    """A read model fed by a ViewRunner: it owns its tables, the runner owns the position."""

    name: str  # the view's row in `positions`

    def accepts(self, topic: str) -> bool:
        """False: the notification is skipped without decoding (its position still counts)."""

    def prepare(self, conn: Connection) -> None:
        """Per-connection set-up (temp tables, loaders); called after every (re)connect."""

    def apply(self, conn: Connection, events: Sequence[Any]) -> None:
        """Apply decoded events, in notification order, inside the caller's transaction."""

    def truncate(self, conn: Connection) -> None:
        """Empty the view, inside the caller's transaction."""


def views() -> list[View]:
    """Every read model the projector process maintains."""
    return [CustomersView(), SegmentsView(), MembershipView(), ConsentView()]


class ViewRunner:
    """One view over the application's notification log, in batches."""

    def __init__(self, app: Customers, view: View, *, batch_size: int | None = None) -> None:
        self.app = app
        self.view = view
        self.batch_size = batch_size or app.settings.projection_batch_size
        url = app.settings.database_url
        if not url:
            raise RuntimeError("DATABASE_URL is not set")
        self._url = url
        self._conn: Connection | None = None
        self._position = -1  # unknown until connected
        self._lock = threading.Lock()

    def _connection(self) -> Connection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self.close()
            conn = psycopg.connect(self._url, autocommit=True)
            self.view.prepare(conn)
            conn.execute(ENSURE_POSITION, (self.view.name,))
            self._position = read_position(conn, self.view.name)
            self._conn = conn
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def position(self) -> int:
        """The last notification id this runner has committed (read from PG if unknown)."""
        if self._position < 0:
            with self._lock:
                self._connection()
        return self._position

    def run_once(self, stop: threading.Event | None = None) -> int:
        """Process everything available now, or until `stop` is set (checked between
        batches, each of which commits whole); return how many notifications were consumed."""
        with self._lock:
            total = 0
            report_at = time.monotonic() + 5.0
            while True:
                conn = self._connection()
                batch = self.app.recorder.select_notifications(
                    start=self._position,
                    limit=self.batch_size,
                    inclusive_of_start=False,
                )
                if not batch:
                    return total
                applied = self._apply(conn, batch)
                if applied < 0:
                    continue  # the position moved under us: read again from there
                total += applied
                if len(batch) < self.batch_size or (stop is not None and stop.is_set()):
                    return total
                if time.monotonic() >= report_at:  # long catch-ups and rebuilds show progress
                    report_at = time.monotonic() + 5.0
                    log.info(
                        "projecting",
                        extra={"view": self.view.name, "events": total, "position": batch[-1].id},
                    )

    def _apply(self, conn: Connection, batch: Sequence[Notification]) -> int:
        """Decode (outside the transaction), then write view + position in one transaction.

        Returns the number of notifications consumed, or -1 if the stored position was not
        the one this batch was read after (nothing written).
        """
        wanted = [n for n in batch if self.view.accepts(n.topic)]
        # One SELECT for the batch's customer keys, not one per customer.
        self.app.keys.preload({UUID(str(n.originator_id)) for n in wanted})
        events, undecodable = dead_letters.decode_each(wanted, self.app.mapper.to_domain_event)
        for n in wanted:
            if n.topic in SHREDDING_TOPICS:  # a key this process cached is gone for good
                self.app.keys.forget(UUID(str(n.originator_id)))
        last = batch[-1].id
        with conn.transaction():
            row = conn.execute(LOCK_POSITION, (self.view.name,)).fetchone()
            stored = int(row[0]) if row else 0
            if stored != self._position:
                # Someone else (another runner, a rebuild) moved it: re-read from there.
                log.warning(
                    "position moved under the projector; re-reading",
                    extra={"view": self.view.name, "expected": self._position, "found": stored},
                )
                self._position = stored
                return -1
            for n, exc in undecodable:
                dead_letters.record(conn, self.view.name, n, exc)
            dead_letters.apply_isolated(conn, self.view.name, events, self.view.apply)
            conn.execute(SET_POSITION, (last, self.view.name))
            conn.execute(_NOTIFY_POSITION, (POSITIONS_CHANNEL, f"{self.view.name}:{last}"))
        self._position = last
        PROJECTED.labels(self.view.name).inc(len(batch))
        PROJECTION_POSITION.labels(self.view.name).set(last)
        return len(batch)

    def reset(self) -> None:
        """Truncate the view and reset its position to 0 in one transaction."""
        with self._lock:
            conn = self._connection()
            with conn.transaction():
                conn.execute(LOCK_POSITION, (self.view.name,))
                self.view.truncate(conn)
                dead_letters.clear(conn, self.view.name)  # the replay meets them again
                conn.execute(SET_POSITION, (0, self.view.name))
                conn.execute(_NOTIFY_POSITION, (POSITIONS_CHANNEL, f"{self.view.name}:0"))
            self._position = 0


class Projector:
    """The projector process (or thread): every view, following the log.

    `start()` / `stop()` run it in a daemon thread of this process; `run_forever(stop)`
    blocks (the `customers serve projector` process); `run_once()` catches up and returns.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        batch_size: int | None = None,
        poll_interval: float = 1.0,
        app: Customers | None = None,
    ) -> None:
        if not settings.database_url:
            raise RuntimeError("DATABASE_URL is not set")
        self._url = settings.database_url
        self._own_app = app is None
        self.app = app or Customers(settings, pool_size=2)
        self.runners = [ViewRunner(self.app, v, batch_size=batch_size) for v in views()]
        self.poll_interval = poll_interval
        self._stop = threading.Event()
        self._halt: threading.Event | None = None  # what run_forever stops on, meanwhile
        self._thread: threading.Thread | None = None

    def run_once(self) -> int:
        """Catch every view up with the log, unless told to stop meanwhile (a long catch-up
        then ends after the current batches); return the notifications consumed (summed)."""
        return sum(r.run_once(self._halt) for r in self.runners)

    def position(self) -> int:
        """The position every view has reached (the lowest of them)."""
        return min(r.position() for r in self.runners)

    def run_forever(self, stop: threading.Event | None = None) -> None:
        """Catch up, then wait for the recorder's NOTIFY (or the poll interval); repeat.

        Survives database outages and failing batches: logs, backs off, reconnects, retries
        (an event this code cannot project yet is never skipped; the lag shows in /ready).
        """
        log.info("projector started", extra={"views": [r.view.name for r in self.runners]})
        self._halt = stop or self._stop
        try:
            follow(
                "projector",
                self._url,
                EVENTS_TABLE,
                self.run_once,
                close=self._close_runners,
                stop=self._halt,
                poll_interval=self.poll_interval,
            )
        finally:
            self._halt = None
        log.info("projector stopped")

    def _close_runners(self) -> None:
        for r in self.runners:
            r.close()

    def start(self) -> threading.Thread:
        """Run in a daemon thread of this process (tests, single-process serve)."""
        if self._thread is not None and self._thread.is_alive():
            return self._thread
        self._stop.clear()
        self._thread = threading.Thread(target=self.run_forever, name="projector", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.close()

    def close(self) -> None:
        self._close_runners()
        if self._own_app:
            self.app.close()


def run_forever(settings: Settings, stop: threading.Event | None = None) -> None:
    """`customers serve projector`: follow the log until `stop` is set (or SIGTERM/SIGINT)."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    projector = Projector(settings)
    try:
        projector.run_forever(stop)
    finally:
        projector.close()


def rebuild_view(app: Customers, view: View, *, batch_size: int | None = None) -> int:
    """Truncate `view` and reset its position in one transaction, then replay the log."""
    runner = ViewRunner(app, view, batch_size=batch_size)
    try:
        runner.reset()
        log.info("view truncated; replaying", extra={"view": view.name})
        count = runner.run_once()
        log.info(
            "view rebuilt",
            extra={"view": view.name, "events": count, "position": runner.position()},
        )
        return count
    finally:
        runner.close()


def rebuild(settings: Settings) -> int:
    """`customers projections rebuild`: every view; returns the notifications replayed."""
    app = Customers(settings, pool_size=2)
    try:
        # Every view replays the same log: report it once.
        return max((rebuild_view(app, v) for v in views()), default=0)
    finally:
        app.close()
