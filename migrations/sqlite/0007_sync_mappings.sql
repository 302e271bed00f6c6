-- The attribute mapping each (destination, audience) was last sent with,
-- as a fingerprint: when the configured mapping changes, the members the
-- destination holds are sent once more with the new fields.
CREATE TABLE sync_mappings (
    destination   TEXT NOT NULL,
    audience_id   BIGINT NOT NULL,
    mapping_hash  TEXT NOT NULL,
    changed_at    BIGINT NOT NULL,
    PRIMARY KEY (destination, audience_id)
) WITHOUT ROWID;
