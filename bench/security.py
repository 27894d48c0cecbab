"""Authentication + authorization overhead per request: `python -m bench.security` (also run
by `make bench`).

In process, the route dependency every guarded route runs (`service.auth.authenticate` then
`allowed(...)`: permission and rate-limit check) for an HS256 token, an RS256 token whose
JWKS key is cached, and an API key whose lookup is cached; beside a bare PyJWT HS256 decode
(the cryptographic floor) measured in the same run. Target: p50 under 1 ms.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from starlette.requests import Request

from bench import env, report
from bench.client import Latencies
from bench.report import lat

ROUNDS = 20_000
DB = "customers_bench_security"


async def timed(fn: Callable[[], Awaitable[Any]], rounds: int = ROUNDS) -> Latencies:
    """`fn` awaited `rounds` times on a running event loop, as a route awaits its dependency
    (an API key or a JWKS token is checked in a worker thread), after 200 to warm caches."""
    for _ in range(200):
        await fn()
    stats = Latencies()
    for _ in range(rounds):
        t0 = time.perf_counter()
        await fn()
        stats.add(time.perf_counter() - t0, 200, True)
    return stats


def jwks_server(public: Any) -> str:
    body = json.dumps(
        {"keys": [{**RSAAlgorithm.to_jwk(public, as_dict=True), "kid": "k1", "alg": "RS256"}]}
    ).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/jwks"


def run(out: report.Report) -> None:
    from domain.access import Permission
    from eventstore.keys import LazyKeyring
    from service.api_keys import ApiKeyStore
    from service.auth import allowed, issue_token
    from service.limits import RateLimiter, RouteClass
    from service.settings import get_settings

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    settings = get_settings().model_copy(update={"jwt_jwks_url": jwks_server(private.public_key())})
    hs = issue_token(settings, sub="bench", org="bench", roles=["analyst"])
    now = int(time.time())
    rs = jwt.encode(
        {
            "sub": "bench",
            "org": "bench",
            "roles": ["analyst"],
            "iss": settings.jwt_issuer,
            "aud": settings.jwt_audience,
            "exp": now + 3600,
        },
        private,
        algorithm="RS256",
        headers={"kid": "k1"},
    )
    store = ApiKeyStore(settings, LazyKeyring(settings))
    _, api_key = store.create("bench", "bench", ["analyst"], "bench")

    class State:
        pass

    class App:
        state = State()

    App.state.settings = settings  # type: ignore[attr-defined]
    App.state.api_keys = store  # type: ignore[attr-defined]
    App.state.route_class = RouteClass.READS  # type: ignore[attr-defined]
    App.state.rate_limiter = RateLimiter(  # type: ignore[attr-defined]
        settings.model_copy(update={"rate_limit_reads_per_minute": 10**9})  # checked, never hit
    )
    check = allowed(Permission.READ).dependency

    def request(headers: dict[str, str]) -> Request:
        raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        scope = {
            "type": "http",
            "method": "GET",
            "path": "/api/v1/customers",
            "headers": raw,
            "app": App,
            "client": ("127.0.0.1", 1),
            "query_string": b"",
        }
        return Request(scope)

    def guarded(headers: dict[str, str]) -> Callable[[], Awaitable[Any]]:
        # A request of its own each time: the caller is identified once per request.
        return lambda: check(request(headers))

    try:

        async def decode() -> Any:
            return jwt.decode(
                hs, settings.jwt_secret, algorithms=["HS256"], audience=settings.jwt_audience
            )

        floor = asyncio.run(timed(decode))
        cases = {
            "HS256 bearer token": guarded({"Authorization": f"Bearer {hs}"}),
            "RS256 bearer token (JWKS key cached)": guarded({"Authorization": f"Bearer {rs}"}),
            "API key (lookup cached)": guarded({"X-API-Key": api_key}),
        }
        for name, fn in cases.items():
            stats = asyncio.run(timed(fn))
            out.add(
                f"9. Authentication + authorization per request, {name}",
                lat(stats, 50, 99),
                baseline=f"bare PyJWT HS256 decode {lat(floor, 50, 99)}",
                target="p50 < 1 ms",
                ok=stats.ms(50) < 1.0,
            )
    finally:
        store.close()


def main(argv: list[str] | None = None) -> int:
    _, execute = env.focused_bench("python -m bench.security", __doc__, DB, "security", argv)
    return execute(lambda out, _url: run(out))


if __name__ == "__main__":
    sys.exit(main())
