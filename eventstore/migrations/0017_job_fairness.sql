-- Customer jobs shared fairly between organizations (write_api/jobs.py): each claim is one
-- turn of a job on a worker (`claimed_at`), a job yields between batches when another
-- organization waits, and an import resumes at the byte where its next record starts
-- (`resume_offset`; NULL for checkpoints written before it existed: read from the start).
-- A job's report keeps a bounded number of rejected rows (`rejections_stored`); `failed`
-- still counts every one.
ALTER TABLE customer_jobs
    ADD COLUMN claimed_at timestamptz,
    ADD COLUMN resume_offset bigint,
    ADD COLUMN rejections_stored integer NOT NULL DEFAULT 0;
UPDATE customer_jobs j SET rejections_stored =
    (SELECT count(*) FROM job_rejections r WHERE r.job_id = j.id);
CREATE INDEX customer_jobs_queued_idx ON customer_jobs (created_at) WHERE state = 'QUEUED';
CREATE INDEX customer_jobs_running_idx ON customer_jobs (org_id) WHERE state = 'RUNNING';
CREATE INDEX customer_jobs_turn_idx ON customer_jobs (org_id, claimed_at);
