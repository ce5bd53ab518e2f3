-- Kiln schema, SQLite dialect. Times are milliseconds since the Unix epoch; booleans are 0/1; lists are JSON text.

CREATE TABLE api_tokens (
    id           TEXT PRIMARY KEY,
    kind         TEXT NOT NULL,
    email        TEXT,
    secret_hash  TEXT NOT NULL UNIQUE,
    permission   TEXT NOT NULL,
    all_accounts INTEGER NOT NULL,
    accounts     TEXT NOT NULL,
    label        TEXT,
    created_on   INTEGER NOT NULL,
    revoked_on   INTEGER
);

CREATE TABLE repo_connections (
    uuid                  TEXT PRIMARY KEY,
    account_id            TEXT NOT NULL,
    provider_type         TEXT NOT NULL,
    provider_account_id   TEXT NOT NULL,
    provider_account_name TEXT NOT NULL,
    repo_id               TEXT NOT NULL,
    repo_name             TEXT NOT NULL,
    created_on            INTEGER NOT NULL,
    modified_on           INTEGER NOT NULL,
    deleted_on            INTEGER,
    UNIQUE (account_id, provider_type, repo_id)
);

CREATE TABLE build_tokens (
    uuid                TEXT PRIMARY KEY,
    account_id          TEXT NOT NULL,
    name                TEXT NOT NULL,
    cloudflare_token_id TEXT NOT NULL,
    owner_type          TEXT NOT NULL,
    secret_enc          BLOB NOT NULL,
    created_on          INTEGER NOT NULL,
    deleted_on          INTEGER
);
CREATE INDEX build_tokens_account ON build_tokens (account_id, created_on);

CREATE TABLE triggers (
    uuid                  TEXT PRIMARY KEY,
    account_id            TEXT NOT NULL,
    external_script_id    TEXT NOT NULL,
    trigger_name          TEXT NOT NULL,
    repo_connection_uuid  TEXT NOT NULL REFERENCES repo_connections (uuid),
    build_token_uuid      TEXT NOT NULL REFERENCES build_tokens (uuid),
    build_command         TEXT NOT NULL,
    deploy_command        TEXT NOT NULL,
    root_directory        TEXT NOT NULL,
    branch_includes       TEXT NOT NULL,
    branch_excludes       TEXT NOT NULL,
    path_includes         TEXT NOT NULL,
    path_excludes         TEXT NOT NULL,
    build_caching_enabled INTEGER NOT NULL,
    created_on            INTEGER NOT NULL,
    modified_on           INTEGER NOT NULL,
    deleted_on            INTEGER
);
CREATE INDEX triggers_worker ON triggers (account_id, external_script_id);
CREATE INDEX triggers_connection ON triggers (repo_connection_uuid);

CREATE TABLE env_vars (
    trigger_uuid TEXT NOT NULL REFERENCES triggers (uuid),
    key          TEXT NOT NULL,
    is_secret    INTEGER NOT NULL,
    value_plain  TEXT,
    value_enc    BLOB,
    created_on   INTEGER NOT NULL,
    modified_on  INTEGER NOT NULL,
    PRIMARY KEY (trigger_uuid, key)
);

CREATE TABLE deploy_hooks (
    uuid               TEXT PRIMARY KEY,
    account_id         TEXT NOT NULL,
    external_script_id TEXT NOT NULL,
    name               TEXT NOT NULL,
    branch             TEXT NOT NULL,
    created_on         INTEGER NOT NULL,
    modified_on        INTEGER NOT NULL,
    deleted_on         INTEGER
);
CREATE INDEX deploy_hooks_worker ON deploy_hooks (account_id, external_script_id);

CREATE TABLE builds (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    uuid               TEXT NOT NULL UNIQUE,
    account_id         TEXT NOT NULL,
    trigger_uuid       TEXT NOT NULL REFERENCES triggers (uuid),
    external_script_id TEXT NOT NULL,
    status             TEXT NOT NULL,
    outcome            TEXT,
    trigger_source     TEXT NOT NULL,
    branch             TEXT,
    commit_hash        TEXT,
    metadata           TEXT NOT NULL,
    secrets_enc        BLOB NOT NULL,
    pull_request       TEXT,
    deploy_hook_uuid   TEXT,
    created_on         INTEGER NOT NULL,
    modified_on        INTEGER NOT NULL,
    initializing_on    INTEGER,
    running_on         INTEGER,
    stopped_on         INTEGER,
    -- The runner that owns a claimed build, and until when (epoch ms); renewed while it runs.
    lease_owner        TEXT,
    lease_expires      INTEGER
);
CREATE INDEX builds_worker ON builds (account_id, external_script_id, id);
CREATE INDEX builds_status ON builds (status, id);
CREATE INDEX builds_hook ON builds (deploy_hook_uuid, id);

CREATE TABLE build_versions (
    account_id TEXT NOT NULL,
    version_id TEXT NOT NULL,
    build_uuid TEXT NOT NULL REFERENCES builds (uuid),
    created_on INTEGER NOT NULL,
    PRIMARY KEY (account_id, version_id)
);

-- Log lines in chunks: `body` holds `line_count` lines, each `<epoch ms>\t<message>\n`.
CREATE TABLE build_log_chunks (
    build_id   INTEGER NOT NULL REFERENCES builds (id),
    first_seq  INTEGER NOT NULL,
    line_count INTEGER NOT NULL,
    body       TEXT NOT NULL,
    PRIMARY KEY (build_id, first_seq)
);

-- Per-account settings; absent rows and NULL columns take the server's defaults.
CREATE TABLE accounts (
    account_id    TEXT PRIMARY KEY,
    concurrency   INTEGER,
    build_minutes INTEGER,
    modified_on   INTEGER NOT NULL
);
