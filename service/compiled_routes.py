"""Routes answered without FastAPI's per-request dependency machinery.

FastAPI re-derives, on every request, facts about each dependency that never change (is it a
generator, its cache key, its scopes, which model a parameter has): on a small read that is
a third of the worker's CPU. A route whose parameters are path, query and header values and
whose dependencies are coroutines of such values is planned here once, from the route's own
declaration (`route.dependant`, the same fields, aliases, defaults and validators FastAPI
uses), and each request only extracts and validates the values. Anything else — a body, a
cookie, a parameter model, a generator dependency, an endpoint that does not return a
`Response` — keeps FastAPI's handler (`compiled` answers None). Errors are FastAPI's own
`RequestValidationError` with the same locations, so problem+json answers do not change
(tests/unit/test_compiled_routes.py compares both handlers).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi._compat import Undefined, field_annotation_is_sequence
from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import (
    _get_param_aliases,
    _get_param_model,
    _is_json_field,
    _validate_value_with_model_field,
)
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send


@dataclass(frozen=True, slots=True)
class _Param:
    field: Any  # fastapi's ModelField
    where: str  # "path" | "query" | "header"
    aliases: tuple[str, ...]  # request keys, in preference order
    many: bool  # a list parameter: every occurrence of the key

    def value(self, received: Any) -> tuple[str, Any]:
        alias = next((a for a in self.aliases if a in received), self.aliases[0])
        value = received.getlist(alias) if self.many else received.get(alias)
        return alias, value


@dataclass(frozen=True, slots=True)
class _Plan:
    call: Callable[..., Awaitable[Any]]
    dependencies: tuple[tuple[str | None, _Plan], ...]
    params: tuple[_Param, ...]
    request_name: str | None

    async def solve(
        self, request: Request, solved: dict[Any, Any], errors: list[Any]
    ) -> dict[str, Any]:
        """The keyword arguments of `call`, as FastAPI's solve_dependencies makes them:
        dependencies first (each solved once per request), then the parameters; the errors
        of all of them collected."""
        values: dict[str, Any] = {}
        for name, plan in self.dependencies:
            if plan.call in solved:
                result = solved[plan.call]
            else:
                before = len(errors)
                arguments = await plan.solve(request, solved, errors)
                if len(errors) > before:
                    continue
                result = solved[plan.call] = await plan.call(**arguments)
            if name is not None:
                values[name] = result
        for param in self.params:
            received = _received(request, param.where)
            alias, value = param.value(received)
            if value is None or (param.many and not value):
                value = Undefined
            result, failed = _validate_value_with_model_field(
                field=param.field, value=value, values=values, loc=(param.where, alias)
            )
            if failed:
                errors.extend(failed)
            else:
                values[param.field.name] = result
        if self.request_name is not None:
            values[self.request_name] = request
        return values


def _received(request: Request, where: str) -> Any:
    if where == "path":
        return request.path_params
    if where == "query":
        return request.query_params
    return request.headers


def _plan(dependant: Dependant) -> _Plan | None:
    call = dependant.call
    if (
        call is None
        or not inspect.iscoroutinefunction(call)
        or dependant.body_params
        or dependant.cookie_params
        or dependant.concurrency is not None
        or dependant.background_tasks_param_name
        or dependant.response_param_name
        or dependant.http_connection_param_name
        or dependant.websocket_param_name
        or dependant.security_scopes_param_name
    ):
        return None
    params = []
    for where, fields in (
        ("path", dependant.path_params),
        ("query", dependant.query_params),
        ("header", dependant.header_params),
    ):
        for field in fields:
            if _get_param_model(field) is not None or _is_json_field(field):
                return None
            aliases = tuple(key for _, key in _get_param_aliases(field))
            many = where != "path" and field_annotation_is_sequence(field.field_info.annotation)
            params.append(_Param(field, where, aliases, many))
    dependencies = []
    for sub in dependant.dependencies:
        if not sub.use_cache:
            return None
        plan = _plan(sub)
        if plan is None:
            return None
        dependencies.append((sub.name, plan))
    return _Plan(call, tuple(dependencies), tuple(params), dependant.request_param_name)


def compiled(route: APIRoute) -> ASGIApp | None:
    """The route's ASGI app answered from a plan, or None where FastAPI's handler is needed."""
    plan = _plan(route.dependant)
    hints = typing.get_type_hints(route.endpoint) if plan is not None else {}
    answer = hints.get("return")
    if plan is None or not (isinstance(answer, type) and issubclass(answer, Response)):
        return None

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive, send)
        errors: list[Any] = []
        values = await plan.solve(request, {}, errors)
        if errors:
            raise RequestValidationError(errors)
        response: Response = await plan.call(**values)
        await response(scope, receive, send)

    return app
