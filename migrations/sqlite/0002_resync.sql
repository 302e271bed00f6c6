-- Resync: a completed full snapshot at time T asserts every person's state
-- in the audience at T, so facts older than T are stale for everyone.
ALTER TABLE audiences ADD COLUMN snapshot_at BIGINT;

-- People a running resync saw in the segment (scratch; deleted at the end).
CREATE TABLE resync_seen (
    job_id     TEXT NOT NULL,
    person_id  BIGINT NOT NULL,
    PRIMARY KEY (job_id, person_id)
);
