"""The query and path parameters of REST read routes as pydantic models that validate gRPC
read requests: FastAPI's `Query`/`Path` declarations are pydantic fields, so the limits,
enumerations and formats are declared once, on the route, and hold for both transports."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any

from fastapi import Request, params
from pydantic import BaseModel, ConfigDict, create_model
from pydantic.alias_generators import to_camel

# Fields without an alias of their own are named like the gRPC request's JSON fields.
_CONFIG = ConfigDict(alias_generator=to_camel, extra="forbid")


def query_model(name: str, *routes: Callable[..., Any]) -> type[BaseModel]:
    """One model of the parameters of `routes` a client gives (not the request, the
    principal, other dependencies or headers)."""
    fields: dict[str, Any] = {}
    for route in routes:
        hints = typing.get_type_hints(route, include_extras=True)
        for pname, param in inspect.signature(route).parameters.items():
            if _transport(hints[pname]):
                continue
            default = ... if param.default is inspect.Parameter.empty else param.default
            fields[pname] = (hints[pname], default)
    model: type[BaseModel] = create_model(name, __config__=_CONFIG, **fields)
    return model


def _transport(hint: Any) -> bool:
    if hint is Request:
        return True
    metadata = getattr(hint, "__metadata__", ())
    return any(isinstance(m, params.Depends | params.Header) for m in metadata)


def arguments(values: BaseModel, route: Callable[..., Any]) -> dict[str, Any]:
    """The validated values of `route`'s parameters, by name."""
    names = inspect.signature(route).parameters
    return {k: v for k, v in values if k in names}
