"""The whole service over real HTTP: uvicorn on a free port, projector and segment engine
running beside it."""

from __future__ import annotations

import io
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import psycopg
import pytest
import uvicorn

from service.auth import issue_token
from service.cli import http_config
from service.embedded import free_port
from service.gateway import Gateway
from service.logs import JsonFormatter, redacting_handler
from service.settings import Settings


class Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # running in a thread
        pass


def serve_in_thread(app: Any, settings: Settings | None = None) -> Iterator[str]:
    """`app` on a free port; with `settings`, configured as `customers serve` does it."""
    port = free_port()
    if settings is None:
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None)
    else:
        config = http_config(app, settings, "127.0.0.1", port)
    server = Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


# Names the e2e tests give their customers (e-mail addresses are matched by pattern).
TEST_NAMES = ("John Doe", "Zelda Quxworth", "Quentin Anonymo", "Export Person", "Rename")
EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+")


@pytest.fixture(scope="session", autouse=True)
def logs_hold_no_personal_data() -> Iterator[None]:
    """Every log record of the whole e2e run is captured twice: as emitted (no test
    customer's name may appear: nothing logs profile values) and as the service's handler
    writes it after redaction (no e-mail address may appear, not even in access logs)."""
    raw, written = io.StringIO(), io.StringIO()
    raw_handler = logging.StreamHandler(raw)
    raw_handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.INFO)
    root.addHandler(raw_handler)  # before the redacting one, which rewrites records
    service_handler = redacting_handler(written)
    root.addHandler(service_handler)
    try:
        yield
    finally:
        root.removeHandler(raw_handler)
        root.removeHandler(service_handler)
        root.setLevel(level)
    as_emitted, as_written = raw.getvalue(), written.getvalue()
    assert as_emitted and as_written, "the capture saw nothing"
    assert not [n for n in TEST_NAMES if n in as_emitted], "a customer name was logged"
    assert not EMAIL.findall(as_written), "an e-mail address reached the log output"


@pytest.fixture(scope="session")
def service_url(migrated: Settings) -> Iterator[str]:
    from projections.runner import Projector
    from service.gateway import Gateway
    from write_api.background.engine import SegmentEngine

    projector = Projector(migrated)
    projector.start()
    engine = SegmentEngine(migrated)
    engine.start()
    try:
        yield from serve_in_thread(Gateway(migrated))
    finally:
        engine.stop()
        projector.stop()


@pytest.fixture
def org() -> str:
    """A fresh organization per test: tests never see each other's customers."""
    return f"org-{uuid.uuid4().hex[:10]}"


TokenFactory = Callable[..., dict[str, str]]


@pytest.fixture
def auth(migrated: Settings, org: str) -> TokenFactory:
    def make(*roles: str, org_id: str | None = None, sub: str = "tester") -> dict[str, str]:
        token = issue_token(migrated, sub=sub, org=org_id or org, roles=list(roles or ("admin",)))
        return {"Authorization": f"Bearer {token}"}

    return make


@pytest.fixture
def http(service_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service_url, timeout=30) as client:
        yield client


@contextmanager
def unprojected_write(settings: Settings, headers: dict[str, str]) -> Iterator[str]:
    """The consistency token of a create that no projector makes visible while inside (they
    wait on a lock of `positions`, whichever test's projector runs on this database): a read
    carrying it is held for the whole consistency wait."""
    with psycopg.connect(settings.database_url or "", autocommit=True) as lock:
        for url in serve_in_thread(Gateway(settings)):
            with lock.transaction():
                lock.execute("LOCK TABLE positions IN SHARE MODE")
                created = httpx.post(
                    f"{url}/api/v1/customers", json=new_customer(), headers=headers
                )
                assert created.status_code == 201, created.text
                yield created.headers["X-Consistency-Token"]


def new_customer(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "email": f"john.doe.{uuid.uuid4().hex[:8]}@example.com",
        "name": "John Doe",
        "age": 35,
        "gender": "MALE",
        "location": {
            "country": "Spain",
            "city": "Madrid",
            "region": "Madrid",
            "postalCode": "28001",
            "timezone": "Europe/Madrid",
        },
        "preferences": {
            "language": "es",
            "currency": "EUR",
            "timezone": "Europe/Madrid",
            "notificationSettings": {
                "emailNotifications": True,
                "smsNotifications": False,
                "pushNotifications": True,
                "marketingEmails": True,
                "systemAlerts": True,
            },
            "privacySettings": {
                "dataSharing": False,
                "analyticsTracking": True,
                "personalization": True,
                "thirdPartySharing": False,
            },
            "marketingConsent": True,
            "dataProcessingConsent": True,
        },
        "tags": ["vip", "premium"],
        "metadata": {"source": "website", "referralSource": "google_ads"},
    }
    body.update(overrides)
    return body
