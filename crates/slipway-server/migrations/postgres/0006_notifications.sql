-- Notification channels: a kind, its plain settings (JSON), its credentials (sealed JSON,
-- see crate::secrets), an optional template and the rule (repository, branch and
-- environment globs, events as a JSON list; empty: all) that picks what it is told.
CREATE TABLE notify_channels (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT    NOT NULL UNIQUE,
    kind        TEXT    NOT NULL,
    api_base    TEXT,
    settings    TEXT    NOT NULL,
    secrets     TEXT    NOT NULL,
    template    TEXT,
    repo        TEXT,
    branch      TEXT,
    environment TEXT,
    events      TEXT    NOT NULL,
    created     BIGINT  NOT NULL
);

-- What finished builds and deployments owe the notifications: written in the transaction
-- that finishes the build (or records the deployment's state), removed in the one that
-- turns it into deliveries (the outbox). A row names a build, or carries a deployment's
-- event as JSON (environment, stack, revision, status, URL, images, repository, build).
CREATE TABLE notify_outbox (
    id          BIGSERIAL PRIMARY KEY,
    build_id    BIGINT,
    deploy      TEXT,
    created     BIGINT  NOT NULL
);

-- One message to one channel. dedup_key (outbox row, channel, event) makes a fan-out run
-- twice add nothing. status: pending, delivered, failed.
CREATE TABLE notify_deliveries (
    id             BIGSERIAL PRIMARY KEY,
    channel_id     BIGINT  NOT NULL REFERENCES notify_channels (id) ON DELETE CASCADE,
    dedup_key      TEXT    NOT NULL UNIQUE,
    event          TEXT    NOT NULL,
    repo           TEXT    NOT NULL,
    build_number   BIGINT,
    title          TEXT    NOT NULL,
    message        TEXT    NOT NULL,
    template_error TEXT,
    status         TEXT    NOT NULL,
    attempts       BIGINT  NOT NULL,
    next_at        BIGINT  NOT NULL,
    created        BIGINT  NOT NULL,
    finished       BIGINT,
    answer         TEXT
);

CREATE INDEX notify_deliveries_due ON notify_deliveries (channel_id, status, next_at);

-- Every attempt of a delivery; merged > 1: the attempt carried a digest of that many.
CREATE TABLE notify_attempts (
    id           BIGSERIAL PRIMARY KEY,
    delivery_id  BIGINT  NOT NULL REFERENCES notify_deliveries (id) ON DELETE CASCADE,
    number       BIGINT  NOT NULL,
    at           BIGINT  NOT NULL,
    latency_ms   BIGINT  NOT NULL,
    http_status  BIGINT,
    ok           BIGINT  NOT NULL,
    answer       TEXT    NOT NULL,
    merged       BIGINT  NOT NULL
);

CREATE INDEX notify_attempts_delivery ON notify_attempts (delivery_id);
