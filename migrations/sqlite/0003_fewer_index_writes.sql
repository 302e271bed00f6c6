-- Every index is written on every change; these two were not read by any
-- query (memberships are scanned through their primary key), and the
-- dedupe table needs only its key, so it becomes a single b-tree.
DROP INDEX memberships_members;
DROP INDEX events_audience;

CREATE TABLE received_new (
    dedupe_key    TEXT PRIMARY KEY,
    received_at   BIGINT NOT NULL
) WITHOUT ROWID;
INSERT INTO received_new (dedupe_key, received_at) SELECT dedupe_key, received_at FROM received;
DROP TABLE received;
ALTER TABLE received_new RENAME TO received;

-- Memberships are always reached by (audience, person): one b-tree.
CREATE TABLE memberships_new (
    audience_id   BIGINT NOT NULL,
    person_id     BIGINT NOT NULL,
    is_member     BOOLEAN NOT NULL,
    since         BIGINT NOT NULL,
    stamp_at      BIGINT NOT NULL,
    stamp_rank    INTEGER NOT NULL,
    stamp_key     TEXT NOT NULL,
    event_id      BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    PRIMARY KEY (audience_id, person_id)
) WITHOUT ROWID;
INSERT INTO memberships_new SELECT audience_id, person_id, is_member, since, stamp_at, stamp_rank,
    stamp_key, event_id, updated_at FROM memberships;
DROP TABLE memberships;
ALTER TABLE memberships_new RENAME TO memberships;
