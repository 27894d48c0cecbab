"""The compose file runs every background process kind and the gateway, each with a command
the `customers` CLI accepts."""

from __future__ import annotations

from pathlib import Path

import yaml

from service.cli import PROCESS_KINDS

ROOT = Path(__file__).resolve().parents[2]


def test_compose_runs_every_process_kind() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    commands = [s.get("command") for s in compose["services"].values() if s.get("command")]
    served = {c[2] for c in commands if c[:2] == ["customers", "serve"]}
    assert served <= set(PROCESS_KINDS)
    assert served == {"gateway", "projector", "relay", "segments", "ingest"}
    assert ["customers", "migrate"] in commands
    assert (ROOT / "Dockerfile").is_file()
