-- The web UI's sessions: the cookie holds a random id, the store only its SHA-256 (as for
-- tokens), the admin token it was opened with, the form token (CSRF) of its pages and when
-- it ends. Deleting the token deletes its sessions.
CREATE TABLE sessions (
    id        BIGSERIAL PRIMARY KEY,
    hash      TEXT    NOT NULL UNIQUE,
    token_id  BIGINT  NOT NULL REFERENCES tokens (id) ON DELETE CASCADE,
    csrf      TEXT    NOT NULL,
    created   BIGINT  NOT NULL,
    expires   BIGINT  NOT NULL
);

CREATE INDEX sessions_token ON sessions (token_id);
