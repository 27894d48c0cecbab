"""The NATS relay: follows the notification log and publishes public events to JetStream.

The events table is the outbox. The relay reads notifications after its recorded position
(`positions` row "nats_relay"), maps each to a thin public event (eventstore.public_events),
publishes it with `Nats-Msg-Id` = the public event id (`<customerId>:<version>`) and, once
every message of the batch up to some notification has its PubAck, records that
notification id as the new position. A crash anywhere re-publishes from the recorded
position; JetStream drops the repeats by `Nats-Msg-Id` within the stream's duplicate window,
so the stream holds each event exactly once. After a point-in-time restore the relay first
publishes a `store.restored` control event, and events written after it carry the restore's
epoch in their Nats-Msg-Id (docs/events.md "After a restore").

Connection handling: nats-py's own reconnect is OFF on purpose. After a reconnect nats-py
flushes its buffered (not yet written) publishes, which would land in the stream AHEAD of
messages lost in the dead socket and break the notification order. Instead the relay drops
the connection on any failure, reconnects with backoff, checks the stream, and re-publishes
from the last acknowledged notification.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any
from uuid import UUID

import nats
import orjson
import psycopg
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import PubAck, StorageType, StreamConfig
from nats.js.errors import NotFoundError
from psycopg import sql

from domain.topics import CUSTOMER_MODULE
from eventstore import dead_letters
from eventstore.application import EVENTS_TABLE, Customers
from eventstore.mapper import SHREDDING_TOPICS, Shredded
from eventstore.public_events import (
    customer_id,
    event_org,
    membership_event,
    public_event,
    subject,
)
from service.metrics import RELAY_CONNECTS, RELAY_POSITION, RELAYED
from service.settings import Settings

log = logging.getLogger(__name__)

POSITION_NAME = "nats_relay"
MSG_ID_HEADER = "Nats-Msg-Id"
NOTIFICATION_HEADER = "Customers-Notification-Id"
# The request's that caused the event (service.logs), as it came in over HTTP or gRPC.
CORRELATION_HEADER = "X-Correlation-ID"

_LOAD_POSITION = "SELECT position FROM positions WHERE name = %s"
_CORRELATIONS = (
    "SELECT notification_id, correlation_id FROM event_correlations"
    " WHERE notification_id BETWEEN %s AND %s"
)
_PUBLISHED_CORRELATIONS = "DELETE FROM event_correlations WHERE notification_id <= %s"
_SAVE_POSITION = (
    "INSERT INTO positions (name, position, updated_at) VALUES (%s, %s, now())"
    " ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position, updated_at = now()"
)
_ORGS = "SELECT customer_id, org_id FROM customer_keys WHERE customer_id = ANY(%s)"
_RESTORES = (
    "SELECT epoch, position, target_time, restored_at, announced_at FROM store_restores"
    " ORDER BY epoch"
)
_ANNOUNCED = "UPDATE store_restores SET announced_at = now() WHERE epoch = %s"
RESTORED_KIND = "_store.restored"  # <prefix>._store.restored: no org subject has 3 tokens


class RelayError(Exception):
    """A batch could not be published completely; the caller reconnects and retries."""


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One notification, ready to publish; `subject` None = not published (position only)."""

    notification_id: int
    subject: str | None = None
    payload: bytes = b""
    msg_id: str = ""
    correlation_id: str | None = None


class Relay:
    """Publishes the notification log to JetStream. Use from one asyncio event loop.

    `await run()` until `stop()`; or, in tests, `await run_once()` (publish everything
    committed so far) and `await close()`.
    """

    def __init__(
        self,
        settings: Settings,
        app: Customers,
        *,
        name: str = POSITION_NAME,
        batch_size: int | None = None,
        ack_timeout: float = 5.0,
        poll_interval: float = 1.0,
        max_retry_delay: float = 2.0,
        org_cache_size: int = 100_000,
    ) -> None:
        if not settings.nats_url:
            raise RuntimeError("NATS_URL is not set")
        self.settings = settings
        self.app = app
        self.name = name
        self.stream = settings.nats_stream
        self.prefix = settings.nats_subject_prefix
        self.batch_size = batch_size or settings.relay_batch_size
        self.gather = settings.follower_gather_ms / 1000
        self.ack_timeout = ack_timeout
        self.poll_interval = poll_interval
        self.max_retry_delay = max_retry_delay
        self.position: int | None = None  # last notification id known to be in the stream
        # Counters (for logs, metrics and tests).
        self.published = 0  # PubAcks of newly stored messages
        self.duplicates = 0  # PubAcks of messages JetStream already had (republish)
        self.skipped = 0  # notifications with no public form
        self.connects = 0
        # (epoch, position) of the restores the store went through (service/restore.py):
        # a notification after a restore's position is published with that epoch in its
        # Nats-Msg-Id, so JetStream does not take it for the different event that had its
        # id before the restore.
        self._epochs: list[tuple[int, int]] | None = None
        self._orgs: OrderedDict[UUID, str] = OrderedDict()
        self._org_cache_size = org_cache_size
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._lost: asyncio.Event | None = None
        self._wake: asyncio.Event | None = None
        self._stopping: asyncio.Event | None = None
        self._stop_requested = False
        recorder: Any = app.recorder
        self._channel: str = getattr(recorder, "channel_name", EVENTS_TABLE)
        self._events_table: str = getattr(recorder, "events_table_name", EVENTS_TABLE)

    # --------------------------------------------------------------------- public API

    async def run(self) -> None:
        """Relay until `stop()`: wakes on NOTIFY of new events, polls as a fallback, and
        survives NATS and PostgreSQL outages (retry with backoff). One run per Relay."""
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        if self._stop_requested:  # stop() came first
            self._stopping.set()
        listener = asyncio.create_task(self._listen())
        delay = 0.1
        try:
            while not self._stop_requested:
                self._wake.clear()
                try:
                    published = await self.run_once()
                    delay = 0.1
                except Exception as exc:
                    log.warning(
                        "relay: %s: %s; retrying in %.1fs",
                        type(exc).__name__,
                        exc,
                        delay,
                        extra={"position": self.position},
                    )
                    await self._drop_connection()
                    await self._pause(delay)
                    delay = min(delay * 2, self.max_retry_delay)
                    continue
                if published and self.gather > 0:
                    await self._pause(self.gather)  # let a burst pile up: one batch, one ack wait
                    continue
                await self._wait_for_events(self.poll_interval)
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
            await self.close()

    def stop(self) -> None:
        """Ask `run()` to return after the current batch (call from the loop's thread,
        e.g. a signal handler, or via loop.call_soon_threadsafe)."""
        self._stop_requested = True
        for event in (self._wake, self._stopping):
            if event is not None:
                event.set()

    async def run_once(self) -> int:
        """Publish every notification committed so far; returns how many were processed
        (published or skipped). Raises on failure, after recording the acknowledged part."""
        await self._ensure_connected()
        if self.position is None:
            self.position = await asyncio.to_thread(self._load_position)
            RELAY_POSITION.set(self.position)
        if self._epochs is None:
            await self._announce_restores()
        processed = 0
        while not self._stop_requested:
            batch = await asyncio.to_thread(self._prepare, self.position)
            if not batch:
                break
            await self._publish(batch)
            processed += len(batch)
            if len(batch) < self.batch_size:
                break
        return processed

    async def close(self) -> None:
        await self._drop_connection()

    async def _announce_restores(self) -> None:
        """Publish a `restored` control event for each restore not announced yet, before any
        event written after it: subscribers learn that the store went back to `position`
        (events with a later Customers-Notification-Id they had are gone from the store)."""
        with self.app.datastore.get_connection() as conn:
            rows = conn.execute(_RESTORES).fetchall()
        js = await self._ensure_connected()
        for row in rows:
            if row["announced_at"] is not None:
                continue
            payload = {
                "type": "store.restored",
                "epoch": row["epoch"],
                "position": row["position"],
                "targetTime": row["target_time"].isoformat(),
                "restoredAt": row["restored_at"].isoformat(),
            }
            await js.publish(
                f"{self.prefix}.{RESTORED_KIND}",
                orjson.dumps(payload),
                stream=self.stream,
                timeout=self.ack_timeout,
                headers={MSG_ID_HEADER: f"restored:{row['epoch']}"},
            )
            with self.app.datastore.get_connection() as conn, conn.transaction():
                conn.execute(_ANNOUNCED, (row["epoch"],))
            log.info("relay: announced a restore", extra={"epoch": row["epoch"]})
        self._epochs = [(row["epoch"], row["position"]) for row in rows]

    def _msg_id(self, notification_id: int, public_id: str) -> str:
        """The public event id; after a restore, with the epoch the event was written in."""
        for epoch, position in reversed(self._epochs or []):
            if notification_id > position:
                return f"{public_id}@{epoch}"
        return public_id

    def lag(self) -> int:
        """Notifications committed but not yet recorded as relayed (blocking DB query; from
        async code use `await asyncio.to_thread(relay.lag)`)."""
        query = sql.SQL(
            "SELECT COALESCE((SELECT max(notification_id) FROM {}), 0)"
            " - COALESCE((SELECT position FROM positions WHERE name = %s), 0) AS lag"
        ).format(sql.Identifier(self._events_table))
        with self.app.datastore.get_connection() as conn:
            row = conn.execute(query, (self.name,)).fetchone()
        return int(row["lag"]) if row else 0

    # --------------------------------------------------------------------- NATS

    async def _ensure_connected(self) -> JetStreamContext:
        if self._js is not None and self._nc is not None and self._nc.is_connected:
            return self._js
        await self._drop_connection()
        lost = asyncio.Event()

        async def on_lost() -> None:
            lost.set()

        async def on_error(exc: Exception) -> None:
            # Refused/reset connections are reported once by run(); the rest matters.
            level = logging.DEBUG if isinstance(exc, OSError) else logging.WARNING
            log.log(level, "relay: NATS error: %s: %s", type(exc).__name__, exc)

        assert self.settings.nats_url
        nc = await nats.connect(
            self.settings.nats_url,
            name="customers-relay",
            allow_reconnect=False,  # see the module docstring
            # The first connect still tries twice; then run() backs off and tries again.
            max_reconnect_attempts=1,
            reconnect_time_wait=0.25,
            connect_timeout=2,
            ping_interval=10,
            max_outstanding_pings=2,
            disconnected_cb=on_lost,
            closed_cb=on_lost,
            error_cb=on_error,
        )
        try:
            js = nc.jetstream(timeout=self.ack_timeout)
            await self._ensure_stream(js)
        except BaseException:
            await nc.close()
            raise
        self._nc, self._js, self._lost = nc, js, lost
        self.connects += 1
        RELAY_CONNECTS.inc()
        log.info("relay: connected to NATS", extra={"stream": self.stream})
        return js

    async def _ensure_stream(self, js: JetStreamContext) -> None:
        """Create the stream, or widen its subjects / duplicate window if needed."""
        wanted_subject = f"{self.prefix}.>"
        window = float(self.settings.nats_duplicate_window_seconds)
        try:
            info = await js.stream_info(self.stream)
        except NotFoundError:
            config = StreamConfig(
                name=self.stream,
                subjects=[wanted_subject],
                storage=StorageType.FILE,
                duplicate_window=window,
            )
            await js.add_stream(config)
            log.info("relay: created stream", extra={"stream": self.stream})
            return
        config = info.config
        changes: dict[str, Any] = {}
        if (config.duplicate_window or 0) < window:
            changes["duplicate_window"] = window
        if wanted_subject not in (config.subjects or []):
            changes["subjects"] = [*(config.subjects or []), wanted_subject]
        if changes:
            await js.update_stream(config.evolve(**changes))
            log.info("relay: updated stream", extra={"stream": self.stream, **changes})
        if config.storage != StorageType.FILE:
            log.warning("relay: stream %s does not use file storage", self.stream)

    async def _drop_connection(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        self._epochs = None  # read again (and announced) on reconnect
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(Exception):
                await nc.close()

    async def _publish(self, batch: Sequence[Outgoing]) -> None:
        js = await self._ensure_connected()
        lost = self._lost
        assert lost is not None
        futures: list[asyncio.Future[PubAck] | None] = []
        error: BaseException | None = None
        try:
            for item in batch:
                if item.subject is None:
                    futures.append(None)
                    continue
                headers = {
                    MSG_ID_HEADER: item.msg_id,
                    NOTIFICATION_HEADER: str(item.notification_id),
                }
                if item.correlation_id:
                    headers[CORRELATION_HEADER] = item.correlation_id
                futures.append(
                    await js.publish_async(
                        item.subject,
                        item.payload,
                        # No wait_stall: with it nats-py wraps each call in a task, which
                        # yields to the flusher and costs one socket write per message.
                        stream=self.stream,
                        headers=headers,
                    )
                )
        except Exception as exc:  # connection closed, stalled …: keep what was acked
            error = exc
        await self._await_acks([f for f in futures if f is not None], lost)

        # Advance over the longest prefix whose messages all have a PubAck.
        counted = self.published, self.duplicates, self.skipped
        acked: int | None = None
        for item, future in zip(batch, futures, strict=False):
            if future is not None:
                if not future.done() or future.cancelled():
                    error = error or RelayError("no PubAck (timeout or connection lost)")
                    break
                failure = future.exception()
                if failure is not None:
                    error = error or failure
                    break
                if future.result().duplicate:
                    self.duplicates += 1
                else:
                    self.published += 1
            else:
                self.skipped += 1
            acked = item.notification_id
        if acked is not None and (self.position is None or acked > self.position):
            await asyncio.to_thread(self._save_position, acked)
            self.position = acked
            RELAY_POSITION.set(acked)
        now = self.published, self.duplicates, self.skipped
        for result, before, after in zip(
            ("published", "duplicate", "skipped"), counted, now, strict=True
        ):
            if after > before:
                RELAYED.labels(result).inc(after - before)
        if error is not None or acked != batch[-1].notification_id:
            raise RelayError(
                f"published up to notification {acked} of a batch ending at "
                f"{batch[-1].notification_id}: {error}"
            ) from error

    async def _await_acks(self, futures: list[asyncio.Future[PubAck]], lost: asyncio.Event) -> None:
        """Wait (bounded) for every PubAck, stopping early when the connection is lost;
        futures still pending afterwards are cancelled (frees nats-py's pending slots)."""
        if not futures:
            return
        acks: asyncio.Future[Any] = asyncio.gather(*futures, return_exceptions=True)
        lost_wait: asyncio.Future[Any] = asyncio.ensure_future(lost.wait())
        try:
            await asyncio.wait(
                {acks, lost_wait}, timeout=self.ack_timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            lost_wait.cancel()
            if not acks.done():
                acks.cancel()  # cancels the outstanding futures
                with contextlib.suppress(asyncio.CancelledError):
                    await acks

    # --------------------------------------------------------------------- PostgreSQL

    def _load_position(self) -> int:
        with self.app.datastore.get_connection() as conn:
            row = conn.execute(_LOAD_POSITION, (self.name,)).fetchone()
        return int(row["position"]) if row else 0

    def _save_position(self, position: int) -> None:
        with self.app.datastore.get_connection() as conn, conn.transaction():
            conn.execute(_SAVE_POSITION, (self.name, position), prepare=True)
            conn.execute(_PUBLISHED_CORRELATIONS, (position,), prepare=True)

    def _prepare(self, start: int) -> list[Outgoing]:
        """Read, decode and map the next batch (blocking: runs in a worker thread)."""
        notifications = self.app.recorder.select_notifications(
            start, self.batch_size, inclusive_of_start=False
        )
        # One SELECT for the data keys of the batch instead of one per new customer.
        self.app.keys.preload(
            n.originator_id
            for n in notifications
            if n.topic.startswith(CUSTOMER_MODULE) and isinstance(n.originator_id, UUID)
        )
        decoded, failed = dead_letters.decode_each(notifications, self.app.mapper.to_domain_event)
        for n in notifications:
            if n.topic in SHREDDING_TOPICS:  # a key this process cached is gone for good
                self.app.keys.forget(UUID(str(n.originator_id)))
        self._resolve_orgs(event for _, event in decoded)
        correlations = self._correlations(notifications)
        outgoing: dict[int, Outgoing] = {n.id: Outgoing(n.id) for n, _ in failed}
        for n, event in decoded:
            try:
                outgoing[n.id] = self._map(n.id, event)
            except Exception as exc:
                if not dead_letters.poisoned(exc):
                    raise
                failed.append((n, exc))
                outgoing[n.id] = Outgoing(n.id)
        if failed:  # recorded before the position can pass them; a repeat changes nothing
            with self.app.datastore.get_connection() as conn, conn.transaction():
                for n, error in failed:
                    dead_letters.record(conn, self.name, n, error)
        batch = [outgoing[n.id] for n in notifications]
        return [
            replace(item, correlation_id=correlations[item.notification_id])
            if item.notification_id in correlations
            else item
            for item in batch
        ]

    def _map(self, notification_id: int, event: object) -> Outgoing:
        """The message for one event; an empty one (position only) when nothing is public."""
        membership = membership_event(event)
        if membership is not None:
            return self._outgoing(notification_id, membership)
        cid = customer_id(event)
        if cid is None or isinstance(event, Shredded):
            return Outgoing(notification_id)
        org = self._orgs.get(cid)
        if org is None:  # the key row commits with the Created event: cannot happen
            raise RelayError(f"no organization known for customer {cid}")
        public = public_event(event, org)
        if public is None:
            return Outgoing(notification_id)
        return self._outgoing(notification_id, public)

    def _outgoing(self, notification_id: int, public: dict[str, Any]) -> Outgoing:
        return Outgoing(
            notification_id,
            subject(self.prefix, public),
            orjson.dumps(public),
            self._msg_id(notification_id, public["id"]),
        )

    def _correlations(self, notifications: Sequence[Any]) -> dict[int, str]:
        if not notifications:
            return {}
        span = (notifications[0].id, notifications[-1].id)
        with self.app.datastore.get_connection() as conn:
            rows = conn.execute(_CORRELATIONS, span, prepare=True).fetchall()
        return {r["notification_id"]: r["correlation_id"] for r in rows}

    def _resolve_orgs(self, events: Any) -> None:
        """Fill the customer → org cache for a batch: from Created events, else one query."""
        missing: set[UUID] = set()
        for event in events:
            if isinstance(event, Shredded):
                continue
            cid = customer_id(event)
            if cid is None:
                continue
            org = event_org(event)
            if org is not None:
                self._remember_org(cid, org)
            elif cid in self._orgs:
                self._orgs.move_to_end(cid)
            else:
                missing.add(cid)
        if not missing:
            return
        with self.app.datastore.get_connection() as conn:
            rows = conn.execute(_ORGS, (list(missing),)).fetchall()
        for row in rows:
            self._remember_org(row["customer_id"], row["org_id"])

    def _remember_org(self, cid: UUID, org: str) -> None:
        self._orgs[cid] = org
        self._orgs.move_to_end(cid)
        while len(self._orgs) > self._org_cache_size:
            self._orgs.popitem(last=False)

    # --------------------------------------------------------------------- waking up

    async def _listen(self) -> None:
        """LISTEN on the events channel; every NOTIFY wakes the loop (poll is the fallback)."""
        assert self.settings.database_url
        while not self._stop_requested:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.settings.database_url, autocommit=True, connect_timeout=5
                ) as conn:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
                    self._wake_up()  # catch up with whatever came while not listening
                    while not self._stop_requested:
                        async for _ in conn.notifies(timeout=self.poll_interval):
                            self._wake_up()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("relay: LISTEN failed: %s; polling meanwhile", exc)
                await asyncio.sleep(self.max_retry_delay)

    def _wake_up(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _wait_for_events(self, seconds: float) -> None:
        """Sleep until woken (NOTIFY, stop) or `seconds` pass."""
        assert self._wake is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def _pause(self, seconds: float) -> None:
        """Back off after a failure: only `stop()` cuts it short, not new events."""
        assert self._stopping is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)


async def run_forever(settings: Settings) -> None:
    """`customers serve relay`: run the relay until SIGINT/SIGTERM."""
    app = Customers(settings, pool_size=2)
    relay = Relay(settings, app)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, relay.stop)
    try:
        await relay.run()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        app.close()
