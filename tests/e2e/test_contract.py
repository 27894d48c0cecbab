"""The published contract is what the service does: schemathesis, every check, the stateful
phase on, against the whole service over real HTTP (schemathesis.toml holds the settings and
names every exclusion with its reason). `make test` runs a CI-sized pass; `make fuzz` sets
CONTRACT_EXAMPLES=50."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.auth import issue_token
from service.settings import Settings
from tests.e2e.conftest import serve_in_thread

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = int(os.environ.get("CONTRACT_EXAMPLES", "3"))
# The coverage phase (every boundary of every parameter) is most of a run's time: `make fuzz`
# runs it (CONTRACT_PHASES=all); `make test` the schema's examples, fuzzing and stateful.
PHASES = os.environ.get("CONTRACT_PHASES", "examples,fuzzing,stateful")


@pytest.fixture
def roomy_service(service_url: str, migrated: Settings) -> Iterator[str]:
    """A gateway beside the suite's (whose projector and segment engine it shares) with room
    for the fuzzer's background jobs: with the suite's two pooled connections, a request
    may wait out its bound behind them and answer the documented 503 of a service at
    capacity, which says nothing about the contract."""
    from service.gateway import Gateway

    yield from serve_in_thread(
        Gateway(migrated.model_copy(update={"db_pool_size": 8, "db_wait_seconds": 5}))
    )


def test_schemathesis_finds_nothing(roomy_service: str, migrated: Settings, org: str) -> None:
    service_url = roomy_service
    token = issue_token(migrated, sub="contract", org=org, roles=["admin"])
    cli = Path(sys.executable).with_name("schemathesis")
    command = [
        str(cli),
        "--no-color",
        "run",
        f"{service_url}/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        str(EXAMPLES),
        "--workers",
        "1",
    ]
    if PHASES != "all":
        command += ["--phases", PHASES]
    # A fixed seed by default: `make test` must not pass or fail by luck; `make fuzz` unsets it.
    seed = os.environ.get("CONTRACT_SEED", "20")
    if seed:
        command += ["--seed", seed]
    env = {**os.environ, "CUSTOMERS_API_TOKEN": token}
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False
    )
    report = done.stdout + done.stderr
    assert "Stateful" in report, report[-4000:]  # the stateful phase ran
    assert done.returncode == 0, report[-20000:]
