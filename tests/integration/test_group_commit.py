"""Group commit on real PostgreSQL: the saves that queue while the writer is busy commit in one
transaction, and a conflicting command inside such a group fails alone.

The writer is made busy deterministically: another session holds the event table's lock, so
the first save waits on it while the others queue behind it; releasing the lock lets the
queued ones go as one group. Rows of one transaction share their `xmin`.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from domain.access import Principal
from domain.errors import Code, DomainError
from eventstore.application import Customers
from service.settings import Settings
from tests.integration.test_event_store import admin, profile
from write_api.customers import CustomerCommands


@pytest.fixture
def commands(migrated: Settings) -> Iterator[CustomerCommands]:
    app = Customers(migrated, pool_size=4, group_commit=True)
    try:
        yield CustomerCommands(app)
    finally:
        app.close()


def run_queued(
    commands: CustomerCommands, settings: Settings, calls: list[Callable[[], Any]]
) -> list[Any]:
    """Run `calls` in threads while the event table is locked, release the lock once the
    first waits on it and every other is queued behind it; their results or errors."""
    assert settings.database_url
    committer = commands.app.recorder.committer
    assert committer is not None
    results: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        try:
            results[i] = calls[i]()
        except Exception as e:
            results[i] = e

    def until(condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 30
        while not condition():
            assert time.monotonic() < deadline, what
            time.sleep(0.01)

    with (
        psycopg.connect(settings.database_url) as blocker,
        psycopg.connect(settings.database_url, autocommit=True) as watcher,
    ):
        blocker.execute("LOCK TABLE customers_events IN EXCLUSIVE MODE")
        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
        # The first save holds the writer, waiting for the lock; then the rest queue behind.
        threads[0].start()
        until(lambda: waiting_for_lock(watcher), "the first save never waited for the lock")
        for t in threads[1:]:
            t.start()
        until(lambda: committer._queue.qsize() == len(calls) - 1, "the saves never queued up")
        blocker.rollback()
    for t in threads:
        t.join(30)
    return results


def waiting_for_lock(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND wait_event_type = 'Lock' AND query LIKE 'LOCK TABLE%%'"
    ).fetchone()
    return bool(row and row[0])


def transactions(settings: Settings, ids: list[uuid.UUID]) -> dict[uuid.UUID, str]:
    """The inserting transaction (xmin) of each customer's first event."""
    assert settings.database_url
    with psycopg.connect(settings.database_url) as conn:
        return dict(
            conn.execute(
                "SELECT originator_id, xmin::text FROM customers_events"
                " WHERE originator_id = ANY(%s) AND originator_version = 1",
                (ids,),
            ).fetchall()
        )


def test_saves_that_queue_together_commit_in_one_transaction(
    commands: CustomerCommands, migrated: Settings
) -> None:
    org = f"org-{uuid.uuid4().hex[:8]}"
    calls = [
        lambda i=i: commands.create(admin(org), profile(f"g{i}.{org}@example.com", f"G {i}"))
        for i in range(12)
    ]
    outcomes = run_queued(commands, migrated, calls)
    assert all(o.created for o in outcomes), outcomes
    ids = [uuid.UUID(o.body["id"]) for o in outcomes]
    xmins = transactions(migrated, ids)
    assert len(xmins) == 12
    # The first save went alone (it was waiting for the lock); the other 11 went together.
    assert sorted(list(xmins.values()).count(x) for x in set(xmins.values())) == [1, 11]
    tokens = sorted(o.consistency_token for o in outcomes)
    assert tokens == list(range(tokens[0], tokens[0] + 12))  # gap-free, one id each


def test_a_conflicting_command_in_a_group_fails_alone_while_the_others_commit(
    commands: CustomerCommands, migrated: Settings
) -> None:
    org = f"org-{uuid.uuid4().hex[:8]}"
    taken = f"taken.{org}@example.com"
    first = commands.create(admin(org), profile(f"twice.{org}@example.com", "Twice"))
    assert first.body is not None
    twice = uuid.UUID(first.body["id"])

    def update(name: str) -> Any:  # both load version 1: the second save meets the first
        return commands.update(
            admin(org), twice, profile(f"twice.{org}@example.com", name), None, 1
        )

    calls: list[Callable[[], Any]] = [
        lambda: commands.create(admin(org), profile(f"head.{org}@example.com", "Head")),
        *[
            lambda i=i: commands.create(admin(org), profile(f"ok{i}.{org}@example.com", "Ok"))
            for i in range(6)
        ],
        lambda: commands.create(admin(org), profile(taken, "First")),
        lambda: update("One"),
        lambda: commands.create(admin(org), profile(taken, "Second")),
        lambda: update("Other"),
        lambda: commands.create(admin(org), profile(f"tail.{org}@example.com", "Tail")),
    ]
    outcomes = run_queued(commands, migrated, calls)

    errors = [o for o in outcomes if isinstance(o, Exception)]
    assert sorted((e.code, e.field) for e in errors if isinstance(e, DomainError)) == [
        (Code.CONFLICT, "email"),
        (Code.PRECONDITION_FAILED, None),
    ], outcomes
    done = [o for o in outcomes if not isinstance(o, Exception)]
    assert sorted(o.created for o in done) == [False] + [True] * 9
    created = [uuid.UUID(o.body["id"]) for o in done if o.created]
    assert len(transactions(migrated, created)) == 9  # every other command is stored
    holders = [o for o in (outcomes[7], outcomes[9]) if not isinstance(o, Exception)]
    assert len(holders) == 1  # the address went to exactly one of its two registrations


def test_a_principal_sees_no_group_commit_difference_with_idempotent_retries(
    commands: CustomerCommands, migrated: Settings
) -> None:
    """Concurrent retries of one Idempotency-Key in one group: one customer, one answer."""
    org = f"org-{uuid.uuid4().hex[:8]}"
    key = uuid.uuid4().hex
    who = Principal(sub="tester", org=org, roles=frozenset({"admin"}))
    body = profile(f"once.{org}@example.com", "Once")
    calls = [lambda: commands.create(who, body, idempotency_key=key) for _ in range(8)]
    outcomes = run_queued(commands, migrated, calls)
    assert not any(isinstance(o, Exception) for o in outcomes), outcomes
    assert len({o.body["id"] for o in outcomes}) == 1
    assert {o.consistency_token for o in outcomes} == {outcomes[0].consistency_token}


def test_saves_after_failed_groups_on_the_same_connections_never_fail_otherwise(
    migrated: Settings,
) -> None:
    """Rounds of concurrent creates on one or two connections, each round mixing retries of
    one Idempotency-Key, new customers and registrations of one taken address: groups fail
    and are made again save by save. Every create is stored or refused as the conflict it is
    (a replay, 409), never anything else. Pipelines aborted by such conflicts once left
    psycopg counting statements as prepared that the server never prepared: "prepared
    statement does not exist", a 500 (7 of 800 creates here before the fix)."""
    app = Customers(migrated, pool_size=1, group_commit=True)
    commands = CustomerCommands(app)
    org = f"org-{uuid.uuid4().hex[:8]}"
    who = Principal(sub="tester", org=org, roles=frozenset({"admin"}))
    unexpected: list[Exception] = []

    def create(email: str, key: str | None) -> None:
        try:
            commands.create(who, profile(email, "Someone"), idempotency_key=key)
        except DomainError as e:
            if e.code != Code.CONFLICT:
                unexpected.append(e)
        except Exception as e:
            unexpected.append(e)

    try:
        for r in range(40):
            key = uuid.uuid4().hex
            calls = [(f"once{r}.{org}@example.com", key)] * 8
            calls += [(f"new{r}.{i}.{org}@example.com", uuid.uuid4().hex) for i in range(8)]
            calls += [(f"taken{r}.{org}@example.com", None)] * 4
            threads = [threading.Thread(target=create, args=call) for call in calls]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
    finally:
        app.close()
    assert unexpected == []
