"""customers_view + customers_docs + segment_facts: one row each per customer.

customers_view holds narrow typed columns for list filters and sorts; customers_docs holds
`doc`, a `json` value with exactly `domain.customer.representation(...)` as orjson rendered it
(field order kept), so the read API returns its bytes untouched; segment_facts holds what
segment criteria read (`domain.segment_facts.customer_facts`, see projections/segment_sql.py).

A batch costs a fixed number of statements whatever its size: one SELECT of the docs the batch
touches (ids not created in the batch), a fold of the events in Python, then one binary COPY
into a temp table per row shape and one INSERT ... ON CONFLICT DO UPDATE per table (one DELETE
per table for erasures).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import orjson
import psycopg
from psycopg import sql
from psycopg.abc import Buffer
from psycopg.adapt import Loader

from domain.consent import with_consents
from domain.customer import representation
from domain.segment_facts import customer_facts
from domain.selection import FILTERED_FIELDS
from domain.topics import CUSTOMER_ANONYMIZED, CUSTOMER_ERASED, CUSTOMER_EVENTS
from domain.values import CustomerStatus, utc_iso
from eventstore.mapper import Shredded, topic_of
from projections import positions, segment_sql
from projections.positions import Connection

log = logging.getLogger(__name__)

VIEW = "customers_view"  # also the name of its row in `positions`
DOCS = "customers_docs"
FACTS = segment_sql.TABLE
# The list filters over VIEW (allow-list: the only SQL a request can select; values are
# parameters), shared by the listing, reports and model fits.
FILTERS = {
    # Exact e-mail: the owner of its uniqueness claim (a keyed hash), never a read of addresses.
    "email": "id = (SELECT owner_id FROM unique_claims"
    " WHERE scope = 'email' AND org_id = %(org)s AND key_hash = %(email)s)",
    "status": "status = %(status)s",
    "country": "country_code = %(country)s",
    "city": "lower(city) = lower(%(city)s)",
    "gender": "gender = %(gender)s",
    "tags": "tags @> %(tags)s::text[]",
    "age_min": "age >= %(age_min)s",
    "age_max": "age <= %(age_max)s",
    "created_from": "created_at >= %(created_from)s",
    "created_to": "created_at <= %(created_to)s",
}
assert FILTERS.keys() == FILTERED_FIELDS.keys()  # every filter says which field it reads


def selection_sql(
    selection: dict[str, Any] | None, column: str = "customer_id"
) -> tuple[sql.Composable, dict[str, Any]]:
    """` AND <column> IN (...)` for a segment's current members or list filters (stored as
    their FILTERS parameters)."""
    if not selection or not (selection.get("segmentId") or selection.get("filters")):
        return sql.SQL(""), {}  # everyone (an empty filter set selects no less)
    if "segmentId" in selection:
        members: sql.Composable = sql.SQL(
            "SELECT customer_id FROM segment_membership"
            " WHERE segment_id = %(segment)s AND left_at IS NULL"
        )
        params: dict[str, Any] = {"segment": UUID(selection["segmentId"])}
    else:
        params = dict(selection["filters"])
        members = sql.SQL("SELECT id FROM customers_view WHERE org_id = %(org)s AND {}").format(
            sql.SQL(" AND ").join(sql.SQL(FILTERS[k]) for k in params)
        )
    return sql.SQL(" AND {} IN ({})").format(sql.Identifier(column), members), params


_PREFIX = CUSTOMER_EVENTS  # other aggregates are skipped
CREATED = _PREFIX + "Created"
UPDATED = _PREFIX + "Updated"
EMAIL_CHANGE_REQUESTED = _PREFIX + "EmailChangeRequested"
EMAIL_VERIFIED = _PREFIX + "EmailVerified"
STATUS_CHANGED = _PREFIX + "StatusChanged"
ACTIVE_ORDERS_CHANGED = _PREFIX + "ActiveOrdersChanged"
CONSENT_CHANGED = _PREFIX + "ConsentChanged"
DELETED = _PREFIX + "Deleted"
RESTORED = _PREFIX + "Restored"


_PROFILE_KEYS = ("email", "name", "age", "gender", "location", "preferences", "tags", "metadata")

_COLUMNS = (
    "org_id",
    "id",
    "email",
    "name",
    "age",
    "gender",
    "country_code",
    "city",
    "region",
    "postal_code",
    "tags",
    "status",
    "marketing_consent",
    "data_processing_consent",
    "created_at",
    "updated_at",
    "last_activity",
    "version",
    "doc",
)
_TYPES = (
    "text",
    "uuid",
    "text",
    "text",
    "int4",
    "text",
    "text",
    "text",
    "text",
    "text",
    "text[]",
    "text",
    "bool",
    "bool",
    "timestamptz",
    "timestamptz",
    "timestamptz",
    "int4",
    "text",
)
_STAGE = sql.Identifier("customers_view_batch")
_FACTS_STAGE = sql.Identifier("segment_facts_batch")
_VIEW = sql.Identifier(VIEW)
_DOCS = sql.Identifier(DOCS)
_FACTS = sql.Identifier(FACTS)
_VIEW_COLUMNS = [c for c in _COLUMNS if c != "doc"]


def _upsert(
    table: sql.Identifier, columns: Sequence[str], stage: sql.Identifier = _STAGE
) -> sql.Composed:
    return sql.SQL(
        "INSERT INTO {table} AS t ({cols}) SELECT {values} FROM {stage}"
        " ON CONFLICT (id) DO UPDATE SET {updates} WHERE t.version < EXCLUDED.version"
    ).format(
        table=table,
        cols=sql.SQL(", ").join(map(sql.Identifier, columns)),
        values=sql.SQL(", ").join(
            sql.SQL("{}::json").format(sql.Identifier(c)) if c == "doc" else sql.Identifier(c)
            for c in columns
        ),
        stage=stage,
        updates=sql.SQL(", ").join(
            sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c))
            for c in columns
            if c not in {"org_id", "id"}
        ),
    )


def _create_stage(
    stage: sql.Identifier, columns: Sequence[str], types: Sequence[str]
) -> sql.Composed:
    return sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} ({}) ON COMMIT DELETE ROWS").format(
        stage,
        sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(t))
            for c, t in zip(columns, types, strict=True)
        ),
    )


def _copy_stage(stage: sql.Identifier, columns: Sequence[str]) -> sql.Composed:
    return sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        stage, sql.SQL(", ").join(map(sql.Identifier, columns))
    )


# Rendered once: a composed statement would be rendered again at every execution.
CREATE_STAGE = _create_stage(_STAGE, _COLUMNS, _TYPES).as_bytes()
COPY_STAGE = _copy_stage(_STAGE, _COLUMNS).as_bytes()
CREATE_FACTS_STAGE = _create_stage(_FACTS_STAGE, segment_sql.COLUMNS, segment_sql.TYPES).as_bytes()
COPY_FACTS_STAGE = _copy_stage(_FACTS_STAGE, segment_sql.COLUMNS).as_bytes()
UPSERT_VIEW = _upsert(_VIEW, _VIEW_COLUMNS).as_bytes()
UPSERT_DOCS = _upsert(_DOCS, ["id", "org_id", "version", "doc"]).as_bytes()
UPSERT_FACTS = _upsert(_FACTS, segment_sql.COLUMNS, _FACTS_STAGE).as_bytes()
LOAD = sql.SQL("SELECT org_id, id, doc FROM {} WHERE id = ANY(%s)").format(_DOCS).as_bytes()
DELETE = [
    sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(table).as_bytes()
    for table in (_VIEW, _DOCS, _FACTS)
]
TRUNCATE = sql.SQL("TRUNCATE {}, {}, {}").format(_VIEW, _DOCS, _FACTS).as_bytes()


class RawJsonLoader(Loader):
    """json columns as the bytes PostgreSQL holds: no parse when passed through."""

    def load(self, data: Buffer) -> bytes:
        return bytes(data)


def use_raw_json(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> None:
    conn.adapters.register_loader("json", RawJsonLoader)


@dataclass(slots=True)
class _State:
    """A customer while a batch is folded; enough to render `representation()`."""

    org_id: str
    id: UUID
    profile: dict[str, Any]
    status: str
    created_at: datetime
    created_iso: str
    updated_at: datetime
    last_activity: datetime
    version: int
    pending_email: str | None
    active_orders: int
    segments: list[str]

    @classmethod
    def new(cls, event: Any, status: CustomerStatus, created_at: datetime) -> _State:
        """A customer as its first readable event (Created, or Anonymized) makes it."""
        return cls(
            org_id=event.org_id,
            id=event.originator_id,
            profile=event.profile,
            status=status.value,
            created_at=created_at,
            created_iso=utc_iso(created_at),
            updated_at=event.timestamp,
            last_activity=event.timestamp,
            version=event.originator_version,
            pending_email=None,
            active_orders=0,
            segments=[],
        )

    @classmethod
    def from_row(cls, org_id: str, customer_id: UUID, doc: bytes) -> _State:
        d = orjson.loads(doc)
        return cls(
            org_id=org_id,
            id=customer_id,
            profile={k: d[k] for k in _PROFILE_KEYS},
            status=d["status"],
            created_at=datetime.fromisoformat(d["createdAt"]),
            created_iso=d["createdAt"],
            updated_at=datetime.fromisoformat(d["updatedAt"]),
            last_activity=datetime.fromisoformat(d["lastActivity"]),
            version=d["version"],
            pending_email=d["pendingEmail"],
            active_orders=d["activeOrders"],
            segments=d["segments"],
        )

    def row(self) -> tuple[Any, ...]:
        p = self.profile
        loc = p.get("location") or {}
        prefs = p["preferences"]
        doc = representation(
            customer_id=str(self.id),
            profile=p,
            status=self.status,
            version=self.version,
            created_at=self.created_iso,
            updated_at=utc_iso(self.updated_at),
            last_activity=utc_iso(self.last_activity),
            pending_email=self.pending_email,
            active_orders=self.active_orders,
            segments=self.segments,
        )
        return (
            self.org_id,
            self.id,
            p["email"],
            p["name"],
            p.get("age"),
            p.get("gender"),
            loc.get("countryCode"),
            loc.get("city"),
            loc.get("region"),
            loc.get("postalCode"),
            p.get("tags") or [],
            self.status,
            bool(prefs.get("marketingConsent")),
            bool(prefs.get("dataProcessingConsent")),
            self.created_at,
            self.updated_at,
            self.last_activity,
            self.version,
            orjson.dumps(doc).decode(),
        )

    def facts_row(self) -> tuple[Any, ...]:
        """The customer's segment_facts row (see domain.segment_facts.customer_facts)."""
        facts = customer_facts(
            self.profile,
            status=self.status,
            created_at=self.created_at,
            last_activity=self.last_activity,
        )
        return segment_sql.facts_row(self.org_id, self.id, self.version, facts)


class UnknownCustomerEvent(Exception):
    """A Customer event this projection has no rule for: halt rather than drift."""


def _apply_event(state: _State, event: Any, topic: str) -> None:
    if topic == UPDATED:
        state.profile = {**state.profile, **event.changes}
    elif topic == EMAIL_CHANGE_REQUESTED:
        state.pending_email = event.new_email
    elif topic == EMAIL_VERIFIED:
        state.profile = {**state.profile, "email": event.email}
        state.pending_email = None
    elif topic == STATUS_CHANGED:
        state.status = str(event.status)
    elif topic == ACTIVE_ORDERS_CHANGED:
        state.active_orders = int(event.active_orders)
    elif topic == CONSENT_CHANGED:
        preferences = with_consents(state.profile["preferences"], event.changes)
        state.profile = {**state.profile, "preferences": preferences}
    elif topic == DELETED:
        state.status = CustomerStatus.DELETED.value
    elif topic == RESTORED:
        state.status = str(event.status)
    else:
        # Skipping it would leave version (hence ETag) and content silently behind.
        raise UnknownCustomerEvent(f"no projection rule for {topic}")


class CustomersView:
    """customers_view + customers_docs (a projections.runner.View)."""

    name = VIEW

    def accepts(self, topic: str) -> bool:
        return topic.startswith(_PREFIX)

    def prepare(self, conn: Connection) -> None:
        use_raw_json(conn)
        conn.execute(CREATE_STAGE)
        conn.execute(CREATE_FACTS_STAGE)

    def truncate(self, conn: Connection) -> None:
        conn.execute(TRUNCATE)

    def apply(self, conn: Connection, events: Sequence[Any]) -> None:
        # Ids whose current row is needed: those touched but not created in this batch.
        created: set[UUID] = set()
        wanted: set[UUID] = set()
        for e in events:
            if isinstance(e, Shredded):
                continue
            if topic_of(e) == CREATED:
                created.add(e.originator_id)
            elif e.originator_id not in created:
                wanted.add(e.originator_id)

        states: dict[UUID, _State] = {}
        if wanted:
            for org_id, cid, doc in conn.execute(LOAD, (list(wanted),)):
                states[cid] = _State.from_row(org_id, cid, doc)

        erased: set[UUID] = set()
        dirty: set[UUID] = set()
        for e in events:
            cid = e.originator_id
            topic = topic_of(e)
            if topic == CUSTOMER_ANONYMIZED:  # all there is now; earlier events are unreadable
                erased.discard(cid)
                states[cid] = _State.new(
                    e, CustomerStatus.ANONYMIZED, datetime.fromisoformat(e.created_at)
                )
                dirty.add(cid)
                continue
            if isinstance(e, Shredded) or topic == CUSTOMER_ERASED:
                states.pop(cid, None)
                dirty.discard(cid)
                erased.add(cid)
                continue
            if cid in erased:
                continue
            ts: datetime = e.timestamp
            if topic == CREATED:
                states[cid] = _State.new(e, CustomerStatus.ACTIVE, ts)
                dirty.add(cid)
                continue
            state = states.get(cid)
            if state is None:
                log.error(
                    "event for a customer missing from the view; skipped",
                    extra={"customerId": str(cid), "topic": topic},
                )
                continue
            if e.originator_version <= state.version:
                continue  # already in the row
            if e.originator_version != state.version + 1:
                log.error(
                    "version gap in customer events",
                    extra={
                        "customerId": str(cid),
                        "have": state.version,
                        "got": e.originator_version,
                    },
                )
            _apply_event(state, e, topic)
            state.version = e.originator_version
            state.updated_at = ts
            state.last_activity = max(state.last_activity, ts)
            dirty.add(cid)

        if erased:
            for delete in DELETE:
                conn.execute(delete, (list(erased),))
        if dirty:
            _write(conn, [states[cid] for cid in dirty])


def _write(conn: Connection, states: Sequence[_State]) -> None:
    """Upsert the rows of `states` into customers_view, customers_docs and segment_facts."""
    with conn.cursor() as cur:
        with cur.copy(COPY_STAGE) as copy:
            copy.set_types(_TYPES)
            for state in states:
                copy.write_row(state.row())
        with cur.copy(COPY_FACTS_STAGE) as copy:
            copy.set_types(segment_sql.TYPES)
            for state in states:
                copy.write_row(state.facts_row())
        cur.execute(UPSERT_VIEW)
        cur.execute(UPSERT_DOCS)
        cur.execute(UPSERT_FACTS)


def lag(conn: Connection) -> int:
    """Notifications not yet in customers_view (for /ready)."""
    return positions.lag(conn, VIEW)
