-- Read model of segment definitions, built by projections/segments.py.
CREATE TABLE segments_view (
    id uuid PRIMARY KEY,
    org_id text NOT NULL,
    name text NOT NULL,
    status text NOT NULL CHECK (status IN ('ACTIVE', 'INACTIVE', 'CALCULATING', 'ERROR')),
    kind text NOT NULL,
    rule_id text NOT NULL,
    created_by text NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    version integer NOT NULL,
    definition jsonb NOT NULL,
    customer_count integer NOT NULL DEFAULT 0,
    last_calculated timestamptz
);
CREATE INDEX segments_view_created_idx ON segments_view (org_id, created_at, id);
CREATE INDEX segments_view_rule_idx ON segments_view (org_id, rule_id);
