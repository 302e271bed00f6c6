-- koala's durable state. Portable SQL: the PostgreSQL store uses the same
-- tables with BIGSERIAL keys. Times are milliseconds since the epoch.

CREATE TABLE audiences (
    audience_id   INTEGER PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    segment_id    BIGINT NOT NULL,
    mode          TEXT NOT NULL,
    member_count  BIGINT NOT NULL DEFAULT 0,
    last_change_at BIGINT,
    created_at    BIGINT NOT NULL
);

CREATE TABLE people (
    person_id     INTEGER PRIMARY KEY,
    customer_id   TEXT UNIQUE,
    cio_id        TEXT UNIQUE,
    email         TEXT,
    phone         TEXT,
    attributes    TEXT NOT NULL DEFAULT '{}',
    -- event time of the newest data that set email, phone and attributes
    profile_at    BIGINT NOT NULL DEFAULT 0,
    subscribed    BOOLEAN,
    subscription_at BIGINT,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);
CREATE INDEX people_email ON people(email);
CREATE INDEX people_phone ON people(phone);

-- Every delivery ever accepted, so a retried one is recognised.
CREATE TABLE received (
    dedupe_key    TEXT PRIMARY KEY,
    received_at   BIGINT NOT NULL
);

-- History: every accepted event per person, stale ones included.
CREATE TABLE events (
    event_id      INTEGER PRIMARY KEY,
    person_id     BIGINT NOT NULL,
    audience_id   BIGINT,
    source        TEXT NOT NULL,   -- segment_webhook | reporting_webhook | resync
    kind          TEXT NOT NULL,   -- entered | exited | email.opened | customer.unsubscribed …
    occurred_at   BIGINT NOT NULL,
    received_at   BIGINT NOT NULL,
    outcome       TEXT NOT NULL,   -- applied | unchanged | stale | recorded
    detail        TEXT
);
CREATE INDEX events_person ON events(person_id, event_id);
CREATE INDEX events_audience ON events(audience_id, received_at);

-- Membership per (audience, person), set by the newest event (latest wins).
CREATE TABLE memberships (
    audience_id   BIGINT NOT NULL,
    person_id     BIGINT NOT NULL,
    is_member     BOOLEAN NOT NULL,
    since         BIGINT NOT NULL,  -- event time the current state began
    stamp_at      BIGINT NOT NULL,  -- event time of the newest event applied
    stamp_rank    INTEGER NOT NULL, -- tie-break rank of that event
    stamp_key     TEXT NOT NULL,    -- tie-break key of that event
    event_id      BIGINT NOT NULL,  -- history row that set the state
    updated_at    BIGINT NOT NULL,
    PRIMARY KEY (audience_id, person_id)
);
CREATE INDEX memberships_members ON memberships(audience_id, is_member);

-- Delivery work: desired state vs the state the destination acknowledged.
CREATE TABLE sync_state (
    sync_id       INTEGER PRIMARY KEY,
    destination   TEXT NOT NULL,
    audience_id   BIGINT NOT NULL,
    person_id     BIGINT NOT NULL,
    desired       BOOLEAN NOT NULL,
    desired_at    BIGINT NOT NULL,  -- Customer.io event time of the change
    desired_received_at BIGINT NOT NULL, -- when koala received it
    version       BIGINT NOT NULL DEFAULT 1,
    acked         BOOLEAN,          -- NULL: never sent
    acked_at      BIGINT,
    pending       BOOLEAN NOT NULL,
    next_attempt_at BIGINT NOT NULL DEFAULT 0,
    lease_until   BIGINT NOT NULL DEFAULT 0,
    attempts      INTEGER NOT NULL DEFAULT 0,
    last_error    TEXT,
    dead_reason   TEXT,
    dead_at       BIGINT,
    UNIQUE (destination, audience_id, person_id)
);
CREATE INDEX sync_work ON sync_state(destination, audience_id, desired, sync_id)
    WHERE pending AND dead_reason IS NULL;
CREATE INDEX sync_dead ON sync_state(destination, audience_id) WHERE dead_reason IS NOT NULL;

-- Audiences koala created in a destination, so a restart reuses them.
CREATE TABLE destination_audiences (
    destination   TEXT NOT NULL,
    audience_id   BIGINT NOT NULL,
    external_id   TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    PRIMARY KEY (destination, audience_id)
);
CREATE INDEX sync_due ON sync_state(destination, desired_received_at, sync_id)
    WHERE pending AND dead_reason IS NULL;
