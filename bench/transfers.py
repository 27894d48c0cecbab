"""Import and export benchmark: `python -m bench.transfers` (also run by `make bench`).

1. Import of N customers (default 1,000,000, the issue's scale; `--rows` for another) from a CSV
   in the export's columns (dotted names, tags as JSON text, booleans as true/false), values
   drawn by `service.seed.CustomerFactory`: the upload through `write_api.imports.Upload` (as
   `POST /customers/import` feeds it), the job run in process by `JobRunner.run_next` while
   the projector runs in its own process (`customers serve projector`), as in a deployment,
   until every customer is in customers_view; each part timed, and rows/s end to end until
   listable. Baseline: plain `COPY ... FROM STDIN
   (FORMAT csv)` of the same file into a scratch table of text columns.
2. Export of those customers as CSV and as NDJSON through the read app in process
   (`read_api.app.create_app`, asgi_lifespan.LifespanManager, an admin token), the body
   counted and dropped as it streams: rows/s and the process's peak RSS growth during each
   export (VmHWM reset through /proc/self/clear_refs before it, VmHWM after it minus VmRSS
   before it). The request is an ASGI call with a `send` that only counts bytes: httpx's
   ASGITransport (0.28) collects the whole body before it answers, which would measure the
   transport's memory rather than the endpoint's. Baseline: `COPY (SELECT doc FROM
   customers_docs WHERE org_id = ...) TO STDOUT`.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import psycopg

from bench import env, report

# Runs side by side on one server (CUSTOMERS_TEST_TAG, as the tests) keep to their own
# database and file.
TAG = re.sub(r"[^a-z0-9_]", "_", os.environ.get("CUSTOMERS_TEST_TAG", "").lower())
DB = "customers_bench_transfers" + (f"_{TAG}" if TAG else "")
ORG = "bench-transfers"
COLUMNS = (
    "email",
    "name",
    "age",
    "gender",
    "location.country",
    "location.city",
    "location.timezone",
    "tags",
    "preferences.currency",
    "preferences.timezone",
    "preferences.marketingConsent",
    "preferences.dataProcessingConsent",
    "preferences.privacySettings.analyticsTracking",
    "metadata.source",
    "metadata.acquisitionDate",
)
PIECE = 64 * 1024  # bytes per Upload.feed, as a request body arrives


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--rows", type=int, default=1_000_000)
    known, rest = parser.parse_known_args(argv if argv is not None else sys.argv[1:])
    _, execute = env.focused_bench("python -m bench.transfers", __doc__, DB, "transfers", rest)
    return execute(lambda out, url: run(out, url, known.rows))


def _leaf(profile: dict[str, Any], column: str) -> str:
    value: Any = profile
    for key in column.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def write_csv(path: Path, rows: int) -> int:
    from service.seed import CustomerFactory

    factory = CustomerFactory(random.Random(11))
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\r\n")
        w.writerow(COLUMNS)
        for n in range(rows):
            profile = factory.profile(n)
            w.writerow([_leaf(profile, c) for c in COLUMNS])
    return path.stat().st_size


def status_kb(name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    return 0


def rps(rows: int, seconds: float) -> str:
    return f"{rows / seconds:,.0f} rows/s ({seconds:.1f} s)"


def run(out: report.Report, url: str, rows: int) -> None:
    from eventstore.application import Customers
    from service.settings import get_settings
    from write_api import imports, jobs
    from write_api.background.engine import job_runner

    settings = get_settings()
    path = env.DATA_DIR / f"transfers-{rows}{'-' + TAG if TAG else ''}.csv"
    app = Customers(settings, pool_size=4)
    try:
        print(f"\n== import of {rows:,} customers", flush=True)
        t0 = time.perf_counter()
        size = write_csv(path, rows)
        print(f"    CSV written: {size / 1e6:.1f} MB in {time.perf_counter() - t0:.1f} s")

        # Baseline: the same file COPYed into text columns.
        with psycopg.connect(url, autocommit=True) as conn:
            cols = ", ".join(f'"{c}" text' for c in COLUMNS)
            conn.execute(f"CREATE UNLOGGED TABLE bench_scratch ({cols})")
            t0 = time.perf_counter()
            with (
                conn.cursor() as cur,
                cur.copy("COPY bench_scratch FROM STDIN (FORMAT csv, HEADER true)") as copy,
                path.open("rb") as f,
            ):
                while piece := f.read(PIECE):
                    copy.write(piece)
            copy_s = time.perf_counter() - t0
            row = conn.execute("SELECT count(*) FROM bench_scratch").fetchone()
            assert row is not None and row[0] == rows, row
            conn.execute("DROP TABLE bench_scratch")

        job = imports.new_job(ORG, imports.Format.CSV, imports.Mode.CREATE, False, "bench")
        conn = jobs.connect(settings)
        t_start = time.perf_counter()
        try:
            upload = imports.Upload(conn, job, path.stat().st_size)
            with path.open("rb") as f:
                while piece := f.read(PIECE):
                    upload.feed(piece)
            upload.finish()
        finally:
            conn.close()
        t_uploaded = time.perf_counter()
        # The projector runs beside the job, as `customers serve` runs it: its own process.
        projector = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "projector"],
            env=os.environ,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        runner = job_runner(app)
        try:
            assert runner.run_next()
            t_imported = time.perf_counter()
            with psycopg.connect(url) as c:
                state = c.execute(
                    "SELECT state, created, failed, error FROM customer_jobs WHERE id = %s",
                    (job.id,),
                ).fetchone()
            assert state is not None and state[0] == "SUCCEEDED" and state[1] == rows, state
            listed = 0
            with psycopg.connect(url, autocommit=True) as c:
                while listed < rows:
                    found = c.execute(
                        "SELECT count(*) FROM customers_view WHERE org_id = %s", (ORG,)
                    ).fetchone()
                    listed = int(found[0]) if found else 0
                    if listed < rows:
                        time.sleep(0.05)
        finally:
            runner.close()
            projector.terminate()
            projector.wait(30)
        t_listed = time.perf_counter()
        total = t_listed - t_start
        copy_rate = rows / copy_s
        out.add(
            f"Import {rows:,} customers (CSV, {size / 1e6:.0f} MB), end to end until listable",
            f"{rps(rows, total)}: upload {rps(rows, t_uploaded - t_start)}; job "
            f"{rps(rows, t_imported - t_uploaded)}, the projector (its own process) listing"
            f" the last ones {t_listed - t_imported:.1f} s after it",
            baseline=f"COPY of the same CSV into a scratch table {rps(rows, copy_s)}"
            f" ({copy_rate / (rows / total):.0f}x)",
            target="≥ 10,000 rows/s (at 1M)",
            ok=rows / total >= 10_000,
        )

        asyncio.run(export(out, url, settings, rows))
    finally:
        app.close()
        path.unlink(missing_ok=True)


async def export(out: report.Report, url: str, settings: Any, rows: int) -> None:
    from asgi_lifespan import LifespanManager

    from read_api.app import create_app
    from service.auth import issue_token

    # Baseline: the stored docs straight out of the server.
    with psycopg.connect(url) as conn:
        t0 = time.perf_counter()
        copied = 0
        with conn.cursor().copy(
            "COPY (SELECT doc FROM customers_docs WHERE org_id = %s) TO STDOUT", (ORG,)
        ) as copy:
            for data in copy:
                copied += bytes(data).count(b"\n")
        copy_s = time.perf_counter() - t0
    assert copied == rows, copied

    token = issue_token(settings, sub="bench", org=ORG, roles=["admin"])
    async with LifespanManager(create_app(settings)) as manager:
        asgi = manager.app
        for fmt in ("csv", "ndjson"):
            await get(asgi, token, "format=ndjson&status=DELETED")  # warm: pool, imports, caches
            rss_before = status_kb("VmRSS")
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
            t0 = time.perf_counter()
            status, size, lines = await get(asgi, token, f"format={fmt}")
            seconds = time.perf_counter() - t0
            peak = status_kb("VmHWM")
            assert status == 200, status
            got = lines - (1 if fmt == "csv" else 0)
            assert got == rows or fmt == "csv", (fmt, got)  # CSV cells may hold line breaks
            out.add(
                f"Export {rows:,} customers as {fmt.upper()} ({size / 1e6:.0f} MB), in process",
                f"{rps(rows, seconds)}; peak RSS +{(peak - rss_before) / 1024:.1f} MiB"
                f" (from {rss_before / 1024:.0f} MiB)",
                baseline=f"COPY (SELECT doc FROM customers_docs ...) TO STDOUT {rps(rows, copy_s)}",
                target="≥ 50,000 rows/s (at 1M), constant memory",
                ok=rows / seconds >= 50_000,
            )


async def get(asgi: Any, token: str, query: str) -> tuple[int, int, int]:
    """GET the export as an ASGI call; (status, bytes, newlines), the body not kept."""
    status, size, lines = 0, 0, 0
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/api/v1/customers/export",
        "raw_path": b"/api/v1/customers/export",
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(b"host", b"bench"), (b"authorization", f"Bearer {token}".encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("bench", 80),
    }
    done = asyncio.Event()
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, size, lines
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            body = message.get("body", b"")
            size += len(body)
            lines += body.count(b"\n")
            if not message.get("more_body", False):
                done.set()

    await asgi(scope, receive, send)
    return status, size, lines


if __name__ == "__main__":
    sys.exit(main())
