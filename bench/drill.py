"""`make drill`: a backup-and-restore drill on a private PostgreSQL and NATS (never the shared
ones), as an operator of `make run` would live it.

Under a steady load of creates through the API: a base backup (`customers backup`), more
writes, a target time, more writes, an erasure of a customer created before the backup, more
writes; then the service is stopped and `customers restore --target-time` takes the store back
to the target (before the erasure), and the service starts again. Proved, or the drill fails:

- every create acknowledged before the target is in the store, none sent after it;
- the erased customer stays erased: the API answers 404, a pg_dump of the database holds
  neither their e-mail nor their name, their events decode to tombstones;
- the read models equal a rebuild from the log;
- the relay resumes: a `store.restored` event, then every event written after the restore
  (with the epoch in its Nats-Msg-Id), nothing de-duplicated wrongly.

Printed: recovery point (acknowledged data lost, and how far the WAL archive trailed the last
acknowledged write) and recovery time (the restore command, and until the API answers).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import nats
import psycopg

from service import embedded
from service.auth import issue_token
from service.backups import archived
from service.settings import Settings

ORG = "drill"


def step(what: str) -> None:
    print(f"drill {datetime.now(UTC):%H:%M:%S}: {what}", file=sys.stderr, flush=True)


@dataclass
class Write:
    customer_id: UUID | None
    sent: datetime
    acked: datetime | None


@dataclass
class Load:
    """Creates, one after another on each of `threads` connections, until stopped."""

    url: str
    token: str
    threads: int = 4
    writes: list[Write] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _workers: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for n in range(self.threads):
            worker = threading.Thread(target=self._run, args=(n,), daemon=True)
            worker.start()
            self._workers.append(worker)

    def finish(self) -> None:
        self.stop.set()
        for worker in self._workers:
            worker.join()

    def _run(self, n: int) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        with httpx.Client(base_url=self.url, headers=headers, timeout=30) as client:
            i = 0
            while not self.stop.is_set():
                i += 1
                sent = datetime.now(UTC)
                try:
                    reply = client.post("/api/v1/customers", json=profile(f"load{n}x{i}"))
                    ok = reply.status_code == 201
                except httpx.HTTPError:
                    ok = False
                acked = datetime.now(UTC) if ok else None
                cid = UUID(reply.json()["id"]) if ok else None
                with self._lock:
                    self.writes.append(Write(cid, sent, acked))


def profile(tag: str) -> dict[str, Any]:
    unique = f"{tag}.{secrets.token_hex(4)}"
    return {
        "email": f"{unique}@drill.example.com",
        "name": f"Drill Person {unique}",
        "age": 40,
        "location": {"country": "ES", "city": "Madrid"},
        "preferences": {"marketingConsent": True, "dataProcessingConsent": True},
    }


class Service:
    """`customers serve` on the drill's data dir (embedded PostgreSQL there) and NATS."""

    def __init__(self, root: Path, nats_url: str) -> None:
        self.root = root
        self.port = embedded.free_port()
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("CUSTOMERS_")},
            "CUSTOMERS_DATA_DIR": str(root),
            "CUSTOMERS_BACKUP_ENABLED": "1",
            "CUSTOMERS_HTTP_PORT": str(self.port),
            "CUSTOMERS_WRITE_API_PORT": str(embedded.free_port()),
            "CUSTOMERS_READ_API_PORT": str(embedded.free_port()),
            "CUSTOMERS_GRPC_PORT": str(embedded.free_port()),
            "CUSTOMERS_WORKERS": "1",
            "CUSTOMERS_DB_POOL_SIZE": "4",
            "CUSTOMERS_LOG_LEVEL": "WARNING",
            # The load comes from one address and one principal: no rate limits.
            "CUSTOMERS_RATE_LIMIT_WRITES_PER_MINUTE": "0",
            "CUSTOMERS_RATE_LIMIT_READS_PER_MINUTE": "0",
            "NATS_URL": nats_url,
        }
        self.env.pop("DATABASE_URL", None)
        self.process: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{self.port}"

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "service.cli", *args],
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
            timeout=1800,
        )
        if done.returncode != 0:
            raise SystemExit(f"customers {' '.join(args)} failed:\n{done.stderr[-3000:]}")
        return done

    def start(self) -> float:
        """Seconds until /health answers."""
        started = time.monotonic()
        log = (self.root / "serve.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve"],
            env=self.env,
            stdout=log,
            stderr=log,
        )
        log.close()
        while True:
            if self.process.poll() is not None:
                raise SystemExit(f"customers serve exited; see {self.root / 'serve.log'}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    took = time.monotonic() - started
                    for name in (embedded.MASTER_KEY_ENV, embedded.JWT_SECRET_ENV):
                        self.env[name] = embedded.stored_secret(self.root, name) or ""
                    return took
            except httpx.HTTPError:
                pass
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def token(self) -> str:
        secret = embedded.stored_secret(self.root, embedded.JWT_SECRET_ENV)
        settings = Settings(jwt_secret=secret)
        return issue_token(settings, sub="drill", org=ORG, roles=["admin"])

    def database_url(self) -> str:
        """Started (or attached to); a handle cached while `serve` stopped it is dropped."""
        pgdata = (self.root / "pg").resolve()
        if not (pgdata / "postmaster.pid").exists():
            embedded._import_pgserver().PostgresServer._instances.pop(pgdata, None)
        return embedded.start_postgres(self.root)


def wait(what: str, check: Any, timeout: float = 120.0) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise SystemExit(f"drill: timed out waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - started


def seed(service: Service, count: int) -> float:
    """`customers seed` in batches of 50: larger ones were seen to hang the pipelined insert
    over the embedded server's unix socket (not over TCP)."""
    started = time.monotonic()
    env = {**service.env, "DATABASE_URL": service.database_url()}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "service.cli",
            "seed",
            "--count",
            str(count),
            "--org",
            ORG,
            "--batch",
            "50",
        ],
        env=env,
        check=True,
        capture_output=True,
        timeout=3600,
    )
    return time.monotonic() - started


def relay_caught_up(url: str) -> bool:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT COALESCE((SELECT position FROM positions WHERE name = 'nats_relay'), 0)"
            " >= COALESCE((SELECT max(notification_id) FROM customers_events), 0)"
        ).fetchone()
    return bool(row and row[0])


def projected(url: str) -> bool:
    from projections.runner import views

    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT COALESCE(min(position), 0) >= COALESCE((SELECT max(notification_id)"
            " FROM customers_events), 0) FROM positions WHERE name = ANY(%s)",
            ([v.name for v in views()],),
        ).fetchone()
    return bool(row and row[0])


async def stream_ids(nats_url: str) -> list[tuple[str, str]]:
    """(subject, Nats-Msg-Id) of every message of the CUSTOMERS stream."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream(timeout=10)
        total = (await js.stream_info("CUSTOMERS")).state.messages
        sub = await js.subscribe("customers.>", ordered_consumer=True)
        out: list[tuple[str, str]] = []
        while len(out) < total:
            msg = await sub.next_msg(timeout=10)
            out.append((msg.subject, (msg.headers or {}).get("Nats-Msg-Id", "")))
        await sub.unsubscribe()
        return out
    finally:
        await nc.close()


def read_models(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        view = conn.execute("SELECT * FROM customers_view ORDER BY id").fetchall()
        facts = conn.execute("SELECT * FROM segment_facts ORDER BY 1").fetchall()
    return [*view, ("facts",), *facts]


def pg_dump(url: str, root: Path) -> bytes:
    from pgserver._commands import POSTGRES_BIN_PATH

    return subprocess.run(
        [str(Path(POSTGRES_BIN_PATH) / "pg_dump"), "-d", url],
        check=True,
        capture_output=True,
        cwd=root,
    ).stdout


def drill(customers: int, phase_seconds: float, keep: bool) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="customers-drill-", dir="/var/tmp"))
    nats_server = embedded.EmbeddedNats(root / "nats-server")
    nats_server.start()
    service = Service(root, nats_server.url)
    report: dict[str, Any] = {"customers": customers}
    try:
        step("starting the service")
        service.start()  # migrates; generates the secrets; the agent takes a first backup
        url = service.database_url()
        step(f"seeding {customers} customers")
        report["seed_seconds"] = round(seed(service, customers), 1)
        step("load on")
        load = Load(service.url, service.token())
        load.start()
        time.sleep(phase_seconds)
        victim_reply = httpx.post(
            f"{service.url}/api/v1/customers",
            json=profile("victim"),
            headers={"Authorization": f"Bearer {service.token()}"},
        )
        victim = victim_reply.json()
        time.sleep(phase_seconds)

        started = time.monotonic()
        step("base backup")
        backup = json.loads(service.cli("backup").stdout)
        report["backup_seconds"] = round(time.monotonic() - started, 1)
        report["backup_bytes"] = backup["size"]
        time.sleep(phase_seconds)
        target = datetime.now(UTC)
        with psycopg.connect(url) as conn:
            row = conn.execute(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (_start_lsn(root, backup),)
            ).fetchone()
            report["wal_bytes_backup_to_target"] = int(row[0]) if row else 0
        time.sleep(phase_seconds)
        step("erasure")
        erased = httpx.delete(
            f"{service.url}/api/v1/customers/{victim['id']}/data",
            headers={"Authorization": f"Bearer {service.token()}"},
        )
        assert erased.status_code == 200, erased.text
        time.sleep(phase_seconds)
        load.finish()
        step(f"load off: {len(load.writes)} writes")
        last_ack = max(w.acked for w in load.writes if w.acked)
        report["archive_lag_seconds"] = round(
            wait("the WAL archive", lambda: archived(url)) + 0.0, 3
        )
        report["archive_trailing_last_ack_seconds"] = round(
            (datetime.now(UTC) - last_ack).total_seconds(), 3
        )
        wait("the relay", lambda: relay_caught_up(url))
        before_restore = asyncio.run(stream_ids(nats_server.url))
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
            report["database_bytes"] = row[0] if row else 0
        service.stop()
        step("restore")

        started = time.monotonic()
        restored = json.loads(
            service.cli("restore", "--target-time", target.isoformat()).stdout.splitlines()[-1]
        )
        report["restore_seconds"] = round(time.monotonic() - started, 1)
        report["reached"] = restored["reached"]
        report["restore_copy_seconds"] = restored["copySeconds"]
        report["restore_replay_seconds"] = restored["replaySeconds"]
        report["serve_start_seconds"] = round(service.start(), 1)
        report["recovery_time_seconds"] = round(
            report["restore_seconds"] + report["serve_start_seconds"], 1
        )
        step("verifying")
        url = service.database_url()
        report.update(verify(service, url, load, target, victim, root))
        report.update(verify_relay(service, url, nats_server.url, before_restore))
        report.update(verify_read_models(service, url))
        return report
    finally:
        service.stop()
        embedded.stop_postgres(root)
        nats_server.stop()
        if keep:
            print(f"drill: kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


def _start_lsn(root: Path, backup: dict[str, Any]) -> str:
    label = (root / "backups" / "base" / backup["label"] / "backup_label").read_text()
    return str(label.split("START WAL LOCATION: ", 1)[1].split()[0])


def verify(
    service: Service, url: str, load: Load, target: datetime, victim: dict[str, Any], root: Path
) -> dict[str, Any]:
    with psycopg.connect(url) as conn:
        present = {
            r[0]
            for r in conn.execute(
                "SELECT originator_id FROM customers_events WHERE originator_version = 1"
            )
        }
    before = [w for w in load.writes if w.acked and w.acked < target]
    after = [w for w in load.writes if w.sent > target and w.customer_id]
    in_flight = [w for w in load.writes if w.acked and w.sent <= target <= w.acked]
    lost = [w for w in before if w.customer_id not in present]
    resurrected = [w for w in after if w.customer_id in present]
    if lost or resurrected:
        raise SystemExit(f"drill FAILED: {len(lost)} acknowledged writes lost, {len(resurrected)}"
                         " writes after the target present")  # fmt: skip
    newest = max(w.acked for w in before if w.acked)

    token = service.token()
    reply = httpx.get(
        f"{service.url}/api/v1/customers/{victim['id']}",
        headers={"Authorization": f"Bearer {token}"},
    )
    dump = pg_dump(url, root)
    found = [s for s in (victim["email"], victim["name"]) if s.encode() in dump]
    tombstones = _tombstones(service, url, UUID(victim["id"]))
    if reply.status_code != 404 or found or not tombstones:
        raise SystemExit(
            f"drill FAILED: erased customer answered {reply.status_code}, dump holds"
            f" {len(found)} of their identifiers, tombstones={tombstones}"
        )

    return {
        "acked_before_target": len(before),
        "acked_before_target_lost": 0,
        "sent_after_target": len(after),
        "sent_after_target_present": 0,
        "in_flight_at_target": len(in_flight),
        "newest_surviving_ack_before_target_seconds": round((target - newest).total_seconds(), 3),
        "erased_customer": "404, absent from pg_dump, events are tombstones",
    }


def verify_read_models(service: Service, url: str) -> dict[str, Any]:
    """With the service stopped once the projector has caught up: a rebuild changes nothing."""
    wait("the projector", lambda: projected(url))
    service.stop()
    url = service.database_url()
    live = read_models(url)
    env = {**service.env, "DATABASE_URL": url}
    subprocess.run(
        [sys.executable, "-m", "service.cli", "projections", "rebuild"],
        env=env,
        check=True,
        capture_output=True,
    )
    if read_models(url) != live:
        raise SystemExit("drill FAILED: read models differ from a rebuild")
    return {"read_models": f"equal to a rebuild ({len(live)} rows)"}


def _tombstones(service: Service, url: str, customer: UUID) -> bool:
    from eventstore.application import Customers
    from eventstore.mapper import Shredded

    key = embedded.stored_secret(service.root, embedded.MASTER_KEY_ENV)
    app = Customers(Settings(database_url=url, master_key=key), pool_size=1)
    try:
        events = list(app.events.get(customer))
    finally:
        app.close()
    return all(isinstance(e, Shredded) for e in events[:-1]) and bool(events)


def verify_relay(
    service: Service, url: str, nats_url: str, before: list[tuple[str, str]]
) -> dict[str, Any]:
    token = service.token()
    with httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {token}"}) as c:
        new = [c.post("/api/v1/customers", json=profile("after")).json()["id"] for _ in range(20)]
    wait("the relay", lambda: relay_caught_up(url))
    after = asyncio.run(stream_ids(nats_url))
    ids = [i for _, i in after]
    restored = [i for s, i in after if s.endswith("._store.restored")]
    missing = [cid for cid in new if f"{cid}:1@1" not in ids]
    if restored != ["restored:1"] or missing or ids[: len(before)] != [i for _, i in before]:
        raise SystemExit(
            f"drill FAILED: relay: restored={restored}, {len(missing)} new events missing"
        )
    if ids.index("restored:1") > min(ids.index(f"{cid}:1@1") for cid in new):
        raise SystemExit("drill FAILED: an event after the restore came before its announcement")
    return {"relay": "store.restored announced, 20/20 new events published with epoch 1"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make drill", description=__doc__)
    parser.add_argument("--customers", type=int, default=20_000, help="seeded before the load")
    parser.add_argument("--phase-seconds", type=float, default=5.0)
    parser.add_argument("--keep", action="store_true", help="keep the drill's directory")
    args = parser.parse_args(argv)
    report = drill(args.customers, args.phase_seconds, args.keep)
    print(json.dumps(report, indent=2))
    print(
        f"\nrecovery point: {report['acked_before_target_lost']} acknowledged writes lost;"
        f" the archive trailed the last acknowledged write by at most"
        f" {report['archive_trailing_last_ack_seconds']} s"
        f"\nrecovery time: {report['restore_seconds']} s restore +"
        f" {report['serve_start_seconds']} s start = {report['recovery_time_seconds']} s"
        f" ({report['customers']} customers, {report['database_bytes'] / 1e6:.0f} MB)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
