"""What a role without the personal-data permission sees of a customer: the record's shape,
with the fields that identify or locate the person replaced.

The constants below are the one statement of which fields those are: `masked` applies them to
a customer, `hidden` to a field a request filters, searches, sorts or builds criteria on. A
caller who sees a field masked may not steer results by it either (service.auth
`Principal.require_visible`): which customers a prefix, a range or a sort order selects gives
the value back, a character or a bisection at a time."""

from __future__ import annotations

from typing import Any

MASK = "***"
REPLACED = ("email", "name", "pendingEmail")  # shown as MASK (pendingEmail: when there is one)
LOCATION_SHOWN = ("country", "countryCode")  # the rest of `location` is left out
EMPTIED = ("metadata", "deviceInfo")  # shown as []
_EMPTIED_PATH = ".".join(EMPTIED)


def masked(customer: dict[str, Any]) -> dict[str, Any]:
    """The public customer JSON (domain.customer.representation) with e-mail, name, pending
    e-mail, location below the country, and device details masked."""
    location = customer.get("location")
    group, key = EMPTIED
    inner = customer.get(group) or {}
    return {
        **customer,
        **{name: MASK if customer.get(name) else None for name in REPLACED},
        "location": {k: location.get(k) for k in LOCATION_SHOWN} if location else None,
        group: {**inner, key: []} if inner else inner,
    }


def hidden(field: str) -> bool:
    """Whether `masked` hides `field` (a dotted path of the customer JSON, e.g.
    `location.city`), or something inside it, or a part of it (`location`)."""
    head, _, rest = field.partition(".")
    if head in REPLACED:
        return True
    if head == "location":
        return rest.partition(".")[0] not in LOCATION_SHOWN
    inside, around = f"{field}.", f"{_EMPTIED_PATH}."
    return field == _EMPTIED_PATH or field.startswith(around) or _EMPTIED_PATH.startswith(inside)
