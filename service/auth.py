"""Bearer-token authentication and the role → permission matrix."""

from __future__ import annotations

import math
import re
import time
from functools import lru_cache, partial
from typing import Annotated, Any
from uuid import UUID

import jwt
from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from domain.access import ROLE_PERMISSIONS, Permission, Principal, Role
from domain.errors import Code, DomainError
from service.api_keys import ApiKeyStore
from service.limits import RateLimiter
from service.settings import Settings, get_settings


def issue_token(
    settings: Settings, *, sub: str, org: str, roles: list[str], ttl_seconds: int = 3600
) -> str:
    if not settings.jwt_secret:
        raise RuntimeError("CUSTOMERS_JWT_SECRET is not set")
    if ttl_seconds > settings.jwt_max_lifetime_seconds:
        raise ValueError("the lifetime exceeds CUSTOMERS_JWT_MAX_LIFETIME_SECONDS")
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


# Claims become data (the tenant scopes every row, the subject is every event's actor, both
# land in PostgreSQL text and NATS headers), so they are held to what such ids look like.
# Organization ids are slugs (the org-3f2a…, acme, Auth0's org_… of the tests and tools).
ORG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
MAX_SUB = 256
MAX_ROLE = 64
MAX_ROLES = 32


def _unauthorized(reason: str) -> DomainError:
    # Fixed texts only: nothing of the token (header, claims, library messages quoting them)
    # is echoed to the caller.
    return DomainError(Code.UNAUTHORIZED, f"invalid bearer token: {reason}")


def _invalid_claim(reason: str) -> DomainError:
    return DomainError(Code.UNAUTHORIZED, f"invalid credentials: {reason}")


def _text(value: object, max_length: int) -> bool:
    """Non-empty, at most `max_length` characters, all printable: no NUL or other control
    character, no lone surrogate (JSON's \\ud800), no format or separator characters."""
    return isinstance(value, str) and 0 < len(value) <= max_length and value.isprintable()


def principal_of(sub: object, org: object, roles: object, key_id: UUID | None = None) -> Principal:
    """The principal these claims (of a token or an API key's row) describe, or 401."""
    if not _text(sub, MAX_SUB):
        raise _invalid_claim("claim 'sub' must be 1 to 256 printable characters")
    if not isinstance(org, str) or not ORG.fullmatch(org):
        raise _invalid_claim("claim 'org' must be 1 to 64 letters, digits or _.:-")
    if (
        not isinstance(roles, list | frozenset)
        or len(roles) > MAX_ROLES
        or not all(_text(r, MAX_ROLE) for r in roles)
    ):
        raise _invalid_claim("claim 'roles' must be a list of up to 32 short printable names")
    assert isinstance(sub, str)
    return Principal(sub=sub, org=org, roles=frozenset(roles), key_id=key_id)


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
    except jwt.PyJWTError:
        raise _unauthorized("malformed") from None
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
        except jwt.PyJWTError:
            raise _unauthorized("no key of the identity provider matches") from None
        if key.algorithm_name != alg:  # an RSA key claimed for ES256, or the reverse
            raise _unauthorized("algorithm mismatch")
        return key.key, [alg]
    raise _unauthorized("algorithm not accepted")


# PyJWT's own messages may quote the token; these say the same without it.
_REASONS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.ExpiredSignatureError, "expired"),
    (jwt.ImmatureSignatureError, "not valid yet"),
    (jwt.InvalidAudienceError, "wrong audience"),
    (jwt.InvalidIssuerError, "wrong issuer"),
    (jwt.InvalidSignatureError, "signature verification failed"),
)
_TIMES = ("exp", "iat", "nbf")


def _reason(error: jwt.PyJWTError) -> str:
    if isinstance(error, jwt.MissingRequiredClaimError):
        return f"claim {error.claim!r} is missing"  # one of the names `require` lists
    return next((r for kind, r in _REASONS if isinstance(error, kind)), "malformed")


# Tokens verified already, until they expire: a client sends the same token with every request,
# and verifying it (base64, JSON, HMAC or RSA, claim checks) is most of a read's own CPU.
# Keyed by what the verification depended on, so another configuration verifies again.
_VERIFIED: dict[tuple[str, str | None, str | None, str, str], tuple[float, Principal]] = {}
_VERIFIED_MAX = 10_000


def verify_token(settings: Settings, token: str) -> Principal:
    if not settings.jwt_secret and not settings.jwt_jwks_url:
        raise DomainError(Code.UNAVAILABLE, "authentication is not configured")
    key = (
        token,
        settings.jwt_secret,
        settings.jwt_jwks_url,
        settings.jwt_audience,
        settings.jwt_issuer,
    )
    cached = _VERIFIED.get(key)
    if cached is not None and time.time() < cached[0]:
        return cached[1]
    principal, expires = _verify(settings, token)
    if len(_VERIFIED) >= _VERIFIED_MAX:
        _VERIFIED.clear()
    _VERIFIED[key] = (expires + settings.jwt_leeway_seconds, principal)
    return principal


def _verify(settings: Settings, token: str) -> tuple[Principal, float]:
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
        raise _unauthorized(_reason(e)) from None
    # PyJWT takes int(value): "9999999999" and True pass its checks; 10**20 is in the future.
    for name in _TIMES:
        value = claims.get(name)
        if name in claims and (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise _unauthorized(f"claim {name!r} must be a number")
    latest = time.time() + settings.jwt_max_lifetime_seconds + settings.jwt_leeway_seconds
    if claims["exp"] > latest:
        raise _unauthorized("lifetime too long")
    principal = principal_of(claims["sub"], claims.get("org"), claims.get("roles", []))
    return principal, float(claims["exp"])


_PRINCIPAL = "customers.principal"  # the request scope's key of the caller, once known


async def authenticate(request: Request) -> Principal:
    """The caller: an API key (`X-API-Key`) or a bearer token; identified once per request
    (the route's permission check and its read-your-writes wait both ask), by the
    dependencies themselves rather than as one of theirs: one dependency fewer to resolve."""
    known: Principal | None = request.scope.get(_PRINCIPAL)
    if known is None:
        known = request.scope[_PRINCIPAL] = await _identify(request)
    return known


async def _identify(request: Request) -> Principal:
    """Verified on the event loop when that is CPU work alone (a shared-secret token); in a
    worker thread when it may wait for the database (an API key) or the identity provider
    (JWKS)."""
    app = request.app
    settings: Settings = getattr(app.state, "settings", None) or get_settings()
    api_key = request.headers.get("x-api-key")
    identify = partial(
        caller,
        settings,
        getattr(app.state, "api_keys", None),
        getattr(app.state, "rate_limiter", None),
        request.client.host if request.client else "unknown",
        authorization=request.headers.get("authorization", ""),
        api_key=api_key,
    )
    if api_key is None and not settings.jwt_jwks_url:
        return identify()
    return await run_in_threadpool(identify)


def caller(
    settings: Settings,
    store: ApiKeyStore | None,
    limiter: RateLimiter | None,
    client: str,
    *,
    authorization: str,
    api_key: str | None,
) -> Principal:
    """The principal of an API key, else of the `Authorization: Bearer` token (the REST
    headers, or the gRPC metadata of the same names). A `client` address that has failed
    too often is refused before its credentials cost a lookup or a signature check."""
    scheme, _, token = authorization.partition(" ")
    if api_key is None and (scheme.lower() != "bearer" or not token):
        raise DomainError(Code.UNAUTHORIZED, "missing bearer token")
    if limiter is not None:
        limiter.admit_authentication(client)
    try:
        if api_key is None:
            return verify_token(settings, token.strip())
        found = store.identify(api_key.strip()) if store is not None else None
        if found is None:
            raise DomainError(Code.UNAUTHORIZED, "invalid or revoked API key")
        key_id, org, roles = found
        return principal_of(f"api-key:{key_id}", org, roles, key_id)
    except DomainError as e:
        if e.code == Code.UNAUTHORIZED and limiter is not None:
            limiter.failed_authentication(client)
        raise


def allowed(permission: Permission) -> Any:
    """A route dependency: the caller, who must have `permission` (403 otherwise) and be
    within the rate limits (429, service/limits.py). The permission stays readable on the
    dependency (`.permission`) for the route x role test and the rendered matrix."""

    # async: FastAPI runs a plain `def` dependency in its threadpool, a thread hop per request.
    async def check(request: Request) -> Principal:
        principal = await authenticate(request)
        # Limited before the permission check: refused calls cost their budget too.
        limiter = getattr(request.app.state, "rate_limiter", None)
        if limiter is not None:
            limiter.check(request, f"{principal.org}\x00{principal.sub}")
        principal.require(permission)
        return principal

    check.permission = permission  # type: ignore[attr-defined]
    return Depends(check)


CanRead = Annotated[Principal, allowed(Permission.READ)]
CanWrite = Annotated[Principal, allowed(Permission.WRITE)]
CanConsent = Annotated[Principal, allowed(Permission.CONSENT)]
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
