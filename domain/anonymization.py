"""What is left of a customer after anonymization: nothing that identifies the person, the
analytics that reports count on (country, age band, language and currency, acquisition
source and date, purchases and lifetime value)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from domain.values import Profile

ANONYMOUS_NAME = "Anonymized customer"


def age_band(age: Any) -> str | None:
    """Ten-year bands: 35 -> "30-39"."""
    if not isinstance(age, int) or isinstance(age, bool):
        return None
    low = age // 10 * 10
    return f"{low}-{low + 9}"


def anonymous_profile(profile: dict[str, Any], customer_id: UUID) -> dict[str, Any]:
    """The anonymized profile (the public camelCase shape, validated like any profile)."""
    location = profile.get("location") or {}
    preferences = profile.get("preferences") or {}
    metadata = profile.get("metadata") or {}
    band = age_band(profile.get("age"))
    purchases = [
        {  # order ids could link back to other systems: renumbered
            "id": f"purchase-{i + 1}",
            "amount": p["amount"],
            "product": p.get("product") or "",
            "category": p.get("category") or "",
            "purchaseDate": p["purchaseDate"],
            "channel": p.get("channel") or "",
        }
        for i, p in enumerate(metadata.get("purchaseHistory") or [])
    ]
    anonymous = {
        # Not an address anyone has: unique per record, under the reserved example.com.
        "email": f"anonymized-{customer_id.hex}@anonymized.example.com",
        "name": ANONYMOUS_NAME,
        "location": {"country": location["country"]} if location.get("country") else None,
        "preferences": {
            "language": preferences.get("language", "en"),
            "currency": preferences.get("currency", "EUR"),
            "marketingConsent": False,
            "dataProcessingConsent": False,
            "customPreferences": {"ageBand": band} if band else {},
        },
        "metadata": {
            "source": metadata.get("source") or "api",
            "acquisitionDate": metadata.get("acquisitionDate"),
            "lifetimeValue": metadata.get("lifetimeValue"),
            "purchaseHistory": purchases,
            "loginCount": metadata.get("loginCount") or 0,
        },
    }
    return Profile.model_validate(anonymous).dump()
