-- The GitHub reporter consumes the build events outbox (issue 9). Its cursor is the last event it
-- turned into report items; it moves in the same transaction as the items it made. Each item is one
-- check run or pull request comment update for one build event, claimed by one node at a time
-- (a lease, retaken once lapsed), posted in `seq` order per subject (the build for a check run, the
-- pull request URL for a comment), retried with back-off, and deleted once done or given up.
-- A database upgraded from an earlier Kiln starts after the events it already holds (the earlier
-- reporter reported those builds).
CREATE TABLE github_report_cursor (
    id  INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL
);
INSERT INTO github_report_cursor (id, seq) SELECT 1, COALESCE(MAX(seq), 0) FROM build_events;

CREATE TABLE github_report_items (
    kind            TEXT NOT NULL,
    seq             INTEGER NOT NULL,
    subject         TEXT NOT NULL,
    build_uuid      TEXT NOT NULL,
    attempts        INTEGER NOT NULL,
    next_attempt_on INTEGER,
    lease_owner     TEXT,
    lease_expires   INTEGER,
    created_on      INTEGER NOT NULL,
    PRIMARY KEY (kind, seq)
);
CREATE INDEX github_report_items_subject ON github_report_items (kind, subject, seq);

-- What the earlier reporter compared builds with, and its retry state: the items hold both now.
-- The check run and comment ids stay, so that later updates edit them.
ALTER TABLE github_reports DROP COLUMN reported_status;
ALTER TABLE github_reports DROP COLUMN attempts;
ALTER TABLE github_reports DROP COLUMN next_attempt_on;
ALTER TABLE github_pr_comments DROP COLUMN dirty;
ALTER TABLE github_pr_comments DROP COLUMN attempts;
ALTER TABLE github_pr_comments DROP COLUMN next_attempt_on;
