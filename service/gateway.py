"""One REST port: reads go to the query app, everything else to the command app."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from read_api.app import create_app as create_read_app
from service import contract, docs, problems, tracing
from service.settings import Settings, get_settings
from write_api.app import create_app as create_write_app

_PARAM = re.compile(r"{([^}:]*)(?::[^}]+)?}")


def _regex(template: str) -> str:
    """A route template as a regex: its literal parts escaped, each {parameter} one segment."""
    parts = _PARAM.split(template)  # literal, name, literal, name, ..., literal
    return "".join(re.escape(p) if i % 2 == 0 else "[^/]+" for i, p in enumerate(parts))


def routes_of(routes: Iterable[BaseRoute], prefix: str = "") -> Iterator[tuple[str, Route]]:
    """(path, route) of every route, those of included routers too (FastAPI keeps them
    nested)."""
    for route in routes:
        if isinstance(route, Route):
            yield prefix + route.path, route
        elif (router := getattr(route, "original_router", None)) is not None:
            context = getattr(route, "include_context", None)
            yield from routes_of(router.routes, prefix + getattr(context, "prefix", ""))


class RouteTable:
    """Which app answers which method of which path, from the apps' own routes: the read app's
    POSTs that are queries (preview, reports) included, with no list kept by hand. A path is
    matched to its most literal template (`/customers/bulk/delete` before
    `/customers/bulk/{id}`), and a method that template does not have is a 405 naming the
    ones it has, whichever app they belong to."""

    def __init__(self, *apps: FastAPI) -> None:
        templates: dict[str, dict[str, ASGIApp]] = {}
        for app in apps:
            for path, route in routes_of(app.routes):
                # {id} in one app and {customer_id} in the other are the same path.
                owners = templates.setdefault(_PARAM.sub("{}", path), {})
                for method in route.methods or ():
                    owners.setdefault(method, app)  # the first app to declare it
        # Most literal segments first; then fewer parameters.
        ordered = sorted(
            templates,
            key=lambda t: (-sum("{" not in part for part in t.split("/")), t.count("{")),
        )
        self._owners = [templates[t] for t in ordered]
        self._pattern = re.compile(
            "|".join(f"(?P<t{i}>{_regex(t)})" for i, t in enumerate(ordered))
        )

    def owners(self, path: str) -> dict[str, ASGIApp] | None:
        """method -> app of the template `path` matches, None when none does."""
        match = self._pattern.fullmatch(path)
        if match is None or match.lastgroup is None:
            return None
        return self._owners[int(match.lastgroup[1:])]


def merged_openapi(*apps: FastAPI) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "Customer Management Service", "version": "1"},
        "paths": {},
        "components": {"schemas": {}},
    }
    for app in apps:
        part = app.openapi()
        for path, operations in part.get("paths", {}).items():
            schema["paths"].setdefault(path, {}).update(operations)
        schema["components"]["schemas"].update(part.get("components", {}).get("schemas", {}))
    return contract.complete(docs.with_security(schema))


OPENAPI_FILE = "api/openapi/customers-api.v1.yaml"


def published_openapi() -> str:
    """The REST contract as published in OPENAPI_FILE (`make openapi` writes it; a test fails
    when it no longer matches the apps)."""
    import yaml

    # Building the apps connects to nothing; the URL is only required to be set.
    settings = Settings(database_url="postgresql://localhost/unused", master_key=None)
    schema = merged_openapi(create_write_app(settings), create_read_app(settings))
    # Plain data: no object shared between operations, so no YAML anchors in the file.
    schema = json.loads(json.dumps(schema))
    text: str = yaml.safe_dump(schema, sort_keys=False, allow_unicode=True, width=100)
    return text


class Gateway:
    def __init__(self, settings: Settings) -> None:
        self.write = create_write_app(settings)
        self.read = create_read_app(settings)
        self.own = FastAPI(
            lifespan=self._lifespan,
            openapi_url=None,
            docs_url=None,
            telemetry=tracing.FASTAPI_TELEMETRY,
        )
        self._openapi: dict[str, Any] | None = None
        self._routes = RouteTable(self.read, self.write)

        @self.own.get("/openapi.json", include_in_schema=False)
        def openapi() -> JSONResponse:
            if self._openapi is None:
                self._openapi = merged_openapi(self.write, self.read)
            return JSONResponse(self._openapi)

        docs.install(self.own, "/openapi.json", "Customers API")

    @asynccontextmanager
    async def _lifespan(self, _: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(self.write.router.lifespan_context(self.write))
            await stack.enter_async_context(self.read.router.lifespan_context(self.read))
            yield

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "lifespan" or path == "/openapi.json" or path.startswith("/docs"):
            await self.own(scope, receive, send)
        elif scope["type"] != "http":
            await self.write(scope, receive, send)
        elif (owners := self._routes.owners(path)) is None:
            await self.read(scope, receive, send)  # its 404
        elif (app := owners.get(scope["method"])) is not None:
            await app(scope, receive, send)
        else:
            allowed = ", ".join(sorted(owners))
            await problems.problem(
                405,
                f"{scope['method']} is not allowed here; allowed: {allowed}",
                headers={"Allow": allowed},
                instance=path,
            )(scope, receive, send)


def create_gateway() -> Gateway:
    """For process managers that import the app themselves, e.g. several worker processes:
    `uvicorn service.gateway:create_gateway --factory --workers 2` (JSON logs as in
    `customers serve gateway`)."""
    from service import logs

    settings = get_settings()
    logs.configure(settings.log_level)
    return Gateway(settings)
