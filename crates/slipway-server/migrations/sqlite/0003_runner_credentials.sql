-- Each runner's own credential (issued at registration, stored as its SHA-256 hex), so a
-- runner can act only as itself; empty for rows registered before it existed (such a
-- runner must register again).
ALTER TABLE runners ADD COLUMN credential_hash TEXT NOT NULL DEFAULT '';

-- The SHA-256 of the signed webhook body a build came from: the same body delivered again
-- (under a new or no delivery id) within the replay window builds nothing.
ALTER TABLE builds ADD COLUMN body_digest TEXT;
CREATE INDEX builds_repo_body_digest ON builds (repo_id, body_digest);
