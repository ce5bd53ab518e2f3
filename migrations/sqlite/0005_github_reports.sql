-- What Kiln last told GitHub about each build (its check run), and when to retry after a failure.
CREATE TABLE github_reports (
    build_uuid      TEXT PRIMARY KEY REFERENCES builds (uuid),
    check_run_id    INTEGER,
    reported_status TEXT,
    attempts        INTEGER NOT NULL,
    next_attempt_on INTEGER
);

-- The pull request a build belongs to, for the PR comment (one per pull request, updated in place).
ALTER TABLE builds ADD COLUMN pr_url TEXT;
CREATE INDEX builds_pr_url ON builds (pr_url, id);

CREATE TABLE github_pr_comments (
    pr_url          TEXT PRIMARY KEY,
    owner           TEXT NOT NULL,
    repo            TEXT NOT NULL,
    installation_id INTEGER NOT NULL,
    comment_id      INTEGER,
    dirty           INTEGER NOT NULL,
    attempts        INTEGER NOT NULL,
    next_attempt_on INTEGER
);
