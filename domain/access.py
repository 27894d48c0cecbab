"""Who may do what: the permissions, the roles that grant them, and the principal a request
acts for. Use cases decide with it; the transports (service.auth) establish it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from uuid import UUID

from domain.errors import Code, DomainError
from domain.masking import hidden
from domain.values import Choice


class Permission(StrEnum):
    READ = "customers:read"
    PERSONAL_DATA = "customers:personal"  # unmasked e-mail, name, address, devices
    WRITE = "customers:write"
    # A consent statement is a write every writer may record, and a DPO too: withdrawals
    # reach the data-protection office, which must be able to record them.
    CONSENT = "consent:record"
    DELETE = "customers:delete"
    ORDERS = "customers:orders"
    SUSPEND = "customers:suspend"
    SEGMENTS = "segments:write"
    TRACK = "activity:track"
    PRIVACY = "privacy:manage"  # erasure, anonymization, export, history, requests, audit
    API_KEYS = "apikeys:manage"


class Role(Choice):
    ADMIN = "admin"
    MANAGER = "manager"
    ANALYST = "analyst"
    SUPPORT = "support"
    DPO = "dpo"
    SERVICE = "service"


ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.ADMIN: frozenset(Permission),
    Role.MANAGER: frozenset(
        {
            Permission.READ,
            Permission.PERSONAL_DATA,
            Permission.WRITE,
            Permission.CONSENT,
            Permission.DELETE,
            Permission.SEGMENTS,
            Permission.TRACK,
        }
    ),
    Role.ANALYST: frozenset({Permission.READ}),
    Role.SUPPORT: frozenset(
        {Permission.READ, Permission.PERSONAL_DATA, Permission.WRITE, Permission.CONSENT}
    ),
    Role.DPO: frozenset(
        {
            Permission.READ,
            Permission.PERSONAL_DATA,
            Permission.CONSENT,
            Permission.DELETE,
            Permission.PRIVACY,
        }
    ),
    Role.SERVICE: frozenset(
        {
            Permission.READ,
            Permission.PERSONAL_DATA,
            Permission.WRITE,
            Permission.CONSENT,
            Permission.ORDERS,
            Permission.TRACK,
        }
    ),
}


@dataclass(frozen=True)
class Principal:
    sub: str
    org: str
    roles: frozenset[str]
    key_id: UUID | None = None  # when authenticated by an API key: that key's id

    def can(self, permission: Permission) -> bool:
        return any(
            permission in ROLE_PERMISSIONS.get(Role(r), frozenset())
            for r in self.roles
            if r in Role.__members__.values()
        )

    def require(self, permission: Permission) -> None:
        if not self.can(permission):
            raise DomainError(Code.FORBIDDEN, f"this operation needs the {permission} permission")

    def require_visible(self, reads: Iterable[tuple[str, str]]) -> None:
        """Refuse a request that filters, searches, sorts or builds criteria on a customer
        field this principal sees masked (domain.masking): the customers it selects, in the
        order it gives, would give the value back. `reads`: (parameter, customer field it
        reads as a dotted path of the customer JSON); the 403 names the parameter."""
        if self.can(Permission.PERSONAL_DATA):
            return
        for parameter, field in reads:
            if hidden(field):
                raise DomainError(
                    Code.FORBIDDEN,
                    f"{parameter} reads {field}, which is masked without the"
                    f" {Permission.PERSONAL_DATA} permission",
                    field=parameter,
                )
