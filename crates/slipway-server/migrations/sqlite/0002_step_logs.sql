-- The whole log of a step that ended in the same report that carried its first line (a
-- short step): stored with that report's other writes, in its transaction, instead of a
-- file of its own under `logs/` (see `logstore.rs`). Keyed like a log file: one a step of
-- an attempt, so a retried stage keeps the logs of its earlier attempts.
CREATE TABLE step_logs (
    stage_id BIGINT NOT NULL REFERENCES stages (id) ON DELETE CASCADE,
    attempt  BIGINT NOT NULL,
    step     TEXT   NOT NULL,
    text     TEXT   NOT NULL,
    PRIMARY KEY (stage_id, attempt, step)
);
