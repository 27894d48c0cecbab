"""`make proto`: api/proto/customers.proto compiled into grpc_api/gen (messages, their typing
stubs, service stubs), checked in; tests/unit/test_proto_file.py regenerates and compares.

The proto is compiled as `grpc_api/gen/customers.proto` (a protoc path mapping), so that the
generated modules import each other as `grpc_api.gen.…`."""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO_DIR = "api/proto"
PACKAGE_DIR = "grpc_api/gen"
GENERATED = ("customers_pb2.py", "customers_pb2.pyi", "customers_pb2_grpc.py")


def generate(out: Path) -> list[Path]:
    """Compile into `out` (PACKAGE_DIR is created below it); the generated files."""
    from grpc_tools import protoc  # a development dependency

    well_known = resources.files("grpc_tools") / "_proto"
    args = [
        "protoc",
        f"-I{PACKAGE_DIR}={ROOT / PROTO_DIR}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        f"{PACKAGE_DIR}/customers.proto",
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {PROTO_DIR}/customers.proto")
    return [out / PACKAGE_DIR / name for name in GENERATED]


if __name__ == "__main__":
    generate(ROOT)
    sys.exit(0)
