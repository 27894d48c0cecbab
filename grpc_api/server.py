"""`customers serve grpc`: the gRPC API on `CUSTOMERS_GRPC_PORT` (9090), with health checking
(grpc.health.v1: SERVING while PostgreSQL answers) and server reflection. With
`CUSTOMERS_TLS_CERT_FILE`/`_KEY_FILE`, TLS 1.3 only (grpc_api.tls). SIGTERM: in-flight
calls get `GRACE_SECONDS` to finish, new ones are refused."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import tempfile
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from grpc_api.analytics import AnalyticsService
from grpc_api.backend import Backend, opened
from grpc_api.customers import CustomerService
from grpc_api.gen import customers_pb2 as pb
from grpc_api.messages import lenient_parser
from grpc_api.segments import SegmentService
from grpc_api.tls import TlsFront, server_context
from grpc_api.tracking import TrackingService
from service.settings import Settings

log = logging.getLogger(__name__)

NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
GRACE_SECONDS = 10.0  # below `customers serve`'s 15 s before it kills a child
HEALTH_INTERVAL_SECONDS = 5.0
SERVICERS = {
    "CustomerService": CustomerService,
    "SegmentService": SegmentService,
    "TrackingService": TrackingService,
    "AnalyticsService": AnalyticsService,
}
SERVICE_NAMES = tuple(pb.DESCRIPTOR.services_by_name[s].full_name for s in SERVICERS)


def _handlers(descriptor: Any, servicer: object) -> Any:
    """The service's methods with requests that fail to decode handed to the handler (as
    INVALID_ARGUMENT) instead of grpcio's INTERNAL."""
    methods = {
        method.name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method.name),
            request_deserializer=lenient_parser(getattr(pb, method.input_type.name)),
            response_serializer=getattr(pb, method.output_type.name).SerializeToString,
        )
        for method in descriptor.methods
    }
    return grpc.method_handlers_generic_handler(descriptor.full_name, methods)


class GrpcServer:
    def __init__(self, settings: Settings, host: str, port: int) -> None:
        self.settings = settings
        self.host = host
        self.port = port
        self._stack = AsyncExitStack()
        self._server: Any = None
        self._front: TlsFront | None = None
        self._health = health.aio.HealthServicer()
        self._watch: asyncio.Task[None] | None = None

    async def start(self) -> int:
        """Serve; the port (a free one when asked for 0)."""
        try:
            return await self._start()
        except BaseException:
            await self._stack.aclose()
            raise

    async def _start(self) -> int:
        backend = await self._stack.enter_async_context(opened(self.settings))
        server = grpc.aio.server(
            options=[("grpc.max_receive_message_length", self.settings.max_body_bytes)]
        )
        for name, servicer in SERVICERS.items():
            descriptor = pb.DESCRIPTOR.services_by_name[name]
            server.add_generic_rpc_handlers((_handlers(descriptor, servicer(backend)),))
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        await self._serving(await _reachable(backend))  # as it is when start() returns
        names = (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, server)
        self.port = await self._bind(server, backend)
        await server.start()
        self._server = server
        self._watch = asyncio.create_task(self._watch_database(backend), name="grpc-health")
        return self.port

    async def _bind(self, server: Any, backend: Backend) -> int:
        cert, key = self.settings.tls_cert_file, self.settings.tls_key_file
        if not (cert and key):
            host = f"[{self.host}]" if ":" in self.host else self.host
            port: int = server.add_insecure_port(f"{host}:{self.port}")
            return port
        private = Path(self._stack.enter_context(tempfile.TemporaryDirectory(prefix="grpc-")))
        upstream = str(private / "grpc.sock")  # the directory is the creator's only (0700)
        server.add_insecure_port(f"unix:{upstream}")
        self._front = TlsFront(server_context(cert, key), upstream, backend.fronted)
        return await self._front.start(self.host, self.port)

    async def _watch_database(self, backend: Backend) -> None:
        """SERVING while the read model's database answers (checked every few seconds,
        twice a second while it does not)."""
        serving: bool | None = None
        while True:
            now = await _reachable(backend)
            if now != serving:
                serving = now
                await self._serving(now)
                log.info("gRPC health", extra={"serving": now})
            await asyncio.sleep(HEALTH_INTERVAL_SECONDS if now else 0.5)

    async def _serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else NOT_SERVING
        for name in ("", *SERVICE_NAMES):
            await self._health.set(name, status)

    async def stop(self, grace: float = GRACE_SECONDS) -> None:
        """Refuse new calls, give running ones `grace` seconds, then release everything."""
        await self._health.enter_graceful_shutdown()
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        if self._front is not None:
            self._front.close()
        if self._server is not None:
            await self._server.stop(grace)
        if self._front is not None:
            await self._front.wait_closed()
        await self._stack.aclose()


async def _reachable(backend: Backend) -> bool:
    try:
        async with backend.pool.connection(timeout=2.0) as conn:
            await conn.execute("SELECT 1")
    except Exception:  # any failure to reach PostgreSQL: not serving
        return False
    return True


def run_forever(settings: Settings) -> None:
    asyncio.run(_serve_until_stopped(settings))


async def _serve_until_stopped(settings: Settings) -> None:
    server = GrpcServer(settings, settings.host, settings.grpc_port)
    port = await server.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    tls = bool(settings.tls_cert_file and settings.tls_key_file)
    log.info("gRPC API listening", extra={"host": settings.host, "port": port, "tls": tls})
    await stopping.wait()
    log.info("gRPC API stopping", extra={"grace_seconds": GRACE_SECONDS})
    await server.stop()
