-- GitHub webhook deliveries already handled (a redelivery creates nothing), and the GitHub App
-- installation last seen for each repository.

CREATE TABLE webhook_deliveries (
    delivery_id TEXT PRIMARY KEY,
    event       TEXT NOT NULL,
    received_on INTEGER NOT NULL,
    build_count INTEGER NOT NULL
);

CREATE TABLE github_installations (
    repo_id         TEXT PRIMARY KEY,
    installation_id INTEGER NOT NULL,
    modified_on     INTEGER NOT NULL
);
