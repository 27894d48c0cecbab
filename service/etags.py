"""Entity tags of customers and segments: `"<version>"`. One rule reads If-Match and
If-None-Match alike, so that a client's `2` means the same in both (it did not: an unquoted
If-Match was taken, an unquoted If-None-Match never matched)."""

from __future__ import annotations

import re
from collections.abc import Collection

from domain.errors import invalid

_TAG = re.compile(r'(?:W/)?"?([0-9]{1,9})"?')
# The same syntax for the OpenAPI document (what `versions` takes, spaces around commas aside).
IF_MATCH_PATTERN = rf"^(\*|{_TAG.pattern})$"
IF_NONE_MATCH_PATTERN = rf"^(\*|{_TAG.pattern}(, ?{_TAG.pattern})*)$"


def etag(version: int) -> str:
    return f'"{version}"'


def versions(header: str, name: str) -> frozenset[int] | None:
    """The versions a conditional header names: `"3"`, `W/"3"` or `3`, comma-separated;
    None for `*` (any). Anything else is a 422 naming the header."""
    if header.strip() == "*":
        return None
    found = set()
    for tag in header.split(","):
        m = _TAG.fullmatch(tag.strip())
        if m is None:
            raise invalid(name, 'expected entity tags such as "3" (or *)')
        found.add(int(m.group(1)))
    return frozenset(found)


def if_match(header: str | None) -> int | None:
    """The version If-Match requires (None: no requirement). One tag: a write checks one
    version."""
    if header is None:
        return None
    required = versions(header, "If-Match")
    if required is None:
        return None
    if len(required) != 1:
        raise invalid("If-Match", 'expected one entity tag such as "3" (or *)')
    return next(iter(required))


def none_match(header: str | None, version: int) -> bool:
    """Whether If-None-Match names `version` (a 304)."""
    if header is None:
        return False
    named: Collection[int] | None = versions(header, "If-None-Match")
    return named is None or version in named
