"""HTTPS with TLS 1.3 as the minimum: a TLS 1.3 client is served, a TLS 1.2 client refused."""

from __future__ import annotations

import datetime as dt
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from service.cli import http_config
from service.embedded import free_port
from service.gateway import Gateway
from service.settings import Settings


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:
        pass


@pytest.fixture(scope="module")
def https(
    migrated: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[int, Path]]:
    cert, key = self_signed(tmp_path_factory.mktemp("tls"))
    settings = migrated.model_copy(update={"tls_cert_file": str(cert), "tls_key_file": str(key)})
    port = free_port()
    server = Server(http_config(Gateway(settings), settings, "127.0.0.1", port))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.02)
    yield port, cert
    server.should_exit = True
    thread.join(10)


def client_context(cert: Path, version: ssl.TLSVersion) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(cert))
    context.minimum_version = context.maximum_version = version
    return context


def test_tls_13_is_served_and_12_refused(https: tuple[int, Path]) -> None:
    port, cert = https
    url = f"https://localhost:{port}/health"
    modern = httpx.get(url, verify=client_context(cert, ssl.TLSVersion.TLSv1_3), timeout=10)
    assert modern.status_code == 200
    with pytest.raises(httpx.ConnectError):
        httpx.get(url, verify=client_context(cert, ssl.TLSVersion.TLSv1_2), timeout=10)
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(f"http://localhost:{port}/health", timeout=10)  # no plaintext either


def test_worker_processes_serve_tls_13_only(
    migrated: Settings, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """`CUSTOMERS_WORKERS=2`: two server processes sharing the port, each loading its own TLS
    configuration, both refusing TLS 1.2."""
    cert, key = self_signed(tmp_path_factory.mktemp("tls-workers"))
    port = free_port()
    env = {
        **os.environ,
        "CUSTOMERS_WORKERS": "2",
        "CUSTOMERS_HTTP_PORT": str(port),
        "CUSTOMERS_TLS_CERT_FILE": str(cert),
        "CUSTOMERS_TLS_KEY_FILE": str(key),
    }
    server = subprocess.Popen(  # our own interpreter and module
        [sys.executable, "-m", "service.cli", "serve", "gateway"], env=env
    )
    url = f"https://localhost:{port}/health"
    modern = client_context(cert, ssl.TLSVersion.TLSv1_3)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url, verify=modern, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and server.poll() is None, "no server"
            time.sleep(0.1)
        children = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
        commands = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in children]
        assert sum(b"resource_tracker" not in c for c in commands) == 2  # the workers
        for _ in range(6):  # connections land on either process
            with pytest.raises(httpx.ConnectError):
                httpx.get(url, verify=client_context(cert, ssl.TLSVersion.TLSv1_2), timeout=5)
            assert httpx.get(url, verify=modern, timeout=5).status_code == 200
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=20)
