"""Client of the rules engine that segment `ruleId`s must reference.

Contract assumed of the engine: `GET {CUSTOMERS_RULES_ENGINE_URL}/api/v1/rules/{ruleId}` answers
200 for an existing rule and 404 for an unknown one; anything else is the engine failing.
"""

from __future__ import annotations

import logging
import threading
import time
from urllib.parse import quote

import httpx
from opentelemetry import propagate

from domain.errors import Code, DomainError, invalid
from service.logs import correlation_headers
from service.settings import Settings

log = logging.getLogger(__name__)


class RulesEngine:
    """Timeouts, bounded retries with backoff, and a circuit breaker that fails fast (503)
    while the engine is known to be down."""

    def __init__(self, settings: Settings) -> None:
        self.url = settings.rules_engine_url.rstrip("/") if settings.rules_engine_url else None
        self.retries = settings.rules_engine_retries
        self.breaker_failures = settings.rules_engine_breaker_failures
        self.breaker_reset = settings.rules_engine_breaker_reset_seconds
        self._client = httpx.Client(timeout=settings.rules_engine_timeout_seconds)
        self._lock = threading.Lock()
        self._failures = 0
        self._open_until = 0.0
        if self.url is None:
            log.warning("CUSTOMERS_RULES_ENGINE_URL is unset: segment ruleIds are not validated")

    def check_rule(self, rule_id: str) -> None:
        """Returns if the rule exists; 422 naming ruleId if not; 503 if the engine is down."""
        if self.url is None:
            return
        with self._lock:
            if time.monotonic() < self._open_until:
                raise DomainError(Code.UNAVAILABLE, "the rules engine is unavailable; retry later")
        target = f"{self.url}/api/v1/rules/{quote(rule_id, safe='')}"
        # The engine's logs and traces can then be joined with ours.
        headers = {**correlation_headers(), **_trace_context()}
        for attempt in range(self.retries + 1):
            try:
                status = self._client.get(target, headers=headers).status_code
            except httpx.HTTPError:
                status = None
            if status == 200:
                self._record(success=True)
                return
            if status == 404:
                self._record(success=True)
                raise invalid("ruleId", "no such rule in the rules engine")
            if attempt < self.retries:
                time.sleep(0.05 * 2**attempt)
        self._record(success=False)
        raise DomainError(Code.UNAVAILABLE, "the rules engine did not answer; retry later")

    def _record(self, *, success: bool) -> None:
        with self._lock:
            if success:
                self._failures = 0
                return
            self._failures += 1
            if self._failures >= self.breaker_failures:
                self._open_until = time.monotonic() + self.breaker_reset
                log.warning("rules engine circuit opened", extra={"seconds": self.breaker_reset})

    def close(self) -> None:
        self._client.close()


def _trace_context() -> dict[str, str]:
    """`traceparent` (and `tracestate`) of the current span (service.tracing) for the call;
    empty when tracing is off or no span is current."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier
