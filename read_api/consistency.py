"""Read-your-writes: a read carrying `X-Consistency-Token: <notification id>` waits until the
view it reads has projected that notification (bounded by settings.consistency_wait_seconds).

One LISTEN connection per process follows the projectors' commits (channel
`projections.runner.POSITIONS_CHANNEL`, payload "<view>:<position>") and wakes the waiters;
when nobody waits it costs nothing, and while someone waits it also re-reads `positions`
once a second, in case a notification was lost (e.g. while reconnecting).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Protocol, TypeVar

import psycopg
from fastapi import Depends, Request
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from domain.errors import Code, DomainError, invalid
from eventstore.application import EVENTS_TABLE
from projections.positions import POSITIONS_CHANNEL
from service.auth import authenticate
from service.contract import CONSISTENCY_HEADER, ConsistencyTokenHeader
from service.problems import problem_responses

log = logging.getLogger(__name__)
T = TypeVar("T")

HEADER = CONSISTENCY_HEADER

# The problem answers every read endpoint may give (OpenAPI `responses`).
READ_PROBLEMS = problem_responses(
    {
        401: "Missing or invalid bearer token",
        403: "The token's roles lack customers:read",
        422: "Invalid input; `errors[].field` names it",
        503: "Consistency token not reached in time, or the database is unavailable",
    }
)
# The last notification of the log, and the last of one aggregate (index-only reads).
LOG_HEAD = sql.SQL("SELECT coalesce(max(notification_id), 0) FROM {}").format(
    sql.Identifier(EVENTS_TABLE)
)
LAST_OF = sql.SQL("SELECT max(notification_id) FROM {} WHERE originator_id = %s").format(
    sql.Identifier(EVENTS_TABLE)
)


def not_found(kind: str, id: object) -> DomainError:
    """A 404 of a read that may only be early: reads answer from read models a few
    milliseconds behind the writes, so the text says how to read one's own write."""
    return DomainError(
        Code.NOT_FOUND,
        f"{kind} {id} not found; if you have just created it, send the creation's"
        f" {HEADER} with this read to wait until it is visible",
    )


# As service.contract.CONSISTENCY_PATTERN states it: a bigint the log will not reach.
_DIGITS = re.compile(r"[0-9]{1,18}")
_POLL = 1.0


class PositionWatcher:
    """Latest committed position of every view, pushed by NOTIFY; `wait()` for one."""

    def __init__(self, database_url: str) -> None:
        self._url = database_url
        self._positions: dict[str, int] = {}
        self._changed = asyncio.Condition()
        self._waiters = 0
        self._task: asyncio.Task[None] | None = None
        self._conn: psycopg.AsyncConnection[tuple[str, int]] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._follow(), name="position-watcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def known(self, view: str) -> int:
        return self._positions.get(view, 0)

    async def wait(self, view: str, position: int, timeout: float) -> bool:
        """True once `view` has reached `position`; False after `timeout` seconds."""
        if self._positions.get(view, 0) >= position:
            return True
        deadline = time.monotonic() + timeout
        self._waiters += 1
        try:
            async with self._changed:
                while self._positions.get(view, 0) < position:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), remaining)
                return True
        finally:
            self._waiters -= 1

    async def _publish(self, updates: dict[str, int]) -> None:
        changed = False
        for view, pos in updates.items():
            # A rebuild resets a position to 0: accept any change, not only increases.
            if self._positions.get(view) != pos:
                self._positions[view] = pos
                changed = True
        if changed:
            async with self._changed:
                self._changed.notify_all()

    async def _refresh(self, conn: psycopg.AsyncConnection[tuple[str, int]]) -> None:
        cur = await conn.execute("SELECT name, position FROM positions")
        await self._publish({name: int(pos) for name, pos in await cur.fetchall()})

    async def _follow(self) -> None:
        """`_watch` on a connection of its own, opened again after a loss (pausing longer
        after each failure in a row)."""
        backoff = 0.2
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._url, autocommit=True
                ) as conn:
                    backoff = 0.2
                    await self._watch(conn)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self._lost(e)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _watch(self, conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(POSITIONS_CHANNEL)))
        await self._refresh(conn)
        while True:
            async for n in conn.notifies(timeout=_POLL):
                view, _, pos = n.payload.rpartition(":")
                if pos.isdigit():
                    await self._publish({view: int(pos)})
            if self._waiters:
                await self._refresh(conn)

    def _lost(self, error: Exception) -> None:
        log.warning("position watcher lost its connection; retrying", exc_info=error)


def parse_token(value: str) -> int:
    text = value.strip()
    # ASCII digits only: str.isdigit() also accepts e.g. "²", which int() rejects.
    if not _DIGITS.fullmatch(text):
        raise invalid(HEADER, "must be the non-negative integer a write response returned")
    return int(text)


def consistent_with(*views: str, replicas: bool = True) -> Any:
    """A dependency for endpoints reading `views`: waits for the token, if the request has
    one, and chooses who answers the read (read_api.replicas; `paging.pool` hands out its
    pool). `replicas=False`: always the primary (reads in one long transaction)."""

    async def wait_for_token(request: Request, token: ConsistencyTokenHeader = None) -> None:
        await authenticate(request)  # before making anyone wait
        state = request.app.state
        timeout: float = state.settings.consistency_wait_seconds
        request.state.read_target = await state.reads.choose(views, token, timeout, replicas)

    return Depends(wait_for_token)


class Positions(Protocol):
    """Projected positions of one server's views (the primary's, or a replica's)."""

    def known(self, view: str) -> int: ...

    async def wait(self, view: str, position: int, timeout: float) -> bool: ...


async def caught_up(
    watcher: Positions,
    pool: AsyncConnectionPool[Any],
    views: tuple[str, ...],
    token: str,
    timeout: float,
) -> None:
    """Returns once every one of `views` reflects the write of `token` (REST header or gRPC
    metadata); 503 / UNAVAILABLE after `timeout` seconds."""
    await reach(watcher, pool, views, parse_token(token), timeout)


async def within_log(pool: AsyncConnectionPool[Any], position: int) -> int:
    """`position`, or the log's last notification when the token is beyond it (no write
    answered it): such a token asks for every write so far, and the wait is for the last
    one, not one that can only time out. `pool` is the primary's: the log's head."""
    async with pool.connection() as conn:
        row = await (await conn.execute(LOG_HEAD)).fetchone()
    return min(position, row[0] if row is not None else 0)


async def reach(
    watcher: Positions,
    pool: AsyncConnectionPool[Any],
    views: tuple[str, ...],
    position: int,
    timeout: float,
) -> None:
    """`caught_up` for a parsed token: the primary's `watcher` and `pool`."""
    if any(watcher.known(view) < position for view in views):
        position = await within_log(pool, position)
    for view in views:
        if not await watcher.wait(view, position, timeout):
            raise DomainError(
                Code.UNAVAILABLE,
                f"the read model has not caught up with consistency token {position}"
                f" within {timeout:g} s; retry later",
            )


ConsistentCustomers = Annotated[None, consistent_with("customers_view")]


async def settled(request: Request, views: tuple[str, ...], aggregate_id: object) -> bool:
    """For a read that did not find `aggregate_id` in `views`: True once they have projected
    every event the log holds of it (the caller reads again: its first read may have come
    just before the projector's commit), False when the log has none (a 404: no such id).
    So following the Location of a write works without its token: the read waits, within
    the consistency bound, for the projector; a 503 if it does not catch up in time, as a
    token's wait."""
    state = request.app.state
    async with state.pool.connection() as conn:  # the primary's: the log
        row = await (await conn.execute(LAST_OF, (aggregate_id,))).fetchone()
    if row is None or row[0] is None:
        return False
    # The views of whoever answered the first read (a replica's, or the primary's).
    target = getattr(request.state, "read_target", None)
    watcher: Positions = state.positions if target is None else target.positions
    timeout: float = state.settings.consistency_wait_seconds
    for view in views:
        if not await watcher.wait(view, row[0], timeout):
            raise DomainError(
                Code.UNAVAILABLE,
                f"the read model has not caught up with the last write within {timeout:g} s;"
                " retry later",
            )
    return True


async def once_settled(
    request: Request,
    views: str | tuple[str, ...],
    aggregate_id: object,
    read: Callable[[], Awaitable[T]],
) -> T:
    """`read()`, and when it finds nothing (a 404) while the log holds events of
    `aggregate_id` that `views` have not projected yet, `read()` again once they have."""
    try:
        return await read()
    except DomainError as e:
        names = (views,) if isinstance(views, str) else views
        if e.code != Code.NOT_FOUND or not await settled(request, names, aggregate_id):
            raise
    return await read()
