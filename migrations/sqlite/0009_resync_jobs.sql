-- Finished resync jobs, as the admin API reports them, so a job's outcome
-- outlives the process that ran it (and, with a shared store, is visible
-- from any replica). Running jobs are the process's own until they end.
CREATE TABLE resync_jobs (
    job_id        TEXT PRIMARY KEY,
    audience      TEXT NOT NULL,
    trigger       TEXT NOT NULL,  -- api | schedule (see resync::Trigger)
    started_at    BIGINT NOT NULL,
    finished_at   BIGINT,
    report        TEXT NOT NULL   -- the job's JSON, masked identifiers only
);
CREATE INDEX resync_jobs_audience ON resync_jobs(audience, started_at);
CREATE INDEX resync_jobs_trigger ON resync_jobs(audience, trigger, started_at);
