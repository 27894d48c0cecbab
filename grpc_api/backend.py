"""What the gRPC servicers share with the REST apps: the same use-case objects (command side)
and the same query-side pool, position watcher, cursor codec, API keys and rate limiter."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from psycopg_pool import AsyncConnectionPool

from eventstore.application import Customers
from eventstore.keys import LazyKeyring
from read_api import paging
from read_api.consistency import PositionWatcher
from read_api.customers import CursorCodec, EmailIndex
from service.api_keys import ApiKeyStore
from service.limits import RateLimiter
from service.rules_engine import RulesEngine
from service.settings import Settings
from write_api import tracking
from write_api.customers import CustomerCommands
from write_api.segments import SegmentCommands


@dataclass
class Backend:
    settings: Settings
    customers: CustomerCommands
    segments: SegmentCommands
    activity: tracking.ActivityWriter
    pool: AsyncConnectionPool[Any]
    positions: PositionWatcher
    cursors: CursorCodec
    emails: EmailIndex
    api_keys: ApiKeyStore
    limiter: RateLimiter
    # Client addresses of connections that reach the server through the TLS front
    # (grpc_api.tls), by the peer name the server sees for them.
    fronted: dict[str, str] = field(default_factory=dict)


@asynccontextmanager
async def opened(settings: Settings) -> AsyncIterator[Backend]:
    assert settings.database_url
    keyring = LazyKeyring(settings)
    es = Customers(settings, pool_size=settings.db_pool_size, group_commit=True)
    rules = RulesEngine(es.settings)
    activity = tracking.ActivityWriter(settings)
    api_keys = ApiKeyStore(settings, keyring)
    pool = paging.new_pool(settings, "grpc")
    await pool.open(wait=False)  # start even if PostgreSQL is down: health says so
    positions = PositionWatcher(settings.database_url)
    await positions.start()
    try:
        yield Backend(
            settings=settings,
            customers=CustomerCommands(es),
            segments=SegmentCommands(es, rules),
            activity=activity,
            pool=pool,
            positions=positions,
            cursors=CursorCodec(keyring),
            emails=EmailIndex(keyring),
            api_keys=api_keys,
            limiter=RateLimiter(settings),
        )
    finally:
        await positions.stop()
        await pool.close()
        activity.close()
        api_keys.close()
        rules.close()
        es.close()
