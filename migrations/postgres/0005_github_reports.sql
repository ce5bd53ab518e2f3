-- What Kiln last told GitHub about each build (its check run), and when to retry after a failure.
CREATE TABLE github_reports (
    build_uuid      TEXT PRIMARY KEY REFERENCES builds (uuid),
    check_run_id    BIGINT,
    reported_status TEXT,
    attempts        BIGINT NOT NULL,
    next_attempt_on BIGINT
);
