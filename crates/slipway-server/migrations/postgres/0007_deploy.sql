-- Environments (integration, qa, production, ...): a domain for their stacks' routes and
-- variables (JSON) the stack files are interpolated with.
CREATE TABLE environments (
    id       BIGSERIAL PRIMARY KEY,
    name     TEXT    NOT NULL UNIQUE,
    domain   TEXT,
    vars     TEXT    NOT NULL,
    created  BIGINT  NOT NULL
);

-- An environment's secrets, sealed (see crate::secrets); stack files name them.
CREATE TABLE env_secrets (
    id          BIGSERIAL PRIMARY KEY,
    env_id      BIGINT  NOT NULL REFERENCES environments (id) ON DELETE CASCADE,
    name        TEXT    NOT NULL,
    ciphertext  TEXT    NOT NULL,
    created     BIGINT  NOT NULL,
    updated     BIGINT  NOT NULL,
    UNIQUE (env_id, name)
);

-- A stack: a compose file deployed in an environment, one revision at a time.
-- webhook_hash: the SHA-256 of its redeploy webhook's token, when one was made.
CREATE TABLE stacks (
    id            BIGSERIAL PRIMARY KEY,
    env_id        BIGINT  NOT NULL REFERENCES environments (id),
    name          TEXT    NOT NULL,
    current       BIGINT,
    webhook_hash  TEXT,
    created       BIGINT  NOT NULL,
    UNIQUE (env_id, name)
);

-- Every deploy of a stack: the compose text (and rancher-compose's), the resolved
-- variables (secrets by name only, JSON), every image pinned to its digest (JSON, service
-- -> image@digest) and as referenced (refs, JSON: the tags a redeploy resolves again),
-- what caused it (cause), its status (pending, rolling, paused, succeeded,
-- failed, rolled_back) and when it ended.
CREATE TABLE revisions (
    id        BIGSERIAL PRIMARY KEY,
    stack_id  BIGINT  NOT NULL REFERENCES stacks (id) ON DELETE CASCADE,
    number    BIGINT  NOT NULL,
    compose   TEXT    NOT NULL,
    rancher   TEXT,
    vars      TEXT    NOT NULL,
    images    TEXT    NOT NULL,
    refs      TEXT    NOT NULL,
    cause     TEXT    NOT NULL,
    build_id  BIGINT,
    status    TEXT    NOT NULL,
    message   TEXT,
    created   BIGINT  NOT NULL,
    finished  BIGINT,
    UNIQUE (stack_id, number)
);

-- A rollout recorded step by step (batch started, healthy, traffic shifted, drained,
-- stopped, ...), so a restarted server finishes or reverts it from its last step.
CREATE TABLE rollout_steps (
    id           BIGSERIAL PRIMARY KEY,
    revision_id  BIGINT  NOT NULL REFERENCES revisions (id) ON DELETE CASCADE,
    at           BIGINT  NOT NULL,
    kind         TEXT    NOT NULL,
    detail       TEXT    NOT NULL
);

CREATE INDEX rollout_steps_revision ON rollout_steps (revision_id);

-- Environment rules: each successful build of a repository's branch deploys the
-- repository's stack file at that commit (file: its path, else the usual names) as stack;
-- with image_tag (a glob), a push of a matching tag of that registry repository deploys
-- the stack's current file with that image instead (branch is then empty).
CREATE TABLE env_rules (
    id       BIGSERIAL PRIMARY KEY,
    env_id   BIGINT  NOT NULL REFERENCES environments (id) ON DELETE CASCADE,
    repo     TEXT    NOT NULL,
    branch   TEXT    NOT NULL,
    stack    TEXT    NOT NULL,
    file     TEXT,
    image_tag TEXT,
    created  BIGINT  NOT NULL
);

-- Successful builds the environment rules still owe a look: written in the transaction
-- that finishes the build, removed once the rules were applied.
CREATE TABLE deploy_outbox (
    id        BIGSERIAL PRIMARY KEY,
    build_id  BIGINT  NOT NULL,
    created   BIGINT  NOT NULL
);
