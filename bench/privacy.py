"""Privacy benchmark: `python -m bench.privacy` (also run by `make bench`).

Customers with 1,000 events each (created, then 999 profile updates, all encrypted). Per
customer, timed in process through the same functions the API runs:

- export: everything held (`read_api.personal_data._collect`: decrypt and render the 1,000
  events, read models, privacy request + audit entry) serialized to JSON; beside a bare
  SELECT of the same 1,000 stored events (baseline);
- erasure: `CustomerCommands.erase` (load the aggregate from 1,000 events, append Erased,
  shred the key, drop claims, record the request and audit entry in one transaction), then
  the projector removing the customer from every read model; beside a bare one-event append.
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime, timedelta

import orjson
import psycopg

from bench import env, report
from bench.client import Latencies
from bench.report import lat

DB = "customers_bench_privacy"
EVENTS = 1000


def main(argv: list[str] | None = None) -> int:
    args, execute = env.focused_bench("python -m bench.privacy", __doc__, DB, "privacy", argv)
    return execute(lambda out, url: run(out, url, args.customers))


def run(out: report.Report, url: str, count: int) -> None:
    import random

    from domain.access import Principal
    from domain.customer import Customer
    from domain.values import Profile
    from eventstore.application import Customers
    from projections.runner import Projector
    from read_api.personal_data import _collect
    from service.seed import CustomerFactory
    from service.settings import get_settings
    from write_api.customers import CustomerCommands

    settings = get_settings()
    app = Customers(settings, pool_size=4)
    projector = Projector(settings, app=app)
    org = "bench-privacy"
    dpo = Principal(sub="bench-dpo", org=org, roles=frozenset({"dpo"}))
    factory = CustomerFactory(random.Random(3))
    try:
        print(f"\n== {count} customers x {EVENTS} events", flush=True)
        started = time.perf_counter()
        ids = []
        for n in range(count):
            profile = Profile.model_validate(factory.profile(n))
            customer = Customer.register(org, profile, "bench")
            app.save(customer, new_keys=[app.keys.create(customer.id, org)])
            for k in range(EVENTS - 1):
                data = profile.model_copy(update={"name": f"{profile.name} {k}"})
                customer.update(
                    data,
                    status=None,
                    actor="bench",
                    actor_is_admin=False,
                    now=datetime.now(UTC),
                    verification_ttl=timedelta(hours=1),
                )
                if k % 200 == 199:
                    app.save(customer)
            app.save(customer)
            ids.append(customer.id)
        projector.run_once()
        print(f"    seeded in {time.perf_counter() - started:.0f} s", flush=True)

        bare, export = Latencies(), Latencies()
        with psycopg.connect(url) as conn:
            for cid in ids:
                t0 = time.perf_counter()
                rows = conn.execute(
                    "SELECT state FROM customers_events WHERE originator_id = %s", (cid,)
                ).fetchall()
                bare.add(time.perf_counter() - t0, 200, len(rows) == EVENTS)
        fresh = Customers(settings, pool_size=2)  # keys not cached, as in a read-API process
        try:
            for cid in ids:
                t0 = time.perf_counter()
                body = orjson.dumps(_collect(fresh, dpo, cid))
                export.add(time.perf_counter() - t0, 200, len(body) > 0)
        finally:
            fresh.close()
        out.add(
            f"8. Export (JSON) of a customer with {EVENTS:,} events ({count} customers)",
            lat(export, 50, 99),
            baseline=f"bare SELECT of the {EVENTS:,} stored events {lat(bare, 50, 99)}",
        )

        erase, visible = Latencies(), Latencies()
        commands = CustomerCommands(app)
        for cid in ids:
            app.repository.cache = None  # load from the store, as after a restart
            t0 = time.perf_counter()
            commands.erase(dpo, cid)
            t1 = time.perf_counter()
            projector.run_once()
            erase.add(t1 - t0, 200, True)
            visible.add(time.perf_counter() - t0, 200, True)
        base = Latencies()
        for _ in range(count):
            c = Customer.register(org, Profile.model_validate(factory.profile(9999)), "bench")
            t0 = time.perf_counter()
            app.save(c, new_keys=[app.keys.create(c.id, org)])
            base.add(time.perf_counter() - t0, 200, True)
        out.add(
            f"8. Erasure of a customer with {EVENTS:,} events ({count} customers)",
            f"committed {lat(erase, 50, 99)}; gone from every read model {lat(visible, 50, 99)}",
            baseline=f"bare one-event append (a customer's creation) {lat(base, 50, 99)}",
        )
    finally:
        projector.close()
        app.close()


if __name__ == "__main__":
    sys.exit(main())
