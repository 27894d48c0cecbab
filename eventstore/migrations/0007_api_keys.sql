-- API keys for service integrations (service/api_keys.py). Only an HMAC-SHA256 of the key,
-- peppered with a key derived from the master key, is stored; the key is shown once.
CREATE TABLE api_keys (
    id uuid PRIMARY KEY,
    org_id text NOT NULL,
    name text NOT NULL,
    roles text[] NOT NULL,
    key_hash bytea NOT NULL UNIQUE,
    prefix text NOT NULL,
    created_by text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at timestamptz
);
CREATE INDEX api_keys_org_idx ON api_keys (org_id, created_at);
