-- A segment's ruleId is optional (checked against the rules engine when set).
ALTER TABLE segments_view ALTER COLUMN rule_id DROP NOT NULL;
