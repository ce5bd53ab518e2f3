-- The build events outbox: one row per status change of a build (its first `queued` included),
-- appended in the transaction that made the change. Appends take a transaction-level advisory lock
-- just before committing, so `seq` grows in commit order: a reader never sees a row whose lower
-- neighbour commits later. Consumers keep their own cursor (the last `seq` they handled) and read
-- the rows after it. Builds that existed before this migration have no events for their earlier
-- changes.
CREATE TABLE build_events (
    seq        BIGSERIAL PRIMARY KEY,
    build_uuid TEXT NOT NULL,
    account_id TEXT NOT NULL,
    worker     TEXT NOT NULL,
    status     TEXT NOT NULL,
    outcome    TEXT,
    created_on BIGINT NOT NULL
);
CREATE INDEX build_events_build ON build_events (build_uuid, seq);
