"""The Customer aggregate: every rule of the spec about a single customer lives here."""

from __future__ import annotations

import hmac
import secrets
from datetime import datetime, timedelta
from typing import Any

from eventsourcing.domain import Aggregate, event

from domain.anonymization import anonymous_profile
from domain.consent import ConsentChange, with_consents
from domain.errors import Code, DomainError, invalid
from domain.values import CustomerStatus, Profile, utc_iso

# Transitions a plain update may make; SUSPENDED needs an admin, DELETED needs deletion.
_FREE_TRANSITIONS = {
    (CustomerStatus.ACTIVE, CustomerStatus.INACTIVE),
    (CustomerStatus.INACTIVE, CustomerStatus.ACTIVE),
}


class Customer(Aggregate):
    """State is the public camelCase profile plus lifecycle fields.

    Profile events carry resulting field values (not commands), so the aggregate and the
    projections apply them the same way: by assignment.
    """

    @event("Created")
    def __init__(self, org_id: str, profile: dict[str, Any], actor: str) -> None:
        self.org_id = org_id
        self.profile = profile
        self.status = CustomerStatus.ACTIVE
        self.pending_email: str | None = None
        self.pending_token: str | None = None
        self.pending_expires_at: str | None = None
        self.active_orders = 0
        self.erased = False

    @classmethod
    def register(cls, org_id: str, profile: Profile, actor: str) -> Customer:
        return cls(org_id=org_id, profile=profile.dump(), actor=actor)

    @property
    def email(self) -> str:
        return str(self.profile["email"])

    def public(self) -> dict[str, Any]:
        modified = utc_iso(self.modified_on)
        if self.erased:  # what is left to say about an erased customer
            return {
                "id": str(self.id),
                "status": "ERASED",
                "erasedAt": modified,
                "version": self.version,
            }
        return representation(
            customer_id=str(self.id),
            profile=self.profile,
            status=self.status,
            version=self.version,
            created_at=utc_iso(self.created_on),
            updated_at=modified,
            last_activity=modified,
            pending_email=self.pending_email,
            active_orders=self.active_orders,
        )

    # --- commands -------------------------------------------------------------------

    def update(
        self,
        profile: Profile,
        *,
        status: CustomerStatus | None,
        actor: str,
        actor_is_admin: bool,
        now: datetime,
        verification_ttl: timedelta,
    ) -> str | None:
        """Full replacement. Returns a verification token when the e-mail changes."""
        self._check_modifiable()
        if status is not None and status != self.status:
            self._check_transition(status, actor_is_admin)
        new = profile.dump()
        kept = self.profile["metadata"].get("acquisitionDate")
        given = new["metadata"]["acquisitionDate"]
        # Not given, or the creation time that answers show in place of a missing one (the
        # answer sent back): keep the one we have.
        if given is None or (kept is None and datetime.fromisoformat(given) == self.created_on):
            new["metadata"]["acquisitionDate"] = kept
        token = None
        if new["email"] != self.email:
            if new["email"] != self.pending_email or self._pending_expired(now):
                token = secrets.token_urlsafe(24)
                self._request_email_change(
                    new_email=new["email"],
                    token=token,
                    expires_at=utc_iso(now + verification_ttl),
                    actor=actor,
                )
            new["email"] = self.email
        changes = {k: v for k, v in new.items() if self.profile.get(k) != v}
        if changes:
            self._update(changes=changes, actor=actor)
        if status is not None and status != self.status:
            self._change_status(status=status, previous=self.status, actor=actor)
        return token

    def verify_email(self, token: str, *, actor: str, now: datetime) -> None:
        self._check_modifiable()
        if self.pending_email is None or self.pending_token is None:
            raise DomainError(Code.CONFLICT, "there is no pending e-mail change")
        if self._pending_expired(now):
            raise invalid("token", "the verification token has expired")
        if not hmac.compare_digest(self.pending_token.encode(), token.encode()):
            raise invalid("token", "the verification token does not match")
        self._verify_email(email=self.pending_email, previous=self.email, actor=actor)

    def set_active_orders(self, count: int, *, actor: str) -> None:
        self._check_modifiable()
        if count < 0:
            raise invalid("activeOrders", "must be zero or more")
        if count != self.active_orders:
            self._set_active_orders(active_orders=count, actor=actor)

    def delete(self, *, actor: str) -> None:
        self._check_modifiable()
        if self.active_orders > 0:
            raise DomainError(
                Code.CONFLICT,
                f"customer has {self.active_orders} active order(s) and cannot be deleted",
            )
        self._delete(actor=actor)

    def restore(self, *, actor: str, now: datetime, grace: timedelta) -> None:
        """Undo a lifecycle deletion within the grace period (after it, retention erases the
        customer). The status goes back to what it was; the caller re-claims the e-mail
        address in the same transaction (409 if another customer took it meanwhile)."""
        if self.status != CustomerStatus.DELETED:
            raise DomainError(Code.CONFLICT, "only a deleted customer can be restored")
        # A deleted customer refuses every change, so its last event is the deletion.
        ends = self.modified_on + grace
        if now > ends:
            raise DomainError(
                Code.CONFLICT,
                f"the grace period for restoring ended at {utc_iso(ends)}; the customer is"
                " being erased",
            )
        self._restore(status=self.status_before_deletion, actor=actor)

    def change_consent(self, change: ConsentChange, *, actor: str) -> None:
        """Record a consent choice per purpose (every submitted purpose, changed or
        re-affirmed: the ledger keeps each statement), effective at once on the profile."""
        self._check_modifiable()
        self._change_consent(
            changes={purpose.value: granted for purpose, granted in change.consents.items()},
            source=change.source,
            policy_version=change.policy_version,
            ip_address=str(change.ip_address) if change.ip_address else None,
            user_agent=change.user_agent,
            actor=actor,
        )

    def anonymize(self, *, actor: str) -> None:
        """Replace everything identifying by `anonymous_profile`; the caller destroys the
        data key in the same transaction, so the earlier events become unreadable and the
        anonymized record (carried in clear by the event) is all that is left."""
        if self.active_orders > 0:
            raise DomainError(
                Code.CONFLICT,
                f"customer has {self.active_orders} active order(s) and cannot be anonymized",
            )
        self._anonymize(
            org_id=self.org_id,
            profile=anonymous_profile(self.profile, self.id),
            created_at=utc_iso(self.created_on),
            actor=actor,
        )

    def erase(self, *, actor: str, again: bool = False) -> None:
        """Art. 17 erasure, also of a lifecycle-deleted customer. The event carries no
        personal data; the caller destroys the customer's data key in the same transaction,
        after which every earlier event is unreadable. `again`: an erasure that already
        happened, re-applied to a store restored to before it; its rules were judged then."""
        if self.active_orders > 0 and not again:
            raise DomainError(
                Code.CONFLICT,
                f"customer has {self.active_orders} active order(s) and cannot be erased",
            )
        self._erase(org_id=self.org_id, actor=actor)

    # --- guards ---------------------------------------------------------------------

    def _check_modifiable(self) -> None:
        if self.status == CustomerStatus.DELETED:
            raise DomainError(Code.CONFLICT, "a deleted customer cannot be modified")

    def _check_transition(self, target: CustomerStatus, actor_is_admin: bool) -> None:
        if target in {CustomerStatus.DELETED, CustomerStatus.ANONYMIZED}:
            raise DomainError(
                Code.CONFLICT,
                f"status {target} is reached only through its own request",
            )
        if (self.status, target) in _FREE_TRANSITIONS:
            return
        if actor_is_admin:  # into or out of SUSPENDED
            return
        raise DomainError(
            Code.FORBIDDEN,
            f"changing status from {self.status} to {target} requires the admin role",
        )

    def _pending_expired(self, now: datetime) -> bool:
        return self.pending_expires_at is not None and utc_iso(now) > self.pending_expires_at

    # --- events ---------------------------------------------------------------------

    @event("Updated")
    def _update(self, changes: dict[str, Any], actor: str) -> None:
        self.profile = {**self.profile, **changes}

    # The token travels in the (encrypted) event so that a notifier following the stream
    # can mail it to the new address; it is never returned to the API caller.
    # `actor` defaults to None for these three events only because events stored before they
    # carried one must still replay (the audit trail shows those as "unrecorded").
    @event("EmailChangeRequested")
    def _request_email_change(
        self, new_email: str, token: str, expires_at: str, actor: str | None = None
    ) -> None:
        self.pending_email = new_email
        self.pending_token = token
        self.pending_expires_at = expires_at

    @event("EmailVerified")
    def _verify_email(self, email: str, previous: str, actor: str | None = None) -> None:
        self.profile = {**self.profile, "email": email}
        self.pending_email = self.pending_token = self.pending_expires_at = None

    @event("StatusChanged")
    def _change_status(self, status: CustomerStatus, previous: CustomerStatus, actor: str) -> None:
        self.status = CustomerStatus(status)

    @event("ActiveOrdersChanged")
    def _set_active_orders(self, active_orders: int, actor: str | None = None) -> None:
        self.active_orders = active_orders

    @event("Deleted")
    def _delete(self, actor: str) -> None:
        self.status_before_deletion = self.status
        self.status = CustomerStatus.DELETED

    @event("Restored")
    def _restore(self, status: CustomerStatus, actor: str) -> None:
        self.status = CustomerStatus(status)

    @event("ConsentChanged")
    def _change_consent(
        self,
        *,
        changes: dict[str, bool],
        source: str,
        policy_version: str | None,
        ip_address: str | None,
        user_agent: str | None,
        actor: str,
    ) -> None:
        preferences = with_consents(self.profile["preferences"], changes)
        self.profile = {**self.profile, "preferences": preferences}

    @event("Anonymized")
    def _anonymize(self, org_id: str, profile: dict[str, Any], created_at: str, actor: str) -> None:
        self.profile = profile
        self.status = CustomerStatus.ANONYMIZED
        self.pending_email = self.pending_token = self.pending_expires_at = None

    @event("Erased")
    def _erase(self, org_id: str, actor: str) -> None:
        self.erased = True
        self.status = CustomerStatus.DELETED
        self.profile = {}
        self.pending_email = self.pending_token = self.pending_expires_at = None


def representation(
    *,
    customer_id: str,
    profile: dict[str, Any],
    status: str,
    version: int,
    created_at: str,
    updated_at: str,
    last_activity: str,
    pending_email: str | None,
    active_orders: int,
    segments: list[str] | None = None,
) -> dict[str, Any]:
    """The public JSON of a customer (spec field order); shared by write answers and views."""
    metadata = dict(profile["metadata"])
    if metadata.get("acquisitionDate") is None:
        metadata["acquisitionDate"] = created_at
    return {
        "id": customer_id,
        "email": profile["email"],
        "name": profile["name"],
        "age": profile.get("age"),
        "gender": profile.get("gender"),
        "location": profile.get("location"),
        "preferences": profile["preferences"],
        "segments": segments or [],
        "tags": profile.get("tags", []),
        "status": status,
        "createdAt": created_at,
        "updatedAt": updated_at,
        "lastActivity": last_activity,
        "metadata": metadata,
        "pendingEmail": pending_email,
        "activeOrders": active_orders,
        "version": version,
    }
