-- A send of the row got no definitive answer (a timeout, a 5xx, a lost
-- connection, a crash mid-call): the destination may hold the state that
-- was sent, or not. Until a send is acknowledged the row is treated as
-- unknown, so a later change is always sent, even one back to what koala
-- last saw acknowledged (an entry whose add may have landed, then an exit).
ALTER TABLE sync_state ADD COLUMN uncertain BOOLEAN NOT NULL DEFAULT FALSE;
