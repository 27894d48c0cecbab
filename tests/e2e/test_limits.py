"""Rate limits per principal and per client address, per route class, and the body size
limit, on a service instance configured with small limits."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from service.gateway import Gateway
from service.settings import Settings
from tests.e2e.conftest import TokenFactory, new_customer, serve_in_thread
from tests.e2e.test_customers_api import assert_problem

CUSTOMERS = "/api/v1/customers"


@pytest.fixture(scope="module")
def limited(migrated: Settings) -> Iterator[str]:
    settings = migrated.model_copy(
        update={
            "rate_limit_reads_per_minute": 6,
            "rate_limit_writes_per_minute": 3,
            "rate_limit_exports_per_minute": 2,
            "max_body_bytes": 20_000,
        }
    )
    yield from serve_in_thread(Gateway(settings))


def test_rate_limits(limited: str, auth: TokenFactory) -> None:
    with httpx.Client(base_url=limited, timeout=10) as http:
        one, two = auth(sub="one"), auth(sub="two")
        statuses = [http.get(CUSTOMERS, headers=one).status_code for _ in range(4)]
        statuses += [http.get(CUSTOMERS, headers=two).status_code for _ in range(2)]
        assert statuses == [200] * 6
        # The address's bucket is empty now, whoever asks.
        limited_answer = http.get(CUSTOMERS, headers=two)
        assert_problem(limited_answer, 429)
        assert int(limited_answer.headers["Retry-After"]) >= 1
        # Other classes have buckets of their own.
        writes = [
            http.post(CUSTOMERS, json=new_customer(), headers=one).status_code for _ in range(4)
        ]
        assert writes == [201, 201, 201, 429]
        export = f"{CUSTOMERS}/00000000-0000-0000-0000-000000000000/data"
        exports = [http.get(export, headers=auth("dpo")).status_code for _ in range(3)]
        assert exports == [404, 404, 429]


def test_body_size_limit(limited: str, auth: TokenFactory) -> None:
    with httpx.Client(base_url=limited, timeout=10) as http:
        big = new_customer(metadata={"source": "x" * 30_000})
        assert_problem(http.post(CUSTOMERS, json=big, headers=auth()), 413)

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
            yield b'{"email": "a@example.com", "name": "'
            for _ in range(30):
                yield b"y" * 1000
            yield b'"}'

        streamed = http.post(
            CUSTOMERS,
            content=chunks(),
            headers={**auth(), "Content-Type": "application/json"},
        )
        assert_problem(streamed, 413)


@pytest.fixture(scope="module")
def import_limits(migrated: Settings) -> Iterator[str]:
    settings = migrated.model_copy(
        update={"max_import_bytes": {"admin": 100_000, "manager": 100_000, "support": 2_000}}
    )
    yield from serve_in_thread(Gateway(settings))


def test_import_size_limit_by_role(import_limits: str, auth: TokenFactory) -> None:
    header = "email,name,preferences.marketingConsent,preferences.dataProcessingConsent\r\n"
    body = "".join(f"size{i}@example.com,Size {i},false,true\r\n" for i in range(80))
    content = (header + body).encode()
    assert 2_000 < len(content) < 100_000
    url, params = f"{CUSTOMERS}/import", {"dryRun": "true"}
    csv = {"Content-Type": "text/csv"}
    support, admin = {**auth("support"), **csv}, {**auth("admin"), **csv}
    with httpx.Client(base_url=import_limits, timeout=10) as http:
        refused = http.post(url, content=content, params=params, headers=support)
        assert_problem(refused, 413)
        assert "2000 bytes" in refused.json()["detail"]
        assert http.post(url, content=content, params=params, headers=admin).status_code == 202
        # A role without a limit of its own cannot import at all.
        assert_problem(http.post(url, content=content, headers={**auth("service"), **csv}), 413)

    def pieces() -> Iterator[bytes]:  # no Content-Length: refused once past the limit
        yield content[:1_500]
        yield content[1_500:]

    with httpx.Client(base_url=import_limits, timeout=10) as http:
        streamed = http.post(url, content=pieces(), params=params, headers=support)
        assert_problem(streamed, 413)
