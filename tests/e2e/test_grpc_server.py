"""The gRPC server as operators run it: TLS 1.3 only (a TLS 1.2 client is refused, plain text
is not answered), rate limits per principal and per client address behind the TLS front,
failed authentications limited per address, and `customers serve grpc` stopping gracefully on
SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grpc_api.calls import RETRY_AFTER
from grpc_api.gen import customers_pb2 as pb
from grpc_api.gen import customers_pb2_grpc as rpc
from service.embedded import free_port
from service.settings import Settings
from tests.e2e.conftest import TokenFactory, unprojected_write
from tests.e2e.test_grpc_parity import metadata, rpc_error, serve_grpc
from tests.e2e.test_tls import self_signed

READS_PER_MINUTE = 4


@pytest.fixture(scope="module")
def tls_server(
    migrated: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[int, bytes]]:
    cert, key = self_signed(tmp_path_factory.mktemp("grpc-tls"))
    settings = migrated.model_copy(
        update={
            "tls_cert_file": str(cert),
            "tls_key_file": str(key),
            "rate_limit_reads_per_minute": READS_PER_MINUTE,
        }
    )
    for port in serve_grpc(settings):
        yield port, cert.read_bytes()


def tls_channel(port: int, cert: bytes) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(root_certificates=cert)
    return grpc.secure_channel(f"localhost:{port}", credentials)


def test_tls_13_is_served_and_12_refused(tls_server: tuple[int, bytes]) -> None:
    port, cert = tls_server
    with tls_channel(port, cert) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        answer = health.Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING

    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        context = ssl.create_default_context(cadata=cert.decode())
        context.minimum_version = context.maximum_version = version
        context.set_alpn_protocols(["h2"])
        with socket.create_connection(("localhost", port), timeout=10) as raw:
            if version == ssl.TLSVersion.TLSv1_2:
                with pytest.raises(ssl.SSLError):
                    context.wrap_socket(raw, server_hostname="localhost")
            else:
                with context.wrap_socket(raw, server_hostname="localhost") as tls:
                    assert tls.version() == "TLSv1.3" and tls.selected_alpn_protocol() == "h2"

    with grpc.insecure_channel(f"localhost:{port}") as plain:
        health = health_pb2_grpc.HealthStub(plain)
        with pytest.raises(grpc.RpcError) as caught:
            health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_rate_limits_know_the_client_behind_the_tls_front(
    tls_server: tuple[int, bytes], auth: TokenFactory
) -> None:
    """Two principals on two connections from one address share its bucket: the limit of
    the address is reached before either principal's."""
    port, cert = tls_server
    first, second = auth("analyst", sub="one"), auth("analyst", sub="two")
    with tls_channel(port, cert) as a, tls_channel(port, cert) as b:
        calls = [rpc.CustomerServiceStub(c).ListCustomers for c in (a, b)]
        for i in range(READS_PER_MINUTE):
            calls[i % 2](pb.ListCustomersRequest(), metadata=metadata((first, second)[i % 2]))
        refused = rpc_error(calls[1], pb.ListCustomersRequest(), metadata(second))
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert int(dict(refused.trailing_metadata())[RETRY_AFTER]) >= 1


def test_failed_authentications_are_limited(migrated: Settings, auth: TokenFactory) -> None:
    """As over REST: after a few bad credentials from an address, every call from it is
    RESOURCE_EXHAUSTED before its credentials are looked at."""
    settings = migrated.model_copy(update={"auth_failures_per_minute": 3})
    for port in serve_grpc(settings):
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = rpc.CustomerServiceStub(channel).ListCustomers
            codes = [
                rpc_error(call, pb.ListCustomersRequest(), md).code()
                for md in [(("x-api-key", "cmk_guess"),)] * 2 + [(("authorization", "Bearer x"),)]
            ]
            assert codes == [grpc.StatusCode.UNAUTHENTICATED] * 3
            refused = rpc_error(call, pb.ListCustomersRequest(), metadata(auth()))
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert int(dict(refused.trailing_metadata())[RETRY_AFTER]) >= 1


def test_sigterm_lets_calls_in_flight_finish(migrated: Settings, auth: TokenFactory) -> None:
    port, metrics_port = free_port(), free_port()
    env = {
        **os.environ,
        "CUSTOMERS_GRPC_PORT": str(port),
        "CUSTOMERS_METRICS_PORT": str(metrics_port),
        "CUSTOMERS_CONSISTENCY_WAIT_SECONDS": "2",
    }
    server = subprocess.Popen(  # our own interpreter and module
        [sys.executable, "-m", "service.cli", "serve", "grpc"],
        env=env,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        with ExitStack() as stack, grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + 30
            while True:
                try:
                    health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    break
                except grpc.RpcError:
                    assert time.monotonic() < deadline and server.poll() is None, "no server"
                    time.sleep(0.2)
            # A read waiting for a write no projector makes visible: busy for the 2 s wait.
            written = stack.enter_context(unprojected_write(migrated, auth()))
            waiting = rpc.CustomerServiceStub(channel).ListCustomers.future(
                pb.ListCustomersRequest(), metadata=metadata(auth(), token=written)
            )
            # SIGTERM once the server holds the call (its in-flight gauge says so).
            deadline = time.monotonic() + 10
            while (
                "customers_grpc_requests_in_flight 1.0"
                not in httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
            ):
                assert time.monotonic() < deadline and not waiting.done(), "never arrived"
            server.send_signal(signal.SIGTERM)
            with pytest.raises(grpc.RpcError) as caught:
                waiting.result(timeout=15)
            # Its own answer, not a dropped connection.
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "consistency token" in (caught.value.details() or "")
            assert server.wait(timeout=15) == 0
    finally:
        if server.poll() is None:
            server.kill()
