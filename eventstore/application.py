"""The event-sourced application over PostgreSQL, configured from Settings."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.persistence import Mapper
from eventsourcing.postgres import PostgresFactory
from eventsourcing.utils import get_topic
from psycopg.conninfo import conninfo_to_dict

from eventstore.keys import Keyring, KeyStore, StoredKey
from eventstore.mapper import CustomerMapper
from eventstore.memory import MemoryRecorder
from eventstore.recorder import CustomerRecorder, GroupCommitter
from service.settings import Settings

EVENTS_TABLE = "customers_events"  # eventsourcing derives it from the application name


def postgres_env(database_url: str) -> dict[str, str]:
    """eventsourcing's POSTGRES_* variables from one libpq URL."""
    params = conninfo_to_dict(database_url)
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": str(params.get("dbname", "postgres")),
        "POSTGRES_HOST": str(params.get("host", "127.0.0.1")),
        "POSTGRES_PORT": str(params.get("port", "5432")),
        "POSTGRES_USER": str(params.get("user", "postgres")),
        "POSTGRES_PASSWORD": str(params.get("password", "")),
    }


class Customers(Application[UUID]):
    name = "Customers"
    recorder: CustomerRecorder

    def __init__(
        self,
        settings: Settings,
        *,
        pool_size: int = 8,
        create_table: bool = False,
        group_commit: bool = False,
        in_memory: bool = False,
    ):
        """`group_commit`: for processes serving commands from many threads at once (the
        APIs), whose small saves are then committed together (eventstore.recorder).
        `in_memory`: no database at all (eventstore.memory), for the use cases' unit tests."""
        self.settings = settings
        self.in_memory = in_memory
        if in_memory:
            super().__init__({"PERSISTENCE_MODULE": "eventsourcing.popo"})
            self.recorder.audit_key = self.keys.audit_key
            return
        if not settings.database_url:
            raise RuntimeError("DATABASE_URL is not set")
        env: dict[str, Any] = {
            **postgres_env(settings.database_url),
            "APPLICATION_RECORDER_TOPIC": get_topic(CustomerRecorder),
            "CREATE_TABLE": "y" if create_table else "n",
            # Two kept open, more on demand: an idle process should not hold a pool's worth
            # of the server's connections (every process kind has one of these).
            "POSTGRES_POOL_SIZE": str(min(2, pool_size)),
            "POSTGRES_MAX_OVERFLOW": str(2 * pool_size - min(2, pool_size)),
            "POSTGRES_LOCK_TIMEOUT": "5",
            "POSTGRES_CONNECT_TIMEOUT": str(settings.db_wait_seconds),
            "AGGREGATE_CACHE_MAXSIZE": "10000",
            "DEEPCOPY_FROM_AGGREGATE_CACHE": "y",
        }
        super().__init__(env)
        self.recorder.audit_key = self.keys.audit_key
        self.recorder.relayed = settings.nats_url is not None
        if group_commit:
            self.recorder.committer = GroupCommitter(self.recorder)

    def close(self) -> None:
        if self.recorder.committer is not None:
            self.recorder.committer.close()
            self.recorder.committer = None
        super().close()

    def construct_recorder(self) -> CustomerRecorder:
        if self.in_memory:
            # It answers what the use cases ask of the PostgreSQL one.
            return MemoryRecorder()  # type: ignore[return-value]
        recorder = super().construct_recorder()
        assert isinstance(recorder, CustomerRecorder)
        return recorder

    def construct_mapper(self) -> Mapper[UUID]:
        if self.in_memory:
            keyring = Keyring.unstored(self.settings)
        else:
            assert isinstance(self.factory, PostgresFactory)
            with self.factory.datastore.get_connection() as conn:
                keyring = Keyring.load(conn, self.settings)

        # The recorder is made after the mapper: keys are looked up in it when needed.
        def lookup(customer_ids: list[UUID]) -> list[StoredKey]:
            return self.recorder.stored_keys(customer_ids)

        self.keys = KeyStore(keyring, lookup)
        return CustomerMapper(self.keys)

    @property
    def datastore(self) -> Any:
        assert isinstance(self.factory, PostgresFactory)
        return self.factory.datastore
