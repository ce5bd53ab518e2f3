-- Which Kiln accounts own which GitHub App installations. Only an operator sets this (`kiln
-- installations link|unlink`), never an API request: a repository covered by an installation is
-- built from its deliveries, cloned with the installation's token and reported on (check runs, pull
-- request comments) only for the accounts linked to that installation.
CREATE TABLE github_installation_accounts (
    installation_id INTEGER NOT NULL,
    account_id      TEXT NOT NULL,
    created_on      INTEGER NOT NULL,
    PRIMARY KEY (installation_id, account_id)
);
CREATE INDEX github_installation_accounts_account ON github_installation_accounts (account_id);
