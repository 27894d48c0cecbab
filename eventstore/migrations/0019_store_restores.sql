-- Point-in-time restores this database is the result of (service/restore.py). `epoch` comes
-- from the restore log kept with the backups, outside any database a restore replaces, so it
-- only grows; `position` is the last notification the restored store held: later ones were
-- written after the restore, and the relay publishes them with the epoch in their
-- Nats-Msg-Id. `announced_at`: when the relay published the `restored` control event.
CREATE TABLE IF NOT EXISTS store_restores (
    epoch int PRIMARY KEY,
    position bigint NOT NULL,
    target_time timestamptz NOT NULL,
    restored_at timestamptz NOT NULL,
    announced_at timestamptz
);
