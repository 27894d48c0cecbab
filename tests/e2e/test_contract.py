"""The published contract is what the service does: schemathesis, every check, the stateful
phase on, against the whole service over real HTTP (schemathesis.toml holds the settings and
names every exclusion with its reason). `make test` runs a CI-sized pass; `make fuzz` sets
CONTRACT_EXAMPLES=50."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from service.auth import issue_token
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = int(os.environ.get("CONTRACT_EXAMPLES", "3"))


def test_schemathesis_finds_nothing(service_url: str, migrated: Settings, org: str) -> None:
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
        "--seed",
        os.environ.get("CONTRACT_SEED", "20"),
    ]
    env = {**os.environ, "CUSTOMERS_API_TOKEN": token}
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False
    )
    report = done.stdout + done.stderr
    assert "Stateful" in report, report[-4000:]  # the stateful phase ran
    assert done.returncode == 0, report[-20000:]
