"""Bearer-token authentication and the role → permission matrix."""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated

import jwt
from fastapi import Depends, Request

from domain.errors import Code, DomainError
from service.settings import Settings, get_settings


class Permission(StrEnum):
    READ = "customers:read"
    WRITE = "customers:write"
    DELETE = "customers:delete"
    ORDERS = "customers:orders"
    SUSPEND = "customers:suspend"
    SEGMENTS = "segments:write"
    PRIVACY = "privacy:manage"  # erasure, anonymization, export, history, requests, audit


class Role(StrEnum):
    ADMIN = "admin"
    MANAGER = "manager"
    ANALYST = "analyst"
    SUPPORT = "support"
    DPO = "dpo"
    SERVICE = "service"


ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.ADMIN: frozenset(Permission),
    Role.MANAGER: frozenset(
        {Permission.READ, Permission.WRITE, Permission.DELETE, Permission.SEGMENTS}
    ),
    Role.ANALYST: frozenset({Permission.READ}),
    Role.SUPPORT: frozenset({Permission.READ, Permission.WRITE}),
    Role.DPO: frozenset({Permission.READ, Permission.DELETE, Permission.PRIVACY}),
    Role.SERVICE: frozenset({Permission.READ, Permission.WRITE, Permission.ORDERS}),
}


@dataclass(frozen=True)
class Principal:
    sub: str
    org: str
    roles: frozenset[str]

    def can(self, permission: Permission) -> bool:
        return any(
            permission in ROLE_PERMISSIONS.get(Role(r), frozenset())
            for r in self.roles
            if r in Role.__members__.values()
        )

    def require(self, permission: Permission) -> None:
        if not self.can(permission):
            raise DomainError(Code.FORBIDDEN, f"this operation needs the {permission} permission")


def issue_token(
    settings: Settings, *, sub: str, org: str, roles: list[str], ttl_seconds: int = 3600
) -> str:
    if not settings.jwt_secret:
        raise RuntimeError("CUSTOMERS_JWT_SECRET is not set")
    now = int(time.time())
    claims = {
        "sub": sub,
        "org": org,
        "roles": roles,
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "iat": now,
        "exp": now + ttl_seconds,
    }
    return jwt.encode(claims, settings.jwt_secret, algorithm="HS256")


def verify_token(settings: Settings, token: str) -> Principal:
    if not settings.jwt_secret:
        raise DomainError(Code.UNAVAILABLE, "authentication is not configured")
    try:
        claims = jwt.decode(
            token,
            settings.jwt_secret,
            algorithms=["HS256"],
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            leeway=settings.jwt_leeway_seconds,
            options={"require": ["exp", "iss", "aud", "sub"]},
        )
    except jwt.PyJWTError as e:
        raise DomainError(Code.UNAUTHORIZED, f"invalid bearer token: {e}") from None
    org, roles = claims.get("org"), claims.get("roles", [])
    if not isinstance(org, str) or not org:
        raise DomainError(Code.UNAUTHORIZED, "invalid bearer token: claim 'org' is missing")
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise DomainError(Code.UNAUTHORIZED, "invalid bearer token: claim 'roles' is not a list")
    return Principal(sub=str(claims["sub"]), org=org, roles=frozenset(roles))


def authenticate(request: Request) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise DomainError(Code.UNAUTHORIZED, "missing bearer token")
    return verify_token(get_settings(), token.strip())


CurrentPrincipal = Annotated[Principal, Depends(authenticate)]
