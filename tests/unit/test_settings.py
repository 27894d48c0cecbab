"""Settings read from the environment: the read replicas' URLs."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.settings import Settings


@pytest.mark.parametrize(
    ("raw", "urls"),
    [
        ("", []),
        ("postgresql://r1/db  postgresql://r2/db", ["postgresql://r1/db", "postgresql://r2/db"]),
        # A libpq multi-host URL holds commas: a JSON array says where one URL ends.
        ('["postgresql://h1:5432,h2:5432/db"]', ["postgresql://h1:5432,h2:5432/db"]),
    ],
)
def test_replica_urls_are_a_json_array_or_whitespace_separated(
    monkeypatch: pytest.MonkeyPatch, raw: str, urls: list[str]
) -> None:
    monkeypatch.setenv("CUSTOMERS_READ_REPLICA_URLS", raw)
    assert Settings().read_replica_urls == urls


def test_a_replica_that_is_not_a_postgresql_url_is_refused_without_echoing_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CUSTOMERS_READ_REPLICA_URLS", "mysql://user:s3cret@db/x")
    with pytest.raises(ValidationError, match="postgresql:// URL") as raised:
        Settings()
    assert "s3cret" not in str(raised.value)
