"""The HTTP baselines: what uvicorn alone, and FastAPI with the service's request-log
middleware, answer on this machine (`python -m uvicorn bench.hello:raw_app`, or
`bench.hello:create_fastapi_app --factory`)."""

from __future__ import annotations

from typing import Any

_BODY = b'{"hello":"world"}'
_HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"17")]


async def raw_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A bare ASGI app: the floor of uvicorn's per-request cost."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": _BODY})


def create_fastapi_app() -> Any:
    """FastAPI + the service's JSON request log (service.request_log), one route."""
    from fastapi import FastAPI, Response

    from service import logs
    from service.request_log import RequestLog

    logs.configure("INFO")
    app = FastAPI()
    app.add_middleware(RequestLog)

    @app.get("/hello")
    async def hello() -> Response:
        return Response(_BODY, media_type="application/json")

    return app
