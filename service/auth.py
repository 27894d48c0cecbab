"""Bearer-token authentication and the role → permission matrix."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from typing import Annotated, Any

import jwt
from fastapi import Depends, Request

from domain.errors import Code, DomainError
from domain.masking import hidden
from service.api_keys import ApiKeyStore
from service.settings import Settings, get_settings


class Permission(StrEnum):
    READ = "customers:read"
    PERSONAL_DATA = "customers:personal"  # unmasked e-mail, name, address, devices
    WRITE = "customers:write"
    DELETE = "customers:delete"
    ORDERS = "customers:orders"
    SUSPEND = "customers:suspend"
    SEGMENTS = "segments:write"
    TRACK = "activity:track"
    PRIVACY = "privacy:manage"  # erasure, anonymization, export, history, requests, audit
    API_KEYS = "apikeys:manage"


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
        {
            Permission.READ,
            Permission.PERSONAL_DATA,
            Permission.WRITE,
            Permission.DELETE,
            Permission.SEGMENTS,
            Permission.TRACK,
        }
    ),
    Role.ANALYST: frozenset({Permission.READ}),
    Role.SUPPORT: frozenset({Permission.READ, Permission.PERSONAL_DATA, Permission.WRITE}),
    Role.DPO: frozenset(
        {Permission.READ, Permission.PERSONAL_DATA, Permission.DELETE, Permission.PRIVACY}
    ),
    Role.SERVICE: frozenset(
        {
            Permission.READ,
            Permission.PERSONAL_DATA,
            Permission.WRITE,
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


_ASYMMETRIC = ("RS256", "ES256")


@lru_cache(maxsize=8)
def _jwks(url: str, lifespan: float, cooldown: float) -> jwt.PyJWKClient:
    return jwt.PyJWKClient(
        url, lifespan=lifespan, cooldown_duration=cooldown, timeout=5.0, cache_keys=True
    )


def _key_for(settings: Settings, token: str) -> tuple[Any, list[str]]:
    """The verification key and the one algorithm allowed for this token: HS256 with the
    shared secret, RS256/ES256 with the identity provider's JWKS key of the token's `kid`.
    Anything else (`none`, HS256 without a secret, a public key used as an HMAC secret) is
    refused before any signature check."""
    try:
        alg = jwt.get_unverified_header(token).get("alg")
    except jwt.PyJWTError as e:
        raise DomainError(Code.UNAUTHORIZED, f"invalid bearer token: {e}") from None
    if alg == "HS256" and settings.jwt_secret:
        return settings.jwt_secret, ["HS256"]
    if alg in _ASYMMETRIC and settings.jwt_jwks_url:
        client = _jwks(
            settings.jwt_jwks_url,
            settings.jwt_jwks_cache_seconds,
            settings.jwt_jwks_refresh_cooldown_seconds,
        )
        try:
            key = client.get_signing_key_from_jwt(token)
        except jwt.PyJWKClientConnectionError:
            raise DomainError(
                Code.UNAVAILABLE, "the identity provider's keys are unreachable"
            ) from None
        except jwt.PyJWTError as e:
            raise DomainError(Code.UNAUTHORIZED, f"invalid bearer token: {e}") from None
        if key.algorithm_name != alg:  # an RSA key claimed for ES256, or the reverse
            raise DomainError(Code.UNAUTHORIZED, "invalid bearer token: algorithm mismatch")
        return key.key, [alg]
    raise DomainError(Code.UNAUTHORIZED, f"invalid bearer token: algorithm {alg!r} not accepted")


def verify_token(settings: Settings, token: str) -> Principal:
    if not settings.jwt_secret and not settings.jwt_jwks_url:
        raise DomainError(Code.UNAVAILABLE, "authentication is not configured")
    key, algorithms = _key_for(settings, token)
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=algorithms,
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
    """The caller: an API key (`X-API-Key`) or a bearer token."""
    settings: Settings = getattr(request.app.state, "settings", None) or get_settings()
    store: ApiKeyStore | None = getattr(request.app.state, "api_keys", None)
    return caller(
        settings, store, request.headers.get("authorization", ""), request.headers.get("x-api-key")
    )


def caller(
    settings: Settings, store: ApiKeyStore | None, authorization: str, api_key: str | None
) -> Principal:
    """The principal of an API key, else of the `Authorization: Bearer` token (the REST
    headers, or the gRPC metadata of the same names)."""
    if api_key is not None:
        found = store.identify(api_key.strip()) if store is not None else None
        if found is None:
            raise DomainError(Code.UNAUTHORIZED, "invalid or revoked API key")
        key_id, org, roles = found
        return Principal(sub=f"api-key:{key_id}", org=org, roles=roles)
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise DomainError(Code.UNAUTHORIZED, "missing bearer token")
    return verify_token(settings, token.strip())


CurrentPrincipal = Annotated[Principal, Depends(authenticate)]


def allowed(permission: Permission) -> Any:
    """A route dependency: the caller, who must have `permission` (403 otherwise) and be
    within the rate limits (429, service/limits.py). The permission stays readable on the
    dependency (`.permission`) for the route x role test and the rendered matrix."""

    # async: FastAPI runs a plain `def` dependency in its threadpool, a thread hop per request.
    async def check(principal: CurrentPrincipal, request: Request) -> Principal:
        principal.require(permission)
        limiter = getattr(request.app.state, "rate_limiter", None)
        if limiter is not None:
            limiter.check(request, f"{principal.org}\x00{principal.sub}")
        return principal

    check.permission = permission  # type: ignore[attr-defined]
    return Depends(check)


CanRead = Annotated[Principal, allowed(Permission.READ)]
CanWrite = Annotated[Principal, allowed(Permission.WRITE)]
CanDelete = Annotated[Principal, allowed(Permission.DELETE)]
CanOrders = Annotated[Principal, allowed(Permission.ORDERS)]
CanSegments = Annotated[Principal, allowed(Permission.SEGMENTS)]
CanPrivacy = Annotated[Principal, allowed(Permission.PRIVACY)]
CanManageKeys = Annotated[Principal, allowed(Permission.API_KEYS)]
CanTrack = Annotated[Principal, allowed(Permission.TRACK)]


def matrix_markdown() -> str:
    """The role x permission matrix as a markdown table (docs/security.md shows it)."""
    roles = list(Role)
    lines = [
        "| permission | " + " | ".join(r.value for r in roles) + " |",
        "|---|" + "---|" * len(roles),
    ]
    for permission in Permission:
        marks = ["✓" if permission in ROLE_PERMISSIONS[r] else "" for r in roles]
        lines.append(f"| `{permission.value}` | " + " | ".join(marks) + " |")
    return "\n".join(lines)
