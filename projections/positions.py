"""The `positions` table as read models use it: positions, lag, and the commit channel."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from eventstore.application import EVENTS_TABLE
from eventstore.connections import OwnConnection

log = logging.getLogger(__name__)

# After each commit a projector NOTIFYs this channel with "<view>:<position>".
POSITIONS_CHANNEL = "projection_positions"

Connection = psycopg.Connection[Any]

READ_POSITION = "SELECT position FROM positions WHERE name = %s"
ALL_POSITIONS = "SELECT name, position FROM positions"
ENSURE_POSITION = "INSERT INTO positions (name) VALUES (%s) ON CONFLICT (name) DO NOTHING"
SET_POSITION = "UPDATE positions SET position = %s, updated_at = now() WHERE name = %s"
LOCK_POSITION = "SELECT position FROM positions WHERE name = %s FOR UPDATE"
LOCK_POSITIONS = (
    "SELECT name, position FROM positions WHERE name = ANY(%s) ORDER BY name FOR UPDATE"
)
TABLE_EXISTS = "SELECT to_regclass(%s) IS NOT NULL"
MAX_NOTIFICATION_ID = (
    sql.SQL("SELECT coalesce(max(notification_id), 0) FROM {}")
    .format(sql.Identifier(EVENTS_TABLE))
    .as_bytes()
)


def read_position(conn: Connection, name: str) -> int:
    row = conn.execute(READ_POSITION, (name,)).fetchone()
    return int(row[0]) if row else 0


def max_notification_id(conn: Connection) -> int:
    """0 when nothing (not even the event table) exists yet."""
    row = conn.execute(TABLE_EXISTS, (EVENTS_TABLE,)).fetchone()
    if not row or not row[0]:
        return 0
    got = conn.execute(MAX_NOTIFICATION_ID).fetchone()
    return int(got[0]) if got else 0


def lag(conn: Connection, name: str) -> int:
    """How many notifications the view `name` is behind the log."""
    return max(0, max_notification_id(conn) - read_position(conn, name))


class Follower:
    """A follower of the notification log outside the projector (evaluator, auditor): its
    own connection and its own row `name` in `positions`, read when (re)connecting."""

    name: str

    def __init__(self, database_url: str) -> None:
        self._url = database_url
        self._conn = OwnConnection(database_url, self._connected)
        self.position = -1

    def _connected(self, conn: Connection) -> None:
        conn.execute(ENSURE_POSITION, (self.name,))
        self.position = read_position(conn, self.name)

    def _connection(self) -> Connection:
        return self._conn.get()

    def close(self) -> None:
        self._conn.close()


class Listener:
    """One LISTEN connection per process and database, shared by the process's followers:
    each subscribes to a channel (and the payloads it cares about) and gets an Event that a
    matching NOTIFY sets. A lost connection is made again, and every subscriber is woken then
    (what was notified meanwhile is caught up by their next round)."""

    def __init__(self, database_url: str) -> None:
        self._url = database_url
        self._changed = threading.Condition()
        self._subscribers: list[tuple[str, Callable[[str], bool], threading.Event]] = []
        self._wanted = 0  # subscriptions made
        self._listened = 0  # subscriptions the connection LISTENs for
        self._thread = threading.Thread(target=self._run, name="listener", daemon=True)
        self._thread.start()

    def subscribe(
        self, channel: str, wakes: Callable[[str], bool] = lambda _payload: True
    ) -> threading.Event:
        """An Event set by every NOTIFY on `channel` whose payload `wakes`. Returns once the
        channel is listened to, so nothing committed afterwards is missed (or after a few
        seconds without a database: the subscriber's poll covers the gap)."""
        event = threading.Event()
        with self._changed:
            self._subscribers.append((channel, wakes, event))
            self._wanted += 1
            wanted = self._wanted
            self._changed.wait_for(lambda: self._listened >= wanted, timeout=5.0)
        return event

    def _run(self) -> None:
        backoff = 0.1
        while True:
            try:
                with psycopg.connect(self._url, autocommit=True) as conn:
                    listening: set[str] = set()
                    self._wake_all()  # whatever came while nobody listened
                    backoff = 0.1
                    while True:
                        self._listen(conn, listening)
                        for note in conn.notifies(timeout=0.1):
                            with self._changed:
                                subscribers = list(self._subscribers)
                            for channel, wakes, event in subscribers:
                                if note.channel == channel and wakes(note.payload):
                                    event.set()
            except Exception:
                log.warning("listener lost its connection; reconnecting", exc_info=True)
                self._wake_all()
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    def _listen(self, conn: Connection, listening: set[str]) -> None:
        with self._changed:
            wanted, channels = self._wanted, {c for c, _, _ in self._subscribers}
        for channel in channels - listening:
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
            listening.add(channel)
        with self._changed:
            self._listened = wanted
            self._changed.notify_all()

    def _wake_all(self) -> None:
        with self._changed:
            for _, _, event in self._subscribers:
                event.set()


_listeners: dict[str, Listener] = {}
_listeners_lock = threading.Lock()


def listener(database_url: str) -> Listener:
    """This process's listener of `database_url` (started on first use)."""
    with _listeners_lock:
        found = _listeners.get(database_url)
        if found is None:
            found = _listeners[database_url] = Listener(database_url)
        return found


def follow(
    name: str,
    database_url: str,
    channel: str,
    step: Callable[[], object],
    *,
    close: Callable[[], None],
    stop: threading.Event,
    poll_interval: float = 1.0,
    gather: float = 0.0,
    wakes: Callable[[str], bool] = lambda _payload: True,
) -> None:
    """Run `step` until `stop`: again whenever a NOTIFY on `channel` whose payload `wakes`
    arrives (through the process's one listener), at the latest every `poll_interval`.
    Survives outages and failing steps: logs, `close`s, backs off and retries (a failing step
    is never skipped).

    A step that did something (returned a true value) is followed by `gather` seconds of
    letting new work pile up: under load every round's fixed cost (reads, a transaction, a
    position, NOTIFYs) is paid once for many events instead of once per commit, while a lone
    event is still handled at once."""
    wake = listener(database_url).subscribe(channel, wakes)
    backoff = 0.1
    while not stop.is_set():
        try:
            wake.clear()  # before the step: a commit during it wakes the next round
            did = step()
            backoff = 0.1
            if did and gather > 0:
                stop.wait(gather)
                continue
            deadline = time.monotonic() + poll_interval
            while not stop.is_set() and (remaining := deadline - time.monotonic()) > 0:
                if wake.wait(min(0.1, remaining)):
                    break
        except Exception:
            log.exception("%s error; retrying", name)
            close()
            stop.wait(backoff)
            backoff = min(backoff * 2, 5.0)
