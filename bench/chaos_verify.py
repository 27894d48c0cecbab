"""The checks of `make chaos`, run once the load has stopped and the followers caught up.

- the event store, decrypted: every acknowledged create and update is there once, nothing
  refused is there (`StoreFacts`, `check_ops`);
- the read models equal a rebuild from the event store (`compare_read_models`: a copy of the
  database made with CREATE DATABASE … TEMPLATE, `customers projections rebuild` run on it,
  then a table-by-table comparison of the rows as multisets);
- JetStream holds every public event exactly once, in notification order (`check_stream`);
- every acknowledged tracked event is stored once and counted once (`check_tracking`);
- the audit trail has one entry per event and its chain verifies (`check_audit`);
- segment members: the write side's table equals the projected open memberships
  (`check_membership`).
"""

from __future__ import annotations

import itertools
import re
import subprocess
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql

from bench.chaos_load import Op

READ_MODELS = (
    "customers_view",
    "customers_docs",
    "segment_facts",
    "segments_view",
    "segment_membership",
    "segment_stats",
    "consent_ledger",
)
# Columns that a rebuild legitimately renumbers.
IGNORED_COLUMNS = {("consent_ledger", "id")}
CREATE_TAGS = ("c", "x", "i")  # chaos_load: creates, the contended customer, idempotency rounds
UPDATE_TAGS = ("u", "w")  # chaos_load: updates, contended updates


@dataclass
class Check:
    """One line of the pipeline table."""

    name: str
    compared: int
    lost: int = 0
    duplicated: int = 0
    other: int = 0  # unexpected rows, wrong order, broken chain …
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.duplicated == 0 and self.other == 0


# ----------------------------------------------------------------------------- event store


@dataclass
class StoreFacts:
    """What the event store holds, decrypted."""

    notifications: int = 0
    head: int = 0
    created: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    updated: dict[str, list[tuple[str, int]]] = field(default_factory=lambda: defaultdict(list))
    events: dict[tuple[str, int], str] = field(default_factory=dict)  # (id, version) → name
    per_customer: Counter[str] = field(default_factory=Counter)  # Updated events
    public: list[tuple[int, str]] = field(default_factory=list)  # (notification id, msg id)
    audit_subjects: Counter[str] = field(default_factory=Counter)


def read_store(settings: Any) -> StoreFacts:
    """Every notification, decoded with the customers' keys (master key of this run)."""
    from domain.topics import CUSTOMER_MODULE
    from eventstore.application import Customers
    from eventstore.mapper import Shredded
    from eventstore.public_events import (
        customer_id,
        event_name,
        event_org,
        membership_event,
        public_event,
    )

    facts = StoreFacts()
    app = Customers(settings, pool_size=2)
    orgs: dict[UUID, str] = {}
    try:
        start = 0
        while True:
            batch = app.recorder.select_notifications(start, 1000, inclusive_of_start=False)
            if not batch:
                break
            app.keys.preload(
                n.originator_id
                for n in batch
                if n.topic.startswith(CUSTOMER_MODULE) and isinstance(n.originator_id, UUID)
            )
            for n in batch:
                facts.notifications += 1
                facts.head = n.id
                event: Any = app.mapper.to_domain_event(n)
                membership = membership_event(event)
                if membership is not None:
                    facts.public.append((n.id, membership["id"]))
                    facts.audit_subjects[str(event.segment_id)] += 1
                    continue
                facts.audit_subjects[str(n.originator_id)] += 1
                cid = customer_id(event)
                if cid is None or isinstance(event, Shredded):
                    continue
                org = event_org(event)
                if org is not None:
                    orgs[cid] = org
                name = event_name(event) or "?"
                state = vars(event)
                version = int(state["originator_version"])
                facts.events[(str(cid), version)] = name
                if name == "Created":
                    for tag in state["profile"].get("tags", []):
                        if tag.startswith(CREATE_TAGS):
                            facts.created[tag].append(str(cid))
                elif name == "Updated":
                    facts.per_customer[str(cid)] += 1
                    for tag in state["changes"].get("tags", []) or []:
                        if tag.startswith(UPDATE_TAGS):
                            facts.updated[tag].append((str(cid), version))
                public = public_event(event, orgs.get(cid, "?"))
                if public is not None:
                    facts.public.append((n.id, public["id"]))
            start = batch[-1].id
    finally:
        app.close()
    return facts


@dataclass
class OpTally:
    sent: int = 0
    retried: int = 0  # needed more than one attempt
    acked: int = 0
    in_doubt: int = 0
    rejected: int = 0
    lost: int = 0
    duplicated: int = 0
    phantom: int = 0  # refused with a definite answer, stored anyway
    lost_examples: list[str] = field(default_factory=list)
    dup_examples: list[str] = field(default_factory=list)

    def add(self, other: OpTally) -> None:
        names = (
            "sent",
            "retried",
            "acked",
            "in_doubt",
            "rejected",
            "lost",
            "duplicated",
            "phantom",
        )
        for name in names:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.lost_examples += other.lost_examples
        self.dup_examples += other.dup_examples


def check_ops(ops: Iterable[Op], facts: StoreFacts, stored_events: dict[str, int]) -> OpTally:
    """Acknowledged writes stored exactly once; refused ones not at all (see chaos_load)."""
    tally = OpTally()
    seen_tags: set[str] = set()
    for op in ops:
        if op.kind == "calc":
            continue
        tally.sent += 1
        tally.retried += op.attempts > 1
        tally.acked += op.outcome == "acked"
        tally.in_doubt += op.outcome == "in_doubt"
        tally.rejected += op.outcome == "rejected"
        if op.kind in ("create", "idem_create"):
            ids = set(facts.created.get(op.tag, []))
            stored = len(facts.created.get(op.tag, []))
            if op.outcome == "acked" and op.customer_id not in ids:
                tally.lost += 1
                tally.lost_examples.append(f"create {op.tag} → {op.customer_id}")
            if stored > 1 and op.tag not in seen_tags:
                tally.duplicated += stored - 1
                tally.dup_examples.append(f"create {op.tag}: customers {sorted(ids)}")
            if op.outcome == "rejected" and stored and op.tag not in seen_tags:
                tally.phantom += 1
            seen_tags.add(op.tag)
        elif op.kind in ("update", "cas_update"):
            found = facts.updated.get(op.tag, [])
            if op.outcome == "acked" and (op.customer_id, op.version) not in found:
                tally.lost += 1
                tally.lost_examples.append(f"update {op.tag} → {op.customer_id} v{op.version}")
            if len(found) > 1:
                tally.duplicated += len(found) - 1
                tally.dup_examples.append(f"update {op.tag}: {found}")
            if op.outcome == "rejected" and found:
                tally.phantom += 1
        elif op.kind in ("track", "nats_track"):
            counts = [stored_events.get(e, 0) for e in op.event_ids]
            if op.outcome == "acked":
                missing = sum(1 for c in counts if c == 0)
                tally.lost += missing
                if missing:
                    tally.lost_examples.append(f"{op.kind} {op.tag}: {missing} events missing")
            extra = sum(c - 1 for c in counts if c > 1)
            tally.duplicated += extra
            if extra:
                tally.dup_examples.append(f"{op.kind} {op.tag}: {extra} events stored twice")
            if op.outcome == "rejected" and any(counts):
                tally.phantom += 1
    return tally


# ----------------------------------------------------------------------------- tracking


def stored_tracking(conn: psycopg.Connection[Any]) -> dict[str, int]:
    rows = conn.execute("SELECT id::text, count(*) FROM customer_events GROUP BY id").fetchall()
    return {str(i): int(c) for i, c in rows}


def check_tracking(
    conn: psycopg.Connection[Any], ops: Iterable[Op], stored: dict[str, int]
) -> Check:
    acked = [
        e
        for op in ops
        if op.kind in ("track", "nats_track") and op.outcome == "acked"
        for e in op.event_ids
    ]
    lost = sum(1 for e in acked if stored.get(e, 0) == 0)
    duplicated = sum(c - 1 for c in stored.values() if c > 1)
    # Running totals count each stored event once.
    wrong = conn.execute(
        "SELECT count(*) FROM (SELECT customer_id, count(*) AS n FROM customer_events GROUP BY 1) e"
        " FULL JOIN customer_activity a USING (customer_id)"
        " WHERE coalesce(e.n, 0) <> coalesce(a.event_count, 0)"
    ).fetchone()
    mismatched = int(wrong[0]) if wrong else 0
    return Check(
        "tracked events (HTTP batch + NATS ingest)",
        len(acked),
        lost=lost,
        duplicated=duplicated,
        other=mismatched,
        detail=f"{sum(stored.values())} stored; customers whose totals differ from their "
        f"events: {mismatched}",
    )


# ----------------------------------------------------------------------------- audit


def check_audit(conn: psycopg.Connection[Any], settings: Any, facts: StoreFacts) -> Check:
    from eventstore.compliance import verify
    from eventstore.keys import AUDIT_KEY_PURPOSE, Keyring

    rows = conn.execute(
        "SELECT subject_id::text, count(*) FROM audit_log WHERE outcome = 'committed' GROUP BY 1"
    ).fetchall()
    got = Counter({str(s): int(c) for s, c in rows})
    expected = facts.audit_subjects
    lost = sum(max(0, n - got.get(s, 0)) for s, n in expected.items())
    duplicated = sum(max(0, n - expected.get(s, 0)) for s, n in got.items())
    verdict = verify(conn, Keyring.load(conn, settings).derive(AUDIT_KEY_PURPOSE))
    return Check(
        "audit trail: one entry per event, chain intact",
        facts.notifications,
        lost=lost,
        duplicated=duplicated,
        other=0 if verdict.ok else 1,
        detail=f"{sum(got.values())} entries; chain "
        + ("verifies" if verdict.ok else f"BROKEN: {verdict.reason}"),
    )


# ----------------------------------------------------------------------------- membership


def check_membership(conn: psycopg.Connection[Any], preview: dict[str, int]) -> Check:
    """Write-side members = projected open stints = the criteria evaluated now."""
    members = set(conn.execute("SELECT segment_id::text, customer_id::text FROM segment_members"))
    open_rows = conn.execute(
        "SELECT segment_id::text, customer_id::text FROM segment_membership WHERE left_at IS NULL"
    ).fetchall()
    opened = set(open_rows)
    twice = len(open_rows) - len(opened)
    per_segment = Counter(s for s, _ in members)
    off = {s: (per_segment.get(s, 0), n) for s, n in preview.items() if per_segment.get(s, 0) != n}
    return Check(
        "segment members (write side = projection = criteria now)",
        len(members),
        lost=len(members - opened),
        duplicated=len(opened - members) + twice,
        other=len(off),
        detail=f"members per segment {dict(per_segment)}; criteria now {preview}"
        + (f"; differ (members, criteria): {off}" if off else ""),
    )


# ----------------------------------------------------------------------------- JetStream


async def read_stream(nats_url: str, stream: str, prefix: str) -> list[tuple[int, str, int]]:
    """Every message of the relay's stream: (stream seq, Nats-Msg-Id, notification id)."""
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    from eventstore.relay import MSG_ID_HEADER, NOTIFICATION_HEADER

    nc = await nats.connect(nats_url, name="chaos-check")
    try:
        js = nc.jetstream(timeout=5.0)
        total = (await js.stream_info(stream)).state.messages
        sub = await js.pull_subscribe(
            f"{prefix}.>",
            stream=stream,
            config=ConsumerConfig(
                ack_policy=AckPolicy.NONE,
                deliver_policy=DeliverPolicy.ALL,
                inactive_threshold=60.0,
            ),
        )
        out: list[tuple[int, str, int]] = []
        while len(out) < total:
            try:
                msgs = await sub.fetch(500, timeout=2.0)
            except nats.errors.TimeoutError:
                break
            for m in msgs:
                headers = m.headers or {}
                out.append(
                    (
                        int(m.metadata.sequence.stream),
                        headers.get(MSG_ID_HEADER, ""),
                        int(headers.get(NOTIFICATION_HEADER, "0")),
                    )
                )
        await sub.unsubscribe()
        return sorted(out)
    finally:
        await nc.close()


def check_stream(messages: list[tuple[int, str, int]], facts: StoreFacts) -> Check:
    expected = Counter(msg_id for _, msg_id in facts.public)
    got = Counter(msg_id for _, msg_id, _ in messages)
    lost = sum(1 for m in expected if m not in got)
    duplicated = sum(n - 1 for n in got.values() if n > 1)
    unexpected = sum(1 for m in got if m not in expected)
    notification_ids = [nid for _, _, nid in messages]
    disorder = sum(1 for a, b in itertools.pairwise(notification_ids) if b < a)
    return Check(
        "JetStream: every public event once, in log order",
        len(expected),
        lost=lost,
        duplicated=duplicated,
        other=unexpected + disorder,
        detail=f"{len(messages)} messages in the stream; unexpected {unexpected}; "
        f"out of notification order {disorder}",
    )


# ----------------------------------------------------------------------------- read models


def _columns(conn: psycopg.Connection[Any], table: str) -> list[str]:
    rows = conn.execute(
        "SELECT column_name FROM information_schema.columns"
        " WHERE table_schema = 'public' AND table_name = %s AND is_generated = 'NEVER'"
        " ORDER BY ordinal_position",
        (table,),
    ).fetchall()
    return [str(r[0]) for r in rows if (table, r[0]) not in IGNORED_COLUMNS]


def _rows(
    conn: psycopg.Connection[Any], table: str, columns: list[str]
) -> Counter[tuple[Any, ...]]:
    query = sql.SQL("SELECT {} FROM {}").format(
        sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in columns),
        sql.Identifier(table),
    )
    return Counter(tuple(r) for r in conn.execute(query))


def compare_read_models(
    admin_url: str,
    source_url: str,
    scratch_db: str,
    source_db: str,
    env: dict[str, str],
    command: list[str],
    notifications: int,
) -> list[Check]:
    """Copy the database (the service's processes are stopped), rebuild every view on the
    copy with `customers projections rebuild` (which must replay all `notifications`), and
    compare each read-model table, rows as multisets."""
    from service.embedded import with_database

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(scratch_db)))
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(scratch_db), sql.Identifier(source_db)
            )
        )
    scratch_url = with_database(admin_url, scratch_db)
    done = subprocess.run(
        [*command, "projections", "rebuild"],
        env={**env, "DATABASE_URL": scratch_url},
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"projections rebuild failed:\n{done.stdout}\n{done.stderr}")
    replayed = re.search(r"rebuilt: (\d+) events replayed", done.stdout)
    if replayed is None or int(replayed.group(1)) != notifications:
        raise RuntimeError(
            f"the rebuild replayed {replayed and replayed.group(1)} events, not {notifications}:"
            f"\n{done.stdout}\n{done.stderr}"
        )
    checks = []
    with psycopg.connect(source_url) as live, psycopg.connect(scratch_url) as rebuilt:
        for table in READ_MODELS:
            columns = _columns(live, table)
            have, want = _rows(live, table, columns), _rows(rebuilt, table, columns)
            missing = sum((want - have).values())  # in the rebuild, not in the live view
            extra = sum((have - want).values())  # in the live view, not in the rebuild
            checks.append(
                Check(
                    f"read model {table} = rebuild",
                    sum(want.values()),
                    lost=missing,
                    duplicated=extra,
                    detail=f"{sum(have.values())} live rows, {sum(want.values())} rebuilt",
                )
            )
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(scratch_db)))
    return checks
