"""What a role without the personal-data permission sees of a customer: the record's shape,
with the fields that identify or locate the person replaced."""

from __future__ import annotations

from typing import Any

MASK = "***"


def masked(customer: dict[str, Any]) -> dict[str, Any]:
    """The public customer JSON (domain.customer.representation) with e-mail, name, pending
    e-mail, location below the country, and device details masked."""
    location = customer.get("location")
    metadata = customer.get("metadata") or {}
    return {
        **customer,
        "email": MASK,
        "name": MASK,
        "pendingEmail": MASK if customer.get("pendingEmail") else None,
        "location": (
            {"country": location.get("country"), "countryCode": location.get("countryCode")}
            if location
            else None
        ),
        "metadata": {**metadata, "deviceInfo": []} if metadata else metadata,
    }
