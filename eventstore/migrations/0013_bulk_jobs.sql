-- Bulk operations (write_api/bulk.py) run as the same kind of job as imports: one table of
-- customer jobs with a kind, the same checkpoint, counts and report. A bulk job's selection
-- is resolved once into `job_targets` when it first runs, so the job works through a fixed
-- list and its report accounts for every selected customer exactly once.
ALTER TABLE import_jobs RENAME TO customer_jobs;
ALTER INDEX import_jobs_org_idx RENAME TO customer_jobs_org_idx;
ALTER TABLE import_rejections RENAME TO job_rejections;
ALTER TABLE customer_jobs
    ADD COLUMN kind text NOT NULL DEFAULT 'import'
        CHECK (kind IN ('import', 'bulk_update', 'bulk_delete', 'bulk_segments')),
    ADD COLUMN spec jsonb,
    ADD COLUMN total integer,
    ALTER COLUMN format DROP NOT NULL,
    ALTER COLUMN mode DROP NOT NULL;
-- A bulk job's rows are the targets' positions (`line` = seq); the customer is named too.
ALTER TABLE job_rejections ADD COLUMN customer_id uuid;
CREATE TABLE job_targets (
    job_id uuid NOT NULL,
    seq integer NOT NULL,
    customer_id uuid NOT NULL,
    PRIMARY KEY (job_id, seq)
);
