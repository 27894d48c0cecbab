"""Tracking through NATS: `customers serve ingest` consumes producers' events from JetStream
and stores them exactly like the HTTP endpoints (same validation, same writer).

Producers publish to `<subject prefix>-tracking.<org>` (stream `<stream>_TRACKING`, created
here): one event with its `customerId`, or `{"events": [...]}` as in the batch endpoint. A
message is acknowledged only after its events are committed; a crash before that redelivers
it, and because an event without `eventId` gets one derived from its message's stream
sequence (and its time from the message's, when it has none), a redelivered event is the
same row and is not stored or counted again. A message that fails validation or names an
unknown customer is terminated (logged with the fields, never the values); one whose customer
is not readable yet is redelivered after a pause.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from datetime import UTC, datetime
from typing import Any
from uuid import NAMESPACE_URL, uuid5

import nats
import orjson
from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError
from pydantic import ValidationError

from domain.activity import BATCH, ONE, check_times
from service.problems import field_path
from service.settings import Settings
from write_api.tracking import ActivityWriter, Submission

log = logging.getLogger(__name__)

DURABLE = "tracking-ingester"
FETCH = 100  # messages per round: up to 100,000 events, stored well within ACK_WAIT
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
        await js.add_stream(
            StreamConfig(
                name=stream,
                subjects=[f"{prefix}.*"],
                storage=StorageType.FILE,
                duplicate_window=float(settings.nats_duplicate_window_seconds),
            )
        )


def parse(data: bytes, stream_seq: int, published: datetime) -> list[Any]:
    """The message's events, each with an id (its own or derived from the message)."""
    raw = orjson.loads(data)
    events = (
        BATCH.validate_python(raw).events
        if isinstance(raw, dict) and "events" in raw
        else [ONE.validate_python(raw)]
    )
    return [
        e
        if e.event_id is not None
        else e.model_copy(update={"event_id": uuid5(NAMESPACE_URL, f"nats:{stream_seq}:{i}")})
        for i, e in enumerate(events)
    ]


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
                while not self._stop.is_set():
                    try:
                        messages = await sub.fetch(FETCH, timeout=0.5)
                    except nats.errors.TimeoutError:
                        continue
                    await self._handle(messages)
            except Exception:
                log.exception("ingest: error; reconnecting")
                await asyncio.sleep(1.0)
            finally:
                await nc.close()
        self.writer.close()

    async def _handle(self, messages: list[Any]) -> None:
        submissions: list[tuple[Any, Submission]] = []
        for msg in messages:
            meta = msg.metadata
            org = msg.subject.rsplit(".", 1)[-1]
            published = meta.timestamp.astimezone(UTC)
            try:
                events = parse(msg.data, meta.sequence.stream, published)
            except orjson.JSONDecodeError:
                fields = ["body"]
            except ValidationError as e:
                fields = sorted({field_path(tuple(err["loc"])) for err in e.errors()})
            else:
                now = datetime.now(UTC)
                retention = self.settings.activity_retention_months
                fields = [f for f, _ in check_times(events, now, retention)] + [
                    f"events.{i}.customerId" for i, e in enumerate(events) if e.customer_id is None
                ]
            if fields:
                log.warning("ingest: invalid message terminated", extra={"fields": fields})
                await msg.term()
                continue
            submissions.append((msg, Submission(org, events, published)))
        if not submissions:
            return
        results = await asyncio.to_thread(self.writer.submit_many, [s for _, s in submissions])
        for (msg, _), result in zip(submissions, results, strict=True):
            if result.unknown:
                log.warning("ingest: message naming an unknown customer terminated")
                await msg.term()
            elif result.pending:
                await msg.nak(delay=1.0)
            else:
                self.stored += result.accepted
                await msg.ack()


async def run_forever(settings: Settings) -> None:
    """`customers serve ingest`: until SIGINT/SIGTERM."""
    ingester = Ingester(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, ingester.stop)
    await ingester.run()
