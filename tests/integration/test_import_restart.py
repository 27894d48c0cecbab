"""An import survives its worker being killed (SIGKILL of the worker process) mid-file:
after a restart it resumes from the last committed batch, and every row is accounted for
exactly once (this module's own database)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from typing import Any

import psycopg
import pytest

from eventstore.application import Customers
from service.settings import Settings
from write_api import imports

ROWS = 8000


# The import worker of the segments process alone: a whole segments process opens a dozen
# connections, more than this suite can spare beside two running services.
WORKER = """
import threading
from eventstore.application import Customers
from service.settings import get_settings
from write_api import imports
imports.work(imports.Importer(Customers(get_settings(), pool_size=1)), threading.Event())
"""


def worker_process(settings: Settings) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DATABASE_URL": str(settings.database_url)}
    return subprocess.Popen([sys.executable, "-c", WORKER], env=env)


def job_row(conn: psycopg.Connection[Any], job_id: uuid.UUID) -> tuple[Any, ...]:
    row = conn.execute(
        "SELECT state, next_line, rows_read, created, failed FROM import_jobs WHERE id = %s",
        (job_id,),
    ).fetchone()
    assert row is not None
    return tuple(row)


def test_a_killed_import_resumes_and_counts_every_row_once(settings: Settings) -> None:
    org = f"org-{uuid.uuid4().hex[:6]}"
    header = "email,name,preferences.marketingConsent,preferences.dataProcessingConsent\r\n"
    rows = "".join(f"r{i}@example.com,Row {i},false,true\r\n" for i in range(ROWS))
    bad = "not-an-email,Bad,false,true\r\n"  # line ROWS + 2
    job = imports.Job(uuid.uuid4(), org, imports.Format.CSV, imports.Mode.CREATE, False, "t", 0)
    with imports.connect(settings) as conn:
        upload = imports.Upload(conn, job)
        upload.feed((header + rows + bad).encode())
        assert upload.finish()["state"] == "QUEUED"

    watch = psycopg.connect(str(settings.database_url), autocommit=True)
    first = worker_process(settings)
    try:
        deadline = time.monotonic() + 60
        while job_row(watch, job.id)[1] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        first.send_signal(signal.SIGKILL)
        first.wait()
    finally:
        if first.poll() is None:
            first.kill()
    state, next_line, *_ = job_row(watch, job.id)
    assert state == "RUNNING" and 0 < next_line < ROWS, "the kill should land mid-file"

    second = worker_process(settings)
    try:
        deadline = time.monotonic() + 90
        while job_row(watch, job.id)[0] == "RUNNING" and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=20)
    assert job_row(watch, job.id) == ("SUCCEEDED", 2**31 - 1, ROWS + 1, ROWS, 1)
    with psycopg.connect(str(settings.database_url)) as conn:
        keys = conn.execute("SELECT count(*) FROM customer_keys WHERE org_id = %s", (org,))
        assert keys.fetchone() == (ROWS,)
        rejected = conn.execute(
            "SELECT line, field FROM import_rejections WHERE job_id = %s", (job.id,)
        ).fetchall()
        chunks = conn.execute("SELECT count(*) FROM import_chunks WHERE job_id = %s", (job.id,))
        assert chunks.fetchone() == (0,)  # the file (personal data) is gone with the job
    assert rejected == [(ROWS + 2, "email")]
    watch.close()


def test_a_lost_connection_requeues_the_job_instead_of_failing_it(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    org = f"org-{uuid.uuid4().hex[:6]}"
    header = "email,name,preferences.marketingConsent,preferences.dataProcessingConsent\r\n"
    rows = "".join(f"q{i}@example.com,Q {i},false,true\r\n" for i in range(10))
    job = imports.Job(uuid.uuid4(), org, imports.Format.CSV, imports.Mode.CREATE, False, "t", 0)
    with imports.connect(settings) as conn:
        upload = imports.Upload(conn, job)
        upload.feed((header + rows).encode())
        upload.finish()
    real = imports._Chunks.readinto
    failures = iter([psycopg.OperationalError("server closed the connection unexpectedly")])

    def flaky(self: imports._Chunks, buffer: Any) -> int:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return real(self, buffer)

    monkeypatch.setattr(imports._Chunks, "readinto", flaky)
    app = Customers(settings, pool_size=1)
    importer = imports.Importer(app)
    watch = psycopg.connect(str(settings.database_url), autocommit=True)
    try:
        with pytest.raises(psycopg.OperationalError):
            importer.run_next()
        assert job_row(watch, job.id)[0] == "QUEUED"  # not FAILED: the file is still there
        assert importer.run_next()
        assert job_row(watch, job.id) == ("SUCCEEDED", 2**31 - 1, 10, 10, 0)
    finally:
        importer.close()
        app.close()
        watch.close()
