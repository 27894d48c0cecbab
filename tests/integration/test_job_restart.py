"""Customer jobs survive their worker: an import whose worker is killed (SIGKILL) mid-file,
or which loses its database connection, and a bulk job interrupted between batches, resume
from the last committed batch, and every row or customer is accounted for exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from domain.access import Principal
from domain.bulk import ProfilePatch
from domain.selection import CustomerSelection
from domain.values import Profile
from eventstore.application import Customers
from service.settings import Settings
from tests.e2e.conftest import new_customer
from write_api import bulk, imports, jobs
from write_api.background.engine import job_runner
from write_api.customers import CustomerCommands

ROWS = 8000


# The import worker of the segments process alone: a whole segments process opens a dozen
# connections, more than this suite can spare beside two running services.
WORKER = """
import threading
from eventstore.application import Customers
from service.settings import get_settings
from write_api import jobs
from write_api.background.engine import job_runner
jobs.work(job_runner(Customers(get_settings(), pool_size=1)), threading.Event())
"""


def worker_process(settings: Settings) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DATABASE_URL": str(settings.database_url)}
    return subprocess.Popen([sys.executable, "-c", WORKER], env=env)


def job_row(conn: psycopg.Connection[Any], job_id: uuid.UUID) -> tuple[Any, ...]:
    row = conn.execute(
        "SELECT state, next_line, rows_read, created, failed FROM customer_jobs WHERE id = %s",
        (job_id,),
    ).fetchone()
    assert row is not None
    return tuple(row)


def test_a_killed_import_resumes_and_counts_every_row_once(settings: Settings) -> None:
    org = f"org-{uuid.uuid4().hex[:6]}"
    header = "email,name,preferences.marketingConsent,preferences.dataProcessingConsent\r\n"
    rows = "".join(f"r{i}@example.com,Row {i},false,true\r\n" for i in range(ROWS))
    bad = "not-an-email,Bad,false,true\r\n"  # line ROWS + 2
    job = imports.new_job(org, imports.Format.CSV, imports.Mode.CREATE, False, "t")
    with jobs.connect(settings) as conn:
        content = (header + rows + bad).encode()
        upload = imports.Upload(conn, job, len(content))
        upload.feed(content)
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
            "SELECT line, field FROM job_rejections WHERE job_id = %s", (job.id,)
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
    job = imports.new_job(org, imports.Format.CSV, imports.Mode.CREATE, False, "t")
    with jobs.connect(settings) as conn:
        content = (header + rows).encode()
        upload = imports.Upload(conn, job, len(content))
        upload.feed(content)
        upload.finish()
    real = imports._File.lines
    failures = iter([psycopg.OperationalError("server closed the connection unexpectedly")])

    def flaky(self: imports._File) -> Iterator[str]:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return real(self)

    monkeypatch.setattr(imports._File, "lines", flaky)
    app = Customers(settings, pool_size=1)
    importer = job_runner(app)
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


def test_an_interrupted_bulk_job_resumes_after_its_last_batch(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    org = f"org-{uuid.uuid4().hex[:6]}"
    app = Customers(settings, pool_size=1)
    commands = CustomerCommands(app)
    admin = Principal(sub="t", org=org, roles=frozenset({"admin"}))
    ids = [
        uuid.UUID(commands.create(admin, Profile.model_validate(new_customer())).body["id"])  # type: ignore[index]
        for _ in range(12)
    ]
    patch = ProfilePatch.model_validate({"tags": {"add": ["bulk"]}})
    with jobs.connect(settings) as conn:
        job = bulk.queue(
            conn,
            admin,
            bulk.Kind.UPDATE,
            CustomerSelection(ids=ids),
            {"patch": patch.dump(), "admin": True},
            dry_run=False,
        )
    monkeypatch.setattr(bulk, "BATCH", 5)
    runner = job_runner(app)
    real_commit = runner.commit
    calls = 0

    def lost_on_the_second_batch(*args: Any, **kwargs: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        real_commit(*args, **kwargs)

    monkeypatch.setattr(runner, "commit", lost_on_the_second_batch)
    watch = psycopg.connect(str(settings.database_url), autocommit=True)
    try:
        with pytest.raises(psycopg.OperationalError):
            runner.run_next()
        state, next_line, processed, *_ = job_row(watch, uuid.UUID(job["id"]))
        assert (state, next_line, processed) == ("QUEUED", 6, 5)
        assert runner.run_next()
        assert job_row(watch, uuid.UUID(job["id"])) == ("SUCCEEDED", 13, 12, 0, 0)
        updated = watch.execute(
            "SELECT updated FROM customer_jobs WHERE id = %s", (job["id"],)
        ).fetchone()
        assert updated == (12,)
        for cid in ids:  # each changed once: created, then one update
            got = app.repository.get(cid)
            assert got.version == 2 and "bulk" in got.profile["tags"]
        targets = watch.execute("SELECT count(*) FROM job_targets WHERE job_id = %s", (job["id"],))
        assert targets.fetchone() == (0,)
    finally:
        runner.close()
        app.close()
        watch.close()
