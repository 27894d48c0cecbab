"""Integration tests that write customers directly work in their module's scratch database."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from eventstore.application import Customers
from service.settings import Settings


@pytest.fixture(scope="module")
def settings(scratch_settings: Settings) -> Settings:
    return scratch_settings


@pytest.fixture
def app(settings: Settings) -> Iterator[Customers]:
    a = Customers(settings, pool_size=2)
    yield a
    a.close()
