"""Membership on real PostgreSQL: calculation jobs (diff, one transaction, cancel, failure,
recovery), incremental re-evaluation racing calculations, and the history projection
agreeing with the write side's members at the end."""

from __future__ import annotations

import random
import secrets
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest

from domain.criteria import SegmentCriteria
from domain.customer import Customer
from domain.membership import Change, Reason, SegmentCalculated, SegmentJoined, events, stream_id
from domain.segment import Segment, SegmentDefinition
from domain.values import Profile
from eventstore.application import Customers
from eventstore.jobs import LOCK_JOB
from projections import segment_sql
from projections.runner import Projector
from read_api.segments import GET as GET_SEGMENT
from service.settings import Settings
from write_api.background import calculation
from write_api.background.calculation import Calculator
from write_api.background.membership import Reevaluator, append

NOW = datetime.now(UTC)
AGE_22_TO_25 = {"demographics": {"ageRange": {"min": 22, "max": 25}}}


@pytest.fixture
def projector(settings: Settings, app: Customers) -> Iterator[Projector]:
    p = Projector(settings, app=app)
    yield p
    p.close()


@pytest.fixture
def calculator(app: Customers) -> Iterator[Calculator]:
    c = Calculator(app)
    yield c
    c.close()


def profile(i: int, age: int) -> Profile:
    return Profile.model_validate(
        {
            "email": f"member{i}.{secrets.token_hex(3)}@example.com",
            "name": f"Member {i}",
            "age": age,
            "preferences": {"marketingConsent": True, "dataProcessingConsent": True},
        }
    )


def register(app: Customers, org: str, ages: list[int]) -> list[Customer]:
    made = [Customer.register(org, profile(i, age), "tester") for i, age in enumerate(ages)]
    app.save(*made, new_keys=[app.keys.create(c.id, org) for c in made])
    return made


def define(app: Customers, org: str, criteria: dict[str, Any] = AGE_22_TO_25) -> Segment:
    segment = Segment.define(
        org,
        SegmentDefinition.model_validate(
            {"name": f"seg {secrets.token_hex(3)}", "ruleId": "r", "criteria": criteria}
        ),
        "tester",
    )
    app.save(segment)
    return segment


def sql(settings: Settings, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(str(settings.database_url)) as conn:
        cur = conn.execute(query, params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


def members(settings: Settings, segment_id: UUID) -> set[UUID]:
    rows = sql(
        settings, "SELECT customer_id FROM segment_members WHERE segment_id = %s", segment_id
    )
    return {r[0] for r in rows}


def job_state(settings: Settings, job_id: str) -> tuple[str, str | None]:
    ((state, error),) = sql(settings, "SELECT state, error FROM segment_jobs WHERE id = %s", job_id)
    return state, error


def shown_status(settings: Settings, org: str, segment_id: UUID) -> str:
    with psycopg.connect(str(settings.database_url)) as conn:
        row = conn.execute(GET_SEGMENT, {"org": org, "id": segment_id}).fetchone()
    assert row is not None
    return str(row[1])


def matching(settings: Settings, org: str, criteria: dict[str, Any]) -> set[UUID]:
    query, params = segment_sql.compile_criteria(
        SegmentCriteria.model_validate(criteria), org, datetime.now(UTC)
    )
    with psycopg.connect(str(settings.database_url)) as conn:
        return {r[0] for r in conn.execute(query, params)}


def test_calculation_appends_the_diff_in_one_go(
    settings: Settings, app: Customers, projector: Projector, calculator: Calculator
) -> None:
    org = f"org-{secrets.token_hex(3)}"
    people = register(app, org, list(range(18, 30)))
    segment = define(app, org)
    projector.run_once()
    job = calculation.queue(app, org, segment.id, calculation.Reason.CALCULATION, "tester")
    assert calculator.run_next() is True
    assert job_state(settings, job["id"]) == ("SUCCEEDED", None)
    expected = {c.id for c in people if 22 <= c.profile["age"] <= 25}
    assert members(settings, segment.id) == expected

    stream = list(app.events.get(stream_id(segment.id)))
    joined, done = stream
    assert isinstance(joined, SegmentJoined) and isinstance(done, SegmentCalculated)
    assert {UUID(c) for c in joined.customer_ids} == expected and joined.reason == "calculation"
    assert (done.member_count, done.joined, done.left) == (4, 4, 0)

    projector.run_once()
    active = sql(
        settings,
        "SELECT customer_id FROM segment_membership WHERE segment_id = %s AND is_active",
        segment.id,
    )
    assert {r[0] for r in active} == expected
    ((count, calculated),) = sql(
        settings,
        "SELECT customer_count, last_calculated FROM segment_stats WHERE segment_id = %s",
        segment.id,
    )
    assert count == 4 and calculated == done.timestamp
    assert shown_status(settings, org, segment.id) == "ACTIVE"


def test_cancelled_run_changes_nothing(
    settings: Settings, app: Customers, projector: Projector, calculator: Calculator
) -> None:
    org = f"org-{secrets.token_hex(3)}"
    register(app, org, [23, 24])
    segment = define(app, org)
    projector.run_once()
    job = calculation.queue(app, org, segment.id, calculation.Reason.CALCULATION, "tester")
    # The flag as a cancel of a RUNNING job sets it: the worker sees it at its next phase.
    sql(settings, "UPDATE segment_jobs SET cancel_requested = true WHERE id = %s", job["id"])
    assert calculator.run_next() is True
    assert job_state(settings, job["id"]) == ("CANCELLED", None)
    assert members(settings, segment.id) == set()
    assert list(app.events.get(stream_id(segment.id))) == []
    assert shown_status(settings, org, segment.id) == "ACTIVE"


def test_failed_run_ends_in_error_with_its_reason(
    settings: Settings,
    app: Customers,
    projector: Projector,
    calculator: Calculator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    org = f"org-{secrets.token_hex(3)}"
    segment = define(app, org)
    projector.run_once()
    register(app, org, [23])  # not projected: the job cannot see an up-to-date base
    monkeypatch.setattr(calculation, "PROJECTION_WAIT_SECONDS", 0.2)
    job = calculation.queue(app, org, segment.id, calculation.Reason.CALCULATION, "tester")
    assert shown_status(settings, org, segment.id) == "CALCULATING"
    assert calculator.run_next() is True
    state, error = job_state(settings, job["id"])
    assert state == "FAILED" and error is not None and "projection" in error
    assert shown_status(settings, org, segment.id) == "ERROR"
    # The next successful run clears it.
    projector.run_once()
    calculation.queue(app, org, segment.id, calculation.Reason.CALCULATION, "tester")
    assert calculator.run_next() is True
    assert shown_status(settings, org, segment.id) == "ACTIVE"


def test_jobs_of_a_vanished_worker_are_queued_again(
    settings: Settings, app: Customers, calculator: Calculator
) -> None:
    org = f"org-{secrets.token_hex(3)}"
    segment = define(app, org)
    orphan = calculation.queue(app, org, segment.id, calculation.Reason.CALCULATION, "tester")
    alive = calculation.queue(app, org, segment.id, calculation.Reason.CALCULATION, "tester")
    sql(settings, "UPDATE segment_jobs SET state = 'RUNNING' WHERE segment_id = %s", segment.id)
    with psycopg.connect(str(settings.database_url), autocommit=True) as worker:
        worker.execute(LOCK_JOB, (alive["id"], calculation.LOCK_SPACE))  # a live worker holds it
        assert calculator.recover() == 1
        assert job_state(settings, orphan["id"])[0] == "QUEUED"
        assert job_state(settings, alive["id"])[0] == "RUNNING"


def test_incremental_changes_racing_calculations_converge(
    settings: Settings, app: Customers, projector: Projector, calculator: Calculator
) -> None:
    """Customers change while whole-base calculations run: every decision is taken against
    the current members at a known stream version, so at the end members == the criteria's
    SQL result, the history view's active rows == members, and no stint overlaps."""
    org = f"org-{secrets.token_hex(3)}"
    rng = random.Random(7)
    people = register(app, org, [rng.randint(18, 30) for _ in range(60)])
    segment = define(app, org)
    projector.run_once()
    reevaluator = Reevaluator(app)
    stop = threading.Event()
    errors: list[BaseException] = []

    def calculations() -> None:
        try:
            while not stop.is_set():
                calculation.queue(app, org, segment.id, calculation.Reason.CALCULATION, "t")
                calculator.run_next()
        except BaseException as e:  # surfaced below
            errors.append(e)

    worker = threading.Thread(target=calculations)
    worker.start()
    try:
        for _ in range(8):
            changed = rng.sample(people, 15)
            for c in changed:
                c.update(
                    profile(0, rng.randint(18, 30)).model_copy(update={"email": c.email}),
                    status=None,
                    actor="tester",
                    actor_is_admin=False,
                    now=NOW,
                    verification_ttl=timedelta(hours=1),
                )
            app.save(*changed)
            projector.run_once()
            reevaluator.run_once()
    finally:
        stop.set()
        # A job waits for the customers projection to pass every earlier event: keep it going.
        while worker.is_alive():
            projector.run_once()
            worker.join(0.05)
        reevaluator.close()
    assert not errors, errors
    projector.run_once()
    reevaluator.run_once()
    projector.run_once()

    expected = matching(settings, org, AGE_22_TO_25)
    assert members(settings, segment.id) == expected
    active = sql(
        settings,
        "SELECT customer_id FROM segment_membership WHERE segment_id = %s AND left_at IS NULL",
        segment.id,
    )
    assert sorted(r[0] for r in active) == sorted(expected)  # one open stint each
    overlaps = sql(
        settings,
        "SELECT count(*) FROM segment_membership a JOIN segment_membership b"
        " ON a.segment_id = b.segment_id AND a.customer_id = b.customer_id"
        " AND a.joined_at < b.joined_at AND (a.left_at IS NULL OR a.left_at > b.joined_at)"
        " WHERE a.segment_id = %s",
        segment.id,
    )
    assert overlaps == [(0,)]
    ((count,),) = sql(
        settings, "SELECT customer_count FROM segment_stats WHERE segment_id = %s", segment.id
    )
    assert count == len(expected)


def test_stale_segments_are_recalculated_on_schedule(
    settings: Settings, app: Customers, projector: Projector, calculator: Calculator
) -> None:
    org = f"org-{secrets.token_hex(3)}"
    segment = define(app, org)
    projector.run_once()
    calculation.queue(app, org, segment.id, calculation.Reason.CALCULATION, "tester")
    assert calculator.run_next() is True
    projector.run_once()
    assert calculator.schedule(3600) == 0  # calculated just now
    sql(
        settings,
        "UPDATE segment_stats SET last_calculated = now() - interval '2 hours'"
        " WHERE segment_id = %s",
        segment.id,
    )
    assert calculator.schedule(3600) == 1
    assert calculator.schedule(3600) == 0  # one open job is enough
    ((by,),) = sql(
        settings,
        "SELECT requested_by FROM segment_jobs WHERE segment_id = %s AND state = 'QUEUED'",
        segment.id,
    )
    assert by == "scheduler"


def test_a_large_change_lands_in_one_transaction(settings: Settings, app: Customers) -> None:
    """~6 MB of ids in one save: in psycopg's pipeline mode this much data in flight can
    deadlock; membership saves go as plain statements (eventstore/recorder.py)."""
    segment_id = uuid4()
    ids = [str(uuid4()) for _ in range(150_000)]
    change = Change("org-large", segment_id, ids, [], Reason.CALCULATION)
    outcome: list[int] = []
    saving = threading.Thread(
        target=lambda: outcome.append(
            append(app, [change], list(events(change, 0, datetime.now(UTC))))
        ),
        daemon=True,
    )
    saving.start()
    saving.join(60)
    assert not saving.is_alive(), "the save hung"
    assert outcome and outcome[0] > 0
    assert len(members(settings, segment_id)) == 150_000
    assert len(list(app.events.get(stream_id(segment_id)))) == 30
