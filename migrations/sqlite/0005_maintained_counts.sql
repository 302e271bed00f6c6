-- Counts an operator reads (audience sizes, identifier coverage, pending
-- work per destination) are kept current by triggers in the same
-- transaction as every change, so reading them costs one row, not a scan
-- of a million-member audience. The triggers only count; every rule about
-- what a row means stays in Rust.

-- Why the newest email/phone a person gave cannot be used (a phone
-- without its country code, say): the reason's code, never the value.
ALTER TABLE people ADD COLUMN email_unusable TEXT;
ALTER TABLE people ADD COLUMN phone_unusable TEXT;

-- Identifier coverage of each audience's current members.
ALTER TABLE audiences ADD COLUMN with_email BIGINT NOT NULL DEFAULT 0;
ALTER TABLE audiences ADD COLUMN with_phone BIGINT NOT NULL DEFAULT 0;
ALTER TABLE audiences ADD COLUMN with_neither BIGINT NOT NULL DEFAULT 0;
-- Members with no usable email (phone) but an unusable one.
ALTER TABLE audiences ADD COLUMN email_unusable BIGINT NOT NULL DEFAULT 0;
ALTER TABLE audiences ADD COLUMN phone_unusable BIGINT NOT NULL DEFAULT 0;

UPDATE audiences SET
  member_count = (SELECT COUNT(*) FROM memberships m WHERE m.audience_id = audiences.audience_id AND m.is_member),
  with_email = (SELECT COUNT(*) FROM memberships m JOIN people p ON p.person_id = m.person_id
                WHERE m.audience_id = audiences.audience_id AND m.is_member AND p.email IS NOT NULL),
  with_phone = (SELECT COUNT(*) FROM memberships m JOIN people p ON p.person_id = m.person_id
                WHERE m.audience_id = audiences.audience_id AND m.is_member AND p.phone IS NOT NULL),
  with_neither = (SELECT COUNT(*) FROM memberships m JOIN people p ON p.person_id = m.person_id
                WHERE m.audience_id = audiences.audience_id AND m.is_member AND p.email IS NULL AND p.phone IS NULL);

-- Membership changes move the audience's counts. `last_change_at` is the
-- arrival time of the newest change.
CREATE TRIGGER memberships_counts_insert AFTER INSERT ON memberships WHEN NEW.is_member
BEGIN
  UPDATE audiences SET
    member_count = member_count + 1,
    with_email = with_email + COALESCE((SELECT email IS NOT NULL FROM people WHERE person_id = NEW.person_id), 0),
    with_phone = with_phone + COALESCE((SELECT phone IS NOT NULL FROM people WHERE person_id = NEW.person_id), 0),
    with_neither = with_neither + COALESCE((SELECT email IS NULL AND phone IS NULL FROM people WHERE person_id = NEW.person_id), 0),
    email_unusable = email_unusable + COALESCE((SELECT email IS NULL AND email_unusable IS NOT NULL FROM people WHERE person_id = NEW.person_id), 0),
    phone_unusable = phone_unusable + COALESCE((SELECT phone IS NULL AND phone_unusable IS NOT NULL FROM people WHERE person_id = NEW.person_id), 0),
    last_change_at = NEW.updated_at
  WHERE audience_id = NEW.audience_id;
END;

CREATE TRIGGER memberships_counts_update AFTER UPDATE OF is_member ON memberships
WHEN OLD.is_member <> NEW.is_member
BEGIN
  UPDATE audiences SET
    member_count = member_count + (CASE WHEN NEW.is_member THEN 1 ELSE -1 END),
    with_email = with_email + (CASE WHEN NEW.is_member THEN 1 ELSE -1 END)
      * COALESCE((SELECT email IS NOT NULL FROM people WHERE person_id = NEW.person_id), 0),
    with_phone = with_phone + (CASE WHEN NEW.is_member THEN 1 ELSE -1 END)
      * COALESCE((SELECT phone IS NOT NULL FROM people WHERE person_id = NEW.person_id), 0),
    with_neither = with_neither + (CASE WHEN NEW.is_member THEN 1 ELSE -1 END)
      * COALESCE((SELECT email IS NULL AND phone IS NULL FROM people WHERE person_id = NEW.person_id), 0),
    email_unusable = email_unusable + (CASE WHEN NEW.is_member THEN 1 ELSE -1 END)
      * COALESCE((SELECT email IS NULL AND email_unusable IS NOT NULL FROM people WHERE person_id = NEW.person_id), 0),
    phone_unusable = phone_unusable + (CASE WHEN NEW.is_member THEN 1 ELSE -1 END)
      * COALESCE((SELECT phone IS NULL AND phone_unusable IS NOT NULL FROM people WHERE person_id = NEW.person_id), 0),
    last_change_at = NEW.updated_at
  WHERE audience_id = NEW.audience_id;
END;

CREATE TRIGGER memberships_counts_delete AFTER DELETE ON memberships WHEN OLD.is_member
BEGIN
  UPDATE audiences SET
    member_count = member_count - 1,
    with_email = with_email - COALESCE((SELECT email IS NOT NULL FROM people WHERE person_id = OLD.person_id), 0),
    with_phone = with_phone - COALESCE((SELECT phone IS NOT NULL FROM people WHERE person_id = OLD.person_id), 0),
    with_neither = with_neither - COALESCE((SELECT email IS NULL AND phone IS NULL FROM people WHERE person_id = OLD.person_id), 0),
    email_unusable = email_unusable - COALESCE((SELECT email IS NULL AND email_unusable IS NOT NULL FROM people WHERE person_id = OLD.person_id), 0),
    phone_unusable = phone_unusable - COALESCE((SELECT phone IS NULL AND phone_unusable IS NOT NULL FROM people WHERE person_id = OLD.person_id), 0)
  WHERE audience_id = OLD.audience_id;
END;

-- A member whose email or phone appears, goes or becomes unusable moves
-- the coverage of every audience they are in. (The memberships key leads
-- with the audience, so the few audiences are probed one by one.)
CREATE TRIGGER people_coverage_update AFTER UPDATE OF email, phone, email_unusable, phone_unusable ON people
WHEN (OLD.email IS NULL) <> (NEW.email IS NULL) OR (OLD.phone IS NULL) <> (NEW.phone IS NULL)
  OR (OLD.email_unusable IS NULL) <> (NEW.email_unusable IS NULL)
  OR (OLD.phone_unusable IS NULL) <> (NEW.phone_unusable IS NULL)
BEGIN
  UPDATE audiences SET
    with_email = with_email + (NEW.email IS NOT NULL) - (OLD.email IS NOT NULL),
    with_phone = with_phone + (NEW.phone IS NOT NULL) - (OLD.phone IS NOT NULL),
    with_neither = with_neither + (NEW.email IS NULL AND NEW.phone IS NULL) - (OLD.email IS NULL AND OLD.phone IS NULL),
    email_unusable = email_unusable + (NEW.email IS NULL AND NEW.email_unusable IS NOT NULL)
      - (OLD.email IS NULL AND OLD.email_unusable IS NOT NULL),
    phone_unusable = phone_unusable + (NEW.phone IS NULL AND NEW.phone_unusable IS NOT NULL)
      - (OLD.phone IS NULL AND OLD.phone_unusable IS NOT NULL)
  WHERE audience_id IN (
    SELECT m.audience_id FROM memberships m
    WHERE m.audience_id IN (SELECT audience_id FROM audiences) AND m.person_id = NEW.person_id AND m.is_member);
END;

-- A member the destination could not address (none of its identifiers)
-- is acknowledged without a request and marked, so its coverage can say
-- how many members it actually holds.
ALTER TABLE sync_state ADD COLUMN unmatched BOOLEAN NOT NULL DEFAULT FALSE;

-- Delivery work per (destination, audience): what the admin API and the
-- pending gauges show. Pending = desired differs from acknowledged and the
-- row is not a dead letter. `unmatched_members`: acknowledged in without
-- being sendable.
CREATE TABLE sync_counts (
    destination     TEXT NOT NULL,
    audience_id     BIGINT NOT NULL,
    pending_adds    BIGINT NOT NULL DEFAULT 0,
    pending_removes BIGINT NOT NULL DEFAULT 0,
    acked_members   BIGINT NOT NULL DEFAULT 0,
    unmatched_members BIGINT NOT NULL DEFAULT 0,
    dead_letters    BIGINT NOT NULL DEFAULT 0,
    last_ack_at     BIGINT,
    PRIMARY KEY (destination, audience_id)
) WITHOUT ROWID;

INSERT INTO sync_counts (destination, audience_id, pending_adds, pending_removes, acked_members, unmatched_members, dead_letters, last_ack_at)
SELECT destination, audience_id,
       SUM(pending AND dead_reason IS NULL AND desired),
       SUM(pending AND dead_reason IS NULL AND NOT desired),
       SUM(COALESCE(acked, 0)),
       SUM(COALESCE(acked, 0) AND unmatched),
       SUM(dead_reason IS NOT NULL),
       MAX(acked_at)
FROM sync_state GROUP BY destination, audience_id;

CREATE TRIGGER sync_counts_insert AFTER INSERT ON sync_state
BEGIN
  INSERT INTO sync_counts (destination, audience_id, pending_adds, pending_removes, acked_members, unmatched_members, dead_letters, last_ack_at)
  VALUES (NEW.destination, NEW.audience_id,
          NEW.pending AND NEW.dead_reason IS NULL AND NEW.desired,
          NEW.pending AND NEW.dead_reason IS NULL AND NOT NEW.desired,
          COALESCE(NEW.acked, 0), COALESCE(NEW.acked, 0) AND NEW.unmatched,
          NEW.dead_reason IS NOT NULL, NEW.acked_at)
  ON CONFLICT (destination, audience_id) DO UPDATE SET
    pending_adds = pending_adds + excluded.pending_adds,
    pending_removes = pending_removes + excluded.pending_removes,
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
    acked_members = acked_members - COALESCE(OLD.acked, 0),
    unmatched_members = unmatched_members - (COALESCE(OLD.acked, 0) AND OLD.unmatched),
    dead_letters = dead_letters - (OLD.dead_reason IS NOT NULL)
  WHERE destination = OLD.destination AND audience_id = OLD.audience_id;
END;
