"""Who answers a read: the primary, or one of CUSTOMERS_READ_REPLICA_URLS (PostgreSQL
streaming replicas; docs/scaling.md "Read replicas").

NOTIFY is not replicated, so a replica's projected positions are learnt by polling its
`positions` table: once a second in the background, every 25 ms while a read waits for it.
A view's rows and its `positions` row commit in one transaction, which the replica replays
whole: once its `positions` show a token, its views show that write. So a read carrying a
token is answered by a replica only when that replica has reached it (exact, not a guess
from lag); a read without one by a replica whose replay lag is within
CUSTOMERS_REPLICA_MAX_LAG_SECONDS. Anything else is the primary's, as without replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from read_api import paging
from read_api.consistency import Positions, PositionWatcher, parse_token, reach, within_log
from service.metrics import (
    READS_SERVED,
    REPLICA_LAG,
    REPLICA_TOKEN_WAITS,
    unwatch_pool,
    watch_pool,
)
from service.settings import Settings

log = logging.getLogger(__name__)

PRIMARY = "primary"
REPLICA = "replica"
_SLOW = 1.0
_FAST = 0.025
# Replay lag: 0 once it has replayed all it received (an idle primary sends nothing, and
# the last replayed commit grows old without the replica falling behind); else the age of
# the last commit it replayed. NULL when it cannot tell (nothing replayed since it started).
POLL = """
SELECT CASE
         WHEN NOT pg_is_in_recovery() OR pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn()
           THEN 0.0
         ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8
       END,
       coalesce((SELECT jsonb_object_agg(name, position) FROM positions), '{}'::jsonb)
"""


class ReplicaWatcher(PositionWatcher):
    """A replica's positions and replay lag, polled (`lag` is None while unknown)."""

    def __init__(self, url: str, name: str) -> None:
        super().__init__(url)
        self.name = name
        self.lag: float | None = None
        self._wake = asyncio.Event()

    async def wait(self, view: str, position: int, timeout: float) -> bool:
        if self.known(view) < position:
            self._wake.set()  # poll fast from now on, not at the next slow round
        return await super().wait(view, position, timeout)

    def _set_lag(self, lag: float | None) -> None:
        self.lag = lag
        REPLICA_LAG.labels(self.name).set(-1.0 if lag is None else lag)

    async def _watch(self, conn: psycopg.AsyncConnection[Any]) -> None:
        # NOTIFY is not replicated: the replica's positions and lag are polled, fast only
        # while a read waits.
        while True:
            row = await (await conn.execute(POLL)).fetchone()
            assert row is not None
            lag, positions = row
            self._set_lag(None if lag is None else float(lag))
            await self._publish({str(k): int(v) for k, v in positions.items()})
            if self._waiters:
                await asyncio.sleep(_FAST)
            else:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), _SLOW)

    def _lost(self, error: Exception) -> None:
        # No URL in the log: it may hold a password.
        self._set_lag(None)
        log.warning(
            "read replica unreachable; reads go to the primary",
            extra={"replica": self.name, "error": type(error).__name__},
        )


@dataclass(frozen=True)
class Target:
    """A server that can answer a read: its pool and the positions of its views."""

    name: str  # PRIMARY or REPLICA: the metric label
    pool: AsyncConnectionPool[Any]
    positions: Positions


@dataclass(frozen=True)
class Replica:
    target: Target
    watcher: ReplicaWatcher

    def reached(self, views: tuple[str, ...], position: int) -> bool:
        return all(self.watcher.known(view) >= position for view in views)


class ReadRouter:
    """Chooses the target of each read; with no replicas, always the primary. Opens and
    closes the replicas' pools and watchers."""

    def __init__(self, primary: Target, replicas: list[Replica], max_lag: float) -> None:
        self.primary = primary
        self.replicas = replicas
        self._max_lag = max_lag
        self._turn = itertools.count()

    @classmethod
    async def start(cls, settings: Settings, primary: Target) -> ReadRouter:
        replicas = []
        for number, url in enumerate(settings.read_replica_urls, 1):
            name = f"replica-{number}"
            pool = paging.new_pool(settings, f"read-api-{name}", url)
            watcher = ReplicaWatcher(url, name)
            replicas.append(Replica(Target(REPLICA, pool, watcher), watcher))
            # Start even if a replica is down: reads go to the primary meanwhile.
            await pool.open(wait=False)
            await watcher.start()
            watch_pool(f"read-api-{name}", pool)
        return cls(primary, replicas, settings.replica_max_lag_seconds)

    async def close(self) -> None:
        for replica in self.replicas:
            unwatch_pool(f"read-api-{replica.watcher.name}", replica.target.pool)
            await replica.watcher.stop()
            await replica.target.pool.close()

    def status(self) -> dict[str, Any]:
        """For /ready: each replica's replay lag (null: unreachable); nothing without any."""
        if not self.replicas:
            return {}
        lags = [{"name": r.watcher.name, "lagSeconds": r.watcher.lag} for r in self.replicas]
        return {"replicas": lags}

    def _reachable(self) -> list[Replica]:
        """The replicas answering their polls, in turn (reads spread over them)."""
        up = [r for r in self.replicas if r.watcher.lag is not None]
        if len(up) > 1:
            shift = next(self._turn) % len(up)
            up = up[shift:] + up[:shift]
        return up

    def _fresh(self, replicas: list[Replica]) -> list[Replica]:
        return [r for r in replicas if (r.watcher.lag or 0.0) <= self._max_lag]

    async def choose(
        self, views: tuple[str, ...], token: str | None, timeout: float, replicas: bool = True
    ) -> Target:
        target = await self._choose(views, token, timeout, replicas)
        READS_SERVED.labels(target.name, "false" if token is None else "true").inc()
        return target

    async def _choose(
        self, views: tuple[str, ...], token: str | None, timeout: float, replicas: bool
    ) -> Target:
        primary = self.primary
        reachable = self._reachable() if replicas else []
        if token is None:
            fresh = self._fresh(reachable)
            return fresh[0].target if fresh else primary
        position = parse_token(token)
        # Any replica that shows the token answers exactly, however far behind it is now.
        for replica in reachable:
            if replica.reached(views, position):
                return replica.target
        fresh = self._fresh(reachable)
        if not fresh:
            await reach(primary.positions, primary.pool, views, position, timeout)
            return primary
        if any(primary.positions.known(view) < position for view in views):
            position = await within_log(primary.pool, position)
        # A replica within the lag bound should get there within about that bound; half
        # of the consistency bound stays for the primary if it does not.
        replica = fresh[0]
        budget = min(self._max_lag, timeout / 2)
        started = time.monotonic()
        there = await _all_reached(replica.watcher, views, position, budget)
        waited = time.monotonic() - started
        if there:
            REPLICA_TOKEN_WAITS.labels(REPLICA).observe(waited)
            return replica.target
        REPLICA_TOKEN_WAITS.labels(PRIMARY).observe(waited)
        await reach(primary.positions, primary.pool, views, position, timeout - waited)
        return primary


async def _all_reached(
    watcher: ReplicaWatcher, views: tuple[str, ...], position: int, timeout: float
) -> bool:
    deadline = time.monotonic() + timeout
    for view in views:
        if not await watcher.wait(view, position, max(0.0, deadline - time.monotonic())):
            return False
    return True
