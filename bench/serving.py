"""`python -m bench.serving`: the service as a new user starts it (`customers serve`, defaults)
under wrk, beside a lean reference (bench/lean.py) and bare uvicorn measured in the same run.

Figures (32 keep-alive connections unless said): get by id, two-filter list over the seeded
customers, every list shape (incl. `q` prefix search), create with every follower running,
If-Match update of distinct customers; each with the CPU per request of every process group.
Written into docs/performance.md between the `serving` markers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

from bench import env, lean, report
from bench.env import Child, CpuMeter, python_argv, wait_http
from bench.seeding import seed_parallel
from bench.workloads import BULK_ORG
from service.embedded import free_port

HERE = Path(__file__).resolve().parent


@dataclass
class Wrk:
    rate: float
    p50: float
    p99: float
    errors: int  # non-2xx/3xx answers and socket errors
    requests: int

    def text(self) -> str:
        failed = f", {self.errors:,} failed" if self.errors else ""
        return f"{self.rate:,.0f}/s; p50 {report.ms(self.p50)} / p99 {report.ms(self.p99)}{failed}"


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([0-9.]+)(us|ms|s)", text.strip()).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def parse(output: str) -> Wrk:
    percentile = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", output, re.MULTILINE))
    if not percentile:  # nothing answered within wrk's timeout
        raise RuntimeError(f"wrk measured no answer:\n{output}")
    rate = float(re.search(r"Requests/sec:\s+([0-9.]+)", output).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", output))
    socket = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if socket:
        errors += sum(int(n) for n in socket.groups())
    return Wrk(rate, _ms(percentile["50"]), _ms(percentile["99"]), errors, requests)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.env = env.prepare()
        self.out = report.Report()
        self.children: list[Child] = []
        self.scripts = Path(tempfile.mkdtemp(prefix="bench-serving-"))
        self.stream = f"SERVING_{self.env.tag.upper()}"

    # ------------------------------------------------------------------ set-up

    def start(self, name: str, argv: list[str], port: int, path: str, **extra: str) -> Child:
        child = Child(name, argv, self.env, **extra)
        self.children.append(child)
        wait_http(child, port, path, timeout=300)
        return child

    def prepare(self) -> None:
        from service.settings import get_settings

        if self.args.keep and self.seeded():
            print("  reusing the seeded database (--keep)", flush=True)
        else:
            env.recreate_database(self.env)
            env.migrate()
            print(f"  seeding {self.args.customers:,} customers", flush=True)
            seed_parallel(self.env.database_url, self.args.customers)
        self.settings = get_settings()
        self.port = free_port()
        self.service = self.start(
            "service",
            [str(Path(sys.executable).parent / "customers"), "serve"],
            self.port,
            "/health",
            CUSTOMERS_HTTP_PORT=str(self.port),
            CUSTOMERS_GRPC_PORT=str(free_port()),
            CUSTOMERS_NATS_STREAM=self.stream,
            CUSTOMERS_NATS_SUBJECT_PREFIX=f"serving{self.env.tag}",
            CUSTOMERS_LOG_LEVEL="WARNING",
        )
        print("  waiting for the projection of the seeded customers", flush=True)
        self.wait_projected(timeout=3600)
        env.settle(self.env.database_url)
        with psycopg.connect(self.env.database_url, autocommit=True) as conn:
            for ddl in lean.TABLES:
                conn.execute(ddl)
        self.lean_port = free_port()
        self.lean = self.start(
            "lean",
            python_argv(
                "-m",
                "uvicorn",
                "bench.lean:create_app",
                "--factory",
                "--workers",
                "2",
                "--port",
                str(self.lean_port),
                "--log-level",
                "warning",
                "--no-access-log",
            ),
            self.lean_port,
            "/docs",
        )
        self.write_inputs()

    def seeded(self) -> bool:
        try:
            with psycopg.connect(self.env.database_url, autocommit=True) as conn:
                row = conn.execute("SELECT count(*) FROM customers_view").fetchone()
        except psycopg.Error:
            return False
        return row is not None and row[0] >= self.args.customers

    def wait_projected(self, timeout: float) -> None:
        """Every follower at the log's head: with --keep, the last run's writes would otherwise
        still be followed (their CPU counted) while gets are measured."""
        deadline = time.monotonic() + timeout
        with psycopg.connect(self.env.database_url, autocommit=True) as conn:
            while time.monotonic() < deadline:
                row = conn.execute(
                    "SELECT (SELECT coalesce(max(notification_id), 0) FROM customers_events)"
                    " - coalesce((SELECT min(position) FROM positions), 0)"
                ).fetchone()
                if row and row[0] <= 0:
                    return
                time.sleep(1)
        raise TimeoutError("the projection did not catch up")

    def write_inputs(self) -> None:
        from service.auth import issue_token

        token = issue_token(
            self.settings, sub="bench", org=BULK_ORG, roles=["admin"], ttl_seconds=86_400
        )
        (self.scripts / "token").write_text(token)
        with psycopg.connect(self.env.database_url) as conn:
            rows = conn.execute(
                "SELECT id, version, doc->>'email' FROM customers_docs WHERE org_id = %s"
                " ORDER BY random() LIMIT %s",
                (BULK_ORG, self.args.updates),
            ).fetchall()
        (self.scripts / "ids").write_text("".join(f"{i}\n" for i, _, _ in rows[:20_000]))
        (self.scripts / "updates").write_text("".join(f"{i},{v},{e}\n" for i, v, e in rows))
        lua = (HERE / "serving.lua").read_text().replace("@DIR@", str(self.scripts))
        (self.scripts / "serving.lua").write_text(lua)

    # ------------------------------------------------------------------ measuring

    def wrk(
        self,
        port: int,
        mode: str,
        *,
        path: str = "",
        connections: int | None = None,
        seconds: float | None = None,
        groups: dict[str, list[int]] | None = None,
    ) -> tuple[Wrk, CpuMeter]:
        argv = [
            "wrk",
            "-t2",
            f"-c{connections or self.args.connections}",
            f"-d{seconds or self.args.duration:g}s",
            "--latency",
            "-s",
            str(self.scripts / "serving.lua"),
            f"http://127.0.0.1:{port}",
        ]
        with CpuMeter(groups or {}) as cpu:
            done = subprocess.run(
                argv,
                env={**os.environ, "MODE": mode, "PATH_SUFFIX": path},
                capture_output=True,
                text=True,
                check=False,
            )
        if done.returncode != 0:
            raise RuntimeError(f"wrk {mode} failed: {done.stdout[-500:]} {done.stderr[-500:]}")
        return parse(done.stdout), cpu

    def cpu_line(self, figure: str, result: Wrk, cpu: CpuMeter) -> None:
        self.sections.append(f"- {figure}: {cpu.summary(per=result.requests)}")

    def run(self) -> None:
        self.sections: list[str] = []
        self.prepare()
        ours = {"service (all processes)": [self.service.pid]}
        lean = {"lean reference": [self.lean.pid]}

        hello: dict[str, Wrk] = {}
        for name, extra in (
            ("h11 + asyncio", ["--http", "h11", "--loop", "asyncio"]),
            ("httptools + uvloop", []),
        ):
            port = free_port()
            child = self.start(
                f"hello-{len(hello)}",
                python_argv(
                    "-m",
                    "uvicorn",
                    "bench.hello:raw_app",
                    "--port",
                    str(port),
                    "--log-level",
                    "warning",
                    "--no-access-log",
                    *extra,
                ),
                port,
                "/",
            )
            hello[name], _ = self.wrk(port, "hello", seconds=min(10, self.args.duration))
            child.stop()
            self.out.add(f"Baseline: bare uvicorn hello, 1 process, {name}", hello[name].text())

        lean_get, cpu = self.wrk(self.lean_port, "lean-get", groups=lean)
        self.out.add("Baseline: lean get by id (bench/lean.py, 2 processes)", lean_get.text())
        self.cpu_line("lean get", lean_get, cpu)
        get, cpu = self.wrk(self.port, "get", groups=ours)
        self.out.add(
            f"Get by id, {self.args.connections} connections",
            get.text(),
            f"lean {lean_get.rate:,.0f}/s ({get.rate / lean_get.rate:.0%})",
            "≥ 3,000/s, p99 ≤ 20 ms, ≥ 80 % of lean",
            get.rate >= 3000
            and get.p99 <= 20
            and get.rate >= 0.8 * lean_get.rate
            and not get.errors,
        )
        self.cpu_line("get", get, cpu)

        listed, cpu = self.wrk(self.port, "list", groups=ours)
        self.out.add(
            f"List, country + status, 50 per page ({self.args.customers:,} customers)",
            listed.text(),
            f"get by id {get.rate:,.0f}/s",
            "≥ 1,500/s, p99 ≤ 50 ms",
            listed.rate >= 1500 and listed.p99 <= 50 and not listed.errors,
        )
        self.cpu_line("list", listed, cpu)
        worst = 0.0
        failed = 0
        shapes = []
        for shape in SHAPES:
            result, _ = self.wrk(self.port, "shape", path=shape, connections=4, seconds=5)
            worst = max(worst, result.p99)
            failed += result.errors
            shapes.append(f"`{shape}` {result.text()}")
        self.out.add(
            f"List shapes ({len(SHAPES)}, 4 connections each), worst p99",
            report.ms(worst),
            "",
            "p99 ≤ 100 ms",
            worst <= 100 and not failed,
        )
        self.sections.append("- list shapes: " + "; ".join(shapes))

        lean_create, cpu = self.wrk(self.lean_port, "lean-create", groups=lean)
        self.out.add("Baseline: lean create (bench/lean.py)", lean_create.text())
        self.cpu_line("lean create", lean_create, cpu)
        create, cpu = self.wrk(self.port, "create", groups=ours)
        self.out.add(
            f"Create, {self.args.connections} connections, every follower running",
            create.text(),
            f"lean {lean_create.rate:,.0f}/s ({create.rate / lean_create.rate:.0%})",
            "≥ 1,000/s, p99 ≤ 100 ms, ≥ 55 % of lean",
            create.rate >= 1000
            and create.p99 <= 100
            and create.rate >= 0.55 * lean_create.rate
            and not create.errors,
        )
        self.cpu_line("create", create, cpu)

        update, cpu = self.wrk(self.port, "update", groups=ours)
        self.out.add(
            f"Update with If-Match, {self.args.connections} connections, distinct customers",
            update.text(),
            "",
            "≥ 1,000/s, p99 ≤ 100 ms",
            update.rate >= 1000 and update.p99 <= 100 and not update.errors,
        )
        self.cpu_line("update", update, cpu)

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()
        self.children.clear()

    def cleanup(self) -> None:
        self.stop()
        with contextlib.suppress(Exception):
            asyncio.run(env.delete_streams(self.env.nats_url, self.stream))
        if not self.args.keep:
            with contextlib.suppress(Exception):
                env.drop_database(env=self.env)
        self.env.close()
        shutil.rmtree(self.scripts, ignore_errors=True)


SHAPES = (
    "country=ES&status=ACTIVE&limit=50",
    "country=ES&limit=50&sort=-createdAt",
    "status=INACTIVE&limit=50",
    "tag=vip&limit=50",
    "ageMin=30&ageMax=40&limit=50",
    "q=mar&limit=20",
    "q=a&limit=50",
    "gender=FEMALE&country=FR&limit=50&sort=name",
    "createdFrom=2020-01-01T00:00:00Z&limit=50",
    "limit=100&sort=email",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serving", description=__doc__)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--updates", type=int, default=60_000, help="distinct customers to update")
    parser.add_argument("--output", type=Path, default=env.REPO / "docs" / "performance.md")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the seeded database for the next run, and reuse one kept by the last",
    )
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("bench.serving needs wrk (Debian package `wrk`)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    command = "python -m bench.serving " + shlex.join(argv if argv is not None else sys.argv[1:])
    bench = Bench(args)
    cut: str | None = None
    try:
        bench.run()
    except (Exception, KeyboardInterrupt) as e:
        cut = f"{type(e).__name__}: {e}"
        import traceback

        traceback.print_exc()
    finally:
        bench.stop()  # its connections first: the machine facts need one
        machine = env.machine(bench.env)
        bench.cleanup()
    table = bench.out.markdown(machine, command, cut)
    if getattr(bench, "sections", None):
        table += "\nCPU per request, summed over each process group (`bench.env.CpuMeter`):\n\n"
        table += "\n".join(bench.sections) + "\n"
    print("\n" + table)
    if not args.no_write and cut is None:
        report.write(args.output, table, marker="serving")
    return 1 if cut else 0


if __name__ == "__main__":
    sys.exit(main())
