"""Routes answered from a plan (service.compiled_routes) answer exactly as FastAPI's own
handler does: same values, same defaults, same problem answers with the same fields named."""

from __future__ import annotations

import asyncio
from typing import Annotated
from uuid import UUID

import httpx
import orjson
import pytest
from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request, Response

from domain.errors import Code, DomainError
from service import edge, problems
from service.compiled_routes import compiled

calls: list[str] = []


async def shared(request: Request, x_tenant: Annotated[str, Header(max_length=5)]) -> str:
    calls.append("shared")
    return x_tenant


async def guard(tenant: Annotated[str, Depends(shared)]) -> None:
    if tenant == "deny":
        raise DomainError(Code.FORBIDDEN, "denied")


async def paging(
    limit: Annotated[int, Query(ge=1, le=50)] = 20,
    tags: Annotated[list[str] | None, Query(max_length=3)] = None,
) -> dict[str, object]:
    return {"limit": limit, "tags": tags}


def routes() -> APIRouter:
    router = APIRouter(prefix="/things", dependencies=[Depends(guard)])

    @router.get("/{thing_id}")
    async def one(
        thing_id: UUID,
        tenant: Annotated[str, Depends(shared)],
        page: Annotated[dict[str, object], Depends(paging)],
        since: Annotated[int | None, Query(alias="sinceVersion", ge=0)] = None,
        if_none_match: Annotated[str | None, Header()] = None,
    ) -> Response:
        body = {
            "id": str(thing_id),
            "tenant": tenant,
            "since": since,
            "match": if_none_match,
            **page,
        }
        return Response(orjson.dumps(body), media_type="application/json")

    @router.get("/{thing_id}/plain")
    async def plain(thing_id: UUID) -> dict[str, str]:
        return {"id": str(thing_id)}

    return router


def app(compile_routes: bool) -> FastAPI:
    application = FastAPI()
    problems.install(application)
    if compile_routes:
        edge.add_routes(application, routes())
    else:
        application.include_router(routes())
    return application


THING = "7f0c0b1e-8c57-4b8e-9a39-0d1f3c5a2b11"
REQUESTS = [
    (f"/things/{THING}", {"x-tenant": "acme"}),
    (f"/things/{THING}?limit=7&tags=a&tags=b&sinceVersion=3", {"x-tenant": "acme"}),
    (f"/things/{THING}", {"x-tenant": "acme", "if-none-match": '"4"'}),
    ("/things/not-a-uuid", {"x-tenant": "acme"}),
    (f"/things/{THING}?limit=0&sinceVersion=-1", {"x-tenant": "acme"}),
    (f"/things/{THING}?tags=a&tags=b&tags=c&tags=d", {"x-tenant": "acme"}),
    (f"/things/{THING}?limit=x", {}),
    (f"/things/{THING}", {"x-tenant": "toolong"}),
    (f"/things/{THING}", {"x-tenant": "deny"}),
    (f"/things/{THING}?unknown=1", {"x-tenant": "acme"}),
    (f"/things/{THING}?limit=5%00", {"x-tenant": "acme"}),
    (f"/things/{THING}/plain", {"x-tenant": "acme"}),
]


async def answers(application: FastAPI) -> list[tuple[int, str, bytes, int]]:
    transport = httpx.ASGITransport(app=application)
    found = []
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for path, headers in REQUESTS:
            calls.clear()
            answer = await client.get(path, headers=headers)
            kind = answer.headers.get("content-type", "")
            found.append((answer.status_code, kind, answer.content, len(calls)))
    return found


def test_a_planned_route_answers_as_fastapi_does() -> None:
    planned = asyncio.run(answers(app(compile_routes=True)))
    resolved = asyncio.run(answers(app(compile_routes=False)))
    for request, mine, theirs in zip(REQUESTS, planned, resolved, strict=True):
        assert mine == theirs, request
    statuses = [status for status, *_ in planned]
    assert statuses == [200, 200, 200, 422, 422, 422, 422, 422, 403, 422, 422, 200]
    # A dependency two others use is solved once per request.
    assert planned[0][3] == 1


def test_which_routes_are_planned() -> None:
    one, plain = routes().routes
    assert compiled(one) is not None  # type: ignore[arg-type]
    assert compiled(plain) is None  # type: ignore[arg-type]  (returns a dict: FastAPI's)


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/api/v1/customers/{id}"), ("GET", "/api/v1/customers")],
)
def test_the_hottest_reads_are_planned(method: str, path: str) -> None:
    from read_api.app import create_app
    from service.settings import Settings

    read = create_app(Settings(database_url="postgresql://localhost/unused", master_key=None))
    route = next(r for r in read.routes if getattr(r, "path", None) == path)
    assert method in route.methods  # type: ignore[attr-defined]
    assert route.app.__qualname__.startswith("compiled.")  # type: ignore[attr-defined]
