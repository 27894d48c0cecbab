"""The redaction filter scrubs e-mail addresses and query strings wherever they hide; ids
taken from outside (request and correlation ids) are short plain tokens."""

from __future__ import annotations

import io
import logging
import uuid

import orjson

from service.logs import correlation_of, redacting_handler, valid_id


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


def test_ids_from_outside_are_short_plain_tokens() -> None:
    for good in ("3f2c9a", "order-7f3a:checkout.2", str(uuid.uuid4()), "A" * 64):
        assert valid_id(good) == good
        assert valid_id(good.encode()) == good
    for bad in ("", "two words", "ann@example.com", "A" * 65, "-leading", "x\ny", "é", None):
        assert valid_id(bad) is None


def test_correlation_id_comes_from_the_header_then_traceparent_then_the_request() -> None:
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    traceparent = f"00-{trace}-00f067aa0ba902b7-01".encode()
    given = {b"x-correlation-id": b"abc-1", b"traceparent": traceparent}
    assert correlation_of(given, "rid") == "abc-1"
    assert (
        correlation_of({b"x-correlation-id": b"bad id", b"traceparent": traceparent}, "r") == trace
    )
    assert (
        correlation_of({b"traceparent": b"00-" + b"0" * 32 + b"-00f067aa0ba902b7-01"}, "r") == "r"
    )
    assert correlation_of({}, "rid") == "rid"
