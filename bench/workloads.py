"""What the benchmark asks the service: distinct customers to create, ids to read, and a mix of
realistic two-filter list queries over the seeded organization."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import orjson

from bench.client import Client, HttpConnection, Latencies, Reply
from domain.values import lookup_country
from service.seed import _PLACES, _TAGS, CustomerFactory

PREFIX = "/api/v1/customers"
BULK_ORG = "bench"  # holds most customers: the list benchmark runs in it
SMALL_ORG = "bench-b"


class CreateBodies:
    """Distinct, realistic customers (the seed generator's shape: purchases, interactions,
    tags, consent) as ready POST requests; built ahead so the clock sees only HTTP."""

    def __init__(self, client: Client, headers: dict[str, str], *, start: int, seed: int) -> None:
        self.client = client
        self.headers = headers
        self.factory = CustomerFactory(random.Random(seed))
        self.next_n = start
        self.ready: list[bytes] = []

    def prepare(self, count: int) -> None:
        for _ in range(count):
            body = orjson.dumps(self.factory.profile(self.next_n))
            self.next_n += 1
            self.ready.append(self.client.build("POST", PREFIX, body, self.headers))
        self.ready.reverse()

    def __call__(self) -> bytes:
        if not self.ready:
            self.prepare(1000)
        return self.ready.pop()


def created_id(reply: Reply) -> str | None:
    location = reply.headers.get(b"location")
    return location.decode().rsplit("/", 1)[1] if location else None


# ------------------------------------------------------------------------------- visibility


@dataclass
class Visibility:
    poll: Latencies = field(default_factory=Latencies)  # POST answered → GET shows it
    polls_per_sample: list[int] = field(default_factory=list)
    token: Latencies = field(default_factory=Latencies)  # GET with X-Consistency-Token


async def visibility(
    client: Client, headers: dict[str, str], bodies: CreateBodies, samples: int
) -> Visibility:
    """Sequential: POST, then GET without token every 2 ms until 200; then, separately,
    POST and one GET carrying the X-Consistency-Token."""
    result = Visibility()
    writer, reader = await client.connect(), await client.connect()
    try:
        for _ in range(samples):
            reply = await writer.request(bodies())
            answered = time.perf_counter()
            cid = created_id(reply)
            if reply.status != 201 or cid is None:
                result.poll.add(0, reply.status, False)
                continue
            get = client.build("GET", f"{PREFIX}/{cid}", headers=headers)
            polls = 0
            while True:
                polls += 1
                sent = time.perf_counter()
                seen = await reader.request(get)
                if seen.status == 200:
                    result.poll.add(time.perf_counter() - answered, 200, True)
                    break
                if seen.status != 404 or sent - answered > 10:
                    result.poll.add(time.perf_counter() - answered, seen.status, False)
                    break
                await asyncio.sleep(max(0.0, sent + 0.002 - time.perf_counter()))
            result.polls_per_sample.append(polls)
        for _ in range(samples):
            reply = await writer.request(bodies())
            cid = created_id(reply)
            token = reply.headers.get(b"x-consistency-token")
            if reply.status != 201 or cid is None or token is None:
                result.token.add(0, reply.status, False)
                continue
            get = client.build(
                "GET", f"{PREFIX}/{cid}", headers={**headers, "X-Consistency-Token": token.decode()}
            )
            t0 = time.perf_counter()
            seen = await reader.request(get)
            result.token.add(time.perf_counter() - t0, seen.status, seen.status == 200)
    finally:
        writer.close()
        reader.close()
    return result


# ------------------------------------------------------------------------------- lists


_CITIES = {lookup_country(country)[0]: cities for country, _, cities, _ in _PLACES}
_COUNTRIES = sorted(_CITIES)


@dataclass(frozen=True)
class Shape:
    label: str
    make: Callable[[random.Random], dict[str, Any]]
    sorts: tuple[str, ...]


def list_shapes(first_names: list[str], seeded_from: datetime, seeded_to: datetime) -> list[Shape]:
    """Two filters each, values drawn like a CRM user would pick them."""
    prefixes = sorted({n[:k].lower() for n in first_names for k in (2, 3)})
    span = max(1.0, (seeded_to - seeded_from).total_seconds())

    def country(r: random.Random) -> str:
        return r.choice(_COUNTRIES)

    def city_of(r: random.Random) -> dict[str, Any]:
        c = country(r)
        return {"country": c, "city": r.choice(_CITIES[c])}

    def created_from(r: random.Random) -> str:
        return (seeded_from + timedelta(seconds=r.uniform(0.5, 0.95) * span)).isoformat()

    return [
        Shape(
            "status + country",
            lambda r: {"status": "ACTIVE", "country": country(r)},
            ("-createdAt", "name", "-lastActivity"),
        ),
        Shape("country + city", city_of, ("-createdAt", "-name", "email")),
        Shape(
            "tag + ageMin",
            lambda r: {"tag": r.choice(_TAGS), "ageMin": r.randint(30, 80)},
            ("-createdAt", "name"),
        ),
        Shape(
            "q + status",
            lambda r: {"q": r.choice(prefixes), "status": "ACTIVE"},
            ("name", "-createdAt", "email"),
        ),
        Shape(
            "q + country",
            lambda r: {"q": r.choice(prefixes), "country": country(r)},
            ("-name", "-createdAt"),
        ),
        Shape(
            "gender + country",
            lambda r: {"gender": r.choice(("MALE", "FEMALE", "OTHER")), "country": country(r)},
            ("-updatedAt", "createdAt"),
        ),
        Shape(
            "tag + country",
            lambda r: {"tag": r.choice(_TAGS), "country": country(r)},
            ("email", "-createdAt"),
        ),
        Shape(
            "city + ageMax",
            lambda r: {"city": city_of(r)["city"], "ageMax": r.randint(20, 40)},
            ("-lastActivity", "-createdAt"),
        ),
        Shape(
            "createdFrom + country",
            lambda r: {"createdFrom": created_from(r), "country": country(r)},
            ("-createdAt", "-updatedAt"),
        ),
        Shape(
            "rare status + country",
            lambda r: {"status": r.choice(("SUSPENDED", "INACTIVE")), "country": country(r)},
            ("-createdAt", "name"),
        ),
    ]


NEXT_PAGE = "next page (cursor), any shape"


def list_params(shape: Shape, rng: random.Random) -> dict[str, Any]:
    """One query of `shape`: random values, one of its sorts, a page of 20 or 50."""
    params = shape.make(rng)
    params["sort"] = rng.choice(shape.sorts)
    params["limit"] = rng.choice((20, 20, 50))
    return params


async def list_mix(
    client: Client,
    headers: dict[str, str],
    shapes: list[Shape],
    *,
    duration: float,
    warmup_rounds: int = 2,
    seed: int = 11,
) -> dict[str, Latencies]:
    """Sequential requests (one connection) cycling through the shapes in random order with
    random values, sorts and limits; a quarter of the answers are followed to the next page."""
    rng = random.Random(seed)
    per_shape: dict[str, Latencies] = {s.label: Latencies() for s in shapes}
    per_shape[NEXT_PAGE] = Latencies()
    conn = await client.connect()

    async def get(c: HttpConnection, params: dict[str, Any]) -> tuple[float, Reply]:
        raw = client.build("GET", f"{PREFIX}?{urlencode(params, doseq=True)}", headers=headers)
        t0 = time.perf_counter()
        reply = await c.request(raw)
        return time.perf_counter() - t0, reply

    for _ in range(warmup_rounds):
        for shape in shapes:
            await get(conn, list_params(shape, rng))

    started = time.perf_counter()
    deadline = started + duration
    while time.perf_counter() < deadline:
        order = shapes[:]
        rng.shuffle(order)
        for shape in order:
            params = list_params(shape, rng)
            seconds, reply = await get(conn, params)
            per_shape[shape.label].add(seconds, reply.status, reply.status == 200)
            if reply.status == 200 and rng.random() < 0.25:
                cursor = orjson.loads(reply.body).get("nextCursor")
                if cursor:
                    seconds, reply = await get(conn, {**params, "cursor": cursor})
                    per_shape[NEXT_PAGE].add(seconds, reply.status, reply.status == 200)
    elapsed = time.perf_counter() - started
    for stats in per_shape.values():
        stats.elapsed = elapsed
    conn.close()
    return per_shape
