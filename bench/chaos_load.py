"""The load of `make chaos`: a client that retries like a real one and logs what it was told.

Every logical request is an `Op` with a tag that is also written into the data (a customer's
or an update's tag, tracked events' ids), so the checks can find its effect in the event store
and count it. An op ends in one of three outcomes:

- acked: a 2xx answer. Its effect must be stored exactly once.
- rejected: a definite refusal (4xx) with no earlier attempt in doubt. Nothing may be stored.
- in doubt: no definite answer (connection lost, timeout, 5xx, or a 412 after such an attempt).
  Stored at most once.

Retries, as a careful client does them: creates carry an `Idempotency-Key`, updates keep their
`If-Match`, tracked events carry their `eventId` and `timestamp`, NATS messages a
`Nats-Msg-Id`; all are re-sent unchanged after a connection error, a timeout, 429 or 5xx,
with backoff, until a deadline.

Every attempt is logged with its send and answer times, for the recovery times per fault.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import orjson
import psycopg

from bench.client import Client, HttpConnection, Reply

PREFIX = "/api/v1/customers"
SEGMENTS = PREFIX + "/segments"
RETRYABLE = {429, 500, 502, 503, 504}
_COUNTRIES = (("Spain", "Europe/Madrid"), ("France", "Europe/Paris"), ("Italy", "Europe/Rome"))


def customer_body(email: str, name: str, tags: list[str], rng: random.Random) -> dict[str, Any]:
    country, tz = rng.choice(_COUNTRIES)
    return {
        "email": email,
        "name": name,
        "age": rng.randint(18, 80),
        "gender": rng.choice(("MALE", "FEMALE", "OTHER")),
        "location": {"country": country, "city": "Capital", "timezone": tz},
        "preferences": {
            "language": "en",
            "currency": "EUR",
            "privacySettings": {
                "dataSharing": False,
                "analyticsTracking": True,
                "personalization": True,
                "thirdPartySharing": False,
            },
            "marketingConsent": True,
            "dataProcessingConsent": True,
        },
        "tags": tags,
        "metadata": {"source": "website"},
    }


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def tracked_event(customer_id: str, rng: random.Random) -> dict[str, Any]:
    event: dict[str, Any] = {
        "customerId": customer_id,
        "eventId": str(uuid.uuid4()),
        "timestamp": now_iso(),
    }
    if rng.random() < 0.5:
        event["type"] = "PURCHASE"
        event["data"] = {
            "orderId": f"o-{uuid.uuid4().hex[:10]}",
            "amount": round(rng.uniform(5, 300), 2),
            "currency": "EUR",
            "product": "Trail shoes",
            "category": "Footwear",
        }
    else:
        event["type"] = "PAGE_VIEW"
        event["data"] = {"url": "https://shop.example/p/1", "title": "Shoes"}
    return event


# ----------------------------------------------------------------------------- records


@dataclass(slots=True)
class Attempt:
    kind: str
    sent: float  # time.time()
    done: float
    ok: bool
    status: int = 0  # 0: no answer (connection refused or lost, timeout)
    window: str = ""  # the fault window it was sent in


@dataclass
class Op:
    kind: str  # create, update, track, nats_track, idem_create, cas_update
    window: str
    tag: str
    outcome: str = "pending"  # acked | rejected | in_doubt
    customer_id: str | None = None
    version: int | None = None
    if_match: int | None = None
    event_ids: list[str] = field(default_factory=list)
    status: int | None = None
    attempts: int = 0
    doubtful: bool = False  # an attempt had no definite answer

    def settle(self, reply: Reply | None, ok: bool) -> None:
        self.status = None if reply is None else reply.status
        if ok:
            self.outcome = "acked"
        elif reply is None or self.doubtful:
            self.outcome = "in_doubt"
        else:
            self.outcome = "rejected"


@dataclass
class Known:
    """A customer this client created (acked), with what it last knows of it."""

    id: str
    tag: str
    body: dict[str, Any]
    version: int
    acked_at: float
    busy: bool = False


class Conn:
    """One keep-alive connection to a server, opened again after any failure."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.conn: HttpConnection | None = None

    async def request(self, raw: bytes, timeout: float) -> Reply:
        if self.conn is None or self.conn.closed:
            self.conn = await asyncio.wait_for(self.client.connect(), timeout)
        conn = self.conn
        try:
            return await asyncio.wait_for(conn.request(raw), timeout)
        except BaseException:
            conn.close()
            self.conn = None
            raise

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


# ----------------------------------------------------------------------------- the load


@dataclass
class Rates:
    """Logical requests per second, by kind."""

    create: float
    update: float
    read: float
    list: float
    track: float
    nats_track: float
    calc_every: float  # seconds between segment calculation requests

    @classmethod
    def total(cls, rate: float) -> Rates:
        return cls(
            create=rate * 0.2,
            update=rate * 0.25,
            read=rate * 0.3,
            list=rate * 0.05,
            track=rate * 0.1,
            nats_track=rate * 0.1,
            calc_every=4.0,
        )


class Load:
    def __init__(
        self,
        *,
        write_url: str,
        read_url: str,
        token: str,
        nats_url: str,
        tracking_subject: str,
        segment_ids: list[str],
        rates: Rates,
        timeout: float = 10.0,
        deadline: float = 90.0,
        seed: int = 7,
    ) -> None:
        auth = {"Authorization": f"Bearer {token}"}
        self.write = Client(write_url, auth)
        self.read = Client(read_url, auth)
        self.nats_url = nats_url
        self.tracking_subject = tracking_subject
        self.segment_ids = segment_ids
        self.rates = rates
        self.timeout = timeout
        self.deadline = deadline
        self.rng = random.Random(seed)
        self.run_id = uuid.uuid4().hex[:8]
        self.window = "setup"
        self.stopping = False
        self.ops: list[Op] = []
        self.attempts: list[Attempt] = []
        self.pool: list[Known] = []
        self.jobs: list[str] = []
        self.pubacks: list[tuple[float, int]] = []  # (time, stream seq) of tracking messages
        self.errors: list[str] = []
        self._n = 0
        self._calc_now = asyncio.Event()
        self._probes: set[asyncio.Task[None]] = set()
        self._probe_slots = asyncio.Semaphore(8)
        self._js: Any = None  # the NATS producer's JetStream context, while connected

    def next_n(self) -> int:
        self._n += 1
        return self._n

    # ------------------------------------------------------------------ mechanics

    async def attempt(self, kind: str, conn: Conn, raw: bytes) -> Reply | None:
        sent = time.time()
        try:
            reply: Reply | None = await conn.request(raw, self.timeout)
        except (OSError, TimeoutError):
            reply = None
        ok = reply is not None and 200 <= reply.status < 300
        status = 0 if reply is None else reply.status
        self.attempts.append(Attempt(kind, sent, time.time(), ok, status, self.window))
        return reply

    async def perform(self, op: Op, conn: Conn, raw: bytes) -> Reply | None:
        """Send until a definite answer or the deadline; None when there was none."""
        deadline = time.monotonic() + self.deadline
        delay = 0.1
        while True:
            op.attempts += 1
            reply = await self.attempt(op.kind, conn, raw)
            if reply is not None and reply.status not in RETRYABLE:
                return reply
            if reply is None or reply.status != 429:
                op.doubtful = True
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def put_if_match(
        self, op: Op, conn: Conn, customer_id: str, version: int, body: dict[str, Any]
    ) -> Reply | None:
        """PUT `body` with `If-Match: version` as `op`, settled (with the new version when
        acknowledged); the last reply, if any."""
        op.customer_id, op.if_match = customer_id, version
        headers = {"If-Match": f'"{version}"'}
        raw = self.write.build("PUT", f"{PREFIX}/{customer_id}", orjson.dumps(body), headers)
        reply = await self.perform(op, conn, raw)
        ok = reply is not None and reply.status == 200
        op.settle(reply, ok)
        if ok and reply is not None:
            op.version = int(orjson.loads(reply.body)["version"])
        return reply

    def new_op(self, kind: str, tag: str) -> Op:
        op = Op(kind, self.window, tag)
        self.ops.append(op)
        return op

    def ready_customers(self, age: float) -> list[Known]:
        cutoff = time.time() - age
        return [k for k in self.pool if k.acked_at <= cutoff]

    # ------------------------------------------------------------------ operations

    async def create(self, conn: Conn, reader: Conn) -> None:
        n = self.next_n()
        tag = f"c{self.run_id}-{n}"
        body = customer_body(
            f"chaos.{self.run_id}.{n}@example.com", f"Chaos Customer {n}", ["chaos", tag], self.rng
        )
        op = self.new_op("create", tag)
        raw = self.write.build("POST", PREFIX, orjson.dumps(body), {"Idempotency-Key": tag})
        reply = await self.perform(op, conn, raw)
        ok = reply is not None and reply.status == 201
        op.settle(reply, ok)
        if not ok or reply is None:
            return
        answer = orjson.loads(reply.body)
        op.customer_id, op.version = answer["id"], int(answer["version"])
        self.pool.append(Known(answer["id"], tag, body, op.version, time.time()))
        token = reply.headers.get(b"x-consistency-token")
        if token is not None and n % 2 == 0:
            self._probe(self.visible(answer["id"], token.decode()))

    def _probe(self, probe: Awaitable[None]) -> None:
        async def guarded() -> None:
            async with self._probe_slots:
                await probe

        task = asyncio.ensure_future(guarded())
        self._probes.add(task)
        task.add_done_callback(self._probes.discard)

    async def visible(self, customer_id: str, token: str) -> None:
        """Read-your-writes: the read model shows the new customer (projector alive)."""
        conn = Conn(self.read)
        raw = self.read.build(
            "GET", f"{PREFIX}/{customer_id}", headers={"X-Consistency-Token": token}
        )
        try:
            await self.attempt("visible", conn, raw)
        finally:
            conn.close()

    async def update(self, conn: Conn, reader: Conn) -> None:
        free = [k for k in self.ready_customers(0.0) if not k.busy]
        if not free:
            return
        known = self.rng.choice(free)
        known.busy = True
        try:
            tag = f"u{self.run_id}-{self.next_n()}"
            body = {
                **known.body,
                "tags": ["chaos", known.tag, tag],
                "age": self.rng.randint(18, 80),
            }
            op = self.new_op("update", tag)
            reply = await self.put_if_match(op, conn, known.id, known.version, body)
            if op.outcome == "acked" and op.version is not None:
                known.version, known.body = op.version, body
            elif reply is None or reply.status == 412:
                await self.refresh(known, reader)
        finally:
            known.busy = False

    async def refresh(self, known: Known, reader: Conn) -> None:
        """Learn the customer's version again (the read model may trail by a moment)."""
        await asyncio.sleep(0.3)
        reply = await self.attempt("read", reader, self.read.build("GET", f"{PREFIX}/{known.id}"))
        if reply is not None and reply.status == 200:
            answer = orjson.loads(reply.body)
            known.version = int(answer["version"])
            known.body = {**known.body, "tags": answer["tags"], "age": answer["age"]}

    async def get(self, conn: Conn, reader: Conn) -> None:
        ready = self.ready_customers(2.0)
        if not ready:
            return
        known = self.rng.choice(ready)
        await self.attempt("read", reader, self.read.build("GET", f"{PREFIX}/{known.id}"))

    async def listing(self, conn: Conn, reader: Conn) -> None:
        query = urlencode({"tag": "chaos", "limit": 20, "sort": "-createdAt"})
        await self.attempt("list", reader, self.read.build("GET", f"{PREFIX}?{query}"))

    async def track(self, conn: Conn, reader: Conn) -> None:
        ready = self.ready_customers(1.0)
        if not ready:
            return
        chosen = self.rng.sample(ready, min(5, len(ready)))
        events = [tracked_event(self.rng.choice(chosen).id, self.rng) for _ in range(10)]
        op = self.new_op("track", events[0]["eventId"])
        raw = self.write.build("POST", f"{PREFIX}/track/batch", orjson.dumps({"events": events}))
        reply = await self.perform(op, conn, raw)
        ok = reply is not None and reply.status == 202
        op.settle(reply, ok)
        skipped: set[int] = set()
        if ok and reply is not None:
            answer = orjson.loads(reply.body)
            skipped = {s["index"] for s in answer.get("skipped", [])}
        op.event_ids = [e["eventId"] for i, e in enumerate(events) if i not in skipped]

    async def calculate(self, conn: Conn, segment_id: str) -> None:
        op = self.new_op("calc", f"calc-{self.next_n()}")
        reply = await self.perform(
            op, conn, self.write.build("POST", f"{SEGMENTS}/{segment_id}/calculate")
        )
        ok = reply is not None and reply.status == 202
        op.settle(reply, ok)
        if ok and reply is not None:
            self.jobs.append(orjson.loads(reply.body)["id"])

    def calculate_now(self) -> None:
        self._calc_now.set()

    def burst(self, n: int = 12) -> None:
        """`n` writes at once (creates, updates, tracking over HTTP and NATS), not awaited:
        sent just before a fault, so that the fault meets requests in flight."""
        kinds = (self.create, self.update, self.track)
        for i in range(n):
            self._spawn(self._once(kinds[i % len(kinds)]))
        ready = self.ready_customers(1.0)
        if self._js is not None and ready:
            for _ in range(max(1, n // 4)):
                self._spawn(self.publish_tracking(self._js, ready))

    async def _once(self, fn: Callable[[Conn, Conn], Awaitable[None]]) -> None:
        conn, reader = Conn(self.write), Conn(self.read)
        try:
            await fn(conn, reader)
        finally:
            conn.close()
            reader.close()

    def _spawn(self, work: Awaitable[None]) -> None:
        async def guarded() -> None:
            try:
                await work
            except Exception:
                self.errors.append(traceback.format_exc())

        task = asyncio.ensure_future(guarded())
        self._probes.add(task)
        task.add_done_callback(self._probes.discard)

    # ------------------------------------------------------------------ NATS producer

    async def nats_producer(self) -> None:
        """Tracked events published to the tracking subject (the `ingest` process stores
        them); acked = the PubAck of JetStream."""
        import nats

        async def quiet(_: Exception) -> None:
            return None

        nc = await nats.connect(
            self.nats_url,
            name="chaos-producer",
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.25,
            connect_timeout=2,
            error_cb=quiet,
        )
        js = self._js = nc.jetstream(timeout=3.0)
        interval = 1.0 / self.rates.nats_track if self.rates.nats_track > 0 else 0.0
        try:
            while not self.stopping and interval:
                started = time.monotonic()
                ready = self.ready_customers(1.0)
                if ready:
                    await self.publish_tracking(js, ready)
                await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))
        finally:
            with contextlib.suppress(Exception):
                await nc.close()

    async def publish_tracking(self, js: Any, ready: list[Known]) -> None:
        chosen = self.rng.sample(ready, min(3, len(ready)))
        events = [tracked_event(self.rng.choice(chosen).id, self.rng) for _ in range(5)]
        tag = events[0]["eventId"]
        op = self.new_op("nats_track", tag)
        op.event_ids = [e["eventId"] for e in events]
        payload = orjson.dumps({"events": events})
        deadline = time.monotonic() + self.deadline
        delay = 0.1
        while True:
            op.attempts += 1
            sent = time.time()
            try:
                ack = await js.publish(
                    self.tracking_subject, payload, headers={"Nats-Msg-Id": tag}, timeout=3.0
                )
            except Exception:
                self.attempts.append(
                    Attempt("nats_track", sent, time.time(), False, 0, self.window)
                )
                op.doubtful = True
                if time.monotonic() > deadline:
                    op.outcome = "in_doubt"
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            done = time.time()
            self.attempts.append(Attempt("nats_track", sent, done, True, 202, self.window))
            self.pubacks.append((done, int(ack.seq)))
            op.outcome = "acked"
            return

    # ------------------------------------------------------------------ driving

    async def paced(
        self, rate: float, workers: int, fn: Callable[[Conn, Conn], Awaitable[None]]
    ) -> None:
        if rate <= 0:
            return

        async def worker() -> None:
            conn, reader = Conn(self.write), Conn(self.read)
            interval = workers / rate
            next_at = time.monotonic() + self.rng.random() * interval
            try:
                while not self.stopping:
                    delay = next_at - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    next_at = max(next_at + interval, time.monotonic() - interval)
                    try:
                        await fn(conn, reader)
                    except Exception:
                        self.errors.append(traceback.format_exc())
                        await asyncio.sleep(0.5)
            finally:
                conn.close()
                reader.close()

        await asyncio.gather(*(worker() for _ in range(workers)))

    async def calculator(self) -> None:
        conn = Conn(self.write)
        i = 0
        try:
            while not self.stopping and self.segment_ids:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._calc_now.wait(), self.rates.calc_every)
                self._calc_now.clear()
                if self.stopping:
                    break
                try:
                    await self.calculate(conn, self.segment_ids[i % len(self.segment_ids)])
                except Exception:
                    self.errors.append(traceback.format_exc())
                i += 1
        finally:
            conn.close()

    async def run(self) -> None:
        """Until `stop()`; returns when every worker has finished its op."""
        r = self.rates
        await asyncio.gather(
            self.paced(r.create, 3, self.create),
            self.paced(r.update, 4, self.update),
            self.paced(r.read, 3, self.get),
            self.paced(r.list, 1, self.listing),
            self.paced(r.track, 2, self.track),
            self.nats_producer(),
            self.calculator(),
        )
        if self._probes:
            await asyncio.gather(*self._probes, return_exceptions=True)

    def stop(self) -> None:
        self.stopping = True
        self._calc_now.set()


# ----------------------------------------------------------------------------- monitor


@dataclass
class Monitor:
    """Samples, a few times a second, how far each follower of the event log has come
    (`positions`) against the log's head, and the tracking consumer's ack floor."""

    database_url: str
    nats_url: str
    tracking_stream: str
    tracking_consumer: str
    interval: float = 0.25
    samples: list[tuple[float, dict[str, int]]] = field(default_factory=list)
    floors: list[tuple[float, int]] = field(default_factory=list)
    stopping: bool = False

    async def run(self) -> None:
        await asyncio.gather(self._positions(), self._floors())

    async def _positions(self) -> None:
        query = (
            "SELECT name, position FROM positions UNION ALL"
            " SELECT '_head', coalesce(max(notification_id), 0) FROM customers_events"
        )
        conn: psycopg.AsyncConnection[Any] | None = None
        while not self.stopping:
            try:
                if conn is None or conn.closed:
                    conn = await psycopg.AsyncConnection.connect(
                        self.database_url, autocommit=True, connect_timeout=2
                    )
                rows = await (await conn.execute(query)).fetchall()
                self.samples.append((time.time(), {str(n): int(p) for n, p in rows}))
            except (psycopg.Error, OSError):
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close()
                conn = None
            await asyncio.sleep(self.interval)
        if conn is not None:
            await conn.close()

    async def _floors(self) -> None:
        import nats

        async def quiet(_: Exception) -> None:
            return None

        nc = await nats.connect(
            self.nats_url,
            name="chaos-monitor",
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.25,
            error_cb=quiet,
        )
        js = nc.jetstream(timeout=1.0)
        try:
            while not self.stopping:
                try:
                    info = await js.consumer_info(self.tracking_stream, self.tracking_consumer)
                    if info.ack_floor is not None:
                        self.floors.append((time.time(), int(info.ack_floor.stream_seq)))
                except Exception:
                    pass
                await asyncio.sleep(self.interval * 2)
        finally:
            with contextlib.suppress(Exception):
                await nc.close()

    def stop(self) -> None:
        self.stopping = True


# ----------------------------------------------------------------------------- concurrency


async def concurrent_if_match(
    load: Load, *, writers: int = 6, each: int = 4, budget: float = 60.0
) -> tuple[list[Op], str | None, dict[str, Any] | None]:
    """`writers` clients update ONE customer concurrently, read-modify-write with If-Match,
    until each has `each` acknowledged updates. Returns the ops, the customer id and the final
    state read with the last acknowledged write's consistency token."""
    create = Conn(load.write)
    tag = f"x{load.run_id}"
    body = customer_body(
        f"chaos.{load.run_id}.cas@example.com", "Chaos Contended", ["chaos", tag], load.rng
    )
    op = load.new_op("create", tag)
    raw = load.write.build("POST", PREFIX, orjson.dumps(body), {"Idempotency-Key": tag})
    reply = await load.perform(op, create, raw)
    create.close()
    op.settle(reply, reply is not None and reply.status == 201)
    if op.outcome != "acked" or reply is None:
        return [], None, None
    customer_id = orjson.loads(reply.body)["id"]
    op.customer_id, op.version = customer_id, 1
    ops: list[Op] = []
    tokens: dict[int, str] = {}
    deadline = time.monotonic() + budget

    async def writer(w: int) -> None:
        conn, reader = Conn(load.write), Conn(load.read)
        done = 0
        try:
            while done < each and time.monotonic() < deadline:
                got = await load.attempt(
                    "read", reader, load.read.build("GET", f"{PREFIX}/{customer_id}")
                )
                if got is None or got.status != 200:
                    await asyncio.sleep(0.05)
                    continue
                version = int(orjson.loads(got.body)["version"])
                utag = f"w{load.run_id}-{w}-{done}-{load.next_n()}"
                op = load.new_op("cas_update", utag)
                put = {**body, "tags": ["chaos", tag, utag]}
                answer = await load.put_if_match(op, conn, customer_id, version, put)
                ops.append(op)
                if op.outcome == "acked" and op.version is not None and answer is not None:
                    token = answer.headers.get(b"x-consistency-token")
                    if token is not None:
                        tokens[op.version] = token.decode()
                    done += 1
        finally:
            conn.close()
            reader.close()

    await asyncio.gather(*(writer(w) for w in range(writers)))
    final: dict[str, Any] | None = None
    if tokens:
        last = max(tokens)
        reader = Conn(load.read)
        got = await load.attempt(
            "read",
            reader,
            load.read.build(
                "GET", f"{PREFIX}/{customer_id}", headers={"X-Consistency-Token": tokens[last]}
            ),
        )
        reader.close()
        if got is not None and got.status == 200:
            final = orjson.loads(got.body)
    return ops, customer_id, final


async def parallel_idempotent_creates(
    load: Load, *, rounds: int = 5, parallel: int = 8
) -> list[tuple[str, list[Op], set[str]]]:
    """`parallel` clients send the same create with the same Idempotency-Key at once, in
    `rounds` rounds. Returns per round: the tag, the ops and the customer ids answered."""
    results = []
    for r in range(rounds):
        tag = f"i{load.run_id}-{r}"
        body = customer_body(
            f"chaos.{load.run_id}.idem{r}@example.com", f"Chaos Idem {r}", ["chaos", tag], load.rng
        )
        raw = load.write.build("POST", PREFIX, orjson.dumps(body), {"Idempotency-Key": tag})
        ops = [load.new_op("idem_create", tag) for _ in range(parallel)]
        conns = [Conn(load.write) for _ in range(parallel)]
        # Open the connections first, so the requests leave together.
        for c in conns:
            with contextlib.suppress(OSError, TimeoutError):
                c.conn = await asyncio.wait_for(c.client.connect(), load.timeout)

        async def send(op: Op, conn: Conn, raw: bytes) -> str | None:
            reply = await load.perform(op, conn, raw)
            ok = reply is not None and reply.status == 201
            op.settle(reply, ok)
            if ok and reply is not None:
                op.customer_id = orjson.loads(reply.body)["id"]
                op.version = 1
            return op.customer_id

        ids = await asyncio.gather(*(send(op, c, raw) for op, c in zip(ops, conns, strict=True)))
        for c in conns:
            c.close()
        results.append((tag, ops, {i for i in ids if i}))
    return results
