"""GET /api/v1/customers and /api/v1/customers/{id}: SQL over customers_view, JSON rendered by
PostgreSQL (the stored `doc`s) and returned as bytes.

`segments` is the one field not stored in the doc (see GET_ONE).

List pagination is keyset on (sort key, id). The cursor is opaque: the last row's sort key and
id, AES-GCM sealed (a name or e-mail must not travel in clear in URLs and access logs, and a
tampered cursor must be detected, not trusted).
"""

from __future__ import annotations

import base64
import binascii
import os
import typing
from datetime import datetime
from functools import cached_property, lru_cache
from typing import Annotated, Any
from uuid import UUID

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.params import Query as QueryInfo
from psycopg import sql
from psycopg_pool import AsyncConnectionPool
from pydantic import StringConstraints

from domain.access import Permission, Principal
from domain.errors import Code, DomainError, invalid
from domain.masking import masked
from domain.selection import FILTERED_FIELDS
from domain.values import (
    Choice,
    CustomerPublic,
    CustomerStatus,
    Gender,
    Instant,
    lookup_country,
    normalize_email,
    utc_iso,
)
from eventstore.keys import CLAIM_KEY_PURPOSE, EMAIL, LazyKeyring, claim_hash
from projections.customers import DOCS, FILTERS, VIEW
from read_api import paging
from read_api.consistency import READ_PROBLEMS, consistent_with, not_found, once_settled
from service import etags
from service.auth import CanRead
from service.contract import IfNoneMatchHeader
from service.problems import problem_responses

MAX_LIMIT = 500


class Sort(Choice):
    CREATED_AT = "createdAt"
    CREATED_AT_DESC = "-createdAt"
    UPDATED_AT = "updatedAt"
    UPDATED_AT_DESC = "-updatedAt"
    LAST_ACTIVITY = "lastActivity"
    LAST_ACTIVITY_DESC = "-lastActivity"
    NAME = "name"
    NAME_DESC = "-name"
    EMAIL = "email"
    EMAIL_DESC = "-email"

    @property
    def field(self) -> str:
        return self.value.removeprefix("-")

    @property
    def descending(self) -> bool:
        return self.value.startswith("-")


# Allow-lists: the only SQL text a request can select. Values always travel as parameters.
_SORT_KEYS = {
    "createdAt": "created_at",
    "updatedAt": "updated_at",
    "lastActivity": "last_activity",
    "name": 'lower(name) COLLATE "C"',
    "email": 'lower(email) COLLATE "C"',
}
_TIME_SORTS = frozenset({"createdAt", "updatedAt", "lastActivity"})
# q (prefix of e-mail OR name) is a UNION of two branches, each a plain conjunction the
# planner can serve from one index (the sort index's range when q is on the sort field).
_SEARCHED = ("email", "name")  # customer fields and customers_view columns alike
_PREFIXES = tuple(f'lower({column}) COLLATE "C" LIKE lower(%(q)s)' for column in _SEARCHED)
# updated_at and last_activity are never before created_at, so createdFrom also bounds them:
# the sort index is then entered at createdFrom instead of walked from its start.
_IMPLIED_BY_CREATED_FROM = frozenset({"updatedAt", "lastActivity"})

_PAGE = "SELECT {key} AS k, id FROM {view} WHERE {where} ORDER BY 1 {dir}, 2 {dir} LIMIT %(fetch)s"
# One round trip: the page's docs, whether there is more, the cursor's row, and the live
# fields of the shown customers (their current segments and tracked activity, both usually
# absent, so the docs are then sent as PostgreSQL rendered them).
_LIST = """
WITH page AS ({page}), numbered AS (
    SELECT k, id, row_number() OVER (ORDER BY k {dir}, id {dir}) AS rn FROM page
), shown AS (SELECT id FROM numbered WHERE rn <= %(limit)s)
SELECT coalesce(json_agg(d.doc ORDER BY n.rn) FILTER (WHERE n.rn <= %(limit)s), '[]'::json),
       count(*),
       (array_agg(n.k) FILTER (WHERE n.rn = %(limit)s))[1],
       (array_agg(n.id) FILTER (WHERE n.rn = %(limit)s))[1],
       (SELECT json_object_agg(m.customer_id, m.segments) FROM (
            SELECT customer_id, array_agg(segment_id::text ORDER BY segment_id) AS segments
            FROM segment_membership
            WHERE customer_id IN (SELECT id FROM shown) AND left_at IS NULL GROUP BY 1) m),
       (SELECT json_object_agg(a.customer_id,
                               json_build_array(a.last_activity_at, a.login_count, a.last_login_at))
        FROM customer_activity a WHERE a.customer_id IN (SELECT id FROM shown))
FROM numbered n JOIN {docs} d ON d.id = n.id
"""

# `segments` of the stored doc is always empty: memberships change without the customer
# changing, so they are read from segment_membership and put in at answer time. So is tracked
# activity (customer_activity): last activity, login count and last login.
GET_ONE = (
    sql.SQL(
        "SELECT d.doc, d.version, ARRAY(SELECT m.segment_id::text FROM segment_membership m"
        " WHERE m.customer_id = d.id AND m.left_at IS NULL ORDER BY 1),"
        " a.last_activity_at, a.login_count, a.last_login_at"
        " FROM {} d LEFT JOIN customer_activity a ON a.customer_id = d.id"
        " WHERE d.id = %s AND d.org_id = %s"
    )
    .format(sql.Identifier(DOCS))
    .as_bytes()
)
EXISTS = (
    sql.SQL("SELECT 1 FROM {} WHERE id = %s AND org_id = %s").format(sql.Identifier(DOCS))
).as_bytes()
_STINTS = (
    "SELECT m.segment_id, s.name, m.joined_at, m.join_reason, m.left_at, m.leave_reason"
    " FROM segment_membership m LEFT JOIN segments_view s ON s.id = m.segment_id"
    " WHERE m.customer_id = %(id)s AND m.org_id = %(org)s AND {}"
    " ORDER BY m.joined_at, m.segment_id"
)
STINTS_NOW = _STINTS.format("m.left_at IS NULL")
STINTS_AS_OF = _STINTS.format("m.joined_at <= %(at)s AND (m.left_at IS NULL OR m.left_at > %(at)s)")
STINTS_ALL = _STINTS.format("true")


def render_stint(row: tuple[Any, ...]) -> dict[str, Any]:
    """A row of the STINTS queries as the API shows it."""
    sid, name, joined, join_reason, left, leave_reason = row
    return {
        "segmentId": str(sid),
        "name": name,
        "joinedAt": utc_iso(joined),
        "joinReason": join_reason,
        "leftAt": utc_iso(left) if left else None,
        "leaveReason": leave_reason,
        "active": left is None,
    }


@lru_cache(maxsize=1024)
def list_query(sort: Sort, filters: tuple[str, ...], after: bool, prefix: bool) -> bytes:
    """The list statement for one shape of request (built and rendered once per shape)."""
    key = sql.SQL(_SORT_KEYS[sort.field])
    direction = sql.SQL("DESC" if sort.descending else "ASC")
    where: list[sql.Composable] = [sql.SQL("org_id = %(org)s")]
    where += [sql.SQL(FILTERS[f]) for f in filters]
    if "created_from" in filters and sort.field in _IMPLIED_BY_CREATED_FROM:
        where.append(sql.SQL("{} >= %(created_from)s").format(key))
    if after:
        op = "<" if sort.descending else ">"
        where.append(sql.SQL("({}, id) " + op + " (%(after_key)s, %(after_id)s)").format(key))

    def branch(conditions: list[sql.Composable]) -> sql.Composed:
        return sql.SQL(_PAGE).format(
            key=key,
            view=sql.Identifier(VIEW),
            where=sql.SQL(" AND ").join(conditions),
            dir=direction,
        )

    page: sql.Composed
    if prefix:
        union = "SELECT k, id FROM (({}) UNION ({})) u ORDER BY 1 {}, 2 {} LIMIT %(fetch)s"
        branches = [branch([*where, sql.SQL(p)]) for p in _PREFIXES]
        page = sql.SQL(union).format(*branches, direction, direction)
    else:
        page = branch(where)
    return sql.SQL(_LIST).format(page=page, dir=direction, docs=sql.Identifier(DOCS)).as_bytes()


class CursorCodec:
    """Opaque, sealed keyset cursors bound to their sort order."""

    _AAD = b"customers-list-cursor-v1"

    def __init__(self, keyring: LazyKeyring) -> None:
        self._keyring = keyring

    @cached_property
    def _aead(self) -> AESGCM:
        return AESGCM(self._keyring.get().derive("list-cursor"))

    def encode(self, sort: Sort, key: Any, customer_id: UUID) -> str:
        value = key.isoformat() if isinstance(key, datetime) else key
        plain = orjson.dumps([sort.value, value, str(customer_id)])
        nonce = os.urandom(12)
        sealed = nonce + self._aead.encrypt(nonce, plain, self._AAD)
        return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode("ascii")

    def decode(self, cursor: str, sort: Sort) -> tuple[Any, UUID]:
        bad = invalid("cursor", "not a cursor returned by this listing (or for another sort)")
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
            plain = self._aead.decrypt(raw[:12], raw[12:], self._AAD)
            sort_value, value, customer_id = orjson.loads(plain)
            if sort_value != sort.value or not isinstance(value, str):
                raise bad
            key: Any = datetime.fromisoformat(value) if sort.field in _TIME_SORTS else value
            return key, UUID(customer_id)
        except (ValueError, TypeError, InvalidTag, binascii.Error, orjson.JSONDecodeError):
            raise bad from None


class EmailIndex:
    """The `email` filter's parameter: the address's keyed hash as its uniqueness claim holds
    it, so that the filter finds the customer through that index and no address is read."""

    def __init__(self, keyring: LazyKeyring) -> None:
        self._keyring = keyring

    @cached_property
    def _key(self) -> bytes:
        return self._keyring.get().derive(CLAIM_KEY_PURPOSE)

    def resolve(self, org: str, filters: dict[str, Any]) -> dict[str, Any]:
        """customer_filters' result with the `email` filter's address replaced by its hash."""
        if "email" not in filters:
            return filters
        return {**filters, "email": claim_hash(self._key, EMAIL, org, filters["email"])}


def _json(body: bytes, headers: dict[str, str] | None = None) -> Response:
    return Response(body, media_type="application/json", headers=headers)


TagParam = Annotated[str, StringConstraints(min_length=1, max_length=64)]

router = APIRouter(
    prefix="/api/v1/customers",
    tags=["customers"],
    dependencies=[consistent_with(VIEW)],
)


_CUSTOMER_JSON: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The customer (spec 'Customer Response'); ETag is its version.",
        "model": CustomerPublic,
    },
    304: {"description": "Not modified (If-None-Match matched the ETag)"},
    **problem_responses({404: "No such customer in the caller's organization"}),
    **READ_PROBLEMS,
}
# Routes that filter, search, sort or take criteria: their 403 includes masked fields.
MASKED_FIELD_PROBLEMS = problem_responses(
    {
        403: "The token's roles lack customers:read, or lack customers:personal and a filter,"
        " search, sort or criterion reads a field they see masked; `errors[].field` names it"
    }
)
_PAGE_JSON: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "A page: {items: [customer...], nextCursor: string|null, limit: n}",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["items", "nextCursor", "limit"],
                    "properties": {
                        "items": {"type": "array", "items": {"type": "object"}},
                        "nextCursor": {"type": ["string", "null"]},
                        "limit": {"type": "integer"},
                    },
                }
            }
        },
    },
    **READ_PROBLEMS,
    **MASKED_FIELD_PROBLEMS,
}


async def customer_filters(
    *,
    email: Annotated[
        str | None,
        Query(
            max_length=254,
            description="exact e-mail address (any case); a lifecycle-deleted customer's"
            " address is free and no longer finds it",
            json_schema_extra={"format": "email"},
        ),
    ] = None,
    status: CustomerStatus | None = None,
    country: Annotated[
        str | None, Query(max_length=100, description="ISO 3166 code or English name")
    ] = None,
    city: Annotated[str | None, Query(max_length=255, description="case-insensitive")] = None,
    gender: Gender | None = None,
    tags: Annotated[
        list[TagParam] | None,
        Query(max_length=20, description="repeatable; the customer has all of them"),
    ] = None,
    tag: Annotated[
        list[TagParam] | None,
        Query(max_length=20, deprecated=True, description="the former name of `tags`"),
    ] = None,
    age_min: Annotated[int | None, Query(alias="ageMin", ge=0, le=150)] = None,
    age_max: Annotated[int | None, Query(alias="ageMax", ge=0, le=150)] = None,
    created_from: Annotated[
        Instant | None, Query(alias="createdFrom", description="RFC 3339, inclusive")
    ] = None,
    created_to: Annotated[
        Instant | None, Query(alias="createdTo", description="RFC 3339, inclusive")
    ] = None,
) -> dict[str, Any]:
    """The filters of `GET /customers` (same parameters, same rules, same 422s) as the
    parameters of projections.customers.FILTERS: only those given."""
    params: dict[str, Any] = {}
    if email is not None:
        try:
            params["email"] = normalize_email(email)
        except ValueError as e:
            raise invalid("email", str(e)) from None
    if status is not None:
        params["status"] = status.value
    if country is not None:
        try:
            params["country"] = lookup_country(country)[0]
        except ValueError as e:
            raise invalid("country", str(e)) from None
    if city is not None:
        params["city"] = city.strip()
    if gender is not None:
        params["gender"] = gender.value
    if tags or tag:
        params["tags"] = sorted({*(tags or ()), *(tag or ())})
    if age_min is not None:
        params["age_min"] = age_min
    if age_max is not None:
        params["age_max"] = age_max
        if age_min is not None and age_min > age_max:
            raise invalid("ageMax", "must not be less than ageMin")
    if created_from is not None:
        params["created_from"] = created_from
    if created_to is not None:
        params["created_to"] = created_to
        if created_from is not None and created_from > created_to:
            raise invalid("createdTo", "must not be before createdFrom")
    return params


def _query_names() -> dict[str, str]:
    """customer_filters' parameters (named as the FILTERS keys they set) → the query
    parameter a client gives (its alias)."""
    hints = typing.get_type_hints(customer_filters, include_extras=True)
    hints.pop("return")
    hints.pop("tag")  # sets the `tags` filter
    return {
        name: next(
            (m.alias for m in getattr(hint, "__metadata__", ()) if isinstance(m, QueryInfo)),
            None,
        )
        or name
        for name, hint in hints.items()
    }


_QUERY_NAMES = _query_names()
assert _QUERY_NAMES.keys() == FILTERED_FIELDS.keys()


def listing_reads(filters: dict[str, Any]) -> list[tuple[str, str]]:
    """(query parameter, customer field it reads) of each filter customer_filters returned,
    for Principal.require_visible."""
    return [(_QUERY_NAMES[key], FILTERED_FIELDS[key]) for key in filters]


@router.get("", response_class=Response, responses=_PAGE_JSON)
async def list_customers(
    *,
    request: Request,
    principal: CanRead,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
    cursor: Annotated[
        str | None, Query(max_length=2048, description="nextCursor of the previous page")
    ] = None,
    sort: Sort = Sort.CREATED_AT_DESC,
    filters: Annotated[dict[str, Any], Depends(customer_filters)],
    q: Annotated[
        str | None,
        Query(min_length=1, max_length=254, description="prefix of e-mail or name"),
    ] = None,
) -> Response:
    page = await customer_page(
        paging.pool(request),
        request.app.state.cursors,
        request.app.state.emails,
        principal,
        limit=limit,
        cursor=cursor,
        sort=sort,
        filters=filters,
        q=q,
    )
    return _json(page)


async def customer_page(
    pool: AsyncConnectionPool[Any],
    codec: CursorCodec,
    emails: EmailIndex,
    principal: Principal,
    *,
    limit: int,
    cursor: str | None,
    sort: Sort,
    filters: dict[str, Any],
    q: str | None,
) -> bytes:
    """`{"items", "nextCursor", "limit"}` of the validated listing parameters, as JSON (the
    REST and gRPC listings)."""
    searched = [("q", field) for field in _SEARCHED] if q is not None else []
    principal.require_visible([*searched, ("sort", sort.field), *listing_reads(filters)])
    params: dict[str, Any] = {
        "org": principal.org,
        "limit": limit,
        "fetch": limit + 1,
        **emails.resolve(principal.org, filters),
    }
    if q is not None:
        params["q"] = _escape_like(q) + "%"
    if cursor is not None:
        params["after_key"], params["after_id"] = codec.decode(cursor, sort)

    given = tuple(f for f in FILTERS if f in params)
    query = list_query(sort, given, cursor is not None, q is not None)
    async with pool.connection() as conn:
        # Not prepared: a custom plan per request lets the planner see the actual values
        # (LIKE prefix, selectivity of each filter) and pick the right index.
        cur = await conn.execute(query, params, prepare=False)
        row = await cur.fetchone()
    assert row is not None
    items, count, last_key, last_id, segments, tracked = row
    items = _with_live_fields(items, segments, tracked)
    if count and not principal.can(Permission.PERSONAL_DATA):
        items = orjson.dumps([masked(d) for d in orjson.loads(items)])
    next_cursor = codec.encode(sort, last_key, last_id) if count > limit else None
    return b"".join(
        (
            b'{"items":',
            items,
            b',"nextCursor":',
            orjson.dumps(next_cursor),
            b',"limit":',
            str(limit).encode(),
            b"}",
        )
    )


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


@router.get("/{id}", response_class=Response, responses=_CUSTOMER_JSON)
async def get_customer(
    request: Request,
    principal: CanRead,
    id: UUID,
    if_none_match: IfNoneMatchHeader = None,
) -> Response:
    """The customer; a lifecycle-deleted one answers 200 with `status: DELETED` during the
    grace period (CUSTOMERS_ERASURE_GRACE_HOURS), then 404. A customer just created is
    answered once the read model shows it (the read waits for it, within the consistency
    bound), so following a creation's Location works without its token."""
    pool = paging.pool(request)
    body, version = await once_settled(request, VIEW, id, lambda: customer(pool, principal, id))
    tag = etags.etag(version)
    if etags.none_match(if_none_match, version):
        return Response(status_code=304, headers={"ETag": tag})
    return _json(body, {"ETag": tag})


async def customer(
    pool: AsyncConnectionPool[Any], principal: Principal, id: UUID
) -> tuple[bytes, int]:
    """The customer as `principal` may see it, as JSON, and its version (the ETag)."""
    async with pool.connection() as conn:
        cur = await conn.execute(GET_ONE, (id, principal.org), prepare=True)
        row = await cur.fetchone()
    if row is None:
        raise not_found("customer", id)
    doc, version, segments, *tracked = row
    activity = tuple(tracked) if tracked[0] is not None else None
    return shown(doc, principal, segments, activity), version


Tracked = tuple[datetime, int, datetime | None]  # last activity, logins, last login


def shown(
    doc: bytes,
    principal: Principal,
    segments: list[str] | None = None,
    activity: Tracked | None = None,
) -> bytes:
    """A stored customer doc as `principal` may see it (masked without the personal-data
    permission), with its current segments and tracked activity when given; parsed only when
    something changes."""
    personal = principal.can(Permission.PERSONAL_DATA)
    if personal and not segments and activity is None:
        return doc
    customer = orjson.loads(doc)
    if segments:
        customer["segments"] = segments
    if activity is not None:
        with_activity(customer, activity)
    return orjson.dumps(customer if personal else masked(customer))


def with_activity(customer: dict[str, Any], activity: Tracked) -> None:
    """Tracked activity added to what the profile says (the later time, the sum of logins)."""
    last_activity, logins, last_login = activity
    customer["lastActivity"] = _later(customer.get("lastActivity"), last_activity)
    metadata = customer.setdefault("metadata", {})
    metadata["loginCount"] = metadata.get("loginCount", 0) + logins
    if last_login is not None:
        metadata["lastLogin"] = _later(metadata.get("lastLogin"), last_login)


def _later(stored: str | None, tracked: datetime) -> str:
    if stored is not None and datetime.fromisoformat(stored) >= tracked:
        return stored
    return utc_iso(tracked)


def _with_live_fields(items: bytes, segments: bytes | None, tracked: bytes | None) -> bytes:
    """The page's docs with their current segments and tracked activity (parsed only when
    some have any)."""
    if segments is None and tracked is None:
        return items
    docs = orjson.loads(items)
    member_of: dict[str, list[str]] = orjson.loads(segments) if segments else {}
    activity: dict[str, list[Any]] = orjson.loads(tracked) if tracked else {}
    for d in docs:
        d["segments"] = member_of.get(d["id"], [])
        found = activity.get(d["id"])
        if found is not None:
            last_activity, logins, last_login = found
            with_activity(
                d,
                (
                    datetime.fromisoformat(last_activity),
                    logins,
                    datetime.fromisoformat(last_login) if last_login else None,
                ),
            )
    return orjson.dumps(docs)


@router.get(
    "/{id}/segments",
    responses={
        200: {
            "description": "{customerId, asOf, items: [{segmentId, name, joinedAt,"
            " joinReason, leftAt, leaveReason, active}]}"
        },
        **problem_responses({404: "No such customer in the caller's organization"}),
        **READ_PROBLEMS,
    },
)
async def customer_segments(
    request: Request,
    principal: CanRead,
    id: UUID,
    as_of: Annotated[
        Instant | None,
        Query(alias="asOf", description="RFC 3339: the segments the customer was in then"),
    ] = None,
    history: Annotated[
        bool, Query(description="every stint, past ones included (ignores asOf)")
    ] = False,
) -> dict[str, Any]:
    """The segments the customer is in now (or was in at `asOf`), oldest membership first."""
    query = STINTS_ALL if history else STINTS_NOW if as_of is None else STINTS_AS_OF

    async def stints() -> list[Any]:
        async with paging.pool(request).connection() as conn:
            if await (await conn.execute(EXISTS, (id, principal.org))).fetchone() is None:
                raise DomainError(Code.NOT_FOUND, f"customer {id} not found")
            cur = await conn.execute(query, {"id": id, "org": principal.org, "at": as_of})
            found: list[Any] = await cur.fetchall()
            return found

    rows = await once_settled(request, VIEW, id, stints)
    return {
        "customerId": str(id),
        "asOf": utc_iso(as_of) if as_of and not history else None,
        "items": [render_stint(row) for row in rows],
    }
