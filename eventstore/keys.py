"""Per-customer data keys (AES-256-GCM), wrapped by the master key; and keyed hashes."""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from uuid import UUID

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from eventsourcing.postgres import PostgresDatastore

NONCE = 12
AUDIT_KEY_PURPOSE = "audit-log"


def derive_key(master_key: bytes, purpose: str) -> bytes:
    """Independent subkeys from the one master key, one per purpose."""
    return HKDF(algorithm=SHA256(), length=32, salt=None, info=purpose.encode()).derive(master_key)


def keyed_hash(key: bytes, value: str) -> bytes:
    return hmac.new(key, value.encode(), hashlib.sha256).digest()


@dataclass(frozen=True)
class WrappedKey:
    customer_id: UUID
    org_id: str
    wrapped: bytes


class KeyStore:
    """Loads and caches unwrapped data keys; a shredded key is remembered as None."""

    SELECT = "SELECT wrapped_key FROM customer_keys WHERE customer_id = %s"
    PRELOAD = "SELECT customer_id, wrapped_key FROM customer_keys WHERE customer_id = ANY(%s)"

    def __init__(self, master_key: bytes, datastore: PostgresDatastore, cache_size: int = 200_000):
        self._wrap = AESGCM(derive_key(master_key, "customer-data-key-wrap"))
        self.claim_key = derive_key(master_key, "unique-claims")
        self.request_key = derive_key(master_key, "idempotency-request")
        self.audit_key = derive_key(master_key, AUDIT_KEY_PURPOSE)
        self._datastore = datastore
        self._cache: OrderedDict[UUID, AESGCM | None] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def claim_hash(self, scope: str, org_id: str, value: str) -> bytes:
        """Keyed hash of a unique name; equal inputs collide, the plaintext is not stored."""
        return keyed_hash(self.claim_key, f"{scope}\x00{org_id}\x00{value}")

    def create(self, customer_id: UUID, org_id: str) -> WrappedKey:
        """A fresh key, usable at once; persisted by the recorder with the first event."""
        data_key = AESGCM.generate_key(bit_length=256)
        nonce = os.urandom(NONCE)
        wrapped = nonce + self._wrap.encrypt(nonce, data_key, customer_id.bytes)
        self._remember(customer_id, AESGCM(data_key))
        return WrappedKey(customer_id, org_id, wrapped)

    def cipher(self, customer_id: UUID) -> AESGCM | None:
        with self._lock:
            if customer_id in self._cache:
                self._cache.move_to_end(customer_id)
                return self._cache[customer_id]
        with self._datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(self.SELECT, (customer_id,), prepare=True)
            row = curs.fetchone()
        cipher = None if row is None else self._unwrap(customer_id, row["wrapped_key"])
        # Not caching a miss: the key may be committed a moment later by another process.
        if row is not None:
            self._remember(customer_id, cipher)
        return cipher

    def preload(self, customer_ids: Iterable[UUID]) -> None:
        """Load the keys of many customers with one SELECT (projectors decoding a batch)."""
        with self._lock:
            missing = [c for c in set(customer_ids) if c not in self._cache]
        if not missing:
            return
        with self._datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(self.PRELOAD, (missing,))
            rows = curs.fetchall()
        for row in rows:
            self._remember(row["customer_id"], self._unwrap(row["customer_id"], row["wrapped_key"]))

    def _unwrap(self, customer_id: UUID, wrapped: bytes | None) -> AESGCM | None:
        """None for a shredded key."""
        if wrapped is None:
            return None
        wrapped = bytes(wrapped)
        data_key = self._wrap.decrypt(wrapped[:NONCE], wrapped[NONCE:], customer_id.bytes)
        return AESGCM(data_key)

    def forget(self, customer_id: UUID) -> None:
        self._remember(customer_id, None)

    def _remember(self, customer_id: UUID, cipher: AESGCM | None) -> None:
        with self._lock:
            self._cache[customer_id] = cipher
            self._cache.move_to_end(customer_id)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
