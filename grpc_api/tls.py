"""TLS 1.3 as the minimum version for gRPC.

grpcio's server credentials cannot bound the protocol version (its BoringSSL accepts TLS 1.2
and 1.3; grpc/grpc#37305, the server-side options of #43074/#43080 are unreleased), and
`GRPC_SSL_CIPHER_SUITES` only narrows TLS 1.2's suites. So with a certificate the gRPC port is
this front: Python's `ssl` (as the REST port, `minimum_version = TLSv1_3`, ALPN h2) accepts the
connection and relays the decrypted HTTP/2 bytes to the gRPC server, which listens only on a
Unix socket in a private directory. Each relayed connection is bound to its own abstract
socket name, so the server can tell the client's address (rate limits per address).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import ssl

log = logging.getLogger(__name__)

_CHUNK = 64 * 1024


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(cert_file, key_file)
    context.set_alpn_protocols(["h2"])  # gRPC clients insist on it
    return context


class TlsFront:
    def __init__(self, context: ssl.SSLContext, upstream: str, fronted: dict[str, str]) -> None:
        self._context = context
        self._upstream = upstream  # path of the gRPC server's Unix socket
        self._fronted = fronted  # peer name the gRPC server sees → client address
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen; the port (a free one for 0)."""
        self._server = await asyncio.start_server(self._accepted, host, port, ssl=self._context)
        bound: int = self._server.sockets[0].getsockname()[1]
        return bound

    def close(self) -> None:
        """Stop accepting; relays end when the gRPC server closes their connections."""
        if self._server is not None:
            self._server.close()

    async def wait_closed(self) -> None:
        """After the gRPC server has stopped (from Python 3.12 on, this also waits for the
        relayed connections)."""
        if self._server is not None:
            await self._server.wait_closed()

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peername = writer.get_extra_info("peername")
        client = str(peername[0]) if peername else "unknown"
        name = f"customers-grpc-{secrets.token_hex(8)}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind("\0" + name)  # Linux abstract namespace: nothing to clean up
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, self._upstream)
            up_reader, up_writer = await asyncio.open_unix_connection(sock=sock)
        except OSError:
            log.warning("gRPC server unreachable behind the TLS front")
            sock.close()
            writer.close()
            return
        peer = f"unix-abstract:{name}"
        self._fronted[peer] = client
        try:
            await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))
        finally:
            self._fronted.pop(peer, None)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until either side ends, then close the writer (which ends the other pump)."""
    try:
        while chunk := await reader.read(_CHUNK):
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()
