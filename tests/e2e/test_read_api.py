"""The read API over HTTP (ASGI transport, real lifespan, real PostgreSQL): get, list filters,
keyset paging for every sort, bad input as problem+json, consistency tokens, auth, ops."""

from __future__ import annotations

import asyncio
import base64
import secrets
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import httpx
import orjson
import psycopg
import pytest
from asgi_lifespan import LifespanManager
from psycopg import sql

from domain.customer import Customer
from domain.values import CustomerStatus, Profile
from eventstore.application import Customers
from eventstore.migrate import migrate
from projections import customers as view
from projections.runner import ViewRunner
from read_api.app import create_app
from service import embedded
from service.auth import issue_token
from service.settings import Settings

pytestmark = pytest.mark.anyio

ORG, OTHER = "org-a", "org-b"
COUNTRIES = ["ES", "FR", "DE", "US"]
CITIES = ["Madrid", "Paris", "Berlin", "New York"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# --------------------------------------------------------------------------- data


def _profile(i: int) -> Profile:
    k = i % 4
    data: dict[str, Any] = {
        "email": f"{['ana', 'bob', 'Carla', 'dan_x'][k]}{i}@example.com",
        # Ties on the name sort key (and mixed case) are deliberate.
        "name": ["Same Name", "same name", f"Zed {i}", f"Álvaro {i}"][i % 4] if i % 5 else "Bob",
        "age": 18 + (i * 7) % 60,
        "gender": ["MALE", "FEMALE", "OTHER", "UNKNOWN"][(i // 2) % 4],
        "location": {"country": COUNTRIES[k], "city": CITIES[k]},
        "tags": [
            t for t, on in (("vip", i % 3 == 0), ("news", i % 2 == 0), ("b2b", i % 7 == 0)) if on
        ],
        "preferences": {"marketingConsent": True, "dataProcessingConsent": True},
    }
    if i % 9 == 0:
        del data["location"]
    return Profile.model_validate(data)


class World:
    def __init__(self, settings: Settings, app: Customers) -> None:
        self.settings = settings
        self.app = app
        self.ids: list[UUID] = []
        self.other_ids: list[UUID] = []

    def docs(self) -> list[dict[str, Any]]:
        return [self.app.repository.get(i).public() for i in self.ids]

    def project(self) -> None:
        p = ViewRunner(self.app, view.CustomersView())
        try:
            p.run_once()
        finally:
            p.close()


@pytest.fixture(scope="module")
def world(env: Settings, pg_admin_url: str) -> Iterator[World]:
    dbname = f"read_api_{secrets.token_hex(4)}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    url = embedded.with_database(pg_admin_url, dbname)
    migrate(url)
    settings = env.model_copy(update={"database_url": url, "consistency_wait_seconds": 1.0})
    app = Customers(settings, create_table=True)
    w = World(settings, app)
    for batch in range(3):  # three saves: distinct, spread-out creation times
        made = [Customer.register(ORG, _profile(batch * 25 + i), "seed") for i in range(25)]
        app.save(*made, new_keys=[app.keys.create(c.id, ORG) for c in made])
        w.ids += [c.id for c in made]
    for c in made[:10]:
        if c.active_orders == 0:
            c.set_active_orders(1, actor="t")
    app.save(*made[:10])
    statuses = [CustomerStatus.INACTIVE, CustomerStatus.SUSPENDED]
    for n, cid in enumerate(w.ids[::6]):
        c = app.repository.get(cid)
        c.update(
            Profile.model_validate(c.profile),
            status=statuses[n % 2],
            actor="seed",
            actor_is_admin=True,
            now=datetime.now(UTC),
            verification_ttl=timedelta(hours=1),
        )
        app.save(c)
    others = [Customer.register(OTHER, _profile(i), "seed") for i in range(5)]
    app.save(*others, new_keys=[app.keys.create(c.id, OTHER) for c in others])
    w.other_ids = [c.id for c in others]
    w.project()
    yield w
    app.close()
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(dbname)))


def token(settings: Settings, org: str = ORG, roles: list[str] | None = None) -> str:
    return issue_token(settings, sub="tester", org=org, roles=roles or ["support"])


@pytest.fixture
async def client(world: World) -> AsyncIterator[httpx.AsyncClient]:
    async with _client(world.settings) as c:
        yield c


class _client:
    """An httpx client over the app with its lifespan running, authenticated for ORG."""

    def __init__(self, settings: Settings, org: str = ORG) -> None:
        self.manager = LifespanManager(create_app(settings))
        self.headers = {"Authorization": f"Bearer {token(settings, org)}"}
        self.client: httpx.AsyncClient | None = None

    async def __aenter__(self) -> httpx.AsyncClient:
        await self.manager.__aenter__()
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.manager.app),
            base_url="http://test",
            headers=self.headers,
        )
        return self.client

    async def __aexit__(self, *exc: object) -> None:
        assert self.client is not None
        await self.client.aclose()
        await self.manager.__aexit__(None, None, None)


async def list_all(client: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    r = await client.get("/api/v1/customers", params={**params, "limit": 500})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["nextCursor"] is None
    return list(body["items"])


def assert_problem(r: httpx.Response, status: int, field: str | None = None) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["status"] == status
    if field is not None:
        assert field in [e["field"] for e in body["errors"]], body


# --------------------------------------------------------------------------- get


async def test_get_returns_the_stored_document_with_etag(
    world: World, client: httpx.AsyncClient
) -> None:
    cid = world.ids[6]
    r = await client.get(f"/api/v1/customers/{cid}")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    agg = world.app.repository.get(cid)
    assert r.content == orjson.dumps(agg.public())
    assert r.headers["etag"] == f'"{agg.version}"'
    again = await client.get(
        f"/api/v1/customers/{cid}", headers={"If-None-Match": r.headers["etag"]}
    )
    assert again.status_code == 304


async def test_get_is_scoped_to_the_callers_organization(
    world: World, client: httpx.AsyncClient
) -> None:
    assert_problem(await client.get(f"/api/v1/customers/{world.other_ids[0]}"), 404)
    assert_problem(await client.get(f"/api/v1/customers/{uuid4()}"), 404)
    async with _client(world.settings, OTHER) as other:
        r = await other.get(f"/api/v1/customers/{world.other_ids[0]}")
        assert r.status_code == 200
        assert r.json()["id"] == str(world.other_ids[0])


async def test_get_with_an_invalid_id_is_422_naming_id(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/api/v1/customers/not-a-uuid"), 422, "id")


async def test_requests_without_a_valid_token_are_401(world: World) -> None:
    async with LifespanManager(create_app(world.settings)) as m:
        transport = httpx.ASGITransport(app=m.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            assert_problem(await c.get(f"/api/v1/customers/{world.ids[0]}"), 401)
            assert_problem(await c.get("/api/v1/customers"), 401)
            bad = {"Authorization": "Bearer nope"}
            assert_problem(await c.get("/api/v1/customers", headers=bad), 401)
            # A token that is rejected must not make the server wait for consistency.
            slow = {**bad, "X-Consistency-Token": "999999999"}
            assert_problem(await c.get("/api/v1/customers", headers=slow), 401)
            nobody = {"Authorization": f"Bearer {token(world.settings, roles=['nobody'])}"}
            assert_problem(await c.get("/api/v1/customers", headers=nobody), 403)


# --------------------------------------------------------------------------- list


async def test_list_defaults_newest_first_and_only_own_org(
    world: World, client: httpx.AsyncClient
) -> None:
    r = await client.get("/api/v1/customers")
    assert r.status_code == 200
    body = r.json()
    assert body["limit"] == 50
    assert len(body["items"]) == 50
    assert body["nextCursor"]
    everything = await list_all(client)
    assert {d["id"] for d in everything} == {str(i) for i in world.ids}
    keys = [(d["createdAt"], d["id"]) for d in everything]
    assert keys == sorted(keys, reverse=True)
    assert body["items"] == everything[:50]


def _expect(world: World, pred: Any) -> set[str]:
    return {d["id"] for d in world.docs() if pred(d)}


def _loc(d: dict[str, Any], key: str) -> Any:
    return (d["location"] or {}).get(key)


FILTER_CASES: list[tuple[dict[str, Any], Any]] = [
    ({"status": "SUSPENDED"}, lambda d: d["status"] == "SUSPENDED"),
    ({"status": "ACTIVE"}, lambda d: d["status"] == "ACTIVE"),
    ({"country": "FR"}, lambda d: _loc(d, "countryCode") == "FR"),
    ({"country": "Germany"}, lambda d: _loc(d, "countryCode") == "DE"),
    ({"country": "united states"}, lambda d: _loc(d, "countryCode") == "US"),
    ({"city": "mAdRiD"}, lambda d: _loc(d, "city") == "Madrid"),
    ({"city": "new york"}, lambda d: _loc(d, "city") == "New York"),
    ({"gender": "OTHER"}, lambda d: d["gender"] == "OTHER"),
    ({"tag": "vip"}, lambda d: "vip" in d["tags"]),
    ({"tag": ["vip", "news"]}, lambda d: {"vip", "news"} <= set(d["tags"])),
    ({"ageMin": 30}, lambda d: d["age"] >= 30),
    ({"ageMax": 30}, lambda d: d["age"] <= 30),
    ({"ageMin": 25, "ageMax": 40}, lambda d: 25 <= d["age"] <= 40),
    ({"q": "CAR"}, lambda d: d["email"].startswith("carla") or d["name"].lower().startswith("car")),
    ({"q": "same"}, lambda d: d["name"].lower().startswith("same")),
    ({"q": "álv"}, lambda d: d["name"].lower().startswith("álv")),
    ({"q": "dan_"}, lambda d: d["email"].startswith("dan_")),
    ({"q": "%"}, lambda d: False),
    ({"q": "_"}, lambda d: False),
    (
        {"country": "ES", "status": "ACTIVE", "tag": "news"},
        lambda d: (
            _loc(d, "countryCode") == "ES" and d["status"] == "ACTIVE" and "news" in d["tags"]
        ),
    ),
]


@pytest.mark.parametrize(("params", "pred"), FILTER_CASES, ids=[str(p) for p, _ in FILTER_CASES])
async def test_list_filters(
    world: World, client: httpx.AsyncClient, params: dict[str, Any], pred: Any
) -> None:
    got = await list_all(client, **params)
    expected = _expect(world, pred)
    assert expected or params.get("q") in {"%", "_"}, "a filter case must select something"
    assert {d["id"] for d in got} == expected
    assert len(got) == len(expected)


async def test_list_created_range(world: World, client: httpx.AsyncClient) -> None:
    docs = sorted(world.docs(), key=lambda d: d["createdAt"])
    lo, hi = docs[10]["createdAt"], docs[40]["createdAt"]
    got = await list_all(client, createdFrom=lo, createdTo=hi)
    assert {d["id"] for d in got} == {d["id"] for d in docs[10:41]}
    # Any RFC 3339 offset is accepted.
    shifted = (
        datetime.fromisoformat(lo).astimezone(datetime.now().astimezone().tzinfo or UTC).isoformat()
    )
    assert {d["id"] for d in await list_all(client, createdFrom=shifted)} == {
        d["id"] for d in docs[10:]
    }


SORTS = [
    "createdAt",
    "-createdAt",
    "updatedAt",
    "-updatedAt",
    "lastActivity",
    "-lastActivity",
    "name",
    "-name",
    "email",
    "-email",
]


@pytest.mark.parametrize("sort", SORTS)
async def test_keyset_paging_visits_every_row_once_in_order(
    world: World, client: httpx.AsyncClient, sort: str
) -> None:
    whole = [d["id"] for d in await list_all(client, sort=sort)]
    assert len(whole) == len(world.ids)
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"sort": sort, "limit": 7}
        if cursor:
            params["cursor"] = cursor
        r = await client.get("/api/v1/customers", params=params)
        assert r.status_code == 200, r.text
        body = r.json()
        seen += [d["id"] for d in body["items"]]
        cursor = body["nextCursor"]
        pages += 1
        if cursor is None:
            break
    assert seen == whole  # no duplicates, nothing missing, same order as one big page
    assert pages == -(-len(whole) // 7)

    field, reverse = sort.removeprefix("-"), sort.startswith("-")
    if field in {"createdAt", "updatedAt", "lastActivity"}:
        docs = {d["id"]: d for d in world.docs()}
        keys = [(docs[i][field], UUID(i)) for i in whole]
        assert keys == sorted(keys, reverse=reverse)


async def test_paging_with_filters(world: World, client: httpx.AsyncClient) -> None:
    params = {"sort": "name", "limit": 3, "status": "ACTIVE", "tag": "news"}
    seen: list[str] = []
    r = await client.get("/api/v1/customers", params=params)
    while True:
        body = r.json()
        seen += [d["id"] for d in body["items"]]
        if not body["nextCursor"]:
            break
        r = await client.get("/api/v1/customers", params={**params, "cursor": body["nextCursor"]})
    assert len(seen) == len(set(seen))
    assert set(seen) == _expect(world, lambda d: d["status"] == "ACTIVE" and "news" in d["tags"])


BAD_INPUTS: list[tuple[dict[str, Any], str]] = [
    ({"limit": 0}, "limit"),
    ({"limit": 501}, "limit"),
    ({"limit": "many"}, "limit"),
    ({"sort": "age"}, "sort"),
    ({"status": "GONE"}, "status"),
    ({"gender": "X"}, "gender"),
    ({"country": "Atlantis"}, "country"),
    ({"ageMin": -1}, "ageMin"),
    ({"ageMax": 151}, "ageMax"),
    ({"ageMin": 50, "ageMax": 40}, "ageMax"),
    ({"createdFrom": "yesterday"}, "createdFrom"),
    ({"createdTo": "2024-01-01T00:00:00"}, "createdTo"),  # no offset: not RFC 3339
    ({"createdFrom": "2024-02-01T00:00:00Z", "createdTo": "2024-01-01T00:00:00Z"}, "createdTo"),
    ({"tag": "x" * 65}, "tag.0"),
    ({"q": ""}, "q"),
    ({"cursor": "garbage"}, "cursor"),
    ({"cursor": "A" * 80}, "cursor"),
]


@pytest.mark.parametrize(("params", "field"), BAD_INPUTS, ids=[str(p)[:40] for p, _ in BAD_INPUTS])
async def test_bad_list_input_is_422_naming_the_field(
    client: httpx.AsyncClient, params: dict[str, Any], field: str
) -> None:
    assert_problem(await client.get("/api/v1/customers", params=params), 422, field)


async def test_tampered_or_foreign_cursors_are_rejected(client: httpx.AsyncClient) -> None:
    body = (await client.get("/api/v1/customers", params={"limit": 2, "sort": "email"})).json()
    cursor = body["nextCursor"]
    raw = bytearray(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    raw[20] ^= 1
    tampered = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    for bad, sort in ((tampered, "email"), (cursor, "-email"), (cursor, "name")):
        r = await client.get("/api/v1/customers", params={"cursor": bad, "sort": sort})
        assert_problem(r, 422, "cursor")
    # The cursor does not carry the e-mail in clear.
    assert b"example.com" not in base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))


# --------------------------------------------------------------------------- consistency


def _max_id(world: World) -> int:
    return int(world.app.recorder.max_notification_id() or 0)


async def test_consistency_token_already_reached_answers_at_once(
    world: World, client: httpx.AsyncClient
) -> None:
    headers = {"X-Consistency-Token": str(_max_id(world))}
    r = await client.get(f"/api/v1/customers/{world.ids[0]}", headers=headers)
    assert r.status_code == 200
    r = await client.get("/api/v1/customers", headers=headers)
    assert r.status_code == 200


@pytest.mark.parametrize("bad", ["abc", "-1", "1.5", "", "99999999999999999999", b"\xb2"])
async def test_malformed_consistency_token_is_422(
    client: httpx.AsyncClient, bad: str | bytes
) -> None:
    r = await client.get("/api/v1/customers", headers={"X-Consistency-Token": bad})
    assert_problem(r, 422, "X-Consistency-Token")


async def test_consistency_token_not_reached_times_out_with_503(
    world: World, client: httpx.AsyncClient
) -> None:
    c = Customer.register(ORG, _profile(998), "unprojected")
    world.app.save(c, new_keys=[world.app.keys.create(c.id, ORG)])  # the projector is not run
    headers = {"X-Consistency-Token": str(_max_id(world))}
    started = asyncio.get_running_loop().time()
    r = await client.get("/api/v1/customers", headers=headers)
    elapsed = asyncio.get_running_loop().time() - started
    assert_problem(r, 503)
    assert r.headers["retry-after"]
    assert elapsed >= 0.9  # it waited its bound (consistency_wait_seconds = 1.0) first
    world.project()
    world.ids.append(c.id)


async def test_consistency_token_beyond_the_log_waits_for_its_last_write(
    world: World, client: httpx.AsyncClient
) -> None:
    """No write answered it, so it asks for every write so far: the views have them all."""
    headers = {"X-Consistency-Token": str(_max_id(world) + 1000)}
    r = await client.get("/api/v1/customers", headers=headers)
    assert r.status_code == 200


async def test_read_waits_for_the_projection_to_reach_the_token(
    world: World, client: httpx.AsyncClient
) -> None:
    c = Customer.register(ORG, _profile(999), "late")
    world.app.save(c, new_keys=[world.app.keys.create(c.id, ORG)])
    wanted = _max_id(world)
    request = asyncio.ensure_future(
        client.get(f"/api/v1/customers/{c.id}", headers={"X-Consistency-Token": str(wanted)})
    )
    await asyncio.sleep(0.2)
    assert not request.done()  # waiting, not a 404
    projector = threading.Thread(target=world.project)
    projector.start()
    r = await request
    projector.join()
    assert r.status_code == 200
    assert r.json()["id"] == str(c.id)
    world.ids.append(c.id)


@pytest.mark.parametrize("suffix", ["", "/insights", "/segments"])
async def test_read_after_create_without_token_waits_for_the_projector(
    world: World, client: httpx.AsyncClient, suffix: str
) -> None:
    """Following a creation's Location without its token: the log has the customer, the view
    not yet, so the read waits for the projector instead of answering 404."""
    c = Customer.register(ORG, _profile(997), "fresh")
    world.app.save(c, new_keys=[world.app.keys.create(c.id, ORG)])
    request = asyncio.ensure_future(client.get(f"/api/v1/customers/{c.id}{suffix}"))
    await asyncio.sleep(0.2)
    assert not request.done()  # waiting, not a 404
    projector = threading.Thread(target=world.project)
    projector.start()
    r = await request
    projector.join()
    assert r.status_code == 200, r.text
    world.ids.append(c.id)


async def test_read_of_an_id_the_log_does_not_have_is_404(client: httpx.AsyncClient) -> None:
    r = await client.get(f"/api/v1/customers/{uuid4()}")
    assert_problem(r, 404)


# --------------------------------------------------------------------------- operations


async def test_health_ready_openapi_docs(world: World, client: httpx.AsyncClient) -> None:
    assert (await client.get("/health")).json() == {"status": "ok"}
    r = await client.get("/ready")
    assert r.status_code == 200
    assert r.json()["projections"]["customers_view"]["lag"] == 0
    spec = (await client.get("/openapi.json")).json()
    params = {p["name"] for p in spec["paths"]["/api/v1/customers"]["get"]["parameters"]}
    assert {
        "limit",
        "cursor",
        "sort",
        "ageMin",
        "createdFrom",
        "q",
        "X-Consistency-Token",
    } <= params
    assert (await client.get("/docs")).status_code == 200


async def test_ready_is_503_when_the_database_is_unreachable(world: World) -> None:
    down = world.settings.model_copy(
        update={"database_url": "postgresql://postgres@127.0.0.1:1/nowhere?connect_timeout=1"}
    )
    async with _client(down) as c:
        assert (await c.get("/health")).status_code == 200
        assert_problem(await c.get("/ready"), 503)
