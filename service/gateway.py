"""One REST port: reads go to the query app, everything else to the command app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from read_api.app import create_app as create_read_app
from service import docs, tracing
from service.settings import Settings, get_settings
from write_api.app import create_app as create_write_app

_READ_METHODS = {"GET", "HEAD"}
_READ_POSTS = {"/api/v1/customers/segments/preview", "/api/v1/customers/reports"}  # queries


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
    return docs.with_security(schema)


OPENAPI_FILE = "api/openapi/customers-api.v1.yaml"


def published_openapi() -> str:
    """The REST contract as published in OPENAPI_FILE (`make openapi` writes it; a test fails
    when it no longer matches the apps)."""
    import yaml

    # Building the apps connects to nothing; the URL is only required to be set.
    settings = Settings(database_url="postgresql://localhost/unused", master_key=None)
    schema = merged_openapi(create_write_app(settings), create_read_app(settings))
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
        elif scope["type"] == "http" and (
            scope["method"] in _READ_METHODS or scope.get("path") in _READ_POSTS
        ):
            await self.read(scope, receive, send)
        else:
            await self.write(scope, receive, send)


def create_gateway() -> Gateway:
    """For process managers that import the app themselves, e.g. several worker processes:
    `uvicorn service.gateway:create_gateway --factory --workers 2` (JSON logs as in
    `customers serve gateway`)."""
    from service import logs

    settings = get_settings()
    logs.configure(settings.log_level)
    return Gateway(settings)
