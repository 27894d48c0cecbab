"""The `customers` command."""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import uvicorn

from service import logs
from service.settings import Settings, get_settings

log = logging.getLogger("customers")

PROCESS_KINDS = (
    "all", "gateway", "write-api", "read-api", "projector", "relay", "segments", "ingest",
    "grpc",
)  # fmt: skip


def _settings(embedded: bool) -> Settings:
    if embedded:
        from service.embedded import prepare_environment

        prepare_environment(get_settings())
    return get_settings()


def migrate(settings: Settings) -> None:
    from eventstore.application import Customers
    from eventstore.migrate import migrate as apply_sql

    assert settings.database_url
    applied = apply_sql(settings.database_url)
    Customers(settings, create_table=True, pool_size=1).close()
    log.info("migrated", extra={"applied": applied})
    from service.restore import after_restore

    done = after_restore(settings)  # before anything serves: a restore must not resurrect
    if done.epoch is not None or done.erased_again:
        log.info(
            "after a restore",
            extra={"epoch": done.epoch, "erasedAgain": len(done.erased_again)},
        )


def http_config(app: Any, settings: Settings, host: str, port: int) -> uvicorn.Config:
    """uvicorn's configuration, loaded; with a certificate, HTTPS accepting TLS 1.3 only.
    X-Forwarded-For / -Proto count only from CUSTOMERS_TRUSTED_PROXIES (uvicorn would believe
    them from 127.0.0.1 and ::1, so a local client could pick its rate-limit address)."""
    trusted = settings.trusted_proxies.strip()
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        ssl_certfile=settings.tls_cert_file,
        ssl_keyfile=settings.tls_key_file,
        proxy_headers=bool(trusted),
        forwarded_allow_ips=trusted or None,
    )
    config.load()
    if config.ssl is not None:
        config.ssl.minimum_version = ssl.TLSVersion.TLSv1_3
    return config


_WORKER = "CUSTOMERS_SERVER_WORKER"  # set in the worker processes of a multi-process server


def _uvicorn(kind: str, factory: str, settings: Settings, host: str, port: int) -> None:
    """Serve the app `factory` ("module:function"); with `CUSTOMERS_WORKERS` > 1, in that many
    processes of `customers serve <kind>`, each listening on the port with SO_REUSEPORT, so
    that the kernel spreads connections over them (a shared socket lets whichever process
    is awake take whole bursts of them)."""
    if settings.workers > 1:
        _supervise(kind, settings.workers)
        return
    module, name = factory.split(":")
    app = getattr(importlib.import_module(module), name)()
    server = uvicorn.Server(http_config(app, settings, host, port))
    if not os.environ.get(_WORKER):
        server.run()
        return
    # Bound with IPPROTO_TCP: asyncio skips TCP_NODELAY on sockets accepted from a listener
    # bound with proto 0 (~40 ms delayed-ACK stalls; uvicorn issue 3149).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    server.run(sockets=[sock])


def _supervise(kind: str, workers: int) -> None:
    """Run the workers until one ends (then stop the others: a process manager restarts the
    whole server) or this process is told to stop (they get SIGTERM and drain)."""
    with _shared_metrics():
        env = {**os.environ, "CUSTOMERS_WORKERS": "1", _WORKER: "1"}
        procs = [_child(kind, env) for _ in range(workers)]
        # Without a handler SIGTERM would end this process at once (or, as a container's
        # PID 1, be ignored): the workers' drain would be cut short by the runtime's kill.
        previous = signal.signal(signal.SIGTERM, _exit_on_signal)
        try:
            while all(p.poll() is None for p in procs):
                time.sleep(0.5)
        finally:
            _stop(procs)
            signal.signal(signal.SIGTERM, previous)


def _exit_on_signal(signum: int, _frame: object) -> None:
    signal.signal(signum, signal.SIG_IGN)  # a second signal must not cut the drain short
    raise SystemExit(128 + signum)


_METRICS_DIR = "PROMETHEUS_MULTIPROC_DIR"
_shared_dir: str | None = None  # the directory this process set up for its children


@contextlib.contextmanager
def _shared_metrics() -> Iterator[None]:
    """Processes started from here write their metrics to files in one directory, and
    whichever answers /metrics reports them all (prometheus_client's multiprocess mode).
    The mode is chosen when prometheus_client is imported, so this module imports it only
    inside functions. A directory given in PROMETHEUS_MULTIPROC_DIR is emptied first (files
    of an earlier run would count twice); otherwise a temporary one is used and removed."""
    global _shared_dir  # noqa: PLW0603 — one per process, like the environment it mirrors
    given = os.environ.get(_METRICS_DIR)
    if given and given == _shared_dir:  # nested: `customers serve` with several workers
        yield
        return
    if "prometheus_client" in sys.modules:
        log.warning("metrics of this process will be missing: prometheus_client imported early")
    if given:
        for stale in Path(given).glob("*.db"):
            stale.unlink()
        path = given
    else:
        path = tempfile.mkdtemp(prefix="customers-metrics-")
        os.environ[_METRICS_DIR] = path
    _shared_dir = path
    try:
        yield
    finally:
        _shared_dir = None
        if not given:
            os.environ.pop(_METRICS_DIR, None)
            shutil.rmtree(path, ignore_errors=True)


def _child(kind: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`customers serve <kind>` as a child process, ended with this one."""
    return subprocess.Popen(  # noqa: S603 — our own interpreter and module, fixed arguments
        [sys.executable, "-m", "service.cli", "serve", kind],
        env=env,
        preexec_fn=_die_with_parent,  # noqa: PLW1509 — no threads started yet
    )


def _stop(procs: list[subprocess.Popen[bytes]], timeout: float = 15.0) -> None:
    """SIGTERM (they drain and stop at a consistent position), then SIGKILL after `timeout`."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()


# No HTTP port of their own: /metrics on CUSTOMERS_METRICS_PORT.
_BACKGROUND = ("projector", "relay", "segments", "ingest", "grpc")


def serve(kind: str, settings: Settings) -> None:
    if kind in _BACKGROUND:
        from service import metrics

        metrics.listen(settings)
    if kind == "write-api":
        port = settings.write_api_port
        _uvicorn(kind, "write_api.app:create_app", settings, settings.host, port)
    elif kind == "read-api":
        port = settings.read_api_port
        _uvicorn(kind, "read_api.app:create_app", settings, settings.host, port)
    elif kind == "projector":
        from projections.runner import run_forever

        run_forever(settings)
    elif kind == "segments":
        from write_api.background.engine import run_forever as segments_forever

        segments_forever(settings)
    elif kind == "relay":
        import asyncio

        from eventstore.relay import run_forever as relay_forever

        asyncio.run(relay_forever(settings))
    elif kind == "ingest":
        import asyncio

        from write_api.background.ingest import run_forever as ingest_forever

        asyncio.run(ingest_forever(settings))
    elif kind == "grpc":
        from grpc_api.server import run_forever as grpc_forever

        grpc_forever(settings)
    elif kind == "gateway":
        port = settings.http_port
        _uvicorn(kind, "service.gateway:create_gateway", settings, settings.host, port)
    else:
        _serve_all(settings)


def _die_with_parent() -> None:
    """Linux PR_SET_PDEATHSIG: a child gets SIGTERM when the parent dies, even by SIGKILL."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


def _serve_all(settings: Settings) -> None:
    """Projector, relay, segments engine, NATS ingester and gRPC API as child processes; the
    REST gateway in this one, whose /metrics reports them all."""
    migrate(settings)
    agent = None
    if settings.backup_enabled:
        from service.backups import BackupAgent

        assert settings.database_url
        agent = BackupAgent(settings, settings.database_url)
        agent.start()
    try:
        _serve_children(settings)
    finally:
        if agent is not None:
            agent.stop()


def _serve_children(settings: Settings) -> None:
    with _shared_metrics():
        kinds = ("projector", "relay", "segments", "grpc", *["ingest"] * max(1, settings.workers))
        env = {**os.environ, "CUSTOMERS_METRICS_PORT": "0"}  # no listeners of their own
        children = [_child(kind, env) for kind in kinds]

        def _exit(signum: int, _frame: object) -> None:
            # uvicorn drains requests, then re-raises the signal it caught: it lands here.
            _stop(children)
            sys.exit(128 + signum)

        signal.signal(signal.SIGTERM, _exit)
        signal.signal(signal.SIGINT, _exit)

        url = f"http://{settings.host}:{settings.http_port}"
        print(
            f"\nCustomer Management Service at {url}  (API docs: {url}/docs)\n"
            f"gRPC (customers.v1, reflection on) at {settings.host}:{settings.grpc_port}\n"
            f"Get a token:  .venv/bin/customers dev-token --role admin --org acme\n"
            f'Then:         curl -H "Authorization: Bearer $TOKEN" {url}/api/v1/customers\n',
            flush=True,
        )
        try:
            serve("gateway", settings)
        finally:
            _stop(children)


def _api_keys(settings: Settings, args: argparse.Namespace) -> int:
    """create prints the key (shown once) on stdout; list / revoke as JSON."""
    import json
    import uuid

    from domain.access import Role
    from domain.errors import DomainError
    from eventstore.keys import LazyKeyring
    from service.api_keys import ApiKeyStore
    from service.auth import ORG

    if not ORG.fullmatch(args.org):
        print("--org must be 1 to 64 letters, digits or _.:-", file=sys.stderr)
        return 1
    store = ApiKeyStore(settings, LazyKeyring(settings))
    try:
        if args.action == "create":
            roles = sorted({Role(r).value for r in args.roles or ["service"]})
            try:
                record, key = store.create(args.org, args.name, roles, "cli")
            except DomainError as e:
                print(e.detail, file=sys.stderr)
                return 1
            print(key)
            print(json.dumps(record), file=sys.stderr)
        elif args.action == "list":
            print(json.dumps(store.list(args.org), indent=2))
        elif not args.key_id or not store.revoke(args.org, uuid.UUID(args.key_id)):
            print("no such key", file=sys.stderr)
            return 1
    finally:
        store.close()
    return 0


def _verify_audit(settings: Settings) -> int:
    """Exit 0 when the whole chain verifies, 1 (naming the first bad entry) when not."""
    import psycopg

    from eventstore.compliance import verify
    from eventstore.keys import AUDIT_KEY_PURPOSE, Keyring

    assert settings.database_url
    with psycopg.connect(settings.database_url) as conn:
        verdict = verify(conn, Keyring.load(conn, settings).derive(AUDIT_KEY_PURPOSE))
    if verdict.ok:
        print(f"audit trail intact: {verdict.entries} entries")
        return 0
    print(f"audit trail BROKEN: {verdict.reason}", file=sys.stderr)
    return 1


def _dead_letters(settings: Settings) -> int:
    """One JSON line per dead letter; exit 1 when there is any (scripts can alert on it)."""
    import json

    import psycopg

    from eventstore.dead_letters import LIST

    assert settings.database_url
    with psycopg.connect(settings.database_url) as conn:
        rows = conn.execute(LIST).fetchall()
    for follower, notification_id, originator_id, topic, reason, recorded_at in rows:
        line = {
            "follower": follower,
            "notificationId": notification_id,
            "originatorId": str(originator_id),
            "topic": topic,
            "reason": reason,
            "recordedAt": recorded_at.isoformat(),
        }
        print(json.dumps(line))
    return 1 if rows else 0


def _master_keys(settings: Settings, action: str) -> int:
    """rotate: re-wrap under CUSTOMERS_MASTER_KEY; status: data keys per master key (JSON).
    Exit 1 when keys under another master key remain."""
    import json

    import psycopg

    from eventstore.keys import key_status, rotate

    assert settings.database_url
    with psycopg.connect(settings.database_url) as conn:
        if action == "rotate":
            print(f"re-wrapped {rotate(conn, settings)} data keys", file=sys.stderr)
        status = key_status(conn, settings)
    print(json.dumps(status))
    return 1 if status["other"] else 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="customers", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p_serve = sub.add_parser("serve", help="run the service (all processes by default)")
    p_serve.add_argument("kind", nargs="?", default="all", choices=PROCESS_KINDS)
    p_serve.add_argument("--tls-cert", help="PEM certificate (chain): serve HTTPS, TLS 1.3 only")
    p_serve.add_argument("--tls-key", help="PEM private key of --tls-cert")

    sub.add_parser("migrate", help="create or upgrade the database schema")

    p_token = sub.add_parser("dev-token", help="print a JWT the running service accepts")
    p_token.add_argument("--role", action="append", required=True, dest="roles")
    p_token.add_argument("--org", default="acme")
    p_token.add_argument("--sub", help="the token's subject (default: dev-<roles>)")
    p_token.add_argument("--ttl", type=int, default=3600, help="seconds")

    p_proj = sub.add_parser("projections", help="projection maintenance")
    p_proj.add_argument("action", choices=["rebuild"])

    p_keys = sub.add_parser("api-keys", help="API keys for service integrations")
    p_keys.add_argument("action", choices=["create", "list", "revoke"])
    p_keys.add_argument("--org", required=True)
    p_keys.add_argument("--name", default="cli")
    p_keys.add_argument("--role", action="append", dest="roles", default=[])
    p_keys.add_argument("--id", dest="key_id")

    p_audit = sub.add_parser("audit", help="audit trail maintenance")
    p_audit.add_argument("action", choices=["verify"])

    sub.add_parser("dead-letters", help="list the events followers passed over (JSON lines)")

    _client_parsers(sub)

    sub.add_parser("openapi", help="print the REST contract (OpenAPI 3.1, YAML)")

    p_master = sub.add_parser("keys", help="master-key rotation")
    p_master.add_argument("action", choices=["rotate", "status"])

    sub.add_parser("backup", help="take a verified base backup now")
    sub.add_parser("backups", help="list base backups and the times each can restore to")
    p_restore = sub.add_parser("restore", help="point-in-time restore (service stopped)")
    p_restore.add_argument("--target-time", required=True, help="ISO 8601 with offset")
    p_restore.add_argument(
        "--into", type=Path, help="an external server's new data dir (default: the embedded one)"
    )

    p_seed = sub.add_parser("seed", help="generate realistic customers")
    p_seed.add_argument("--count", type=int, required=True)
    p_seed.add_argument("--org", default="acme")
    p_seed.add_argument("--batch", type=int, default=500)

    return parser


def _client_parsers(sub: Any) -> None:
    """The commands that talk to a running service over its REST API."""
    for name, helptext in (
        ("import", "import customers from a CSV or NDJSON file into a running service"),
        ("export", "export customers of a running service to stdout"),
    ):
        p_transfer = sub.add_parser(name, help=helptext)
        p_transfer.add_argument("--url", default=os.environ.get("CUSTOMERS_API_URL"))
        p_transfer.add_argument("--token", default=os.environ.get("CUSTOMERS_API_TOKEN"))
        p_transfer.add_argument("--format", choices=["csv", "ndjson"], default="csv")
        if name == "import":
            p_transfer.add_argument("file", type=Path)
            p_transfer.add_argument("--mode", choices=["create", "upsert"], default="create")
            p_transfer.add_argument("--dry-run", action="store_true")
            p_transfer.add_argument(
                "--map",
                action="append",
                default=[],
                metavar="COLUMN=FIELD",
                help="CSV: the field a column fills (FIELD - skips it), repeatable;"
                " other columns by their names or aliases (docs/api.md)",
            )
        else:
            p_transfer.add_argument("--segment", help="a segment's current members only")

    p_bulk = sub.add_parser("bulk", help="run a bulk job on a running service and follow it")
    p_bulk.add_argument("kind", choices=["update", "delete", "segments"])
    p_bulk.add_argument("--url", default=os.environ.get("CUSTOMERS_API_URL"))
    p_bulk.add_argument("--token", default=os.environ.get("CUSTOMERS_API_TOKEN"))
    chosen = p_bulk.add_mutually_exclusive_group(required=True)
    chosen.add_argument("--ids", type=Path, help="a file of customer ids, one per line (- stdin)")
    chosen.add_argument("--filter", action="append", help="NAME=VALUE (tags=a,b), repeatable")
    chosen.add_argument("--segment", help="the members of this segment")
    p_bulk.add_argument("--patch", help="update: the patch as JSON")
    p_bulk.add_argument("--add-tag", action="append", default=[], help="update: repeatable")
    p_bulk.add_argument("--remove-tag", action="append", default=[], help="update: repeatable")
    p_bulk.add_argument("--status", help="update: the new status")
    p_bulk.add_argument("--to", help="segments: the STATIC segment")
    p_bulk.add_argument("--action", choices=["add", "remove"], help="segments")
    p_bulk.add_argument("--dry-run", action="store_true")


def _dev_token(args: argparse.Namespace) -> int:
    """A token signed with the running service's secret: CUSTOMERS_JWT_SECRET, or the one
    `customers serve` generated into the data directory. Without either there is no service
    to accept it, and a new secret would only make a token nobody accepts."""
    from service.auth import issue_token
    from service.embedded import JWT_SECRET_ENV, stored_secret

    settings = get_settings()
    secret = settings.jwt_secret or stored_secret(settings.data_dir, JWT_SECRET_ENV)
    if not secret:
        print(
            f"customers dev-token: no {JWT_SECRET_ENV} in the environment and none generated in"
            f" {settings.data_dir}: start the service first (`make run`), or set the service's"
            f" {JWT_SECRET_ENV} (and CUSTOMERS_DATA_DIR if it uses another directory)",
            file=sys.stderr,
        )
        return 1
    # One subject per role set by default, so that the audit trail tells dev callers apart.
    sub = args.sub or "dev-" + "-".join(sorted(set(args.roles)))
    signing = settings.model_copy(update={"jwt_secret": secret})
    print(issue_token(signing, sub=sub, org=args.org, roles=args.roles, ttl_seconds=args.ttl))
    return 0


def _transfer(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """`import`, `export`, `bulk`: a client of a running service, whose stderr is for the
    progress and the outcome (log lines only from WARNING on, unless asked for)."""
    from service import transfer

    logs.configure(os.environ.get("CUSTOMERS_LOG_LEVEL", "WARNING"))
    if not args.url or not args.token:
        parser.error("--url and --token (or CUSTOMERS_API_URL / CUSTOMERS_API_TOKEN) needed")
    url, token = args.url, args.token
    if args.command == "bulk":
        return transfer.usable(lambda: transfer.bulk(url, token, args), url)
    if args.command == "import":
        return transfer.usable(
            lambda: transfer.import_file(
                url,
                token,
                args.file,
                fmt=args.format,
                mode=args.mode,
                dry_run=args.dry_run,
                mapping=args.map,
            ),
            url,
        )
    out = sys.stdout.buffer
    return transfer.usable(lambda: transfer.export(url, token, args.format, args.segment, out), url)


def _restore(args: argparse.Namespace) -> int:
    """Into the embedded data dir (then migrated: erasures re-applied), or `--into` a
    directory for an external server, whose start the operator follows with `migrate`."""
    import json

    from service import restore

    started = time.monotonic()
    settings = get_settings()
    try:
        target = restore.parse_target(args.target_time)
        if args.into is not None:
            done = restore.restore_into(settings, target, args.into.resolve())
        elif os.environ.get("DATABASE_URL"):
            print("DATABASE_URL is set (an external server): name a directory with --into")
            return 2
        else:
            done = restore.restore_embedded(settings, target)
    except restore.RestoreError as e:
        print(f"customers restore: {e}", file=sys.stderr)
        return 2
    if args.into is None:
        migrate(_settings(embedded=True))  # the restored store re-applies the ledger now
        from service.embedded import stop_postgres

        stop_postgres(settings.data_dir)
    print(
        json.dumps(
            {
                "epoch": done.epoch,
                "backup": done.backup,
                "targetTime": done.target.isoformat(),
                "reached": done.reached,
                "previousDataDir": str(done.aside) if done.aside else None,
                "seconds": round(time.monotonic() - started, 1),
                "copySeconds": round(done.copy_seconds, 1),
                "replaySeconds": round(done.replay_seconds, 1),
            }
        )
    )
    if args.into is not None:
        print(
            f"start PostgreSQL on {args.into} (it replays the WAL archive to the target and"
            " promotes), then run `customers migrate` before serving: it re-applies the"
            " erasure ledger",
            file=sys.stderr,
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command in {"import", "export", "bulk"}:
        return _transfer(parser, args)
    logs.configure(os.environ.get("CUSTOMERS_LOG_LEVEL", "INFO"))

    if args.command == "dev-token":
        return _dev_token(args)

    if args.command == "openapi":
        from service.gateway import published_openapi

        sys.stdout.write(published_openapi())
        return 0

    if args.command == "restore":
        return _restore(args)
    if args.command == "backup" and not os.environ.get("DATABASE_URL"):
        from service.embedded import start_postgres

        os.environ["DATABASE_URL"] = start_postgres(get_settings().data_dir, stop_at_exit=True)
        get_settings.cache_clear()
    settings = _settings(embedded=args.command == "serve" and args.kind == "all")
    if args.command == "serve":
        if args.tls_cert or args.tls_key:
            if not (args.tls_cert and args.tls_key):
                parser.error("--tls-cert and --tls-key go together")
            os.environ["CUSTOMERS_TLS_CERT_FILE"] = args.tls_cert  # children inherit them
            os.environ["CUSTOMERS_TLS_KEY_FILE"] = args.tls_key
            settings = settings.model_copy(
                update={"tls_cert_file": args.tls_cert, "tls_key_file": args.tls_key}
            )
        serve(args.kind, settings)
    elif args.command == "migrate":
        migrate(settings)
    elif args.command == "projections":
        from projections.runner import rebuild

        print(f"rebuilt: {rebuild(settings)} events replayed")
    elif args.command == "api-keys":
        return _api_keys(settings, args)
    elif args.command == "audit":
        return _verify_audit(settings)
    elif args.command == "keys":
        return _master_keys(settings, args.action)
    elif args.command == "dead-letters":
        return _dead_letters(settings)
    elif args.command == "backup":
        from service.backups import prune, take_backup

        assert settings.database_url
        backup = take_backup(settings, settings.database_url)
        prune(settings)
        print(backup.to_json().decode())
    elif args.command == "backups":
        import json

        from service.backups import listing

        for row in listing(settings):
            print(json.dumps(row))
    elif args.command == "seed":
        try:
            from service.seed import seed
        except ModuleNotFoundError as missing:
            # faker is a development tool: the runtime image does not carry it.
            raise SystemExit(f"customers seed needs {missing.name}: `make install`") from None

        seed(settings, count=args.count, org=args.org, batch=args.batch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
