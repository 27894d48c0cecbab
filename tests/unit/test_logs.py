"""The redaction filter scrubs e-mail addresses and query strings wherever they hide."""

from __future__ import annotations

import io
import logging

import orjson

from service.logs import redacting_handler


def test_redaction_reaches_message_extras_and_tracebacks() -> None:
    stream = io.StringIO()
    log = logging.getLogger("redaction-test")
    log.propagate = False
    log.addHandler(redacting_handler(stream))
    try:
        log.warning('"GET /api/v1/customers?q=ann%%40example.com HTTP/1.1" %s', 200)
        log.warning("conflict", extra={"detail": "Key (email)=(bob@example.org) exists"})
        try:
            raise ValueError("duplicate eve@example.net")
        except ValueError:
            log.exception("failed for %s", "carl@example.com")
    finally:
        log.handlers.clear()
    lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    assert lines[0]["msg"] == '"GET /api/v1/customers?[redacted] HTTP/1.1" 200'
    assert lines[1]["detail"] == "Key (email)=([email]) exists"
    assert lines[2]["msg"] == "failed for [email]"
    assert "ValueError: duplicate [email]" in lines[2]["exc"]
    assert "@example" not in stream.getvalue()
