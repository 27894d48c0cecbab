"""`customers import` / `customers export` against the running service: an organization's
customers exported as CSV and imported into another organization come back identical."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.conftest import TokenFactory, new_customer
from tests.e2e.test_membership_api import CUSTOMERS, add_customer, eventually

SERVER_OWNED = ("id", "version", "createdAt", "updatedAt", "lastActivity", "segments", "status")


def customers_cli(service_url: str, token: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(  # our own interpreter and module
        [sys.executable, "-m", "service.cli", *args],
        env={**os.environ, "CUSTOMERS_API_URL": service_url, "CUSTOMERS_API_TOKEN": token},
        capture_output=True,
        timeout=120,
        check=False,
    )


def comparable(http: httpx.Client, headers: dict[str, str]) -> dict[str, dict[str, Any]]:
    items = http.get(CUSTOMERS, params={"limit": 500}, headers=headers).json()["items"]
    return {c["email"]: {k: v for k, v in c.items() if k not in SERVER_OWNED} for c in items}


def test_export_then_import_into_another_organization_round_trips(
    http: httpx.Client, auth: TokenFactory, service_url: str, tmp_path: Path
) -> None:
    source = auth()
    for i in range(3):
        body = new_customer(name=f"Round Trip {i}", tags=["vip", f"t{i}"])
        body["preferences"]["customPreferences"] = {"formula": "=1+1", "n": i}
        add_customer(http, source, **body)
    token = source["Authorization"].removeprefix("Bearer ")
    exported = customers_cli(service_url, token, "export", "--format", "csv")
    assert exported.returncode == 0, exported.stderr
    assert b"exported 4 lines" in exported.stderr  # header + 3
    assert len(list(csv.DictReader(io.StringIO(exported.stdout.decode())))) == 3

    target = auth(org_id=f"roundtrip-{uuid.uuid4().hex[:8]}")
    file = tmp_path / "customers.csv"
    file.write_bytes(exported.stdout)
    target_token = target["Authorization"].removeprefix("Bearer ")
    imported = customers_cli(service_url, target_token, "import", str(file))
    assert imported.returncode == 0, imported.stderr
    assert b"succeeded: 3 rows, 3 created" in imported.stderr
    eventually(lambda: comparable(http, target) == comparable(http, source))

    again = customers_cli(service_url, target_token, "import", str(file))
    assert b"succeeded: 3 rows, 0 created, 0 updated, 3 skipped" in again.stderr
    refused = customers_cli(service_url, "not-a-token", "import", str(file))
    assert refused.returncode == 1 and b"refused: 401" in refused.stderr


def test_bulk_jobs_from_the_command_line(
    http: httpx.Client, auth: TokenFactory, service_url: str, tmp_path: Path
) -> None:
    h = auth()
    ids = [add_customer(http, h, tags=["cli"])["id"] for _ in range(3)]
    token = h["Authorization"].removeprefix("Bearer ")
    tagged = customers_cli(
        service_url, token, "bulk", "update", "--filter", "tags=cli", "--add-tag", "gold"
    )
    assert tagged.returncode == 0, tagged.stderr
    assert b"succeeded: 3 of 3, 3 updated, 0 skipped, 0 rejected" in tagged.stderr
    eventually(
        lambda: all("gold" in http.get(f"{CUSTOMERS}/{c}", headers=h).json()["tags"] for c in ids)
    )

    listed = tmp_path / "ids.txt"
    unknown = str(uuid.uuid4())
    listed.write_text("\n".join([ids[0], unknown]) + "\n")
    deleted = customers_cli(service_url, token, "bulk", "delete", "--ids", str(listed))
    assert deleted.returncode == 0, deleted.stderr  # the job ran; one customer was refused
    assert b"1 updated, 0 skipped, 1 rejected" in deleted.stderr
    assert b"/report" in deleted.stderr
    refused = customers_cli(service_url, token, "bulk", "update", "--segment", unknown)
    assert refused.returncode == 1 and b"refused: 422" in refused.stderr


def test_import_with_a_column_mapping_from_the_command_line(
    http: httpx.Client, auth: TokenFactory, service_url: str, tmp_path: Path
) -> None:
    h = auth()
    token = h["Authorization"].removeprefix("Bearer ")
    file = tmp_path / "clientes.csv"
    file.write_text(
        "Correo,Nombre completo,País,Marketing,GDPR consent,Notas\n"
        "maria@example.com,María López,ES,sí,yes,call after 5\n"
    )
    maps = ["--map", "Correo=email", "--map", "Nombre completo=name", "--map", "Notas=-"]
    maps += ["--map", "País=location.country", "--map", "Marketing=preferences.marketingConsent"]
    unknown = customers_cli(service_url, token, "import", str(file), "--dry-run")
    assert unknown.returncode == 1
    assert b"refused: 422" in unknown.stderr and b"'Correo'" in unknown.stderr

    dry = customers_cli(service_url, token, "import", str(file), "--dry-run", *maps)
    assert dry.returncode == 0, dry.stderr
    said = dry.stderr.decode()
    assert (
        "columns: Correo → email, Nombre completo → name, País → location.country,"
        " Marketing → preferences.marketingConsent,"
        " GDPR consent → preferences.dataProcessingConsent, Notas → (skipped)"
    ) in said
    # "sí" is no boolean: the report names the field, and a dry run saves nothing.
    assert "succeeded (dry run): 1 rows, 0 would be created" in said and "1 rejected" in said

    file.write_text(file.read_text().replace(",sí,", ",yes,"))
    real = customers_cli(service_url, token, "import", str(file), *maps)
    assert real.returncode == 0, real.stderr
    assert b"succeeded: 1 rows, 1 created" in real.stderr
    eventually(lambda: [c["name"] for c in comparable(http, h).values()] == ["María López"])
    bad = customers_cli(service_url, token, "import", str(file), "--map", "Correo")
    assert bad.returncode == 1 and b"expected COLUMN=FIELD" in bad.stderr
