-- Slipway store, SQLite. Times are unix milliseconds, flags 0/1, structured values JSON text.
-- Column types are only INTEGER/BIGINT and TEXT: all sqlx's Any driver carries.

CREATE TABLE repos (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    name            TEXT    NOT NULL UNIQUE,
    provider        TEXT    NOT NULL,
    clone_url       TEXT    NOT NULL,
    config_path     TEXT,
    webhook_secret  TEXT    NOT NULL,
    default_branch  TEXT    NOT NULL,
    trusted         BIGINT  NOT NULL DEFAULT 0,
    auto_cancel     BIGINT  NOT NULL DEFAULT 0,
    max_running     BIGINT  NOT NULL DEFAULT 0,
    status_url      TEXT,
    status_token    TEXT,
    -- The last build number handed out; bumped in the transaction that inserts the build.
    build_counter   BIGINT  NOT NULL DEFAULT 0,
    created         BIGINT  NOT NULL
);

CREATE TABLE builds (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    repo_id         BIGINT  NOT NULL REFERENCES repos (id) ON DELETE CASCADE,
    number          BIGINT  NOT NULL,
    status          TEXT    NOT NULL,
    event           TEXT    NOT NULL,
    reference       TEXT    NOT NULL,
    branch          TEXT    NOT NULL,
    commit_sha      TEXT    NOT NULL,
    message         TEXT    NOT NULL,
    author          TEXT    NOT NULL,
    build_trigger   TEXT    NOT NULL,
    deploy_to       TEXT    NOT NULL,
    delivery_id     TEXT,
    context         TEXT    NOT NULL,
    error           TEXT,
    created         BIGINT  NOT NULL,
    started         BIGINT,
    finished        BIGINT
);
CREATE UNIQUE INDEX builds_repo_number ON builds (repo_id, number);
CREATE UNIQUE INDEX builds_repo_delivery ON builds (repo_id, delivery_id);
CREATE INDEX builds_repo_branch_status ON builds (repo_id, branch, status);

CREATE TABLE stages (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    build_id         BIGINT  NOT NULL REFERENCES builds (id) ON DELETE CASCADE,
    repo_id          BIGINT  NOT NULL REFERENCES repos (id) ON DELETE CASCADE,
    number           BIGINT  NOT NULL,
    name             TEXT    NOT NULL,
    status           TEXT    NOT NULL,
    depends_on       TEXT    NOT NULL,
    labels           TEXT    NOT NULL,
    plan             TEXT    NOT NULL,
    attempt          BIGINT  NOT NULL DEFAULT 0,
    -- No foreign key: a runner row may be re-registered or pruned; the stage keeps the id.
    runner_id        BIGINT,
    lease_expires    BIGINT,
    cancel_requested BIGINT  NOT NULL DEFAULT 0,
    error            TEXT,
    created          BIGINT  NOT NULL,
    started          BIGINT,
    finished         BIGINT
);
CREATE UNIQUE INDEX stages_build_number ON stages (build_id, number);
CREATE INDEX stages_status ON stages (status);
CREATE INDEX stages_repo_status ON stages (repo_id, status);

CREATE TABLE steps (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    stage_id   BIGINT  NOT NULL REFERENCES stages (id) ON DELETE CASCADE,
    number     BIGINT  NOT NULL,
    name       TEXT    NOT NULL,
    status     TEXT    NOT NULL,
    exit_code  BIGINT,
    error      TEXT,
    started    BIGINT,
    finished   BIGINT
);
CREATE UNIQUE INDEX steps_stage_number ON steps (stage_id, number);
CREATE INDEX steps_stage_name ON steps (stage_id, name);

CREATE TABLE secrets (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    repo_id            BIGINT  NOT NULL REFERENCES repos (id) ON DELETE CASCADE,
    name               TEXT    NOT NULL,
    ciphertext         TEXT    NOT NULL,
    allow_pull_request BIGINT  NOT NULL DEFAULT 0,
    created            BIGINT  NOT NULL,
    updated            BIGINT  NOT NULL
);
CREATE UNIQUE INDEX secrets_repo_name ON secrets (repo_id, name);

CREATE TABLE runners (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    name       TEXT    NOT NULL UNIQUE,
    labels     TEXT    NOT NULL,
    capacity   BIGINT  NOT NULL,
    version    TEXT    NOT NULL,
    last_seen  BIGINT  NOT NULL,
    created    BIGINT  NOT NULL
);

CREATE TABLE tokens (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    name     TEXT    NOT NULL,
    hash     TEXT    NOT NULL UNIQUE,
    scope    TEXT    NOT NULL,
    created  BIGINT  NOT NULL
);

CREATE TABLE artifacts (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    build_id  BIGINT  NOT NULL REFERENCES builds (id) ON DELETE CASCADE,
    image     TEXT    NOT NULL,
    digest    TEXT    NOT NULL,
    created   BIGINT  NOT NULL
);
CREATE INDEX artifacts_build ON artifacts (build_id);
