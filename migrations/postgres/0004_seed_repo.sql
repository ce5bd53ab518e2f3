-- A manual build may first seed its (empty) repository from a template: the request, as JSON.
ALTER TABLE builds ADD COLUMN seed_repo TEXT;

-- Webhook builds look up whether a trigger built a commit on a branch already.
CREATE INDEX builds_trigger_commit ON builds (trigger_uuid, commit_hash);
