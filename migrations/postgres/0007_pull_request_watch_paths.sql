-- A pull-request build of a trigger with watch paths checks them against the pull request's changes
-- when it starts (pull_request payloads list no files): the filters and the base branch, as JSON.
ALTER TABLE builds ADD COLUMN watch_paths TEXT;
