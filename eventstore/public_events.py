"""Domain event → thin public event for the NATS stream (see docs/events.md).

Pure functions, no I/O. A public event carries ids (customer ids included: pseudonymous keys,
never contact data), the event type, the organization,
changed field NAMES, status values, counts, timestamps and the aggregate version — never a
profile value (e-mail, name, location …) and never the actor. Events that are not published
(shredded events of erased customers, event types without a public form) map to None.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from typing import Any
from uuid import UUID

from domain import membership
from domain.topics import CUSTOMER_EVENTS
from domain.values import utc_iso
from eventstore.mapper import Shredded

# Domain event class name → (public type, subject kind).
PUBLIC_TYPES: dict[str, tuple[str, str]] = {
    "Created": ("CustomerCreated", "customer.created"),
    "Updated": ("CustomerUpdated", "customer.updated"),
    "EmailChangeRequested": ("EmailChangeRequested", "customer.email_change_requested"),
    "EmailVerified": ("EmailVerified", "customer.email_verified"),
    "StatusChanged": ("StatusChanged", "customer.status_changed"),
    "ActiveOrdersChanged": ("ActiveOrdersChanged", "customer.active_orders_changed"),
    "Deleted": ("CustomerDeleted", "customer.deleted"),
    "Restored": ("CustomerRestored", "customer.restored"),
    "ConsentChanged": ("ConsentChanged", "customer.consent_changed"),
    "Anonymized": ("CustomerAnonymized", "customer.anonymized"),
    "Erased": ("CustomerErased", "customer.erased"),
}
# Membership events (domain.membership) keep their names; their streams are segments'.
MEMBERSHIP_KINDS: dict[str, str] = {
    "SegmentJoined": "segment.joined",
    "SegmentLeft": "segment.left",
    "SegmentCalculated": "segment.calculated",
}
KINDS: dict[str, str] = {**dict(PUBLIC_TYPES.values()), **MEMBERSHIP_KINDS}

# An org id is used verbatim as a subject token when it is this safe; otherwise the token is
# "_" + 32 hex digits of its SHA-256. A verbatim token never starts with "_", so the two
# forms cannot collide.
_SAFE_TOKEN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def org_token(org_id: str) -> str:
    """The subject token of an organization (stable, collision-free, valid in subjects)."""
    if _SAFE_TOKEN.match(org_id):
        return org_id
    return "_" + hashlib.sha256(org_id.encode()).hexdigest()[:32]


def subject(prefix: str, public: dict[str, Any]) -> str:
    """`<prefix>.<org token>.<kind>`, e.g. customers.acme.customer.created."""
    return f"{prefix}.{org_token(public['orgId'])}.{KINDS[public['type']]}"


def event_name(event: object) -> str | None:
    """The Customer event class name ("Created", "Updated", …) or None for other events."""
    if isinstance(event, Shredded):
        return None
    cls = type(event)
    topic = f"{cls.__module__}:{cls.__qualname__}"
    if not topic.startswith(CUSTOMER_EVENTS):
        return None
    return topic[len(CUSTOMER_EVENTS) :]


def customer_id(event: object) -> UUID | None:
    """The customer a (possibly shredded) customer event belongs to, else None."""
    if isinstance(event, Shredded):
        return event.originator_id
    if event_name(event) is None:
        return None
    originator: UUID = vars(event)["originator_id"]
    return originator


def event_org(event: object) -> str | None:
    """The org id when the event itself carries it (only CustomerCreated does)."""
    if event_name(event) == "Created":
        return str(vars(event)["org_id"])
    return None


def public_event(event: object, org_id: str) -> dict[str, Any] | None:
    """The public form of `event` of a customer of `org_id`, or None if not published."""
    name = event_name(event)
    if name is None or name not in PUBLIC_TYPES:
        return None
    state = vars(event)
    cid: UUID = state["originator_id"]
    version: int = state["originator_version"]
    timestamp: datetime = state["timestamp"]
    public: dict[str, Any] = {
        "id": f"{cid}:{version}",
        "type": PUBLIC_TYPES[name][0],
        "orgId": org_id,
        "customerId": str(cid),
        "occurredAt": utc_iso(timestamp),
        "version": version,
    }
    if name == "Created":
        public["status"] = "ACTIVE"
    elif name == "Updated":
        public["fields"] = sorted(state["changes"])
    elif name == "EmailChangeRequested":
        # The token, not the address: a notifier reads the pending address from the read
        # API (`pendingEmail`) and mails the token to it.
        public["verificationToken"] = state["token"]
        public["expiresAt"] = state["expires_at"]
    elif name == "StatusChanged":
        public["from"] = str(state["previous"])
        public["to"] = str(state["status"])
    elif name == "Restored":
        public["status"] = str(state["status"])
    elif name == "ActiveOrdersChanged":
        public["count"] = int(state["active_orders"])
    elif name == "ConsentChanged":  # purposes and choices; never the IP or user agent
        public["consents"] = dict(state["changes"])
    return public


def membership_event(event: object) -> dict[str, Any] | None:
    """The public form of a segment membership event (ids and counts only), else None."""
    cls = type(event)
    if cls.__module__ != membership.__name__ or cls.__name__ not in MEMBERSHIP_KINDS:
        return None
    state = vars(event)
    public: dict[str, Any] = {
        "id": f"{state['originator_id']}:{state['originator_version']}",
        "type": cls.__name__,
        "orgId": state["org_id"],
        "segmentId": state["segment_id"],
        "occurredAt": utc_iso(state["timestamp"]),
        "version": state["originator_version"],
    }
    if cls.__name__ == "SegmentCalculated":
        public["jobId"] = state["job_id"]
        public["memberCount"] = state["member_count"]
        public["joined"] = state["joined"]
        public["left"] = state["left"]
    else:
        public["customerIds"] = state["customer_ids"]
        public["reason"] = state["reason"]
    return public
