"""A minimal HTTP/1.1 keep-alive client on asyncio.Protocol, and the load shapes.

Why not httpx: client and server share the machine's 2 cores, so every microsecond the client
spends is taken from the service. The baselines measure both clients against the same
uvicorn "hello" server and print the ratio, so the choice is visible in every run.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass(slots=True)
class Reply:
    status: int
    headers: dict[bytes, bytes]
    body: bytes


class HttpConnection(asyncio.Protocol):
    """One persistent connection; one request in flight at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._waiter: asyncio.Future[Reply] | None = None
        self.closed = False

    # ---------------------------------------------------------------- protocol callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if self._waiter is not None:
            self._parse()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionError(f"connection lost: {exc}"))
            self._waiter = None

    # ---------------------------------------------------------------- parsing

    def _parse(self) -> None:
        buf = self._buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return
        lines = bytes(buf[:end]).split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        start = end + 4
        length = headers.get(b"content-length")
        if length is not None:
            stop = start + int(length)
            if len(buf) < stop:
                return
            body = bytes(buf[start:stop])
        elif headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            chunks: list[bytes] = []
            pos = start
            while True:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    return
                size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
                if size == 0:
                    trailer_end = buf.find(b"\r\n\r\n", eol)
                    if trailer_end < 0:
                        return
                    stop = trailer_end + 4
                    break
                if len(buf) < eol + 2 + size + 2:
                    return
                chunks.append(bytes(buf[eol + 2 : eol + 2 + size]))
                pos = eol + 2 + size + 2
            body = b"".join(chunks)
        else:  # 204, 304 or no body
            stop, body = start, b""
        del buf[:stop]
        waiter, self._waiter = self._waiter, None
        assert waiter is not None
        waiter.set_result(Reply(status, headers, body))

    # ---------------------------------------------------------------- API

    async def request(self, raw: bytes) -> Reply:
        if self.closed or self.transport is None:
            raise ConnectionError("connection closed")
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        self.transport.write(raw)
        if self._buf:
            self._parse()
        return await self._waiter

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()


class Client:
    """Builds raw requests for one base URL and opens connections to it."""

    def __init__(self, base_url: str, headers: dict[str, str] | None = None) -> None:
        parts = urlsplit(base_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        fixed = {"Host": f"{self.host}:{self.port}", **(headers or {})}
        self._fixed = "".join(f"{k}: {v}\r\n" for k, v in fixed.items()).encode()

    async def connect(self) -> HttpConnection:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(HttpConnection, self.host, self.port)
        return proto

    def build(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> bytes:
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items()).encode()
        head = f"{method} {path} HTTP/1.1\r\n".encode() + self._fixed + extra
        if body is None:
            return head + b"\r\n"
        return (
            head
            + b"Content-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )


# ------------------------------------------------------------------------------- statistics


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list (p in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(p / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


@dataclass
class Latencies:
    """Seconds per request; ok/errors counted separately."""

    values: list[float] = field(default_factory=list)
    errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    elapsed: float = 0.0
    timeline: list[tuple[float, float]] = field(default_factory=list)  # (sent at, seconds)

    def add(self, seconds: float, status: int, ok: bool) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if ok:
            self.values.append(seconds)
        else:
            self.errors += 1

    def merge(self, other: Latencies) -> None:
        self.values += other.values
        self.errors += other.errors
        for k, v in other.statuses.items():
            self.statuses[k] = self.statuses.get(k, 0) + v

    @property
    def count(self) -> int:
        return len(self.values)

    @property
    def rate(self) -> float:
        return self.count / self.elapsed if self.elapsed else float("nan")

    def ms(self, p: float) -> float:
        return percentile(sorted(self.values), p) * 1000

    def windows_ms(self, p: float, window: float = 1.0) -> list[float]:
        """The p-th percentile of each `window`-second slice of the timeline (open loop)."""
        slices: dict[int, list[float]] = {}
        for sent, seconds in self.timeline:
            slices.setdefault(int(sent // window), []).append(seconds)
        return [percentile(sorted(v), p) * 1000 for _, v in sorted(slices.items())]


# ------------------------------------------------------------------------------- load shapes


@dataclass(slots=True)
class Call:
    """One request of a mixed workload (`closed_loop`'s `next_request` may return one instead
    of bytes): its latency also goes to `stats` (the operation's own), `ok` judges its reply,
    and `then` hears how it ended (the reply, or None when it was not answered)."""

    raw: bytes
    stats: Latencies
    ok: Callable[[Reply], bool]
    then: Callable[[Reply | None], None] | None = None


def retry_after(reply: Reply) -> float:
    """Seconds a refusal (429, 503) asks the client to wait: a closed-loop client behaves as
    a well-behaved HTTP client does, not as one that hammers a service that said it is full."""
    value = reply.headers.get(b"retry-after") if reply.status in (429, 503) else None
    return float(value) if value is not None and value.isdigit() else 0.0


async def closed_loop(
    client: Client,
    *,
    concurrency: int,
    duration: float,
    next_request: Callable[[], bytes | Call],
    ok: Callable[[Reply], bool],
    on_reply: Callable[[Reply], None] | None = None,
    warmup: float = 0.0,
) -> Latencies:
    """`concurrency` clients, each sending its next request as soon as the last is answered
    (or, after a refusal with `Retry-After`, once that time has passed).

    With `warmup`, the clients run that many seconds first, uncounted (requests sent before
    its end are not measured), then `duration` seconds are measured on the same connections:
    the requests sent within them, over `duration` (in a steady state, unlike the time to the
    last answer, not lengthened by the answers still awaited at the end).
    """
    stats = Latencies()
    conns = [await client.connect() for _ in range(concurrency)]
    measure_from = time.perf_counter() + warmup
    deadline = measure_from + duration

    async def worker(conn: HttpConnection) -> None:
        while time.perf_counter() < deadline:
            item = next_request()
            call = item if isinstance(item, Call) else None
            raw = item.raw if isinstance(item, Call) else item
            start = time.perf_counter()
            measured = start >= measure_from
            try:
                reply = await conn.request(raw)
            except ConnectionError:
                if measured:
                    stats.add(time.perf_counter() - start, 0, False)
                    if call is not None:
                        call.stats.add(time.perf_counter() - start, 0, False)
                if call is not None and call.then is not None:
                    call.then(None)
                conn = await client.connect()
                continue
            seconds = time.perf_counter() - start
            good = (call.ok if call is not None else ok)(reply)
            if measured:
                stats.add(seconds, reply.status, good)
                if call is not None:
                    call.stats.add(seconds, reply.status, good)
            if call is not None and call.then is not None:
                call.then(reply)
            if on_reply is not None:
                on_reply(reply)
            if (pause := retry_after(reply)) > 0:
                await asyncio.sleep(min(pause, max(0.0, deadline - time.perf_counter())))
        conn.close()

    await asyncio.gather(*(worker(c) for c in conns))
    stats.elapsed = duration if warmup else time.perf_counter() - measure_from
    for c in conns:
        c.close()
    return stats


async def open_loop(
    client: Client,
    *,
    rate: float,
    duration: float,
    next_request: Callable[[], bytes],
    ok: Callable[[Reply], bool],
    connections: int = 16,
) -> Latencies:
    """Requests sent on a fixed schedule (`rate` per second) whatever the answers do.

    Latency is measured from the scheduled send time, so a stall delays (and is charged to)
    every request scheduled during it: no coordinated omission.
    """
    stats = Latencies()
    idle: deque[HttpConnection] = deque()
    for _ in range(connections):
        idle.append(await client.connect())
    tasks: set[asyncio.Task[None]] = set()
    start = time.perf_counter()

    async def one(scheduled: float, raw: bytes) -> None:
        # Oldest idle connection first, so none idles into the server's keep-alive timeout;
        # one retry on a fresh connection if the server closed it anyway (as clients do).
        for attempt in (1, 2):
            conn = idle.popleft() if idle and attempt == 1 else await client.connect()
            try:
                reply = await conn.request(raw)
            except ConnectionError:
                conn.close()
                if attempt == 2:
                    stats.add(time.perf_counter() - scheduled, 0, False)
                continue
            done = time.perf_counter()
            stats.add(done - scheduled, reply.status, ok(reply))
            stats.timeline.append((scheduled - start, done - scheduled))
            idle.append(conn)
            return

    total = int(rate * duration)
    for i in range(total):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(scheduled, next_request()))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)
    stats.elapsed = time.perf_counter() - start
    for c in idle:
        c.close()
    return stats
