-- Of the pending adds, the attribute updates: members the destination
-- already holds (acknowledged in) whose mapped values changed. Counted
-- apart so an operator can tell "people not there yet" from "people there
-- whose values are being refreshed". pending_adds still counts both.
ALTER TABLE sync_counts ADD COLUMN pending_updates BIGINT NOT NULL DEFAULT 0;

UPDATE sync_counts SET pending_updates = (
  SELECT COUNT(*) FROM sync_state s
  WHERE s.destination = sync_counts.destination AND s.audience_id = sync_counts.audience_id
    AND s.pending AND s.dead_reason IS NULL AND s.desired AND COALESCE(s.acked, 0)
);

DROP TRIGGER sync_counts_insert;
DROP TRIGGER sync_counts_update;
DROP TRIGGER sync_counts_delete;

CREATE TRIGGER sync_counts_insert AFTER INSERT ON sync_state
BEGIN
  INSERT INTO sync_counts (destination, audience_id, pending_adds, pending_removes, pending_updates, acked_members, unmatched_members, dead_letters, last_ack_at)
  VALUES (NEW.destination, NEW.audience_id,
          NEW.pending AND NEW.dead_reason IS NULL AND NEW.desired,
          NEW.pending AND NEW.dead_reason IS NULL AND NOT NEW.desired,
          NEW.pending AND NEW.dead_reason IS NULL AND NEW.desired AND COALESCE(NEW.acked, 0),
          COALESCE(NEW.acked, 0), COALESCE(NEW.acked, 0) AND NEW.unmatched,
          NEW.dead_reason IS NOT NULL, NEW.acked_at)
  ON CONFLICT (destination, audience_id) DO UPDATE SET
    pending_adds = pending_adds + excluded.pending_adds,
    pending_removes = pending_removes + excluded.pending_removes,
    pending_updates = pending_updates + excluded.pending_updates,
    acked_members = acked_members + excluded.acked_members,
    unmatched_members = unmatched_members + excluded.unmatched_members,
    dead_letters = dead_letters + excluded.dead_letters,
    last_ack_at = MAX(COALESCE(last_ack_at, excluded.last_ack_at), COALESCE(excluded.last_ack_at, last_ack_at));
END;

CREATE TRIGGER sync_counts_update AFTER UPDATE OF pending, desired, dead_reason, acked, acked_at, unmatched ON sync_state
BEGIN
  UPDATE sync_counts SET
    pending_adds = pending_adds + (NEW.pending AND NEW.dead_reason IS NULL AND NEW.desired)
                                - (OLD.pending AND OLD.dead_reason IS NULL AND OLD.desired),
    pending_removes = pending_removes + (NEW.pending AND NEW.dead_reason IS NULL AND NOT NEW.desired)
                                      - (OLD.pending AND OLD.dead_reason IS NULL AND NOT OLD.desired),
    pending_updates = pending_updates
                      + (NEW.pending AND NEW.dead_reason IS NULL AND NEW.desired AND COALESCE(NEW.acked, 0))
                      - (OLD.pending AND OLD.dead_reason IS NULL AND OLD.desired AND COALESCE(OLD.acked, 0)),
    acked_members = acked_members + COALESCE(NEW.acked, 0) - COALESCE(OLD.acked, 0),
    unmatched_members = unmatched_members + (COALESCE(NEW.acked, 0) AND NEW.unmatched)
                                          - (COALESCE(OLD.acked, 0) AND OLD.unmatched),
    dead_letters = dead_letters + (NEW.dead_reason IS NOT NULL) - (OLD.dead_reason IS NOT NULL),
    last_ack_at = MAX(COALESCE(last_ack_at, NEW.acked_at), COALESCE(NEW.acked_at, last_ack_at))
  WHERE destination = NEW.destination AND audience_id = NEW.audience_id;
END;

CREATE TRIGGER sync_counts_delete AFTER DELETE ON sync_state
BEGIN
  UPDATE sync_counts SET
    pending_adds = pending_adds - (OLD.pending AND OLD.dead_reason IS NULL AND OLD.desired),
    pending_removes = pending_removes - (OLD.pending AND OLD.dead_reason IS NULL AND NOT OLD.desired),
    pending_updates = pending_updates - (OLD.pending AND OLD.dead_reason IS NULL AND OLD.desired AND COALESCE(OLD.acked, 0)),
    acked_members = acked_members - COALESCE(OLD.acked, 0),
    unmatched_members = unmatched_members - (COALESCE(OLD.acked, 0) AND OLD.unmatched),
    dead_letters = dead_letters - (OLD.dead_reason IS NOT NULL)
  WHERE destination = OLD.destination AND audience_id = OLD.audience_id;
END;
