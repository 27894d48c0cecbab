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

from eventsourcing.persistence import Notification

from eventstore import dead_letters
from eventstore.application import EVENTS_TABLE, Customers
from eventstore.connections import OwnConnection
from eventstore.mapper import SHREDDING_TOPICS
from projections.consent import ConsentView
from projections.customers import CustomersView
from projections.membership import MembershipView
from projections.positions import (
    ENSURE_POSITION,
    LOCK_POSITIONS,
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
    """Views over the application's notification log, in batches: each batch is read and
    decoded once and applied to every view in one transaction, each view from its own
    position (a view being rebuilt catches up while the others only wait for it)."""

    def __init__(self, app: Customers, *views: View, batch_size: int | None = None) -> None:
        self.app = app
        self.views = views
        self.batch_size = batch_size or app.settings.projection_batch_size
        if not app.settings.database_url:
            raise RuntimeError("DATABASE_URL is not set")
        self._names = [v.name for v in views]
        self._conn = OwnConnection(app.settings.database_url, self._connected)
        self._positions: dict[str, int] = {}  # unknown until connected
        self._lock = threading.Lock()

    def _connected(self, conn: Connection) -> None:
        for view in self.views:
            view.prepare(conn)
            conn.execute(ENSURE_POSITION, (view.name,))
        self._positions = {name: read_position(conn, name) for name in self._names}

    def _connection(self) -> Connection:
        return self._conn.get()

    def close(self) -> None:
        self._conn.close()

    def position(self) -> int:
        """The notification id every view has committed (read from PG if unknown)."""
        if not self._positions:
            with self._lock:
                self._connection()
        return min(self._positions.values())

    def run_once(self, stop: threading.Event | None = None) -> int:
        """Process everything available now, or until `stop` is set (checked between
        batches, each of which commits whole); return how many notifications were consumed."""
        with self._lock:
            total = 0
            report_at = time.monotonic() + 5.0
            while True:
                conn = self._connection()
                batch = self.app.recorder.select_notifications(
                    start=min(self._positions.values()),
                    limit=self.batch_size,
                    inclusive_of_start=False,
                )
                if not batch:
                    return total
                applied = self._apply(conn, batch)
                if applied < 0:
                    continue  # a position moved under us: read again from there
                total += applied
                if len(batch) < self.batch_size or (stop is not None and stop.is_set()):
                    return total
                if time.monotonic() >= report_at:  # long catch-ups and rebuilds show progress
                    report_at = time.monotonic() + 5.0
                    log.info(
                        "projecting",
                        extra={"views": self._names, "events": total, "position": batch[-1].id},
                    )

    def _apply(self, conn: Connection, batch: Sequence[Notification]) -> int:
        """Decode (outside the transaction), then write the views and their positions in one
        transaction.

        Returns the number of notifications consumed, or -1 if a stored position was not the
        one this batch was read after (nothing written).
        """
        wanted = {
            view.name: [
                n for n in batch if n.id > self._positions[view.name] and view.accepts(n.topic)
            ]
            for view in self.views
        }
        needed = {n.id: n for mine in wanted.values() for n in mine}
        # One SELECT for the batch's customer keys, not one per customer.
        self.app.keys.preload({UUID(str(n.originator_id)) for n in needed.values()})
        decoded, undecodable = dead_letters.decode_each(
            sorted(needed.values(), key=lambda n: n.id), self.app.mapper.to_domain_event
        )
        events = {n.id: event for n, event in decoded}
        errors = {n.id: exc for n, exc in undecodable}
        for n in needed.values():
            if n.topic in SHREDDING_TOPICS:  # a key this process cached is gone for good
                self.app.keys.forget(UUID(str(n.originator_id)))
        last = batch[-1].id
        with conn.transaction():
            stored = dict(conn.execute(LOCK_POSITIONS, (self._names,)).fetchall())
            if any(stored.get(name, 0) != self._positions[name] for name in self._names):
                # Someone else (another runner, a rebuild) moved one: re-read from there.
                log.warning(
                    "position moved under the projector; re-reading",
                    extra={"expected": self._positions, "found": stored},
                )
                self._positions = {name: int(stored.get(name, 0)) for name in self._names}
                return -1
            for view in self.views:
                if self._positions[view.name] >= last:
                    continue
                mine = wanted[view.name]
                for n in mine:
                    if n.id in errors:
                        dead_letters.record(conn, view.name, n, errors[n.id])
                items = [(n, events[n.id]) for n in mine if n.id in events]
                dead_letters.apply_isolated(conn, view.name, items, view.apply)
                conn.execute(SET_POSITION, (last, view.name))
                conn.execute(_NOTIFY_POSITION, (POSITIONS_CHANNEL, f"{view.name}:{last}"))
                PROJECTED.labels(view.name).inc(len(batch))
                PROJECTION_POSITION.labels(view.name).set(last)
        self._positions = dict.fromkeys(self._names, last)
        return len(batch)

    def reset(self) -> None:
        """Truncate the views and reset their positions to 0 in one transaction."""
        with self._lock:
            conn = self._connection()
            with conn.transaction():
                conn.execute(LOCK_POSITIONS, (self._names,))
                for view in self.views:
                    view.truncate(conn)
                    dead_letters.clear(conn, view.name)  # the replay meets them again
                    conn.execute(SET_POSITION, (0, view.name))
                    conn.execute(_NOTIFY_POSITION, (POSITIONS_CHANNEL, f"{view.name}:0"))
            self._positions = dict.fromkeys(self._names, 0)


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
        self.runner = ViewRunner(self.app, *views(), batch_size=batch_size)
        self.poll_interval = poll_interval
        self._stop = threading.Event()
        self._halt: threading.Event | None = None  # what run_forever stops on, meanwhile
        self._thread: threading.Thread | None = None

    def run_once(self) -> int:
        """Catch every view up with the log, unless told to stop meanwhile (a long catch-up
        then ends after the current batch); return the notifications consumed."""
        return self.runner.run_once(self._halt)

    def position(self) -> int:
        """The position every view has reached (the lowest of them)."""
        return self.runner.position()

    def run_forever(self, stop: threading.Event | None = None) -> None:
        """Catch up, then wait for the recorder's NOTIFY (or the poll interval); repeat.

        Survives database outages and failing batches: logs, backs off, reconnects, retries
        (an event this code cannot project yet is never skipped; the lag shows in /ready).
        """
        log.info("projector started", extra={"views": [v.name for v in self.runner.views]})
        self._halt = stop or self._stop
        try:
            follow(
                "projector",
                self._url,
                EVENTS_TABLE,
                self.run_once,
                close=self.runner.close,
                stop=self._halt,
                poll_interval=self.poll_interval,
                gather=self.app.settings.projection_gather_ms / 1000,
            )
        finally:
            self._halt = None
        log.info("projector stopped")

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
        self.runner.close()
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


def rebuild_view(app: Customers, *views: View, batch_size: int | None = None) -> int:
    """Truncate `views` and reset their positions in one transaction, then replay the log
    (once, for all of them)."""
    runner = ViewRunner(app, *views, batch_size=batch_size)
    names = [v.name for v in views]
    try:
        runner.reset()
        log.info("views truncated; replaying", extra={"views": names})
        count = runner.run_once()
        log.info(
            "views rebuilt",
            extra={"views": names, "events": count, "position": runner.position()},
        )
        return count
    finally:
        runner.close()


def rebuild(settings: Settings) -> int:
    """`customers projections rebuild`: every view; returns the notifications replayed."""
    app = Customers(settings, pool_size=2)
    try:
        return rebuild_view(app, *views())
    finally:
        app.close()
