"""The one place configuration is read from the environment."""

from __future__ import annotations

import base64
import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated

import orjson
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    # hide_input_in_errors: a bad value may be a secret (a key, a URL with a password).
    model_config = SettingsConfigDict(
        env_prefix="CUSTOMERS_", extra="ignore", hide_input_in_errors=True
    )

    # Unprefixed: the two URLs every deployment tool already knows.
    database_url: str | None = Field(default=None, validation_alias="DATABASE_URL")
    nats_url: str | None = Field(default=None, validation_alias="NATS_URL")

    # Embedded PostgreSQL / NATS / generated keys live here. Never under the repo or
    # /root: pgserver changes permissions of parent directories.
    data_dir: Path = Path("/var/tmp/customers-service")  # noqa: S108 — survives reboots, not /tmp

    # base64 of 32 bytes; wraps every per-customer data key and the HMAC root secret.
    master_key: str | None = None
    # Comma-separated earlier master keys, accepted for unwrapping only: set while
    # `customers keys rotate` re-wraps (docs/security.md "Master-key rotation").
    previous_master_keys: str = ""

    jwt_secret: str | None = None
    jwt_issuer: str = "customers-service"
    jwt_audience: str = "customers-api"
    jwt_leeway_seconds: int = 30
    # RS256 / ES256 tokens of an identity provider, verified against its JWKS (cached; fetched
    # again for an unknown `kid`, at most once per cooldown). Unset: HS256 tokens only.
    jwt_jwks_url: str | None = None
    jwt_jwks_cache_seconds: float = 300.0
    jwt_jwks_refresh_cooldown_seconds: float = 5.0
    # The longest a token may still be valid when it arrives (exp - now): a leaked token
    # must not be good for years.
    jwt_max_lifetime_seconds: int = 86_400
    # Failed authentications (a bad API key or token) per client address per minute, per
    # process; beyond them the address gets 429 before any key lookup or signature check.
    auth_failures_per_minute: int = 120
    # Live API keys per organization (creating one more is a 409).
    api_keys_per_organization: int = 100

    # HTTPS with TLS 1.3 as the minimum when both are set (PEM files).
    tls_cert_file: str | None = None
    tls_key_file: str | None = None

    # Processes serving HTTP (`customers serve`, `serve gateway`, `serve write-api`, `serve
    # read-api`) and NATS ingesters under `customers serve`: one per core by default.
    workers: int = Field(default_factory=lambda: len(os.sched_getaffinity(0)), ge=1)

    host: str = "127.0.0.1"
    # Comma-separated addresses (or "*") of the reverse proxies whose X-Forwarded-For /
    # X-Forwarded-Proto the HTTP ports believe; none by default: the peer is the client.
    trusted_proxies: str = ""
    http_port: int = 8080
    write_api_port: int = 8081
    read_api_port: int = 8082
    # gRPC (`customers serve grpc`, a child of `customers serve`); TLS from the same files.
    grpc_port: int = 9090

    consistency_wait_seconds: float = 5.0
    # PostgreSQL streaming replicas the read API may answer from (docs/scaling.md "Read
    # replicas"): a JSON array or whitespace-separated URLs (a libpq multi-host URL holds
    # commas). Empty: every read is answered by DATABASE_URL's server, as without replicas.
    read_replica_urls: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # A read without a consistency token goes to a replica only while that replica's replay
    # lag is at most this; else to the primary. A read with a token waits for a replica at
    # most this long (and half the consistency bound) before the primary answers it.
    replica_max_lag_seconds: float = Field(default=1.0, ge=0)
    email_verification_ttl_hours: int = 24
    idempotency_ttl_hours: int = 24

    nats_stream: str = "CUSTOMERS"
    nats_subject_prefix: str = "customers"
    nats_duplicate_window_seconds: int = 7200

    # PostgreSQL connections per API process: the command side's event store pool and the
    # query side's pool maximum (each also opens a few of its own: watchers, key lookups).
    db_pool_size: int = 8
    # How long the event store waits for a pooled connection, per attempt (it makes up to 10,
    # as eventsourcing retries): while PostgreSQL restarts, commands wait and then succeed;
    # while it stays down they answer 503 after about ten times this.
    db_wait_seconds: int = 2

    projection_batch_size: int = 2000
    # After a round that found events, a follower lets more pile up this long before the
    # next: one round's reads, transaction and position then serve many commits. The
    # projector's wait bounds how much later than its commit a write becomes listable.
    projection_gather_ms: int = 10
    follower_gather_ms: int = 50  # relay, write auditor, segment evaluators
    relay_batch_size: int = 500

    # Rules engine that segment ruleIds must reference; unset = not validated (warned at start).
    rules_engine_url: str | None = None
    rules_engine_timeout_seconds: float = 2.0
    rules_engine_retries: int = 2
    rules_engine_breaker_failures: int = 5
    rules_engine_breaker_reset_seconds: float = 30.0

    # Active dynamic segments are recalculated when their last calculation is older than
    # this (time-relative criteria drift with the clock); 0 = only on demand and on change.
    segment_recalculation_hours: float = 24.0
    # Purchase/spend models and RFM breaks are fitted again when older than this.
    model_fit_hours: float = 24.0

    # A lifecycle-deleted customer (DELETE /customers/{id}) is erased (Art. 17) this long
    # after its deletion, and can be restored until then (POST /customers/{id}/restore);
    # 0 = erased at once (within seconds), no recovery window.
    erasure_grace_hours: float = 720.0
    # Tracked events older than this many whole months are dropped (partition by partition);
    # 0 = kept. Running totals (order count, total spent, logins) keep counting them.
    activity_retention_months: int = 0

    # Requests per minute per principal and per client address (0 = unlimited), per process;
    # and the largest request body accepted.
    rate_limit_reads_per_minute: int = 6000
    rate_limit_writes_per_minute: int = 1200
    rate_limit_exports_per_minute: int = 60
    rate_limit_tracking_per_minute: int = 120_000
    # Requests one HTTP process serves at once; more are refused at once with 503 and
    # Retry-After (0 = no cap). About what the process's pools and CPU can answer within a
    # tenth of a second.
    max_concurrent_requests: int = 64
    max_body_bytes: int = 1_048_576
    # An import's largest file (streamed to the database) per role, as JSON; a caller gets the
    # largest of its roles' limits, and a role not listed cannot import.
    max_import_bytes: dict[str, int] = Field(
        default_factory=lambda: {
            "admin": 1024**3,
            "manager": 1024**3,
            "support": 64 * 1024**2,
            "service": 64 * 1024**2,
        }
    )

    # Customer jobs (imports, bulk operations; docs/security.md "Jobs"). Worker threads per
    # segments process; how many jobs one organization may run at once over all workers; how
    # long a job runs before it gives its worker to another organization's waiting job, between
    # two batches (0 = after every batch).
    job_workers: int = 1
    jobs_per_org: int = 1
    job_turn_seconds: float = 2.0
    # Rejected rows a job's report keeps (the rest are only counted). An import stops as
    # FAILED past `import_max_rejected_rows` rejected rows, or once more than
    # `import_max_rejected_ratio` of the rows read were rejected after
    # `import_ratio_min_rows` rows.
    job_report_max_rows: int = 10_000
    import_max_rejected_rows: int = 100_000
    import_max_rejected_ratio: float = 0.5
    import_ratio_min_rows: int = 1_000

    # Physical backups (service/backups.py, docs/operations.md "Backups"): with
    # `backup_enabled`, `customers serve` streams WAL into the backup dir (pg_receivewal, a
    # supervised child) and takes a verified base backup every `backup_interval_hours`; every
    # erasure is also appended to the erasure ledger there. Kept: the newest
    # `backup_retention_count` base backups, and any younger than `backup_retention_hours`
    # (0 = by count only). Unset dir: <data_dir>/backups. Unset bin dir: the client programs
    # matching the server's major version (the embedded server's own, or
    # /usr/lib/postgresql/<major>/bin).
    backup_enabled: bool = False
    backup_dir: Path | None = None
    backup_interval_hours: float = Field(default=1.0, gt=0)
    backup_retention_count: int = Field(default=6, ge=1)
    backup_retention_hours: float = Field(default=0.0, ge=0)
    backup_pg_bin_dir: Path | None = None

    log_level: str = "INFO"

    # Prometheus listener of the background processes (projector, relay, segments, ingest),
    # which have no HTTP port; 0 = none. HTTP processes answer /metrics on their own port.
    metrics_port: int = 0
    # When set, the HTTP ports answer /metrics only with `Authorization: Bearer <token>`.
    metrics_token: str | None = None
    # Figures /metrics reads from the database (follower lag, customers, privacy requests)
    # are reused this long, and refreshed no more often than 20 times their last cost.
    metrics_cache_seconds: float = 15.0
    # OpenTelemetry traces to this OTLP/HTTP endpoint (…/v1/traces); unset = no tracing.
    otel_endpoint: str | None = None
    otel_service_name: str = "customers-service"

    @property
    def backup_path(self) -> Path:
        return self.backup_dir or self.data_dir / "backups"

    @field_validator("read_replica_urls", mode="before")
    @classmethod
    def _replica_urls(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            value = orjson.loads(text) if text.startswith("[") else text.split()
        if isinstance(value, list):
            for url in value:
                if not isinstance(url, str) or not url.startswith(("postgresql://", "postgres://")):
                    # Never echo the value: a URL may hold a password.
                    raise ValueError("every replica must be a postgresql:// URL")
        return value

    def master_key_bytes(self) -> bytes:
        if not self.master_key:
            raise RuntimeError("CUSTOMERS_MASTER_KEY is not set")
        return _key_bytes(self.master_key, "CUSTOMERS_MASTER_KEY")

    def previous_master_key_bytes(self) -> list[bytes]:
        keys = [k.strip() for k in self.previous_master_keys.split(",") if k.strip()]
        return [_key_bytes(k, "CUSTOMERS_PREVIOUS_MASTER_KEYS") for k in keys]


def _key_bytes(encoded: str, name: str) -> bytes:
    key = base64.b64decode(encoded)
    if len(key) != 32:
        raise RuntimeError(f"{name} must hold base64 of exactly 32 bytes")
    return key


@lru_cache
def get_settings() -> Settings:
    return Settings()
