"""Per-customer data keys (AES-256-GCM), wrapped by the master key; the HMAC root secret;
master-key rotation."""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from uuid import UUID

import psycopg
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from psycopg.rows import tuple_row

if TYPE_CHECKING:
    from service.settings import Settings

NONCE = 12
AUDIT_KEY_PURPOSE = "audit-log"
_WRAP_PURPOSE = "customer-data-key-wrap"
_ROOT = "hmac-root"


def derive_key(master_key: bytes, purpose: str) -> bytes:
    """Independent subkeys from the one master key, one per purpose."""
    return HKDF(algorithm=SHA256(), length=32, salt=None, info=purpose.encode()).derive(master_key)


def keyed_hash(key: bytes, value: str) -> bytes:
    return hmac.new(key, value.encode(), hashlib.sha256).digest()


CLAIM_KEY_PURPOSE = "unique-claims"
EMAIL = "email"  # unique_claims scope of customer e-mail addresses


def claim_hash(claim_key: bytes, scope: str, org_id: str, value: str) -> bytes:
    """Keyed hash of a unique name (unique_claims.key_hash); equal inputs collide, the
    plaintext is not stored. `claim_key` derives from the keyring (CLAIM_KEY_PURPOSE)."""
    return keyed_hash(claim_key, f"{scope}\x00{org_id}\x00{value}")


def fingerprint(master_key: bytes) -> bytes:
    """Names a master key in the rows it wrapped, revealing nothing about it."""
    return derive_key(master_key, "key-fingerprint")[:8]


class MasterKeyUnavailable(RuntimeError):
    """A wrapped key that no configured master key opens: a configuration fault of this
    process, never a property of the data (followers stop and retry rather than skip)."""


class MasterKeys:
    """The current master key wraps; it and the previous ones unwrap. Listing the old key as
    previous while `customers keys rotate` re-wraps is what makes rotation need no downtime."""

    def __init__(self, current: bytes, previous: Iterable[bytes] = ()) -> None:
        self._ciphers = {
            fingerprint(k): AESGCM(derive_key(k, _WRAP_PURPOSE)) for k in (*previous, current)
        }
        self.current_id = fingerprint(current)
        self._current = self._ciphers[self.current_id]

    @classmethod
    def of(cls, settings: Settings) -> MasterKeys:
        return cls(settings.master_key_bytes(), settings.previous_master_key_bytes())

    def wrap(self, secret: bytes, context: bytes) -> bytes:
        nonce = os.urandom(NONCE)
        return nonce + self._current.encrypt(nonce, secret, context)

    def unwrap(self, kek_id: bytes | None, wrapped: bytes, context: bytes) -> bytes:
        """`kek_id` None: a row from before key fingerprints, tried with every key."""
        if kek_id is not None:
            cipher = self._ciphers.get(bytes(kek_id))
            if cipher is None:
                raise MasterKeyUnavailable(
                    "a key was wrapped by a master key that is neither CUSTOMERS_MASTER_KEY"
                    " nor in CUSTOMERS_PREVIOUS_MASTER_KEYS"
                )
            return cipher.decrypt(wrapped[:NONCE], wrapped[NONCE:], context)
        for cipher in self._ciphers.values():
            try:
                return cipher.decrypt(wrapped[:NONCE], wrapped[NONCE:], context)
            except InvalidTag:
                continue
        raise MasterKeyUnavailable("a key could not be unwrapped by any configured master key")


SELECT_ROOT = "SELECT kek_id, wrapped FROM service_secrets WHERE name = %s"
INSERT_ROOT = (
    "INSERT INTO service_secrets (name, kek_id, wrapped) VALUES (%s, %s, %s)"
    " ON CONFLICT (name) DO NOTHING"
)


@dataclass(frozen=True)
class Keyring:
    """What a process needs of the master key: wrapping, and the HMAC root from which the
    claim, idempotency, audit, API-key and cursor keys derive. The root is stored wrapped, so
    rotating the master key re-wraps it and every HMAC already stored stays valid."""

    master: MasterKeys
    root: bytes

    @classmethod
    def load(cls, conn: Any, settings: Settings) -> Keyring:
        master = MasterKeys.of(settings)
        with conn.transaction(), conn.cursor(row_factory=tuple_row) as cur:
            # The first master key is the root, so values hashed before the root was stored
            # (under keys derived from the master key itself) stay valid.
            first = master.wrap(settings.master_key_bytes(), _ROOT.encode())
            cur.execute(INSERT_ROOT, (_ROOT, master.current_id, first))
            kek_id, wrapped = cur.execute(SELECT_ROOT, (_ROOT,)).fetchone()
        return cls(master, master.unwrap(kek_id, bytes(wrapped), _ROOT.encode()))

    @classmethod
    def unstored(cls, settings: Settings) -> Keyring:
        """The keyring of a store that starts empty (in memory): the master key is the root,
        as it is for a database's first master key."""
        return cls(MasterKeys.of(settings), settings.master_key_bytes())

    def derive(self, purpose: str) -> bytes:
        return derive_key(self.root, purpose)


class LazyKeyring:
    """The keyring, loaded on first use: the query API starts while PostgreSQL is down."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._keyring: Keyring | None = None
        self._lock = threading.Lock()

    def get(self) -> Keyring:
        with self._lock:
            if self._keyring is None:
                assert self._settings.database_url
                with psycopg.connect(self._settings.database_url, connect_timeout=5) as conn:
                    self._keyring = Keyring.load(conn, self._settings)
            return self._keyring


@dataclass(frozen=True)
class WrappedKey:
    customer_id: UUID
    org_id: str
    kek_id: bytes
    wrapped: bytes


# Stored keys of the given customers: (customer id, master-key fingerprint, wrapped key);
# a shredded key has no wrapped key. The application's recorder answers it.
StoredKey = tuple[UUID, bytes | None, bytes | None]
KeyLookup = Callable[[list[UUID]], list[StoredKey]]


class KeyStore:
    """Loads and caches unwrapped data keys; a shredded key is remembered as None."""

    def __init__(self, keyring: Keyring, lookup: KeyLookup, cache_size: int = 200_000):
        self._master = keyring.master
        self.claim_key = keyring.derive(CLAIM_KEY_PURPOSE)
        self.request_key = keyring.derive("idempotency-request")
        self.audit_key = keyring.derive(AUDIT_KEY_PURPOSE)
        self._lookup = lookup
        self._cache: OrderedDict[UUID, AESGCM | None] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def claim_hash(self, scope: str, org_id: str, value: str) -> bytes:
        return claim_hash(self.claim_key, scope, org_id, value)

    def create(self, customer_id: UUID, org_id: str) -> WrappedKey:
        """A fresh key, usable at once; persisted by the recorder with the first event."""
        data_key = AESGCM.generate_key(bit_length=256)
        wrapped = self._master.wrap(data_key, customer_id.bytes)
        self._remember(customer_id, AESGCM(data_key))
        return WrappedKey(customer_id, org_id, self._master.current_id, wrapped)

    def cipher(self, customer_id: UUID) -> AESGCM | None:
        with self._lock:
            if customer_id in self._cache:
                self._cache.move_to_end(customer_id)
                return self._cache[customer_id]
        rows = self._lookup([customer_id])
        # Not caching a miss: the key may be committed a moment later by another process.
        if not rows:
            return None
        cipher = self._unwrap(rows[0])
        self._remember(customer_id, cipher)
        return cipher

    def preload(self, customer_ids: Iterable[UUID]) -> None:
        """Load the keys of many customers at once (projectors decoding a batch)."""
        with self._lock:
            missing = [c for c in set(customer_ids) if c not in self._cache]
        if not missing:
            return
        for row in self._lookup(missing):
            self._remember(row[0], self._unwrap(row))

    def _unwrap(self, row: StoredKey) -> AESGCM | None:
        """None for a shredded key."""
        customer_id, kek_id, wrapped = row
        if wrapped is None:
            return None
        return AESGCM(self._master.unwrap(kek_id, bytes(wrapped), customer_id.bytes))

    def forget(self, customer_id: UUID) -> None:
        self._remember(customer_id, None)

    def _remember(self, customer_id: UUID, cipher: AESGCM | None) -> None:
        with self._lock:
            self._cache[customer_id] = cipher
            self._cache.move_to_end(customer_id)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)


ROTATE_BATCH = (
    "SELECT customer_id, kek_id, wrapped_key FROM customer_keys"
    " WHERE wrapped_key IS NOT NULL AND kek_id IS DISTINCT FROM %s AND customer_id > %s"
    " ORDER BY customer_id LIMIT %s"
)
# Matching the old wrapped value: an erasure that shredded the key meanwhile wins.
REWRAP = (
    "UPDATE customer_keys k SET kek_id = %s, wrapped_key = v.new"
    " FROM unnest(%s::uuid[], %s::bytea[], %s::bytea[]) AS v(id, old, new)"
    " WHERE k.customer_id = v.id AND k.wrapped_key = v.old"
)
REWRAP_ROOT = "UPDATE service_secrets SET kek_id = %s, wrapped = %s WHERE name = %s"
KEY_STATUS = (
    "SELECT coalesce(kek_id = %s, false), count(*) FROM customer_keys WHERE wrapped_key IS NOT NULL"
    " GROUP BY 1 UNION ALL"
    " SELECT NULL, count(*) FROM customer_keys WHERE wrapped_key IS NULL"
)


def rotate(conn: Any, settings: Settings, batch: int = 1000) -> int:
    """Re-wrap the root secret and every data key not wrapped by the current master key, in
    short transactions; running processes keep their unwrapped keys and read either form.
    Returns the number of data keys re-wrapped."""
    keyring = Keyring.load(conn, settings)
    master = keyring.master
    with conn.transaction():
        wrapped = master.wrap(keyring.root, _ROOT.encode())
        conn.execute(REWRAP_ROOT, (master.current_id, wrapped, _ROOT))
    done, last = 0, UUID(int=0)
    while True:
        with conn.transaction(), conn.cursor(row_factory=tuple_row) as cur:
            rows = cur.execute(ROTATE_BATCH, (master.current_id, last, batch)).fetchall()
            if not rows:
                return done
            ids, olds, news = [], [], []
            for customer_id, kek_id, old in rows:
                data_key = master.unwrap(kek_id, bytes(old), customer_id.bytes)
                ids.append(customer_id)
                olds.append(old)
                news.append(master.wrap(data_key, customer_id.bytes))
            cur.execute(REWRAP, (master.current_id, ids, olds, news))
            done += cur.rowcount
            last = rows[-1][0]


def key_status(conn: Any, settings: Settings) -> dict[str, int]:
    """Data keys by state: wrapped by the current master key, by another, or shredded."""
    counts = {"current": 0, "other": 0, "shredded": 0}
    with conn.cursor(row_factory=tuple_row) as cur:
        for current, n in cur.execute(KEY_STATUS, (MasterKeys.of(settings).current_id,)):
            counts["shredded" if current is None else "current" if current else "other"] += n
    return counts
