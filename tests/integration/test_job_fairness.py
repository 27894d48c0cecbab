"""Customer jobs shared between organizations (issue 23): an organization holds at most its
share of the workers; a long import yields between batches to another organization's waiting
job and then resumes exactly where its last batch ended; a job's report keeps a bounded number
of rejected rows and says how many more there were. Workers are run by hand (`claim`, `run`,
`run_next`), so every assertion is about order and state, none about time."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import psycopg
import pytest
from asgi_lifespan import LifespanManager

from eventstore.application import Customers
from read_api.app import create_app
from service.auth import issue_token
from service.settings import Settings
from write_api import imports, jobs
from write_api.background.engine import job_runner

HEADER = "email,name,preferences.marketingConsent,preferences.dataProcessingConsent\r\n"


def queue_import(settings: Settings, org: str, content: bytes, fmt: str = "csv") -> uuid.UUID:
    job = imports.new_job(org, imports.Format(fmt), imports.Mode.CREATE, False, "t")
    with jobs.connect(settings) as conn:
        upload = imports.Upload(conn, job, len(content))
        upload.feed(content)
        upload.finish()
    return job.id


def rows(prefix: str, count: int) -> str:
    return "".join(f"{prefix}{i}@example.com,{prefix} {i},false,true\r\n" for i in range(count))


def job_state(settings: Settings, job_id: uuid.UUID) -> dict[str, Any]:
    with psycopg.connect(str(settings.database_url)) as conn:
        cur = conn.execute(
            "SELECT state, next_line, rows_read, created, failed, rejections_stored, error,"
            " finished_at FROM customer_jobs WHERE id = %s",
            (job_id,),
        )
        names = [c.name for c in cur.description or ()]
        row = cur.fetchone()
    assert row is not None
    return dict(zip(names, row, strict=True))


@pytest.fixture
def runners(settings: Settings) -> Iterator[list[jobs.JobRunner]]:
    """Three workers, as if in three processes (each on its own connection), that give up
    their turn after every batch when another organization waits."""
    app = Customers(settings.model_copy(update={"job_turn_seconds": 0.0}), pool_size=2)
    made = [job_runner(app) for _ in range(3)]
    yield made
    for runner in made:
        runner.close()
    app.close()


def test_a_small_import_of_another_organization_runs_between_the_batches_of_a_big_one(
    settings: Settings, runners: list[jobs.JobRunner]
) -> None:
    big_org, small_org = f"big-{uuid.uuid4().hex[:6]}", f"small-{uuid.uuid4().hex[:6]}"
    # 1,300 records over 1,302 lines: one quoted over two lines, two invalid after the first
    # batch, so the resumed reading must count lines as the first turn did.
    records = rows("b", 600)
    records += '"q@example.com","Two\r\nlines",false,true\r\n'  # lines 602-603
    records += "not-an-email,X,false,true\r\n"  # line 604
    records += rows("c", 697)
    records += "also-not-an-email,Y,false,true\r\n"  # line 1302
    big = queue_import(settings, big_org, (HEADER + records).encode())
    small = queue_import(settings, small_org, (HEADER + rows("s", 3)).encode())
    worker = runners[0]

    assert worker.run_next()  # the big import's first batch, then its turn is over
    first_turn = job_state(settings, big)
    assert (first_turn["state"], first_turn["rows_read"], first_turn["next_line"]) == (
        "QUEUED",
        500,
        502,
    )
    assert job_state(settings, small)["state"] == "QUEUED"

    assert worker.run_next()  # the other organization's turn: it runs to its end
    assert job_state(settings, small)["state"] == "SUCCEEDED"
    assert job_state(settings, big)["state"] == "QUEUED"  # still under way

    assert worker.run_next()  # nobody else waits: the big one runs to its end
    assert not worker.run_next()
    done, other = job_state(settings, big), job_state(settings, small)
    assert (done["state"], done["rows_read"], done["created"], done["failed"]) == (
        "SUCCEEDED",
        1300,
        1298,
        2,
    )
    assert other["finished_at"] < done["finished_at"]
    with psycopg.connect(str(settings.database_url)) as conn:
        rejected = conn.execute(
            "SELECT line, field FROM job_rejections WHERE job_id = %s ORDER BY line", (big,)
        ).fetchall()
        keys = conn.execute("SELECT count(*) FROM customer_keys WHERE org_id = %s", (big_org,))
        assert keys.fetchone() == (1298,)  # every valid row once, across the two turns
    assert rejected == [(604, "email"), (1302, "email")]


def test_one_organization_cannot_hold_every_worker(
    settings: Settings, runners: list[jobs.JobRunner]
) -> None:
    busy, waiting = f"busy-{uuid.uuid4().hex[:6]}", f"waiting-{uuid.uuid4().hex[:6]}"
    first = queue_import(settings, busy, (HEADER + rows("a", 2)).encode())
    second = queue_import(settings, busy, (HEADER + rows("b", 2)).encode())
    other = queue_import(settings, waiting, (HEADER + rows("c", 2)).encode())
    one, two, three = runners

    claimed = one.claim()
    assert claimed is not None and claimed.id == first
    # The busy organization has its share (one job) running: its older job waits.
    next_claim = two.claim()
    assert next_claim is not None and next_claim.id == other
    assert three.claim() is None
    one.run(claimed)
    after = three.claim()
    assert after is not None and after.id == second
    two.run(next_claim)
    three.run(after)
    assert {job_state(settings, j)["state"] for j in (first, second, other)} == {"SUCCEEDED"}


def test_a_report_keeps_its_first_rows_and_counts_the_rest(settings: Settings) -> None:
    org = f"org-{uuid.uuid4().hex[:6]}"
    limited = settings.model_copy(
        update={"job_report_max_rows": 100, "import_max_rejected_ratio": 1.0}
    )
    person = b'{"email": "ok%d@example.com", "name": "Ok", "preferences":'
    person += b' {"marketingConsent": true, "dataProcessingConsent": true}}\n'
    content = b"B\n" * 1200 + b"".join(person % i for i in range(300))
    job_id = queue_import(settings, org, content, "ndjson")
    app = Customers(limited, pool_size=1)
    runner = job_runner(app)
    try:
        assert runner.run_next()
    finally:
        runner.close()
        app.close()
    state = job_state(settings, job_id)
    assert (state["state"], state["created"], state["failed"], state["rejections_stored"]) == (
        "SUCCEEDED",
        300,
        1200,
        100,
    )

    job, report = asyncio.run(job_and_report(settings, org, job_id))
    assert (job["failed"], job["rejectionsNotStored"]) == (1200, 1100)
    lines = [orjson.loads(row) for row in report.splitlines()]
    assert [r["line"] for r in lines[:-1]] == list(range(1, 101))
    assert lines[-1] == {
        "line": None,
        "field": None,
        "reason": "1100 more rejected, not kept in the report",
    }


async def job_and_report(
    settings: Settings, org: str, job_id: uuid.UUID
) -> tuple[dict[str, Any], str]:
    """The import and its report as the read API answers them."""
    token = issue_token(settings, sub="t", org=org, roles=["support"])
    async with (
        LifespanManager(create_app(settings)) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app),
            base_url="http://test",
            headers={"Authorization": f"Bearer {token}"},
        ) as client,
    ):
        url = f"/api/v1/customers/import/{job_id}"
        job = (await client.get(url)).json()
        report = (await client.get(f"{url}/report")).text
    return job, report


def test_a_file_of_blank_lines_still_gives_its_turn_up(
    settings: Settings, runners: list[jobs.JobRunner]
) -> None:
    """Blank lines are no records, so batches cannot be counted in records alone: a chunk of
    file ends a batch too, and with it the turn."""
    blank_org, other_org = f"blank-{uuid.uuid4().hex[:6]}", f"other-{uuid.uuid4().hex[:6]}"
    blank = queue_import(settings, blank_org, (HEADER + "\r\n" * 1_500_000).encode())
    other = queue_import(settings, other_org, (HEADER + rows("o", 1)).encode())
    worker = runners[0]
    assert worker.run_next()
    state = job_state(settings, blank)
    assert (state["state"], state["rows_read"]) == ("QUEUED", 0)
    assert state["next_line"] > 1
    assert worker.run_next()
    assert job_state(settings, other)["state"] == "SUCCEEDED"
    assert worker.run_next()
    assert (job_state(settings, blank)["state"], job_state(settings, blank)["rows_read"]) == (
        "SUCCEEDED",
        0,
    )
