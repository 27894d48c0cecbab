"""Optional tracing: with CUSTOMERS_OTEL_ENDPOINT set, a request is a server span exported
over OTLP/HTTP (to a collector double: a real HTTP server in the test) that continues the
caller's trace, and the rules-engine call carries the span on."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import httpx
import pytest
from asgi_lifespan import LifespanManager
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from service import tracing
from service.auth import issue_token
from service.settings import Settings
from tests.e2e.conftest import new_customer
from tests.e2e.test_segments_api import segment
from write_api.app import create_app

pytestmark = pytest.mark.anyio


TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Recorder(BaseHTTPRequestHandler):
    """Collector (POST /v1/traces) and rules engine (GET /api/v1/rules/…) in one."""

    exports: ClassVar[list[bytes]] = []
    rule_headers: ClassVar[list[dict[str, str]]] = []

    def do_POST(self) -> None:
        self.exports.append(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(200)
        self.end_headers()

    def do_GET(self) -> None:
        self.rule_headers.append({k.lower(): v for k, v in self.headers.items()})
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


async def test_requests_are_spans_that_continue_the_callers_trace(
    migrated: Settings, recorder: str
) -> None:
    settings = migrated.model_copy(
        update={"otel_endpoint": f"{recorder}/v1/traces", "rules_engine_url": recorder}
    )
    token = issue_token(settings, sub="t", org="org-traced", roles=["admin"])
    headers = {
        "Authorization": f"Bearer {token}",
        "traceparent": f"00-{TRACE_ID}-{PARENT}-01",
        "X-Correlation-ID": "corr-traced",
    }
    body = new_customer()
    async with (
        LifespanManager(create_app(settings)) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://test"
        ) as client,
    ):
        created = await client.post("/api/v1/customers", json=body, headers=headers)
        assert created.status_code == 201, created.text
        defined = await client.post("/api/v1/customers/segments", json=segment(), headers=headers)
        assert defined.status_code == 201, defined.text
    provider = tracing.configure(settings)
    assert provider is not None and provider.force_flush()

    spans = []
    for raw in Recorder.exports:
        request = ExportTraceServiceRequest.FromString(raw)
        spans += [s for r in request.resource_spans for ss in r.scope_spans for s in ss.spans]
    ours = [s for s in spans if s.trace_id.hex() == TRACE_ID]
    by_name = {s.name: s for s in ours}
    assert len(by_name) == len(ours) == 2  # one span per request (FastAPI's own are off)
    create = by_name["POST /api/v1/customers"]
    assert create.parent_span_id.hex() == PARENT
    attributes = {a.key: a.value for a in create.attributes}
    assert attributes["http.route"].string_value == "/api/v1/customers"
    assert attributes["http.response.status_code"].int_value == 201
    assert attributes["customers.correlation_id"].string_value == "corr-traced"
    assert body["email"].encode() not in b"".join(Recorder.exports)  # no personal data

    # The rules engine was asked within the segment request's span, and told so.
    define = by_name["POST /api/v1/customers/segments"]
    (asked,) = Recorder.rule_headers
    assert asked["traceparent"].split("-")[1:3] == [TRACE_ID, define.span_id.hex()]
    assert asked["x-correlation-id"] == "corr-traced"
