"""A follower's or worker's own connection to PostgreSQL, outside the pools: opened on first
use, opened again after a loss (the caller's next round simply gets a new one), and given
back by `close()`, so an idle worker holds none."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg

Connection = psycopg.Connection[Any]


class OwnConnection:
    def __init__(
        self,
        url: str | None,
        on_connect: Callable[[Connection], None] | None = None,
        **kwargs: Any,
    ) -> None:
        """`on_connect` runs on every new connection (statements to prepare, positions to
        read: what a lost connection also lost); `kwargs` go to psycopg.connect (autocommit
        unless said otherwise)."""
        assert url, "DATABASE_URL is not set"
        self._url = url
        self._on_connect = on_connect
        self._kwargs = {"autocommit": True, **kwargs}
        self._conn: Connection | None = None

    def get(self) -> Connection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self.close()
            conn = psycopg.connect(self._url, **self._kwargs)
            try:
                if self._on_connect is not None:
                    self._on_connect(conn)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
