-- An administrator's request to end a live session (collabctl session end,
-- device remove, user revoke): the instance holding the session reads its
-- requests at each heartbeat, ends the session with the reason and marks
-- the row ended. Kept on the session row, so a request for a session that
-- has already ended is simply never seen.
ALTER TABLE session
    ADD COLUMN end_requested_at     timestamptz NULL,
    ADD COLUMN end_requested_reason text        NULL,
    ADD COLUMN end_requested_by     text        NULL,
    ADD CHECK ((end_requested_at IS NULL) = (end_requested_reason IS NULL));

CREATE INDEX session_end_requested ON session (instance)
    WHERE state = 'active' AND end_requested_at IS NOT NULL;
