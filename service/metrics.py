"""Prometheus metrics of every process kind (names and meanings: docs/operations.md "Metrics").

Labels never hold personal data, ids or raw paths: HTTP requests are counted by route
template. Processes of one server (`CUSTOMERS_WORKERS` > 1, or everything under `customers
serve`) share their figures through files in PROMETHEUS_MULTIPROC_DIR (prometheus_client's
multiprocess mode, set up by service/cli.py before this module is imported), so whichever
process answers a scrape reports all of them.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)

from service.settings import Settings

log = logging.getLogger(__name__)

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
UNMATCHED = "unmatched"  # the route label of requests no route matched (404s of any path)

HTTP_REQUESTS = Counter(
    "customers_http_requests",
    "HTTP requests answered, by method, route template and status code.",
    ("method", "route", "status"),
)
HTTP_DURATION = Histogram(
    "customers_http_request_duration_seconds",
    "Time from a request's arrival to the end of its answer, by method and route template.",
    ("method", "route"),
    # The spec's targets (50, 100, 150, 200, 300 ms) are bucket edges.
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
HTTP_IN_FLIGHT = Gauge(
    "customers_http_requests_in_flight",
    "HTTP requests being answered.",
    multiprocess_mode="livesum",
)

GRPC_REQUESTS = Counter(
    "customers_grpc_requests",
    "gRPC calls answered, by method and status code.",
    ("method", "code"),
)
GRPC_IN_FLIGHT = Gauge(
    "customers_grpc_requests_in_flight",
    "gRPC calls being answered.",
    multiprocess_mode="livesum",
)

DB_POOL_CONNECTIONS = Gauge(
    "customers_db_pool_connections",
    "Open PostgreSQL connections of a process's pool, by state (in_use, idle).",
    ("pool", "state"),
    multiprocess_mode="livesum",
)
DB_POOL_MAX = Gauge(
    "customers_db_pool_max_connections",
    "Most connections a process's pool may open.",
    ("pool",),
    multiprocess_mode="livesum",
)
DB_POOL_WAITING = Gauge(
    "customers_db_pool_requests_waiting",
    "Requests queued for a connection of a process's pool.",
    ("pool",),
    multiprocess_mode="livesum",
)
DB_POOL_ERRORS = Counter(
    "customers_db_pool_request_errors",
    "Requests for a pool connection that failed (timed out waiting, or the queue was full).",
    ("pool",),
)

READS_SERVED = Counter(
    "customers_reads_served",
    "Reads of read models by the server that answered them (primary, replica) and whether"
    " they carried a consistency token (true, false).",
    ("target", "token"),
)
REPLICA_TOKEN_WAITS = Histogram(
    "customers_replica_token_wait_seconds",
    "Reads carrying a consistency token that a replica had not yet reached: how long they"
    " waited, by who answered them (replica: it got there in time; primary: it did not).",
    ("target",),
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
REPLICA_LAG = Gauge(
    "customers_replica_lag_seconds",
    "A read replica's replay lag as its last poll saw it (0: replayed all it received);"
    " -1 while it cannot be reached or does not say.",
    ("replica",),
    multiprocess_mode="livemax",
)

TRACKING_EVENTS = Counter(
    "customers_tracking_events",
    "Tracked activity events handled by the group-commit writer, by result: stored (new),"
    " duplicate (stored before), skipped (behavioral, no analytics-tracking consent).",
    ("result",),
)
INGEST_MESSAGES = Counter(
    "customers_ingest_messages",
    "NATS tracking messages settled by the ingester, by outcome: stored (acknowledged),"
    " invalid and unknown_customer (terminated), redelivered (customer not readable yet).",
    ("outcome",),
)
API_KEY_LOOKUPS = Counter(
    "customers_api_key_lookups",
    "API keys looked up in the database (cache misses), by result: found (a live key),"
    " unknown (no such key, or revoked). Many unknown: someone is guessing.",
    ("result",),
)
PROJECTED = Counter(
    "customers_projection_events",
    "Notifications of the event log consumed by a projector view (applied or skipped).",
    ("view",),
)
PROJECTION_POSITION = Gauge(
    "customers_projection_position",
    "The last notification id a view has committed, as this projector last wrote it.",
    ("view",),
    multiprocess_mode="livemax",
)
DEAD_LETTERS = Counter(
    "customers_dead_letters_recorded",
    "Events a follower of the event log could not process and passed over (dead letters),"
    " by follower, counted by the process that recorded them.",
    ("follower",),
)
RELAYED = Counter(
    "customers_relay_messages",
    "Notifications the NATS relay got past, by result: published (stored by JetStream),"
    " duplicate (JetStream had it: a republish), skipped (no public form).",
    ("result",),
)
RELAY_POSITION = Gauge(
    "customers_relay_position",
    "The last notification id the relay recorded as published.",
    multiprocess_mode="livemax",
)
RELAY_CONNECTS = Counter(
    "customers_relay_nats_connects",
    "Connections the relay made to NATS (more than one: it reconnected after failures).",
)
SEGMENT_JOBS = Histogram(
    "customers_segment_job_duration_seconds",
    "Whole-base segment calculations, from claim to end, by outcome"
    " (succeeded, failed, cancelled).",
    ("outcome",),
    buckets=(0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0),
)


def multiprocess_mode() -> bool:
    return bool(os.environ.get(MULTIPROCESS_DIR))


def _registry() -> CollectorRegistry:
    if not multiprocess_mode():
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


def exposition() -> bytes:
    """This process's metrics (every process's of the server in multiprocess mode), in the
    Prometheus text format. Blocking: reads the metric files in multiprocess mode."""
    sample_pools()
    return generate_latest(_registry())


def listen(settings: Settings) -> None:
    """A /metrics listener on CUSTOMERS_METRICS_PORT for a process without an HTTP port."""
    if settings.metrics_port <= 0:
        return
    start_http_server(settings.metrics_port, addr=settings.host, registry=_registry())
    log.info("metrics listener started", extra={"port": settings.metrics_port})


# --------------------------------------------------------------------------- pools

_pools: dict[str, Any] = {}  # name → psycopg_pool (sync or async) pool
_errors_seen: dict[str, int] = {}
_pools_lock = threading.Lock()
_sampler: threading.Thread | None = None
SAMPLE_SECONDS = 5.0


def watch_pool(name: str, pool: Any) -> None:
    """Report `pool`'s use as `name` until `unwatch_pool`."""
    global _sampler  # noqa: PLW0603 — one sampler thread per process
    with _pools_lock:
        _pools[name] = pool
        _errors_seen[name] = 0
        # Another worker answers most scrapes: in multiprocess mode this one's figures must
        # already be in its file, so they are sampled on a timer too.
        if multiprocess_mode() and _sampler is None:
            _sampler = threading.Thread(target=_sample_forever, name="pool-metrics", daemon=True)
            _sampler.start()


def unwatch_pool(name: str, pool: Any) -> None:
    with _pools_lock:
        if _pools.get(name) is not pool:
            return  # another app of this process reports under the name now
        del _pools[name]
        for state in ("in_use", "idle"):
            DB_POOL_CONNECTIONS.labels(name, state).set(0)
        DB_POOL_MAX.labels(name).set(0)
        DB_POOL_WAITING.labels(name).set(0)


def sample_pools() -> None:
    with _pools_lock:
        for name, pool in _pools.items():
            stats = pool.get_stats()
            size, idle = stats.get("pool_size", 0), stats.get("pool_available", 0)
            DB_POOL_CONNECTIONS.labels(name, "in_use").set(max(0, size - idle))
            DB_POOL_CONNECTIONS.labels(name, "idle").set(idle)
            DB_POOL_MAX.labels(name).set(stats.get("pool_max", 0))
            DB_POOL_WAITING.labels(name).set(stats.get("requests_waiting", 0))
            errors = stats.get("requests_errors", 0)
            if errors > _errors_seen[name]:
                DB_POOL_ERRORS.labels(name).inc(errors - _errors_seen[name])
                _errors_seen[name] = errors


def _sample_forever() -> None:
    while True:
        time.sleep(SAMPLE_SECONDS)
        try:
            sample_pools()
        except Exception:  # a closing pool; the next round reads the next state
            log.debug("pool sampling failed", exc_info=True)
