"""The interactive API documentation: Swagger UI at /docs with its assets served by the service
itself (the fastapi-swagger package: no CDN, so it works offline), and the security schemes
the OpenAPI document declares (so "Authorize" and "Try it out" work)."""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from typing import Any

from fastapi import FastAPI, Response
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse

from service import problems
from service.contract import UNAUTHENTICATED

_ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
}
SECURITY_SCHEMES = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "A token of the identity provider (claims sub, org, roles), or an API key",
    },
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
}


@cache
def _asset(name: str) -> bytes:
    return files("fastapi_swagger.resources").joinpath(name).read_bytes()


# What any authenticated operation may answer, whatever it does: no or bad credentials, a
# role without the permission, a rate limit, an app at capacity or a database away.
_ANY_AUTHENTICATED = problems.problem_responses(
    {
        401: "Missing or invalid credentials",
        403: "The caller's roles lack the permission",
        429: "Rate limit (or failed authentications from the address); see Retry-After",
        503: "At capacity, or a dependency is unavailable; see Retry-After",
    }
)


def with_security(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` declaring the bearer and API-key schemes, and the answers they bring, for
    every operation but the operational endpoints."""
    schema.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
    schema["security"] = [{name: []} for name in SECURITY_SCHEMES]
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            if path in UNAUTHENTICATED:
                operation["security"] = []
                continue
            responses = operation.setdefault("responses", {})
            for status, answer in _ANY_AUTHENTICATED.items():
                responses.setdefault(str(status), answer)
    return schema


def install(app: FastAPI, openapi_url: str, title: str) -> None:
    """GET /docs (Swagger UI for `openapi_url`) and its assets under /docs/; an app that
    serves its own OpenAPI document declares the security schemes in it."""
    if app.openapi_url:
        plain = app.openapi
        app.openapi = lambda: with_security(plain())  # type: ignore[method-assign]

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=title,
            swagger_js_url="/docs/swagger-ui-bundle.js",
            swagger_css_url="/docs/swagger-ui.css",
            swagger_favicon_url="/docs/favicon-32x32.png",
            swagger_ui_parameters={"persistAuthorization": True},
        )

    for name, media_type in _ASSETS.items():
        app.add_api_route(
            f"/docs/{name}", _serve(name, media_type), methods=["GET"], include_in_schema=False
        )


def _serve(name: str, media_type: str) -> Any:
    async def asset() -> Response:
        return Response(
            _asset(name), media_type=media_type, headers={"Cache-Control": "public, max-age=86400"}
        )

    return asset
