-- The IP address and user agent of a consent statement stay only in the event store, encrypted
-- under the customer's key; readers entitled to them decrypt the ConsentChanged event.
ALTER TABLE consent_ledger DROP COLUMN ip_address, DROP COLUMN user_agent;
