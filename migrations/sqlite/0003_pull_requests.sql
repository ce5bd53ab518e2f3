-- Pull requests seen through webhooks: builds of a branch with an open pull request carry it.

CREATE TABLE pull_requests (
    repo_id     TEXT NOT NULL,
    number      INTEGER NOT NULL,
    head_branch TEXT NOT NULL,
    url         TEXT NOT NULL,
    created_on  INTEGER NOT NULL,
    closed_on   INTEGER,
    PRIMARY KEY (repo_id, number)
);
CREATE INDEX pull_requests_branch ON pull_requests (repo_id, head_branch);
