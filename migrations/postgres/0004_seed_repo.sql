-- A manual build may first seed its (empty) repository from a template: the request, as JSON.
ALTER TABLE builds ADD COLUMN seed_repo TEXT;
