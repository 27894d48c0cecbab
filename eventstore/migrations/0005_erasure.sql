-- Lifecycle-deleted customers awaiting erasure after the grace period (write_api/erasure.py).
CREATE INDEX customers_view_deleted_idx ON customers_view (updated_at) WHERE status = 'DELETED';
