"""Tracking through NATS: `customers serve ingest` consumes producers' events from JetStream
and stores them exactly like the HTTP endpoints (same validation, same writer).

Producers publish to `<subject prefix>-tracking.<org>` (stream `<stream>_TRACKING`, created
here): one event with its `customerId`, or `{"events": [...]}` as in the batch endpoint. A
message is acknowledged only after its events are committed; a crash before that redelivers
it, and because an event without `eventId` gets one derived from its message's stream
sequence (and its time from the message's, when it has none), a redelivered event is the
same row and is not stored or counted again. A message that fails validation or names an
unknown customer is terminated (logged with the fields, never the values, and with the
producer's `X-Correlation-ID` message header); one whose customer is not readable yet is
redelivered after a pause.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections import deque
from datetime import UTC, datetime
from typing import Any

import nats
import orjson
from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig
from nats.js.client import JetStreamContext
from nats.js.errors import BadRequestError, NotFoundError
from pydantic import ValidationError

from domain.activity import BATCH, ONE, check_times
from domain.values import storable_json
from service.logs import correlation_of
from service.metrics import INGEST_MESSAGES
from service.problems import field_path
from service.settings import Settings
from write_api.tracking import ActivityWriter, Result, Submission

log = logging.getLogger(__name__)

DURABLE = "tracking-ingester"
# Messages per round: up to 20,000 events, two rounds in flight, stored well within ACK_WAIT
# (at about 10,000 events/s).
FETCH = 20
# Unacknowledged messages of a crashed ingester are redelivered after this long.
ACK_WAIT = 10.0


def names(settings: Settings) -> tuple[str, str]:
    """(stream, subject prefix) of tracking ingestion, beside the relay's."""
    return f"{settings.nats_stream}_TRACKING", f"{settings.nats_subject_prefix}-tracking"


async def ensure_stream(js: JetStreamContext, settings: Settings) -> None:
    stream, prefix = names(settings)
    try:
        await js.stream_info(stream)
    except NotFoundError:
        try:
            await js.add_stream(
                StreamConfig(
                    name=stream,
                    subjects=[f"{prefix}.*"],
                    storage=StorageType.FILE,
                    duplicate_window=float(settings.nats_duplicate_window_seconds),
                )
            )
        except BadRequestError as refused:
            # Another ingester (or a producer) created it between the two calls: the server
            # refuses the second creation as overlapping its subjects. Anything else is real.
            try:
                await js.stream_info(stream)
            except NotFoundError:
                raise refused from None


def parse(data: bytes) -> list[Any]:
    """The message's events (one, or a batch); ValueError for invalid JSON or events."""
    if not storable_json(data):
        raise ValueError("text must not contain NUL characters or lone surrogates")
    raw = orjson.loads(data)
    if isinstance(raw, dict) and "events" in raw:
        return list(BATCH.validate_python(raw).events)
    return [ONE.validate_python(raw)]


class Ingester:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.writer = ActivityWriter(settings)
        self._stop = asyncio.Event()
        self.stored = 0

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        assert self.settings.nats_url
        stream, prefix = names(self.settings)
        while not self._stop.is_set():
            try:
                nc = await nats.connect(self.settings.nats_url, name="customers-ingester")
            except Exception as e:
                log.warning("ingest: NATS unavailable (%s); retrying", type(e).__name__)
                await asyncio.sleep(1.0)
                continue
            try:
                js = nc.jetstream()
                await ensure_stream(js, self.settings)
                sub = await js.pull_subscribe(
                    f"{prefix}.*",
                    durable=DURABLE,
                    stream=stream,
                    config=ConsumerConfig(
                        ack_policy=AckPolicy.EXPLICIT, ack_wait=ACK_WAIT, max_ack_pending=20_000
                    ),
                )
                log.info("ingest: consuming", extra={"stream": stream})
                await self._consume(sub)
            except Exception:
                log.exception("ingest: error; reconnecting")
                await asyncio.sleep(1.0)
            finally:
                await nc.close()
        self.writer.close()

    def _prepare(self, messages: list[Any]) -> tuple[list[Any], list[Submission], list[Any]]:
        """(messages to store, their submissions, invalid messages to terminate)."""
        kept: list[Any] = []
        submissions: list[Submission] = []
        invalid: list[Any] = []
        now = datetime.now(UTC)
        retention = self.settings.activity_retention_months
        for msg in messages:
            try:
                events = parse(msg.data)
            except ValidationError as e:
                fields = sorted({field_path(tuple(err["loc"])) for err in e.errors()})
            except ValueError:  # not JSON, or text PostgreSQL cannot store
                fields = ["body"]
            else:
                fields = [f for f, _ in check_times(events, now, retention)] + [
                    f"events.{i}.customerId" for i, e in enumerate(events) if e.customer_id is None
                ]
            if fields:
                log.warning(
                    "ingest: invalid message terminated",
                    extra={"fields": fields, "correlationId": _correlation(msg)},
                )
                invalid.append(msg)
                continue
            meta = msg.metadata
            org = msg.subject.rsplit(".", 1)[-1]
            seed = f"nats:{meta.sequence.stream}"
            kept.append(msg)
            submissions.append(Submission(org, events, meta.timestamp.astimezone(UTC), seed))
        return kept, submissions, invalid

    async def _consume(self, sub: Any) -> None:
        """Validate round n + 1 while round n is being written; acknowledge each message
        once its events are committed."""
        in_flight: deque[tuple[list[Any], asyncio.Future[list[Result]]]] = deque()
        while not self._stop.is_set() or in_flight:
            messages: list[Any] = []
            if not self._stop.is_set():
                # TimeoutError, not nats.errors.TimeoutError: when the no-wait probe's answer
                # uses up the deadline, nats-py raises a plain asyncio.TimeoutError (its own
                # is a subclass), which would tear the connection down and leave the writes
                # in flight unacknowledged until ACK_WAIT redelivers them.
                with contextlib.suppress(TimeoutError):
                    messages = await sub.fetch(FETCH, timeout=0.5)
            kept, submissions, invalid = self._prepare(messages)
            for msg in invalid:
                await msg.term()
            if invalid:
                INGEST_MESSAGES.labels("invalid").inc(len(invalid))
            if submissions:
                writing = asyncio.ensure_future(
                    asyncio.to_thread(self.writer.submit_many, submissions)
                )
                in_flight.append((kept, writing))
            while in_flight and (in_flight[0][1].done() or len(in_flight) > 1 or not messages):
                done, written = in_flight.popleft()
                await self._settle(done, await written)

    async def _settle(self, messages: list[Any], results: list[Result]) -> None:
        for msg, result in zip(messages, results, strict=True):
            if result.unknown:
                log.warning(
                    "ingest: message naming an unknown customer terminated",
                    extra={"correlationId": _correlation(msg)},
                )
                await msg.term()
                INGEST_MESSAGES.labels("unknown_customer").inc()
            elif result.pending:
                await msg.nak(delay=1.0)
                INGEST_MESSAGES.labels("redelivered").inc()
            else:
                self.stored += result.accepted
                await msg.ack()
                INGEST_MESSAGES.labels("stored").inc()


def _correlation(msg: Any) -> str | None:
    """The producer's correlation id (an `X-Correlation-ID` message header), if valid."""
    headers = {k.lower().encode(): v.encode() for k, v in (msg.headers or {}).items()}
    return correlation_of(headers, "") or None


async def run_forever(settings: Settings) -> None:
    """`customers serve ingest`: until SIGINT/SIGTERM."""
    ingester = Ingester(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, ingester.stop)
    await ingester.run()
