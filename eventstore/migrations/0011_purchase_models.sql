-- Per organization: purchase (BG/NBD) and spend (Gamma-Gamma) models and RFM quintile breaks,
-- fitted in the background (projections/purchase_models.py). A model is fitted again when
-- requested (requested_at after fitted_at) or when older than CUSTOMERS_MODEL_FIT_HOURS.
CREATE TABLE purchase_models (
    org_id text PRIMARY KEY,
    requested_at timestamptz,
    fitted_at timestamptz,
    observed_until timestamptz,
    currency text,
    customers integer,
    repeat_buyers integer,
    bgnbd jsonb,
    gamma_gamma jsonb,
    rfm_base jsonb,
    error text
);
