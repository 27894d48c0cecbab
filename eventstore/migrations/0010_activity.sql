-- Tracked activity (write_api/tracking.py). Not event-sourced: a high-volume append-only log
-- written in batches, with per-customer aggregates changed in the same transaction.

-- Monthly range partitions, created on demand by the writer (`customer_events_yYYYYmMM`), so
-- retention drops whole partitions. One index: the key (customer_id, occurred_at, id), which
-- serves per-customer reads and makes a redelivered event (same id, customer and time) a
-- no-op instead of a second count.
CREATE TABLE customer_events (
    id uuid NOT NULL,
    customer_id uuid NOT NULL,
    org_id text NOT NULL,
    event_type text NOT NULL CHECK (event_type IN (
        'PAGE_VIEW', 'PURCHASE', 'LOGIN', 'LOGOUT', 'EMAIL_OPEN', 'EMAIL_CLICK',
        'SMS_RECEIVED', 'PUSH_RECEIVED', 'SEGMENT_JOINED', 'SEGMENT_LEFT',
        'PREFERENCE_CHANGED', 'CONSENT_UPDATED')),
    event_data jsonb NOT NULL,
    channel text,
    occurred_at timestamptz NOT NULL,
    received_at timestamptz NOT NULL,
    session_id uuid,
    device_info jsonb,
    PRIMARY KEY (customer_id, occurred_at, id)
) PARTITION BY RANGE (occurred_at);

-- Running totals per customer, changed only by the writer's insert of new events. Windowed
-- counts (7/30/90 days) slide with the clock and are counted from customer_events on read.
-- Texts are folded like segment_facts' (currency and categories casefolded).
CREATE TABLE customer_activity (
    customer_id uuid PRIMARY KEY,
    org_id text NOT NULL,
    event_count bigint NOT NULL,
    purchase_count integer NOT NULL,
    spend_currency text,
    mixed_currencies boolean NOT NULL,
    total_spent_cents bigint NOT NULL,
    first_purchase_at timestamptz,
    last_purchase_at timestamptz,
    categories text[] NOT NULL,
    login_count integer NOT NULL,
    last_login_at timestamptz,
    first_event_at timestamptz NOT NULL,
    last_activity_at timestamptz NOT NULL
) WITH (fillfactor = 80);
CREATE INDEX customer_activity_org_idx ON customer_activity (org_id);

-- Customers whose activity changed since the segments process last re-evaluated them.
CREATE TABLE activity_changes (customer_id uuid PRIMARY KEY);

-- What segment criteria read: profile facts combined with tracked activity, under the same
-- column names and rules as domain.segment_facts.purchase_aggregates (one currency or none).
CREATE VIEW customer_facts AS
SELECT f.id, f.org_id, f.version, f.status, f.age, f.gender, f.income, f.income_currency,
    f.education, f.occupation, f.country_code, f.country, f.city, f.region, f.postal_code,
    f.latitude, f.longitude, f.tags, f.marketing_consent, f.data_processing_consent,
    f.source, f.language, f.currency,
    f.login_count + coalesce(a.login_count, 0) AS login_count,
    greatest(f.last_login_at, a.last_login_at) AS last_login_at,
    f.lifetime_value, f.lifetime_value_currency, f.created_at,
    greatest(f.last_activity, a.last_activity_at) AS last_activity,
    n.order_count,
    s.spend_currency,
    s.total_spent_cents,
    s.total_spent_cents::float8 / 100 AS total_spent,
    s.total_spent_cents::float8 / nullif(n.order_count, 0) / 100 AS average_order_value,
    least(f.first_purchase_at, a.first_purchase_at) AS first_purchase_at,
    greatest(f.last_purchase_at, a.last_purchase_at) AS last_purchase_at,
    CASE WHEN a.categories IS NULL THEN f.categories
        ELSE ARRAY(SELECT DISTINCT unnest(f.categories || a.categories)) END AS categories,
    f.brands
FROM segment_facts f
LEFT JOIN customer_activity a ON a.customer_id = f.id
CROSS JOIN LATERAL (
    SELECT f.order_count + coalesce(a.purchase_count, 0) AS order_count,
        coalesce(a.purchase_count, 0) = 0 AS untracked
) n
CROSS JOIN LATERAL (
    SELECT
        CASE WHEN n.untracked THEN f.spend_currency
            WHEN a.mixed_currencies THEN NULL
            WHEN f.order_count = 0 THEN a.spend_currency
            WHEN f.spend_currency = a.spend_currency THEN f.spend_currency
        END AS spend_currency,
        CASE WHEN n.untracked THEN f.total_spent_cents
            WHEN a.mixed_currencies THEN NULL
            WHEN f.order_count = 0 THEN a.total_spent_cents
            WHEN f.spend_currency = a.spend_currency THEN f.total_spent_cents + a.total_spent_cents
        END AS total_spent_cents
) s;
