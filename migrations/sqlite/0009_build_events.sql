-- The build events outbox: one row per status change of a build (its first `queued` included),
-- appended in the transaction that made the change, in commit order (SQLite has one writer).
-- Consumers keep their own cursor (the last `seq` they handled) and read the rows after it.
-- Builds that existed before this migration have no events for their earlier changes.
CREATE TABLE build_events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    build_uuid TEXT NOT NULL,
    account_id TEXT NOT NULL,
    worker     TEXT NOT NULL,
    status     TEXT NOT NULL,
    outcome    TEXT,
    created_on INTEGER NOT NULL
);
CREATE INDEX build_events_build ON build_events (build_uuid, seq);
