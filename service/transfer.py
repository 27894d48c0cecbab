"""`customers import FILE`, `customers export` and `customers bulk …`: transfers and bulk jobs
against a running service over its REST API (URL and token from flags or CUSTOMERS_API_URL /
CUSTOMERS_API_TOKEN), with progress on stderr: a self-rewriting line on a terminal, plain
lines every few seconds otherwise."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import httpx
import orjson

CHUNK = 1 << 20
PLAIN_EVERY = 5.0  # seconds between progress lines when stderr is not a terminal


class Progress:
    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._last = 0.0

    def show(self, text: str, *, final: bool = False) -> None:
        now = time.monotonic()
        if self._tty:
            self._stream.write("\r\x1b[K" + text + ("\n" if final else ""))
            self._stream.flush()
        elif final or now - self._last >= PLAIN_EVERY:
            self._stream.write(text + "\n")
            self._stream.flush()
            self._last = now


def _client(url: str, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=url.rstrip("/"), headers={"Authorization": f"Bearer {token}"}, timeout=60
    )


def _chunks(path: Path, progress: Progress) -> Iterator[bytes]:
    size, sent = path.stat().st_size, 0
    with path.open("rb") as f:
        while piece := f.read(CHUNK):
            sent += len(piece)
            progress.show(f"uploading {sent:,} of {size:,} bytes ({sent * 100 // max(size, 1)} %)")
            yield piece


def import_file(
    url: str, token: str, path: Path, *, fmt: str, mode: str, dry_run: bool, poll: float = 0.5
) -> int:
    """Upload, then follow the job; exit status 0 when it succeeded (rows it rejected are in
    its report), 1 when it failed or was refused."""
    progress = Progress(sys.stderr)
    kind = "application/x-ndjson" if fmt == "ndjson" else "text/csv"
    params = {"format": fmt, "mode": mode, "dryRun": str(dry_run).lower()}
    with _client(url, token) as client:
        started = client.post(
            "/api/v1/customers/import",
            params=params,
            content=_chunks(path, progress),
            headers={"Content-Type": kind},
        )
        return _follow(client, started, progress, poll)


def bulk(url: str, token: str, args: argparse.Namespace, *, poll: float = 0.5) -> int:
    """Queue a bulk job from the command line's arguments and follow it like an import."""
    progress = Progress(sys.stderr)
    with _client(url, token) as client:
        started = client.post(f"/api/v1/customers/bulk/{args.kind}", json=bulk_body(args))
        return _follow(client, started, progress, poll)


def bulk_body(args: argparse.Namespace) -> dict[str, Any]:
    selection: dict[str, Any] = {}
    if args.ids:
        with sys.stdin if str(args.ids) == "-" else args.ids.open() as f:
            selection["ids"] = [line.strip() for line in f if line.strip()]
    if args.filter:
        filters = dict(item.split("=", 1) for item in args.filter)
        if "tags" in filters:
            filters["tags"] = filters["tags"].split(",")
        selection["filters"] = filters
    if args.segment:
        selection["segmentId"] = args.segment
    body: dict[str, Any] = {"selection": selection, "dryRun": args.dry_run}
    if args.kind == "update":
        tags = {"add": args.add_tag, "remove": args.remove_tag}
        patch = {
            **({"tags": {k: v for k, v in tags.items() if v}} if any(tags.values()) else {}),
            **({"status": args.status} if args.status else {}),
        }
        body["patch"] = {**patch, **(orjson.loads(args.patch) if args.patch else {})}
    elif args.kind == "segments":
        body |= {"segmentId": args.to, "action": args.action}
    return body


def _follow(client: httpx.Client, started: httpx.Response, progress: Progress, poll: float) -> int:
    """Follow a job to its end; exit status 0 when it succeeded (what it rejected is in its
    report, whose address is printed), 1 when it failed or was refused."""
    if started.status_code != 202:
        progress.show(f"refused: {started.status_code} {_detail(started)}", final=True)
        return 1
    location = started.headers["Location"]
    while True:
        job: dict[str, Any] = client.get(location).json()
        progress.show(_line(job), final=job["state"] in {"SUCCEEDED", "FAILED"})
        if job["state"] in {"SUCCEEDED", "FAILED"}:
            break
        time.sleep(poll)
    if job["failed"]:
        print(f"rejected: {client.base_url}{location}/report", file=sys.stderr)
    return 0 if job["state"] == "SUCCEEDED" else 1


def _line(job: dict[str, Any]) -> str:
    rate = job["rowsPerSecond"]
    eta = job["etaSeconds"]
    if job["kind"] == "import":
        done = f"{job['rowsRead']:,} rows, {job['created']:,} created"
    else:
        done = f"{job['processed']:,} of {job['total'] if job['total'] is not None else '?'}"
    return (
        f"{job['state'].lower()}: {done}, {job['updated']:,} updated,"
        f" {job['skipped']:,} skipped, {job['failed']:,} rejected"
        + (f", {rate:,.0f} rows/s" if rate else "")
        + (f", ETA {eta:.0f} s" if eta is not None else "")
    )


def export(url: str, token: str, fmt: str, segment: str | None, out: IO[bytes]) -> int:
    """Stream the export to `out`, counting rows on stderr."""
    progress = Progress(sys.stderr)
    params = {"format": fmt, **({"segmentId": segment} if segment else {})}
    rows = 0
    with (
        _client(url, token) as client,
        client.stream("GET", "/api/v1/customers/export", params=params) as answer,
    ):
        if answer.status_code != 200:
            answer.read()
            progress.show(f"refused: {answer.status_code} {_detail(answer)}", final=True)
            return 1
        for piece in answer.iter_bytes():
            out.write(piece)
            rows += piece.count(b"\n")
            progress.show(f"exported {rows:,} lines")
    out.flush()
    progress.show(f"exported {rows:,} lines", final=True)
    return 0


def _detail(answer: httpx.Response) -> str:
    try:
        return str(answer.json().get("detail", ""))
    except ValueError:
        return ""
