"""Applies eventstore/migrations/NNNN_*.sql once each, in order, under an advisory lock."""

from __future__ import annotations

import logging
from importlib.resources import files

import psycopg

log = logging.getLogger(__name__)

_LOCK = 7_401_133  # arbitrary constant: serialises concurrent `customers migrate` runs


def migrate(database_url: str) -> list[str]:
    scripts = sorted(
        (p for p in files("eventstore.migrations").iterdir() if p.name.endswith(".sql")),
        key=lambda p: p.name,
    )
    applied: list[str] = []
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r[0] for r in conn.execute("SELECT name FROM schema_migrations")}
            for script in scripts:
                if script.name in done:
                    continue
                with conn.transaction():
                    conn.execute(script.read_text())
                    conn.execute("INSERT INTO schema_migrations (name) VALUES (%s)", (script.name,))
                log.info("applied migration", extra={"migration": script.name})
                applied.append(script.name)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK,))
    return applied
