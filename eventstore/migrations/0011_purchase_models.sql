-- Fits of an organization's purchase (BG/NBD) and spend (Gamma-Gamma) models as of a
-- calibration end, with optional holdout validation and the RFM quantile samples
-- (projections/purchase_models.py). Queued by the API or the daily schedule, run by the
-- segments process; the latest SUCCEEDED whole-base fit (selection NULL) is the model in use.
CREATE TABLE model_fits (
    id uuid PRIMARY KEY,
    org_id text NOT NULL,
    state text NOT NULL CHECK (state IN ('QUEUED', 'SUCCEEDED', 'FAILED')),
    requested_at timestamptz NOT NULL DEFAULT now(),
    requested_by text NOT NULL,
    calibration_end timestamptz,  -- NULL: when it runs
    holdout_end timestamptz,
    selection jsonb,  -- {"segmentId": …} or {"filters": {…}}; NULL = every customer
    finished_at timestamptz,
    currency text,
    customers integer,
    repeat_purchases bigint,
    bgnbd jsonb,
    gamma_gamma jsonb,
    rfm_base jsonb,
    validation jsonb,
    error text
);
CREATE INDEX model_fits_org_idx ON model_fits (org_id, requested_at DESC);
CREATE INDEX model_fits_queued_idx ON model_fits (requested_at) WHERE state = 'QUEUED';
