"""`customers seed`: realistic customers straight into the event store, many per transaction."""

from __future__ import annotations

import logging
import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from faker import Faker

from domain.customer import Customer
from domain.values import Profile
from eventstore.application import Customers
from eventstore.keys import EMAIL
from eventstore.recorder import Claim
from service.settings import Settings

log = logging.getLogger(__name__)

_PLACES = [
    ("Spain", "Europe/Madrid", ["Madrid", "Barcelona", "Valencia", "Sevilla"], "EUR"),
    ("France", "Europe/Paris", ["Paris", "Lyon", "Marseille", "Lille"], "EUR"),
    ("Italy", "Europe/Rome", ["Rome", "Milan", "Naples", "Turin"], "EUR"),
    ("Germany", "Europe/Berlin", ["Berlin", "Munich", "Hamburg", "Cologne"], "EUR"),
    ("GB", "Europe/London", ["London", "Manchester", "Leeds", "Bristol"], "GBP"),
    ("US", "America/New_York", ["New York", "Boston", "Chicago", "Austin"], "USD"),
]
_CATEGORIES = ["subscription", "electronics", "books", "fashion", "home", "sports"]
_CHANNELS = ["web", "mobile", "store", "email"]
_SOURCES = ["website", "mobile_app", "store", "import", "partner"]
_TAGS = ["vip", "premium", "newsletter", "b2b", "student", "churn-risk", "loyal"]


class CustomerFactory:
    """Draws from pre-generated pools: Faker per row would cap seeding near 2k/s."""

    def __init__(self, rng: random.Random) -> None:
        fake = Faker()
        fake.seed_instance(rng.randint(0, 2**31))
        self.rng = rng
        self.first = [fake.first_name() for _ in range(500)]
        self.last = [fake.last_name() for _ in range(1000)]
        self.domains = [fake.free_email_domain() for _ in range(20)]
        self.now = datetime.now(UTC)

    def profile(self, n: int) -> dict[str, Any]:
        r = self.rng
        first, last = r.choice(self.first), r.choice(self.last)
        country, tz, cities, currency = r.choice(_PLACES)
        acquired = self.now - timedelta(days=r.randint(1, 1500))
        purchases = [
            {
                "id": f"p-{n}-{i}",
                "amount": {"amount": round(r.uniform(5, 400), 2), "currency": currency},
                "product": f"{r.choice(_CATEGORIES).title()} item {r.randint(1, 300)}",
                "category": r.choice(_CATEGORIES),
                "purchaseDate": (acquired + timedelta(days=r.randint(0, 1400))).isoformat(),
                "channel": r.choice(_CHANNELS),
            }
            for i in range(r.choice((0, 0, 1, 2, 3, 5)))
        ]
        total = round(sum(p["amount"]["amount"] for p in purchases), 2)  # type: ignore[index]
        return {
            "email": f"{first}.{last}.{n}@{r.choice(self.domains)}".lower(),
            "name": f"{first} {last}",
            "age": r.randint(18, 85),
            "gender": r.choice(("MALE", "FEMALE", "OTHER", "UNKNOWN")),
            "location": {"country": country, "city": r.choice(cities), "timezone": tz},
            "preferences": {
                "currency": currency,
                "timezone": tz,
                "marketingConsent": r.random() < 0.6,
                "dataProcessingConsent": True,
                "privacySettings": {"analyticsTracking": r.random() < 0.8},
            },
            "tags": r.sample(_TAGS, r.randint(0, 2)),
            "metadata": {
                "source": r.choice(_SOURCES),
                "acquisitionDate": acquired.isoformat(),
                "lifetimeValue": {"amount": total, "currency": currency},
                "purchaseHistory": purchases,
                "interactionHistory": [
                    {
                        "id": f"i-{n}-0",
                        "type": "page_view",
                        "channel": "web",
                        "action": "view_product",
                        "timestamp": (self.now - timedelta(days=r.randint(0, 90))).isoformat(),
                        "outcome": "success",
                    }
                ],
                "loginCount": r.randint(0, 200),
            },
        }


def seed(
    settings: Settings,
    *,
    count: int,
    org: str,
    batch: int = 500,
    seed_value: int = 7,
    offset: int | None = None,
) -> int:
    """`count` customers of `org`; customer n gets e-mail `first.last.<offset + n>@...`.

    `offset` defaults to the time in ms (distinct e-mails across repeated runs); parallel
    seeders of one organization pass disjoint ranges (the benchmark does).
    """
    app = Customers(settings, pool_size=2)
    factory = CustomerFactory(random.Random(seed_value))  # noqa: S311 — fake data, not secrets
    if offset is None:
        offset = int(time.time() * 1000)  # distinct e-mails across repeated seeding runs
    started, done = time.perf_counter(), 0
    try:
        while done < count:
            customers = [
                Customer.register(
                    org, Profile.model_validate(factory.profile(offset + done + i)), "seed"
                )
                for i in range(min(batch, count - done))
            ]
            app.save(
                *customers,
                new_keys=[app.keys.create(c.id, org) for c in customers],
                claims=[
                    Claim(EMAIL, org, app.keys.claim_hash(EMAIL, org, c.email), c.id)
                    for c in customers
                ],
            )
            done += len(customers)
            rate = done / (time.perf_counter() - started)
            log.info("seeded", extra={"done": done, "count": count, "perSecond": round(rate)})
    finally:
        app.close()
    return done
