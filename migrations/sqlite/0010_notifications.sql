-- Event notifications (issue 9): per-account subscriptions to build events, the deliveries made to
-- them (signed HTTP POSTs, retried with back-off), and the cursor of the step that turns the
-- `build_events` outbox into deliveries.

-- A subscription: where events go (`url`), the Standard Webhooks key they are signed with (sealed),
-- and which Workers and event types it takes (JSON lists; empty = all).
CREATE TABLE event_subscriptions (
    uuid         TEXT PRIMARY KEY,
    account_id   TEXT NOT NULL,
    name         TEXT NOT NULL,
    url          TEXT NOT NULL,
    secret_enc   BLOB NOT NULL,
    worker_names TEXT NOT NULL,
    event_types  TEXT NOT NULL,
    enabled      INTEGER NOT NULL,
    created_on   INTEGER NOT NULL,
    modified_on  INTEGER NOT NULL
);
CREATE INDEX event_subscriptions_account ON event_subscriptions (account_id, created_on);

-- One event for one subscription: the body as signed and sent, and how sending it went. `status` is
-- pending (to send at `next_attempt_on`, until `retry_until`), delivered or failed. A node sending it
-- holds it with `lease_owner` until `lease_expires`. `event_seq` orders the events of a build.
CREATE TABLE event_deliveries (
    uuid              TEXT PRIMARY KEY,
    subscription_uuid TEXT NOT NULL REFERENCES event_subscriptions (uuid) ON DELETE CASCADE,
    account_id        TEXT NOT NULL,
    build_uuid        TEXT NOT NULL,
    event_seq         INTEGER NOT NULL,
    event_type        TEXT NOT NULL,
    body              TEXT NOT NULL,
    status            TEXT NOT NULL,
    attempts          INTEGER NOT NULL,
    response_code     INTEGER,
    last_error        TEXT,
    created_on        INTEGER NOT NULL,
    next_attempt_on   INTEGER NOT NULL,
    retry_until       INTEGER NOT NULL,
    last_attempt_on   INTEGER,
    finished_on       INTEGER,
    lease_owner       TEXT,
    lease_expires     INTEGER,
    UNIQUE (subscription_uuid, event_seq)
);
CREATE INDEX event_deliveries_due ON event_deliveries (status, next_attempt_on);
CREATE INDEX event_deliveries_build ON event_deliveries (subscription_uuid, build_uuid, event_seq);
CREATE INDEX event_deliveries_list ON event_deliveries (subscription_uuid, created_on);

-- How far the fan-out step has read the outbox (`build_events.seq`), advanced in the transaction that
-- stores the deliveries it derived.
CREATE TABLE notification_cursor (
    name     TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL
);
INSERT INTO notification_cursor (name, last_seq) VALUES ('notifications', 0);
