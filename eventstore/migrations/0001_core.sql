-- Per-customer data keys. wrapped_key NULL = shredded (erased); the row stays as proof.
CREATE TABLE customer_keys (
    customer_id uuid PRIMARY KEY,
    org_id text NOT NULL,
    wrapped_key bytea,
    created_at timestamptz NOT NULL DEFAULT now(),
    shredded_at timestamptz
);

-- Names unique per organization (scope 'email': customer e-mails; 'segment': segment names),
-- as keyed hashes: never the plaintext value. Written in the event's transaction.
CREATE TABLE unique_claims (
    scope text NOT NULL,
    org_id text NOT NULL,
    key_hash bytea NOT NULL,
    owner_id uuid NOT NULL,
    PRIMARY KEY (scope, org_id, key_hash)
);
CREATE INDEX unique_claims_owner_idx ON unique_claims (owner_id);

-- Idempotency-Key of POST requests: enough to replay the first answer, no personal data.
CREATE TABLE idempotency_keys (
    org_id text NOT NULL,
    key text NOT NULL,
    request_hash bytea NOT NULL,
    customer_id uuid NOT NULL,
    version integer NOT NULL,
    status integer NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, key)
);

-- Position of every follower of the notification log (projectors, relay).
CREATE TABLE positions (
    name text PRIMARY KEY,
    position bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Read model of customers, built by projections/customers.py, in two tables:
-- customers_view: narrow typed columns that lists filter and sort on (many rows per page, so
--   walking an index with a filter stays cheap);
-- customers_docs: the public JSON, fetched only for the rows of the answer. `doc` is json
--   (not jsonb): it keeps the exact bytes of representation() (spec field order), returned
--   as they are.
CREATE TABLE customers_view (
    id uuid PRIMARY KEY,
    org_id text NOT NULL,
    email text NOT NULL,
    name text NOT NULL,
    age integer CHECK (age >= 0 AND age <= 150),
    gender text CHECK (gender IN ('MALE', 'FEMALE', 'OTHER', 'UNKNOWN')),
    country_code text,
    city text,
    region text,
    postal_code text,
    tags text[] NOT NULL DEFAULT '{}',
    segments uuid[] NOT NULL DEFAULT '{}',
    status text NOT NULL CHECK (status IN ('ACTIVE', 'INACTIVE', 'SUSPENDED', 'DELETED')),
    marketing_consent boolean NOT NULL,
    data_processing_consent boolean NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,  -- >= created_at (the list query relies on it)
    last_activity timestamptz NOT NULL,  -- >= created_at (idem)
    version integer NOT NULL
);
CREATE TABLE customers_docs (
    id uuid PRIMARY KEY,
    org_id text NOT NULL,
    version integer NOT NULL,
    doc json NOT NULL
);
CREATE INDEX customers_view_created_idx ON customers_view (org_id, created_at, id);
CREATE INDEX customers_view_updated_idx ON customers_view (org_id, updated_at, id);
CREATE INDEX customers_view_activity_idx ON customers_view (org_id, last_activity, id);
CREATE INDEX customers_view_status_idx ON customers_view (org_id, status, created_at, id);
CREATE INDEX customers_view_country_idx ON customers_view (org_id, country_code, created_at, id);
CREATE INDEX customers_view_city_idx ON customers_view (org_id, lower(city), created_at, id);
-- Name / e-mail: sort order and prefix search (q) share one index each; "C" makes both
-- independent of the database's collation and lets LIKE 'x%' use the index.
CREATE INDEX customers_view_name_idx ON customers_view (org_id, (lower(name) COLLATE "C"), id);
CREATE INDEX customers_view_email_idx ON customers_view (org_id, (lower(email) COLLATE "C"), id);
CREATE INDEX customers_view_tags_idx ON customers_view USING gin (tags);
CREATE INDEX customers_view_segments_idx ON customers_view USING gin (segments);
