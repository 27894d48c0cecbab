-- Events a follower of the notification log (a projector view, the write auditor, the segment
-- evaluator, the relay) could not process: recorded with the reason, and passed over, so that
-- one bad event never stops the follower for every other customer and organization. Ids,
-- topic and an error class only: never event data.
CREATE TABLE dead_letters (
    follower text NOT NULL,
    notification_id bigint NOT NULL,
    originator_id uuid NOT NULL,
    topic text NOT NULL,
    reason text NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (follower, notification_id)
);
