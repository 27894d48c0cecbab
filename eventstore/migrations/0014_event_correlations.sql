-- The correlation id of the request that caused each event (service/logs.py), written in the
-- events' transaction, so that the relay can put it in the NATS message's headers. Not
-- personal data; the relay deletes the rows it has published.
CREATE TABLE event_correlations (
    notification_id bigint PRIMARY KEY,
    correlation_id text NOT NULL
);
