-- Registry paths a pipeline's token may push to beyond its repository's own (`owner/name`
-- and below it): patterns such as `team/shared-*`, one a line, validated by the API
-- (`RepoPattern::parse_path`); empty for none.
ALTER TABLE repos ADD COLUMN registry_paths TEXT NOT NULL DEFAULT '';
