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
from typing import Annotated, Any

import psycopg
from fastapi import Depends, Header, Request
from psycopg import sql

from domain.errors import Code, DomainError, invalid
from projections.positions import POSITIONS_CHANNEL
from service.auth import CurrentPrincipal
from service.problems import problem_responses

log = logging.getLogger(__name__)

HEADER = "X-Consistency-Token"

# The problem answers every read endpoint may give (OpenAPI `responses`).
READ_PROBLEMS = problem_responses(
    {
        401: "Missing or invalid bearer token",
        403: "The token's roles lack customers:read",
        422: "Invalid input; `errors[].field` names it",
        503: "Consistency token not reached in time, or the database is unavailable",
    }
)
_MAX_TOKEN = 2**63 - 1


def not_found(kind: str, id: object) -> DomainError:
    """A 404 of a read that may only be early: reads answer from read models a few
    milliseconds behind the writes, so the text says how to read one's own write."""
    return DomainError(
        Code.NOT_FOUND,
        f"{kind} {id} not found; if you have just created it, send the creation's"
        f" {HEADER} with this read to wait until it is visible",
    )


_DIGITS = re.compile(r"[0-9]{1,19}")
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
        backoff = 0.2
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._url, autocommit=True
                ) as conn:
                    await conn.execute(
                        sql.SQL("LISTEN {}").format(sql.Identifier(POSITIONS_CHANNEL))
                    )
                    await self._refresh(conn)
                    backoff = 0.2
                    while True:
                        async for n in conn.notifies(timeout=_POLL):
                            view, _, pos = n.payload.rpartition(":")
                            if pos.isdigit():
                                await self._publish({view: int(pos)})
                        if self._waiters:
                            await self._refresh(conn)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("position watcher lost its connection; retrying", exc_info=True)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)


def parse_token(value: str) -> int:
    text = value.strip()
    # ASCII digits only: str.isdigit() also accepts e.g. "²", which int() rejects.
    if not _DIGITS.fullmatch(text) or int(text) > _MAX_TOKEN:
        raise invalid(HEADER, "must be the non-negative integer a write response returned")
    return int(text)


def consistent_with(*views: str) -> Any:
    """A dependency for endpoints reading `views`: waits for the token, if the request has one."""

    async def wait_for_token(
        request: Request,
        principal: CurrentPrincipal,  # authenticate before making anyone wait
        token: Annotated[
            str | None,
            Header(
                alias=HEADER,
                description="Token from a write response: wait until this read reflects it.",
            ),
        ] = None,
    ) -> None:
        if token is None:
            return
        watcher: PositionWatcher = request.app.state.positions
        timeout: float = request.app.state.settings.consistency_wait_seconds
        await caught_up(watcher, views, token, timeout)

    return Depends(wait_for_token)


async def caught_up(
    watcher: PositionWatcher, views: tuple[str, ...], token: str, timeout: float
) -> None:
    """Returns once every one of `views` reflects the write of `token` (REST header or gRPC
    metadata); 503 / UNAVAILABLE after `timeout` seconds."""
    position = parse_token(token)
    for view in views:
        if not await watcher.wait(view, position, timeout):
            raise DomainError(
                Code.UNAVAILABLE,
                f"the read model has not caught up with consistency token {position}"
                f" within {timeout:g} s; retry later",
            )


ConsistentCustomers = Annotated[None, consistent_with("customers_view")]
