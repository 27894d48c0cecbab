"""The published REST contract (api/openapi/customers-api.v1.yaml) is the one the apps serve:
a route, parameter or schema changed without `make openapi` fails the build."""

from __future__ import annotations

from pathlib import Path

from service.gateway import OPENAPI_FILE, published_openapi


def test_the_published_contract_matches_the_apps() -> None:
    published = (Path(__file__).resolve().parents[2] / OPENAPI_FILE).read_text()
    assert published == published_openapi(), f"{OPENAPI_FILE} is stale: run `make openapi`"
