"""`customers import FILE`, `customers export` and `customers bulk …`: transfers and bulk jobs
against a running service over its REST API (URL and token from flags or CUSTOMERS_API_URL /
CUSTOMERS_API_TOKEN), with progress on stderr: a self-rewriting line on a terminal, plain
lines every few seconds otherwise."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
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


class Unusable(Exception):
    """What the command line was given cannot be used (no such file, no service at the URL):
    said in one line, exit status 1."""


API_PREFIX = "/api/v1"


def base_url(url: str) -> str:
    """The service's address, also when given as its API's (`…/api/v1`, as in docs/api.md)."""
    return url.rstrip("/").removesuffix(API_PREFIX).rstrip("/")


def _client(url: str, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=base_url(url), headers={"Authorization": f"Bearer {token}"}, timeout=60
    )


def usable(command: Callable[[], int], url: str) -> int:
    """`command`'s exit status, or 1 with one line on stderr when the file or the service
    cannot be used (instead of a traceback)."""
    try:
        return command()
    except Unusable as e:
        print(f"customers: {e}", file=sys.stderr)
    except httpx.TransportError as e:
        reason = str(e) or type(e).__name__
        print(f"customers: cannot reach the service at {url}: {reason}", file=sys.stderr)
    except httpx.InvalidURL:
        print(f"customers: not a URL: {url}", file=sys.stderr)
    return 1


def _opened(path: Path) -> IO[bytes]:
    try:
        return path.open("rb")
    except OSError as e:
        raise Unusable(f"cannot read {path}: {e.strerror or type(e).__name__}") from None


def _chunks(file: IO[bytes], size: int, progress: Progress) -> Iterator[bytes]:
    sent = 0
    with file as f:
        while piece := f.read(CHUNK):
            sent += len(piece)
            progress.show(f"uploading {sent:,} of {size:,} bytes ({sent * 100 // max(size, 1)} %)")
            yield piece


def import_file(
    url: str,
    token: str,
    path: Path,
    *,
    fmt: str,
    mode: str,
    dry_run: bool,
    mapping: Sequence[str] = (),
    poll: float = 0.5,
) -> int:
    """Upload, then follow the job; exit status 0 when it succeeded (rows it rejected are in
    its report), 1 when it failed or was refused. `mapping`: COLUMN=FIELD items (`-` or
    nothing after `=` skips the column)."""
    progress = Progress(sys.stderr)
    kind = "application/x-ndjson" if fmt == "ndjson" else "text/csv"
    params = {"format": fmt, "mode": mode, "dryRun": str(dry_run).lower()}
    if mapping:
        params["mapping"] = orjson.dumps(column_mapping(mapping)).decode()
    file = _opened(path)  # before anything is sent: a missing file is one line, not a trace
    content = _chunks(file, os.fstat(file.fileno()).st_size, progress)
    with _client(url, token) as client:
        started = client.post(
            f"{API_PREFIX}/customers/import",
            params=params,
            content=content,
            headers={"Content-Type": kind},
        )
        return _follow(client, started, progress, poll)


def column_mapping(items: Sequence[str]) -> dict[str, str | None]:
    """`--map COLUMN=FIELD` items as the API's mapping (a field has no `=`; a column may)."""
    out: dict[str, str | None] = {}
    for item in items:
        column, equals, target = item.rpartition("=")
        if not equals or not column:
            raise Unusable(f"--map {item!r}: expected COLUMN=FIELD (FIELD - skips the column)")
        out[column] = target.strip() or None
    return out


def bulk(url: str, token: str, args: argparse.Namespace, *, poll: float = 0.5) -> int:
    """Queue a bulk job from the command line's arguments and follow it like an import."""
    progress = Progress(sys.stderr)
    with _client(url, token) as client:
        started = client.post(f"{API_PREFIX}/customers/bulk/{args.kind}", json=bulk_body(args))
        return _follow(client, started, progress, poll)


def bulk_body(args: argparse.Namespace) -> dict[str, Any]:
    selection: dict[str, Any] = {}
    if args.ids:
        try:
            with sys.stdin if str(args.ids) == "-" else args.ids.open() as f:
                selection["ids"] = [line.strip() for line in f if line.strip()]
        except OSError as e:
            raise Unusable(f"cannot read {args.ids}: {e.strerror or type(e).__name__}") from None
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
    job_id = started.json()["id"]
    print(f"job {job_id}: {client.base_url}{location}", file=sys.stderr)
    if mapping := started.json().get("mapping"):
        shown = ", ".join(f"{c} → {t or '(skipped)'}" for c, t in mapping.items())
        print(f"columns: {shown}", file=sys.stderr)
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
    # A dry run changes nothing: its counts are what a real run would do.
    would = "would be " if job["dryRun"] else ""
    if job["kind"] == "import":
        done = f"{job['rowsRead']:,} rows, {job['created']:,} {would}created"
    else:
        done = f"{job['processed']:,} of {job['total'] if job['total'] is not None else '?'}"
    return (
        f"{job['state'].lower()}{' (dry run)' if job['dryRun'] else ''}: {done},"
        f" {job['updated']:,} {would}updated, {job['skipped']:,} skipped,"
        f" {job['failed']:,} rejected"
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
        client.stream("GET", f"{API_PREFIX}/customers/export", params=params) as answer,
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
