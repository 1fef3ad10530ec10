-- The instance's away period: a device unused for this long has its user
-- shown Away until the next user action (collabd(8), "Presence upkeep").
-- 0 turns it off. Five minutes, what CWA itself does for a signed-in
-- client without activity.
ALTER TABLE instance
    ADD COLUMN away_after_ms bigint NOT NULL DEFAULT 300000
        CHECK (away_after_ms >= 0);
