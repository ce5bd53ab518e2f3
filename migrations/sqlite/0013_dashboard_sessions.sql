-- Dashboard sign-ins: one row per browser session. The cookie holds a random session id; only its
-- SHA-256 is stored, so a copy of the database cannot be replayed as a cookie. The API token the
-- session was opened with is read again on every request (a revoked token ends its sessions).
CREATE TABLE dashboard_sessions (
    id_hash      TEXT PRIMARY KEY,
    token_id     TEXT NOT NULL,
    -- Random secret every form of the session carries (compared in constant time on each POST).
    csrf_secret  TEXT NOT NULL,
    created_on   INTEGER NOT NULL,
    last_seen_on INTEGER NOT NULL,
    -- The session ends at this time (epoch ms) whatever its use.
    expires_on   INTEGER NOT NULL
);
CREATE INDEX dashboard_sessions_expires ON dashboard_sessions (expires_on);
