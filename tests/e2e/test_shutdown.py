"""A multi-worker server (`CUSTOMERS_WORKERS=2`) as its own process tree: every worker's
requests are in whichever worker's /metrics, and SIGTERM to the supervisor lets a request in
flight finish before the supervisor exits — after its workers, never before them."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, multiprocess

from service.auth import issue_token
from service.embedded import free_port
from service.settings import Settings
from tests.e2e.conftest import unprojected_write

HEALTH = {"method": "GET", "route": "/health", "status": "200"}


@pytest.fixture
def server(migrated: Settings, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = free_port()
    env = {
        **os.environ,
        "CUSTOMERS_WORKERS": "2",
        "CUSTOMERS_READ_API_PORT": str(port),
        "CUSTOMERS_CONSISTENCY_WAIT_SECONDS": "3",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
    }
    (tmp_path / "metrics").mkdir()
    process = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "read-api"], env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert process.poll() is None and time.monotonic() < deadline, "server did not start"
        time.sleep(0.1)
    try:
        yield process, url
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def workers(process: subprocess.Popen[bytes]) -> list[int]:
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text()
    return [int(pid) for pid in children.split()]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def health_requests(directory: Path) -> float:
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(directory))
    return registry.get_sample_value("customers_http_requests_total", HEALTH) or 0.0


def test_workers_share_metrics_and_drain_on_sigterm(
    server: tuple[subprocess.Popen[bytes], str], migrated: Settings, tmp_path: Path
) -> None:
    process, url = server
    pids = workers(process)
    assert len(pids) == 2
    for _ in range(40):  # a new connection each: the kernel spreads them over the workers
        assert httpx.get(f"{url}/health").status_code == 200
    for _ in range(6):
        text = httpx.get(f"{url}/metrics").text
        line = 'customers_http_requests_total{method="GET",route="/health",status="200"} 40.0'
        assert line in text
    # Each worker's own file holds part of them.
    shares = []
    for pid in pids:
        alone = tmp_path / f"worker-{pid}"
        alone.mkdir()
        shutil.copy(tmp_path / "metrics" / f"counter_{pid}.db", alone)
        shares.append(health_requests(alone))
    assert sum(shares) == 40 and all(shares), shares

    token = issue_token(migrated, sub="tester", org="org-shutdown", roles=["admin"])
    headers = {"Authorization": f"Bearer {token}"}
    with unprojected_write(migrated, headers) as written, ThreadPoolExecutor(1) as pool:
        slow_headers = {**headers, "X-Consistency-Token": written}
        slow = pool.submit(
            httpx.get, f"{url}/api/v1/customers", headers=slow_headers, timeout=30
        )  # waits the whole consistency wait (3 s), then 503
        # SIGTERM once the server holds it: in flight besides the scrape asking.
        in_flight = re.compile(r"^customers_http_requests_in_flight (\S+)$", re.MULTILINE)
        deadline = time.monotonic() + 10
        while float(in_flight.findall(httpx.get(f"{url}/metrics").text)[0]) < 2:
            assert time.monotonic() < deadline and not slow.done(), "the request never arrived"
        process.send_signal(signal.SIGTERM)
        answer = slow.result()
    assert answer.status_code == 503, answer.text  # answered, not cut off
    assert answer.json()["status"] == 503
    assert process.wait(timeout=20) == 128 + signal.SIGTERM
    assert not [pid for pid in pids if alive(pid)], "a worker outlived its supervisor"
