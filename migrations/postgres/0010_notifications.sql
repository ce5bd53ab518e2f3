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
    secret_enc   BYTEA NOT NULL,
    worker_names TEXT NOT NULL,
    event_types  TEXT NOT NULL,
    enabled      BIGINT NOT NULL,
    created_on   BIGINT NOT NULL,
    modified_on  BIGINT NOT NULL
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
    event_seq         BIGINT NOT NULL,
    event_type        TEXT NOT NULL,
    body              TEXT NOT NULL,
    status            TEXT NOT NULL,
    attempts          BIGINT NOT NULL,
    response_code     BIGINT,
    last_error        TEXT,
    created_on        BIGINT NOT NULL,
    next_attempt_on   BIGINT NOT NULL,
    retry_until       BIGINT NOT NULL,
    last_attempt_on   BIGINT,
    finished_on       BIGINT,
    lease_owner       TEXT,
    lease_expires     BIGINT,
    UNIQUE (subscription_uuid, event_seq)
);
CREATE INDEX event_deliveries_due ON event_deliveries (status, next_attempt_on);
CREATE INDEX event_deliveries_build ON event_deliveries (subscription_uuid, build_uuid, event_seq);
CREATE INDEX event_deliveries_list ON event_deliveries (subscription_uuid, created_on);

-- How far the fan-out step has read the outbox (`build_events.seq`), advanced in the transaction that
-- stores the deliveries it derived.
CREATE TABLE notification_cursor (
    name     TEXT PRIMARY KEY,
    last_seq BIGINT NOT NULL
);
INSERT INTO notification_cursor (name, last_seq) VALUES ('notifications', 0);
