-- Segment membership (see domain/membership.py).

-- Write side: the current members of every segment, changed in the same transaction as the
-- SegmentJoined / SegmentLeft events that say so (eventstore/recorder.py). Calculations and
-- incremental re-evaluation diff against it, so a decision never rests on a lagging view.
CREATE TABLE segment_members (
    segment_id uuid NOT NULL,
    customer_id uuid NOT NULL,
    PRIMARY KEY (segment_id, customer_id)
);
CREATE INDEX segment_members_customer_idx ON segment_members (customer_id);

-- Read model (projections/membership.py): one row per stint of a customer in a segment,
-- the spec's customer_segment_membership with its history kept: a customer who leaves and
-- joins again has two rows. Members as of T: joined_at <= T AND (left_at IS NULL OR left_at > T).
CREATE TABLE segment_membership (
    segment_id uuid NOT NULL,
    customer_id uuid NOT NULL,
    org_id text NOT NULL,
    joined_at timestamptz NOT NULL,
    join_reason text NOT NULL,
    left_at timestamptz,
    leave_reason text,
    is_active boolean GENERATED ALWAYS AS (left_at IS NULL) STORED
);
CREATE INDEX segment_membership_segment_idx ON segment_membership (segment_id, customer_id);
CREATE INDEX segment_membership_customer_idx ON segment_membership (customer_id, segment_id);

-- Per segment: members now and the last whole-base calculation (same projection).
CREATE TABLE segment_stats (
    segment_id uuid PRIMARY KEY,
    customer_count integer NOT NULL DEFAULT 0,
    last_calculated timestamptz
);
ALTER TABLE segments_view DROP COLUMN customer_count, DROP COLUMN last_calculated;

-- Calculation jobs: operational state (not events) that the API polls. A job's effects are
-- the membership events it appends, all in one transaction at its end.
CREATE TABLE segment_jobs (
    id uuid PRIMARY KEY,
    org_id text NOT NULL,
    segment_id uuid NOT NULL,
    reason text NOT NULL,
    state text NOT NULL CHECK (state IN ('QUEUED', 'RUNNING', 'SUCCEEDED', 'FAILED', 'CANCELLED')),
    phase text,
    requested_by text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    started_at timestamptz,
    finished_at timestamptz,
    cancel_requested boolean NOT NULL DEFAULT false,
    member_count integer,
    joined integer,
    left_count integer,
    error text
);
CREATE INDEX segment_jobs_segment_idx ON segment_jobs (segment_id, created_at DESC);
CREATE INDEX segment_jobs_open_idx ON segment_jobs (created_at) WHERE state IN ('QUEUED', 'RUNNING');
