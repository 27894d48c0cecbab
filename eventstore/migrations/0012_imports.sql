-- Customer imports (write_api/imports.py): the uploaded file, kept in chunks until the job
-- ends (so a job survives a restart), the job's progress, checkpointed in the transaction of
-- each batch's events, and every rejected row.
CREATE TABLE import_jobs (
    id uuid PRIMARY KEY,
    org_id text NOT NULL,
    format text NOT NULL CHECK (format IN ('csv', 'ndjson')),
    mode text NOT NULL CHECK (mode IN ('create', 'upsert')),
    dry_run boolean NOT NULL,
    state text NOT NULL CHECK (state IN ('RECEIVING', 'QUEUED', 'RUNNING', 'SUCCEEDED', 'FAILED')),
    requested_by text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz,
    finished_at timestamptz,
    bytes bigint NOT NULL DEFAULT 0,
    sha256 bytea,
    next_line integer NOT NULL DEFAULT 0,  -- records starting before this line are done
    bytes_done bigint NOT NULL DEFAULT 0,
    rows_read integer NOT NULL DEFAULT 0,
    created integer NOT NULL DEFAULT 0,
    updated integer NOT NULL DEFAULT 0,
    skipped integer NOT NULL DEFAULT 0,
    failed integer NOT NULL DEFAULT 0,
    error text
);
CREATE INDEX import_jobs_org_idx ON import_jobs (org_id, created_at DESC);
CREATE TABLE import_chunks (
    job_id uuid NOT NULL,
    seq integer NOT NULL,
    data bytea NOT NULL,
    PRIMARY KEY (job_id, seq)
);
CREATE TABLE import_rejections (
    job_id uuid NOT NULL,
    line integer NOT NULL,
    field text,
    reason text NOT NULL,
    PRIMARY KEY (job_id, line)
);
