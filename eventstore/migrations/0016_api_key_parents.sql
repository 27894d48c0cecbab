-- A key created with another key (an admin integration minting keys) records that parent: a
-- key is accepted only while every key up its chain is live, and revoking one revokes the
-- keys made with it (service/api_keys.py).
ALTER TABLE api_keys ADD COLUMN parent_id uuid REFERENCES api_keys (id);
UPDATE api_keys AS k SET parent_id = p.id
  FROM api_keys AS p WHERE k.created_by = 'api-key:' || p.id::text;
CREATE INDEX api_keys_parent_idx ON api_keys (parent_id) WHERE parent_id IS NOT NULL;
