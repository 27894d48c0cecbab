"""Every RPC passes through `rpc`: the gRPC counterpart of the REST routes' dependencies and
problem handlers. Authentication (service.auth, from call metadata), the permission, the rate
limit, the consistency-token wait, then the handler; errors become statuses by
service.problems' one mapping. Nothing answers UNKNOWN; INTERNAL only for a bug."""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import psycopg
from psycopg_pool import PoolTimeout
from pydantic import ValidationError

from domain.access import Permission, Principal
from domain.errors import Code, DomainError
from grpc_api.backend import Backend
from grpc_api.messages import InvalidInput, Undecodable
from read_api.consistency import HEADER as CONSISTENCY_HEADER
from read_api.consistency import caught_up
from service import auth, problems
from service.api_keys import PREFIX as API_KEY_PREFIX
from service.limits import RouteClass
from service.metrics import GRPC_IN_FLIGHT, GRPC_REQUESTS

log = logging.getLogger(__name__)

CONSISTENCY_TOKEN = CONSISTENCY_HEADER.lower()  # metadata keys are lower case
ERROR_FIELD = "error-field"  # trailing metadata, once per field an error names
RETRY_AFTER = "retry-after"  # trailing metadata of RESOURCE_EXHAUSTED / UNAVAILABLE: seconds

Metadata = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Call:
    """One authorized call, as a handler sees it."""

    principal: Principal
    backend: Backend
    context: grpc.aio.ServicerContext

    async def answer_token(self, token: int) -> None:
        """The write's consistency token, as response metadata (REST: X-Consistency-Token)."""
        await self.context.send_initial_metadata(((CONSISTENCY_TOKEN, str(token)),))


Handler = Callable[[Any, Any, Call], Awaitable[Any]]


def rpc(
    permission: Permission, kind: RouteClass, *, views: tuple[str, ...] = ()
) -> Callable[[Handler], Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Any]]]:
    """A handler of a servicer (which has `.backend`) for callers with `permission`, rate
    limited as `kind`; a read of `views` first waits for a consistency token in the metadata."""

    def wrap(handler: Handler) -> Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Any]]:
        @functools.wraps(handler)
        async def serve(servicer: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            backend: Backend = servicer.backend
            GRPC_IN_FLIGHT.inc()
            code = grpc.StatusCode.OK
            try:
                metadata = dict(context.invocation_metadata() or ())
                client = client_address(context.peer(), backend.fronted)
                if _needs_thread(backend, metadata):
                    principal = await asyncio.to_thread(_caller, backend, metadata, client)
                else:  # a shared-secret token: CPU work alone, as over REST
                    principal = _caller(backend, metadata, client)
                # Limited before the permission check, as over REST.
                backend.limiter.spend(kind, f"{principal.org}\x00{principal.sub}", client)
                principal.require(permission)
                if isinstance(request, Undecodable):
                    raise DomainError(Code.INVALID, f"not a valid {request.type_name} message")
                token = metadata.get(CONSISTENCY_TOKEN)
                if views and token is not None:
                    timeout = backend.settings.consistency_wait_seconds
                    await caught_up(backend.positions, backend.pool, views, token, timeout)
                return await handler(servicer, request, Call(principal, backend, context))
            except Exception as e:  # every error becomes a status; none escapes
                code, details, trailers = _status(e, handler.__name__)
            finally:
                GRPC_IN_FLIGHT.dec()
                GRPC_REQUESTS.labels(handler.__name__, code.name).inc()
            await context.abort(code, details, trailers)

        return serve

    return wrap


def _needs_thread(backend: Backend, metadata: dict[str, str]) -> bool:
    """An API key (a database lookup) or a JWKS-verified token (the identity provider) may
    wait: verified in a worker thread, not on the event loop."""
    return (
        "x-api-key" in metadata
        or bool(backend.settings.jwt_jwks_url)
        or API_KEY_PREFIX in metadata.get("authorization", "")
    )


def _caller(backend: Backend, metadata: dict[str, str], client: str) -> Principal:
    """An API key may come as `x-api-key` (as over REST) or as the bearer token."""
    authorization = metadata.get("authorization", "")
    api_key = metadata.get("x-api-key")
    scheme, _, token = authorization.partition(" ")
    if api_key is None and scheme.lower() == "bearer" and token.strip().startswith(API_KEY_PREFIX):
        api_key = token
    return auth.caller(
        backend.settings,
        backend.api_keys,
        backend.limiter,
        client,
        authorization=authorization,
        api_key=api_key,
    )


def client_address(peer: str, fronted: dict[str, str]) -> str:
    """The client's address: "ipv4:10.0.0.1:5123" → "10.0.0.1", "ipv6:[::1]:5123" → "::1";
    a connection through the TLS front → the address the front accepted it from."""
    if peer in fronted:
        return fronted[peer]
    kind, _, rest = peer.partition(":")
    if kind == "ipv6":
        return rest.rpartition(":")[0].strip("[]")
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    return peer or "unknown"


def _status(error: Exception, name: str) -> tuple[grpc.StatusCode, str, Metadata]:
    if isinstance(error, DomainError):
        if error.code in {Code.RATE_LIMITED, Code.UNAVAILABLE}:
            retry = str(max(1, math.ceil(error.retry_after or 1)))
            return problems.grpc_status(error), error.detail, ((RETRY_AFTER, retry),)
        if error.field:
            named = f"{error.field}: {error.detail}"
            return problems.grpc_status(error), named, ((ERROR_FIELD, error.field),)
        return problems.grpc_status(error), error.detail, ()
    if isinstance(error, InvalidInput | ValidationError):
        _, errors = (
            problems.invalid_input(error.errors, error.prefix)
            if isinstance(error, InvalidInput)
            else problems.invalid_input(error.errors(include_input=False))
        )
        messages = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        fields = tuple((ERROR_FIELD, f) for f in dict.fromkeys(e["field"] for e in errors))
        return grpc.StatusCode.INVALID_ARGUMENT, f"invalid input: {messages}", fields
    if isinstance(error, psycopg.OperationalError | PoolTimeout):
        log.warning("database unavailable", extra={"error": type(error).__name__, "rpc": name})
        details = "the database is unavailable; retry later"
        return grpc.StatusCode.UNAVAILABLE, details, ((RETRY_AFTER, "1"),)
    log.exception("unhandled error", extra={"rpc": name})
    return grpc.StatusCode.INTERNAL, "internal error; it has been logged", ()
