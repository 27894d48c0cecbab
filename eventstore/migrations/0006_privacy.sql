-- Privacy requests (GDPR Art. 12: answered within a month) as tracked objects, and the
-- tamper-evident audit trail. Neither holds personal data: ids, types, actors' subjects,
-- times, outcomes. Written by eventstore/compliance.py, in the transaction of the operation
-- they record where there is one.
CREATE TABLE privacy_requests (
    id uuid PRIMARY KEY,
    org_id text NOT NULL,
    customer_id uuid NOT NULL,
    type text NOT NULL CHECK (type IN ('EXPORT', 'ERASURE', 'ANONYMIZATION', 'CONSENT_CHANGE')),
    status text NOT NULL CHECK (status IN ('RECEIVED', 'IN_PROGRESS', 'COMPLETED', 'REJECTED')),
    requested_by text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    completed_at timestamptz,
    due_at timestamptz NOT NULL,
    outcome text
);
CREATE INDEX privacy_requests_org_idx ON privacy_requests (org_id, received_at, id);
CREATE INDEX privacy_requests_open_idx ON privacy_requests (due_at)
    WHERE status IN ('RECEIVED', 'IN_PROGRESS');

-- Append-only, hash-chained: mac = HMAC(audit key, previous mac || canonical entry). The key
-- is derived from the master key, which is not in the database, so an edited, inserted or
-- removed entry breaks the chain for `customers audit verify` and cannot be re-sealed.
CREATE TABLE audit_log (
    seq bigint PRIMARY KEY,
    at timestamptz NOT NULL,
    org_id text NOT NULL,
    actor text NOT NULL,
    action text NOT NULL,
    subject_id uuid,  -- the customer or segment acted on
    request_id uuid,
    outcome text NOT NULL,
    mac bytea NOT NULL
);
CREATE INDEX audit_log_org_idx ON audit_log (org_id, seq);
CREATE INDEX audit_log_subject_idx ON audit_log (subject_id, seq);

-- Consent ledger (projections/consent.py): every consent statement — at registration, in a
-- profile update that changed one, or through PUT /customers/{id}/consent — with who, how,
-- which policy version, and the client's IP / user agent when given. Personal data: erased
-- with the customer.
CREATE TABLE consent_ledger (
    id bigserial PRIMARY KEY,
    customer_id uuid NOT NULL,
    org_id text NOT NULL,
    version integer NOT NULL,
    at timestamptz NOT NULL,
    consents jsonb NOT NULL,
    actor text NOT NULL,
    source text NOT NULL,
    policy_version text,
    ip_address text,
    user_agent text
);
CREATE INDEX consent_ledger_customer_idx ON consent_ledger (customer_id, id);
