"""Which field of the customer body each column of an import's CSV file fills: its mapping.

A column is read as (in this order) the field an explicit mapping gives it (`mapping`,
column → field, `"-"` or null to skip it), a server-owned column of the export (skipped),
a dotted field path of the body (the export's own layout, `location.city`), or an alias: the
flat names CRMs and spreadsheets write, compared without case, spaces or punctuation
(`E-mail Address`, `zip`, `First Name`, `marketing_consent`). Two pseudo-fields join into
`name`: `firstName` and `lastName`. `tags` takes a JSON array or a list delimited by `;`,
`|` or `,` (a tag holds none of them). A column that is none of these is refused before
anything is stored, with the fields whose names are closest to it.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, get_args, get_origin

import orjson

from domain.errors import invalid
from domain.values import Profile

# Server-owned columns of the export (read_api/export.py): the import ignores them.
IGNORED = frozenset(
    {
        "id",
        "version",
        "status",
        "createdAt",
        "updatedAt",
        "lastActivity",
        "segments",
        "pendingEmail",
        "activeOrders",
        "location.countryCode",
    }
)
FIRST_NAME, LAST_NAME = "firstName", "lastName"
SKIP = "-"
# Cells the export prefixed with "'" (read_api/export.py), so that no spreadsheet runs them.
_FORMULA_GUARDED = frozenset({"=", "+", "-", "@", "\t", "\r", "'"})
_TAG_SEPARATORS = re.compile(r"[;|,]")
_NOT_ALNUM = re.compile(r"[^0-9a-z]+")

# Flat names other tools write, by their key (see `key`), beyond the fields' own names.
_ALIASES: dict[str, tuple[str, ...]] = {
    "email": ("emailaddress", "mail", "mailaddress", "primaryemail", "emailid"),
    "name": ("fullname", "customername", "contactname", "displayname"),
    FIRST_NAME: ("firstname", "givenname", "forename", "first"),
    LAST_NAME: ("lastname", "surname", "familyname", "last"),
    "gender": ("sex",),
    "location.country": ("country", "countryname"),
    "location.city": ("city", "town"),
    "location.region": ("region", "state", "province", "stateprovince", "county"),
    "location.postalCode": ("postalcode", "postcode", "zip", "zipcode", "postal"),
    # A person's time zone is where they are; preferences.timezone is reached by its path.
    "location.timezone": ("timezone", "tz", "timezonename"),
    "preferences.marketingConsent": (
        "marketingconsent",
        "acceptsmarketing",
        "marketingoptin",
        "optin",
        "emailoptin",
    ),
    "preferences.dataProcessingConsent": (
        "dataprocessingconsent",
        "dataprocessing",
        "gdprconsent",
        "processingconsent",
    ),
    "preferences.language": ("language", "lang"),
    "tags": ("tags", "tag", "labels"),
}


def key(name: str) -> str:
    """A column name as aliases are compared: lower case, letters and digits only."""
    return _NOT_ALNUM.sub("", name.lower())


def _paths(model: Any, prefix: str = "") -> Iterator[str]:
    """Every field path of `model`, nested models' own fields included (lists are leaves)."""
    for name, info in model.model_fields.items():
        path = prefix + (info.alias or name)
        yield path
        if get_origin(info.annotation) in (list, dict):
            continue
        options = get_args(info.annotation) or (info.annotation,)
        nested = next((t for t in options if hasattr(t, "model_fields")), None)
        if nested is not None:
            yield from _paths(nested, path + ".")


@lru_cache(maxsize=1)
def fields() -> frozenset[str]:
    """The targets a column may have: the body's field paths and the name's two halves."""
    return frozenset(_paths(Profile)) | {FIRST_NAME, LAST_NAME}


@lru_cache(maxsize=1)
def _by_key() -> dict[str, str]:
    """Alias key → field: the last segments of the fields' paths (when only one field has
    it), the server-owned columns (skipped), the fields' own paths, then the alias table
    (which decides the ambiguous ones)."""
    leaves: dict[str, set[str]] = {}
    for path in fields():
        leaves.setdefault(key(path.rsplit(".", 1)[-1]), set()).add(path)
    table = {k: next(iter(paths)) for k, paths in leaves.items() if len(paths) == 1}
    table |= {key(c): c for c in IGNORED}
    table |= {key(path): path for path in fields()}
    for target, names in _ALIASES.items():
        table |= dict.fromkeys(names, target)
    return table


def suggestions(name: str, table: dict[str, str]) -> list[str]:
    """What the keys of `table` closest to `name`'s stand for (difflib), best first."""
    close = difflib.get_close_matches(key(name), list(table), n=3, cutoff=0.7)
    return list(dict.fromkeys(table[k] for k in close))


def _did_you_mean(name: str, table: dict[str, str]) -> str:
    close = suggestions(name, table)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


def parse_explicit(text: str | None) -> dict[str, str | None]:
    """The `mapping` parameter: a JSON object of column → field (`"-"` or null: skip)."""
    if text is None or not text.strip():
        return {}
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise invalid("mapping", "not JSON: a JSON object of column → field") from None
    if not isinstance(value, dict) or not all(
        v is None or isinstance(v, str) for v in value.values()
    ):
        raise invalid("mapping", 'a JSON object of column → field ("-" or null skips one)')
    return {c: (None if t in (None, SKIP, "") else t) for c, t in value.items()}


def resolve(header: list[str], explicit: dict[str, str | None]) -> list[tuple[str, str | None]]:
    """Each column with the field it fills (None: skipped), in the header's order; 422
    naming `mapping` or `columns` for what cannot be used (all unknown columns at once)."""
    explicit = {c: (None if t in (None, SKIP, "") else t) for c, t in explicit.items()}
    missing = [c for c in explicit if c not in header]
    if missing:
        columns = {key(c): c for c in reversed(header)}
        detail = ", ".join(f"{c!r}{_did_you_mean(c, columns)}" for c in missing)
        raise invalid("mapping", f"not a column of the file's header: {detail}")
    table = _by_key()
    wrong = [t for t in explicit.values() if t is not None and t not in fields()]
    if wrong:
        detail = ", ".join(f"{t!r}{_did_you_mean(t, table)}" for t in wrong)
        raise invalid("mapping", f"not a field of the customer body: {detail}")
    out: list[tuple[str, str | None]] = []
    unknown: list[str] = []
    for column in header:
        if column in explicit:
            target = explicit[column]
        elif column in IGNORED:
            target = None
        elif column in fields():
            target = column
        elif (found := table.get(key(column))) is not None:
            target = None if found in IGNORED else found
        else:
            unknown.append(column)
            continue
        out.append((column, target))
    _country_from_code(out, explicit)
    if unknown:
        listed = ", ".join(f"{c!r}{_did_you_mean(c, table)}" for c in unknown)
        raise invalid(
            "columns",
            f"unknown column{'s' if len(unknown) > 1 else ''} {listed}: name them with"
            ' mapping={"column": "field"} (or "-" to skip one); the fields are the export\'s'
            " columns (GET /customers/export?format=csv), docs/api.md lists the aliases",
        )
    _check_targets(out)
    return out


def _country_from_code(
    pairs: list[tuple[str, str | None]], explicit: dict[str, str | None]
) -> None:
    """A flat country-code column (`country_code`: ES) is the country when no column is:
    a country is looked up by its code as well as its name."""
    if any(t == "location.country" for _, t in pairs):
        return
    for i, (column, _) in enumerate(pairs):
        flat = column not in IGNORED and column not in explicit
        if flat and _by_key().get(key(column)) == "location.countryCode":
            pairs[i] = (column, "location.country")
            return


def _check_targets(pairs: list[tuple[str, str | None]]) -> None:
    by_target: dict[str, list[str]] = {}
    for column, target in pairs:
        if target is not None:
            by_target.setdefault(target, []).append(column)
    for target, columns in by_target.items():
        if len(columns) > 1:
            names = " and ".join(repr(c) for c in columns)
            raise invalid("columns", f"columns {names} both fill {target!r}: skip all but one")
    if "name" in by_target and ({FIRST_NAME, LAST_NAME} & by_target.keys()):
        raise invalid("columns", "a name column and first/last name columns: skip one or the other")
    if "email" not in by_target:
        raise invalid("columns", "no column is the e-mail address ('email')")


@dataclass(frozen=True)
class Layout:
    """How a row of cells becomes a customer body: per column, where its value goes."""

    places: tuple[tuple[int, tuple[str, ...], str], ...]  # (cell, path, kind)

    @classmethod
    def of(cls, header: list[str], pairs: list[tuple[str, str | None]]) -> Layout:
        targets = dict(pairs)
        places = []
        for i, column in enumerate(header):
            target = targets.get(column)
            if target is None:
                continue
            kind = target if target in {FIRST_NAME, LAST_NAME, "tags"} else "value"
            places.append((i, tuple(target.split(".")), kind))
        return cls(tuple(places))

    def body(self, row: list[str]) -> dict[str, Any]:
        """The row's customer body: empty cells left out, JSON text for lists and maps."""
        out: dict[str, Any] = {}
        first = last = ""
        for i, path, kind in self.places:
            raw = row[i]
            if raw == "":
                continue
            cell = _unguarded(raw)
            if kind == FIRST_NAME:
                first = cell.strip()
                continue
            if kind == LAST_NAME:
                last = cell.strip()
                continue
            value: Any = cell
            if cell[:1] in "[{":
                try:
                    value = orjson.loads(cell.encode("utf-8", errors="surrogateescape"))
                except orjson.JSONDecodeError:
                    value = cell  # not JSON: validation will say what is wrong with it
            elif kind == "tags":
                value = [t for t in (p.strip() for p in _TAG_SEPARATORS.split(cell)) if t]
            target = out
            for p in path[:-1]:
                target = target.setdefault(p, {})
            target[path[-1]] = value
        if first or last:
            out["name"] = f"{first} {last}".strip()
        return out


def _unguarded(raw: str) -> str:
    """The export's guard against spreadsheet formulas comes off."""
    return raw[1:] if raw[:1] == "'" and raw[1:2] in _FORMULA_GUARDED else raw
