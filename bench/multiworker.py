"""The gateway in N uvicorn worker processes, with TCP_NODELAY on every connection.

`uvicorn --workers N` binds the listening socket with proto 0; accepted sockets inherit it and
asyncio then skips TCP_NODELAY, so on Linux every keep-alive response whose headers and body
go out in two writes waits ~40 ms for the client's delayed ACK (uvicorn issue #3149, open).
This launcher binds the socket itself with IPPROTO_TCP and hands it to uvicorn's supervisor.

    python -m bench.multiworker --port 8080 --workers 2
"""

from __future__ import annotations

import argparse
import socket

import uvicorn
from uvicorn.supervisors import Multiprocess


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.multiworker")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    config = uvicorn.Config(
        "service.gateway:create_gateway",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_config=None,  # create_gateway() configures the service's JSON logs
        access_log=False,
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.set_inheritable(True)
    Multiprocess(config, sockets=[sock]).run()


if __name__ == "__main__":
    main()
