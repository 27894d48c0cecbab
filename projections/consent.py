"""consent_ledger: one row per consent statement of a customer (see migrations/0006). The
statement's IP address and user agent are not copied here (sensitive): see `origins`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from psycopg.types.json import Jsonb

from domain.consent import consents
from domain.topics import CUSTOMER_EVENTS
from eventstore.mapper import SHREDDING_TOPICS, Shredded, topic_of
from projections.positions import Connection

VIEW = "consent_ledger"
_CREATED = CUSTOMER_EVENTS + "Created"
_UPDATED = CUSTOMER_EVENTS + "Updated"
_CONSENT = CUSTOMER_EVENTS + "ConsentChanged"

COPY = (
    "COPY consent_ledger (customer_id, org_id, version, at, consents, actor, source,"
    " policy_version) FROM STDIN (FORMAT BINARY)"
)
_TYPES = ("uuid", "text", "int4", "timestamptz", "jsonb", "text", "text", "text")
STATEMENTS = (
    "SELECT customer_id, org_id, consents FROM consent_ledger"
    " WHERE customer_id = ANY(%s) ORDER BY customer_id, id"
)
FORGET = "DELETE FROM consent_ledger WHERE customer_id = ANY(%s)"
TRUNCATE = "TRUNCATE consent_ledger"


class ConsentView:
    """A projections.runner.View. A profile update is a statement only when it changed a
    purpose, so the customers' current state is folded from their earlier rows."""

    name = VIEW

    def accepts(self, topic: str) -> bool:
        return topic in {_CREATED, _UPDATED, _CONSENT, *SHREDDING_TOPICS}

    def prepare(self, conn: Connection) -> None:
        pass

    def truncate(self, conn: Connection) -> None:
        conn.execute(TRUNCATE)

    def apply(self, conn: Connection, events: Sequence[Any]) -> None:
        # Customers whose earlier statements matter: consent changes, and profile updates
        # that may have changed a purpose.
        touched = [
            e.originator_id
            for e in events
            if topic_of(e) == _CONSENT or (topic_of(e) == _UPDATED and "preferences" in e.changes)
        ]
        state: dict[UUID, tuple[str, dict[str, bool]]] = {}
        if touched:
            for cid, org, stated in conn.execute(STATEMENTS, (touched,)):
                state[cid] = (org, {**state.get(cid, (org, {}))[1], **stated})
        rows: list[tuple[Any, ...]] = []
        forget: list[UUID] = []
        for e in events:
            cid, topic = e.originator_id, topic_of(e)
            if isinstance(e, Shredded) or topic in SHREDDING_TOPICS:
                forget.append(cid)
                state.pop(cid, None)
                rows = [r for r in rows if r[0] != cid]
                continue
            version, at = e.originator_version, e.timestamp
            if topic == _CREATED:
                now = consents(e.profile["preferences"])
                state[cid] = (e.org_id, now)
                rows.append((cid, e.org_id, version, at, now, e.actor, "registration"))
            elif topic == _UPDATED and "preferences" in e.changes and cid in state:
                org, before = state[cid]
                now = consents(e.changes["preferences"])
                changed = {p: v for p, v in now.items() if before.get(p) != v}
                if changed:
                    state[cid] = (org, {**before, **changed})
                    rows.append((cid, org, version, at, changed, e.actor, "profile_update"))
            elif topic == _CONSENT and cid in state:
                org, before = state[cid]
                state[cid] = (org, {**before, **e.changes})
                rows.append((cid, org, version, at, e.changes, e.actor, e.source, e.policy_version))
        if forget:
            conn.execute(FORGET, (forget,))
        if rows:
            with conn.cursor() as cur, cur.copy(COPY) as copy:
                copy.set_types(_TYPES)
                for r in rows:
                    copy.write_row((*r[:4], Jsonb(r[4]), *r[5:], *(None,) * (8 - len(r))))


def origins(events: Sequence[Any]) -> dict[int, dict[str, str | None]]:
    """IP address and user agent of each consent statement, by version, from the customer's
    decrypted events."""
    return {
        e.originator_version: {"ipAddress": e.ip_address, "userAgent": e.user_agent}
        for e in events
        if topic_of(e) == _CONSENT
    }
