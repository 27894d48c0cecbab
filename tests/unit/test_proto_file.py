"""The checked-in gRPC code (grpc_api/gen) is what api/proto/customers.proto compiles to: a
message or service changed without `make proto` fails the build."""

from __future__ import annotations

from pathlib import Path

from grpc_api.codegen import GENERATED, PACKAGE_DIR, ROOT, generate


def test_the_generated_code_matches_the_proto(tmp_path: Path) -> None:
    fresh = generate(tmp_path)
    assert [p.name for p in fresh] == list(GENERATED)
    for path in fresh:
        checked_in = ROOT / PACKAGE_DIR / path.name
        assert checked_in.read_text() == path.read_text(), (
            f"{PACKAGE_DIR}/{path.name} is stale: run `make proto`"
        )
