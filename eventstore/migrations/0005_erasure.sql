-- Lifecycle-deleted customers awaiting erasure after the grace period (write_api/erasure.py).
CREATE INDEX customers_view_deleted_idx ON customers_view (updated_at) WHERE status = 'DELETED';

-- Anonymized customers stay as read-only records (domain/anonymization.py).
ALTER TABLE customers_view DROP CONSTRAINT customers_view_status_check;
ALTER TABLE customers_view ADD CONSTRAINT customers_view_status_check
    CHECK (status IN ('ACTIVE', 'INACTIVE', 'SUSPENDED', 'DELETED', 'ANONYMIZED'));
