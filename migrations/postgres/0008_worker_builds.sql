-- A Worker's build configuration (createWorkerBuild): its production branch and the triggers that
-- hold its settings and its repository connection. The production trigger builds the branch; the
-- preview trigger (the previews base config) builds every other branch while it is live, and keeps
-- its settings, soft-deleted, while previews are off.
CREATE TABLE worker_builds (
    account_id              TEXT NOT NULL,
    script_tag              TEXT NOT NULL,
    branch                  TEXT NOT NULL,
    production_trigger_uuid TEXT NOT NULL REFERENCES triggers (uuid),
    preview_trigger_uuid    TEXT REFERENCES triggers (uuid),
    created_on              BIGINT NOT NULL,
    modified_on             BIGINT NOT NULL,
    PRIMARY KEY (account_id, script_tag)
);
