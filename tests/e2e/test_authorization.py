"""Function-level authorization: every route of both apps declares its permission, and every
role gets 403 exactly where the matrix denies it (401 without a token); the matrix in the docs
is the one the code enforces."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from domain.access import ROLE_PERMISSIONS, Permission, Role
from read_api.app import create_app as create_read_app
from service.auth import matrix_markdown
from service.settings import Settings
from tests.e2e.conftest import TokenFactory
from write_api.app import create_app as create_write_app

PUBLIC = {"/health", "/ready", "/metrics"}


def permission_of(dependant: Dependant) -> Permission | None:
    for dependency in dependant.dependencies:
        found = getattr(dependency.call, "permission", None) or permission_of(dependency)
        if found is not None:
            return Permission(found)
    return None


def api_routes(routes: list[Any]) -> Iterator[APIRoute]:
    """The app's routes, those of included routers too (FastAPI keeps those nested)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif hasattr(route, "original_router"):
            yield from api_routes(route.original_router.routes)


def routes(settings: Settings) -> list[tuple[str, str, Permission | None]]:
    apps: list[FastAPI] = [create_write_app(settings), create_read_app(settings)]
    return [
        (method, route.path, permission_of(route.dependant))
        for app in apps
        for route in api_routes(app.routes)
        for method in sorted(route.methods)
    ]


def test_every_route_is_guarded_by_its_permission_for_every_role(
    http: httpx.Client, auth: TokenFactory, migrated: Settings
) -> None:
    table = routes(migrated)
    assert len(table) >= 30
    for method, path, permission in table:
        if path in PUBLIC or path == "/docs" or path.startswith("/docs/"):
            assert permission is None, path
            continue
        assert permission is not None, f"{method} {path} declares no permission"
        url = re.sub(r"\{[^}]+\}", lambda _: str(uuid.uuid4()), path)
        body: Any = {} if method in {"POST", "PUT"} else None
        anonymous = http.request(method, url, json=body)
        assert anonymous.status_code == 401, (method, path)
        for role in Role:
            status = http.request(method, url, json=body, headers=auth(role.value)).status_code
            if permission in ROLE_PERMISSIONS[role]:
                # Allowed: whatever the (empty, unknown-id) request earns, but never a refusal
                # of the role, and never a server error.
                assert status != 403 and status < 500, (method, path, role, status)
            else:
                assert status == 403, (method, path, role, status)


def test_the_documented_matrix_is_the_enforced_one() -> None:
    security = Path(__file__).resolve().parents[2] / "docs" / "security.md"
    assert matrix_markdown() in security.read_text()
