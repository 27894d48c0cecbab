-- Master-key rotation (eventstore/keys.py): which master key wrapped each data key (NULL:
-- wrapped before fingerprints, found by trying each configured key), and the HMAC root
-- secret, stored wrapped so that rotation re-wraps it instead of changing it.
ALTER TABLE customer_keys ADD COLUMN kek_id bytea;
CREATE TABLE service_secrets (
    name text PRIMARY KEY,
    kek_id bytea NOT NULL,
    wrapped bytea NOT NULL
);
