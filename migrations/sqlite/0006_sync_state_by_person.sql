-- A profile lookup re-queues the sync rows of the people it changed, and
-- the person view lists a person's rows: both look rows up by person.
-- Without this, each did a full scan of sync_state (a million rows per
-- bulk lookup of 100 people in a large first resync). person_id never
-- changes, so only inserts write this index.
CREATE INDEX sync_state_person ON sync_state(person_id);
