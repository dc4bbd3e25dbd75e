//! Stages (the queue and runner leases) and steps.
//!
//! Every state change of a stage is one compare-and-set `UPDATE … WHERE id = $1 AND
//! status = …` whose `rows_affected` (or `RETURNING` row) says whether it applied: correct
//! on both engines without row locks. The one `SKIP LOCKED` (PostgreSQL's head of the
//! queue, in `lease_head_on`) is for speed, so that runners leasing at once do not all
//! aim at the same row; the compare-and-set still decides.

use std::collections::BTreeMap;

use slipway_engine::Status;
use sqlx::{Any, Executor};

use super::rows;
use super::{Backend, EndedStage, LeasedEnd, ReportWrite, Result, Stage, Step, StepUpdate, Store};

/// The columns of a stage row without its plan (`plan` reads as `null`): what the queue's
/// frequent reads need, at a fraction of the bytes.
macro_rules! state_columns {
    () => {
        "id, build_id, repo_id, number, name, status, depends_on, labels, 'null' AS plan, \
         attempt, runner_id, lease_expires, cancel_requested, error, created, started, finished"
    };
}

const STAGE_STATE: &str = concat!("SELECT ", state_columns!(), " FROM stages");

impl Store {
    // ---------------------------------------------------------------- stages

    /// A build's stages, by number.
    pub async fn stages(&self, build_id: i64) -> Result<Vec<Stage>> {
        let rows = sqlx::query("SELECT * FROM stages WHERE build_id = $1 ORDER BY number")
            .bind(build_id)
            .fetch_all(&mut *self.conn().await?)
            .await?;
        rows::all(&rows, rows::stage)
    }

    pub async fn stage(&self, id: i64) -> Result<Option<Stage>> {
        sqlx::query("SELECT * FROM stages WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *self.conn().await?)
            .await?
            .as_ref()
            .map(rows::stage)
            .transpose()
    }

    /// One stage *without its plan* (`plan` is `null`): what checking a lease needs, read
    /// for every batch a runner sends.
    pub async fn stage_state(&self, id: i64) -> Result<Option<Stage>> {
        sqlx::query(&format!("{STAGE_STATE} WHERE id = $1"))
            .bind(id)
            .fetch_optional(&mut *self.conn().await?)
            .await?
            .as_ref()
            .map(rows::stage)
            .transpose()
    }

    /// Of a build's stages: how many are not done, and how many of those are pending with
    /// a `depends_on` (waiting on other stages).
    pub async fn open_stage_counts(&self, build_id: i64) -> Result<(i64, i64)> {
        let row: (i64, i64) = sqlx::query_as(
            "SELECT \
               COALESCE(SUM(CASE WHEN status IN ('pending', 'running') THEN 1 ELSE 0 END), 0), \
               COALESCE(SUM(CASE WHEN status = 'pending' AND depends_on <> '[]' THEN 1 ELSE 0 END), 0) \
             FROM stages WHERE build_id = $1",
        )
        .bind(build_id)
        .fetch_one(&mut *self.conn().await?)
        .await?;
        Ok(row)
    }

    /// A build's stages by number, *without their plans* (`plan` is `null`): what deciding
    /// dependencies and the build's end needs, read after every stage that finishes.
    pub async fn stage_states(&self, build_id: i64) -> Result<Vec<Stage>> {
        let rows = sqlx::query(&format!(
            "{STAGE_STATE} WHERE build_id = $1 ORDER BY number"
        ))
        .bind(build_id)
        .fetch_all(&mut *self.conn().await?)
        .await?;
        rows::all(&rows, rows::stage)
    }

    /// Pending stages after id `after`, oldest (lowest id) first, at most `limit`, *without
    /// their plans*
    /// (`plan` is `null`): every poll reads this list and needs only the rest to choose;
    /// [`Store::lease_stage`] returns the chosen stage whole.
    pub async fn pending_stages(&self, after: i64, limit: i64) -> Result<Vec<Stage>> {
        let rows = sqlx::query(&format!(
            "{STAGE_STATE} WHERE status = 'pending' AND id > $2 ORDER BY id LIMIT $1"
        ))
        .bind(limit.max(0))
        .bind(after)
        .fetch_all(&mut *self.conn().await?)
        .await?;
        rows::all(&rows, rows::stage)
    }

    /// Running stages, oldest first.
    pub async fn running_stages(&self) -> Result<Vec<Stage>> {
        let rows = sqlx::query("SELECT * FROM stages WHERE status = 'running' ORDER BY id")
            .fetch_all(&mut *self.conn().await?)
            .await?;
        rows::all(&rows, rows::stage)
    }

    /// How many stages of a repository are running.
    pub async fn running_count(&self, repo_id: i64) -> Result<i64> {
        let count: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM stages WHERE repo_id = $1 AND status = 'running'",
        )
        .bind(repo_id)
        .fetch_one(&mut *self.conn().await?)
        .await?;
        Ok(count)
    }

    /// Leases a pending stage to a runner: pending → running, `attempt + 1`, the runner,
    /// the lease end, `started` if not yet set. The updated stage, or `None` when it was not
    /// pending (another runner won, or it was cancelled).
    pub async fn lease_stage(
        &self,
        stage_id: i64,
        runner_id: i64,
        lease_expires: i64,
        now: i64,
    ) -> Result<Option<Stage>> {
        sqlx::query(
            "UPDATE stages SET status = 'running', attempt = attempt + 1, runner_id = $2, \
             lease_expires = $3, started = COALESCE(started, $4) \
             WHERE id = $1 AND status = 'pending' RETURNING *",
        )
        .bind(stage_id)
        .bind(runner_id)
        .bind(lease_expires)
        .bind(now)
        .fetch_optional(&mut *self.conn().await?)
        .await?
        .as_ref()
        .map(rows::stage)
        .transpose()
    }

    /// Extends the lease of a running stage held by `runner_id` in `attempt`.
    /// `Some(cancel_requested)`, or `None` when the lease is lost (the stage is not running,
    /// or runs another attempt or on another runner).
    pub async fn renew_lease(
        &self,
        stage_id: i64,
        attempt: i64,
        runner_id: i64,
        lease_expires: i64,
    ) -> Result<Option<bool>> {
        let cancel: Option<i64> = sqlx::query_scalar(
            "UPDATE stages SET lease_expires = $4 \
             WHERE id = $1 AND status = 'running' AND attempt = $2 AND runner_id = $3 \
             RETURNING cancel_requested",
        )
        .bind(stage_id)
        .bind(attempt)
        .bind(runner_id)
        .bind(lease_expires)
        .fetch_optional(&mut *self.conn().await?)
        .await?;
        Ok(cancel.map(|c| c != 0))
    }

    /// Ends a stage with `status` (and `error` when given): `finished = now`, lease
    /// cleared, and its open steps closed as by [`Store::finish_open_steps`], in one
    /// transaction. With `Some(attempt)` only if it is running that attempt (a runner
    /// reporting); with `None` only if it is not done yet (pending or running: skipping or
    /// cancelling). Whether it applied; when not, nothing is written.
    pub async fn finish_stage(
        &self,
        stage_id: i64,
        attempt: Option<i64>,
        status: Status,
        error: Option<&str>,
        now: i64,
    ) -> Result<bool> {
        const SET: &str = "UPDATE stages SET status = $2, error = COALESCE($3, error), \
                           finished = $4, lease_expires = NULL WHERE id = $1";
        let sql = match attempt {
            Some(_) => format!("{SET} AND status = 'running' AND attempt = $5"),
            None => format!("{SET} AND status IN ('pending', 'running')"),
        };
        let mut query = sqlx::query(&sql)
            .bind(stage_id)
            .bind(status.as_str())
            .bind(error)
            .bind(now);
        if let Some(attempt) = attempt {
            query = query.bind(attempt);
        }
        let mut conn = self.conn().await?;
        let mut tx = self.begin(&mut conn).await?;
        if query.execute(&mut *tx).await?.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        sqlx::query(CLOSE_OPEN_STEPS)
            .bind(stage_id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Running stages whose lease ended before `now`.
    pub async fn expired_leases(&self, now: i64) -> Result<Vec<Stage>> {
        let rows = sqlx::query(
            "SELECT * FROM stages WHERE status = 'running' AND lease_expires < $1 ORDER BY id",
        )
        .bind(now)
        .fetch_all(&mut *self.conn().await?)
        .await?;
        rows::all(&rows, rows::stage)
    }

    /// Puts a running stage back in the queue if it still runs `attempt`: pending, no
    /// runner or lease, every step pending again without exit code, error or times. The
    /// attempt number stays, so the next lease is `attempt + 1`. Whether it applied.
    pub async fn requeue_stage(&self, stage_id: i64, attempt: i64, now: i64) -> Result<bool> {
        let mut conn = self.conn().await?;
        let mut tx = self.begin(&mut conn).await?;
        // Only a lease that is still expired (no heartbeat came in since it was read) of a
        // stage nobody cancelled meanwhile goes back to the queue.
        let done = sqlx::query(
            "UPDATE stages SET status = 'pending', runner_id = NULL, lease_expires = NULL \
             WHERE id = $1 AND status = 'running' AND attempt = $2 \
             AND cancel_requested = 0 AND lease_expires < $3",
        )
        .bind(stage_id)
        .bind(attempt)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if done != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        sqlx::query(
            "UPDATE steps SET status = 'pending', exit_code = NULL, error = NULL, \
             started = NULL, finished = NULL WHERE stage_id = $1",
        )
        .bind(stage_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Sets the lease of every running stage to `lease_expires` (at server start, so the
    /// runners get time to reconnect). How many.
    pub async fn extend_running_leases(&self, lease_expires: i64) -> Result<u64> {
        let done = sqlx::query("UPDATE stages SET lease_expires = $1 WHERE status = 'running'")
            .bind(lease_expires)
            .execute(&mut *self.conn().await?)
            .await?;
        Ok(done.rows_affected())
    }

    /// Flags every stage of a build that is not done as cancel-requested. How many.
    pub async fn request_cancel(&self, build_id: i64) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE stages SET cancel_requested = 1 \
             WHERE build_id = $1 AND status IN ('pending', 'running')",
        )
        .bind(build_id)
        .execute(&mut *self.conn().await?)
        .await?;
        Ok(done.rows_affected())
    }

    // ---------------------------------------------------------------- steps

    /// A stage's steps, by number.
    pub async fn steps(&self, stage_id: i64) -> Result<Vec<Step>> {
        let rows = sqlx::query("SELECT * FROM steps WHERE stage_id = $1 ORDER BY number")
            .bind(stage_id)
            .fetch_all(&mut *self.conn().await?)
            .await?;
        rows::all(&rows, rows::step)
    }

    /// Every step of a build, by stage number, then step number.
    pub async fn steps_of_build(&self, build_id: i64) -> Result<Vec<Step>> {
        let rows = sqlx::query(
            "SELECT steps.* FROM steps JOIN stages ON stages.id = steps.stage_id \
             WHERE stages.build_id = $1 ORDER BY stages.number, steps.number",
        )
        .bind(build_id)
        .fetch_all(&mut *self.conn().await?)
        .await?;
        rows::all(&rows, rows::step)
    }

    /// Updates the step `name` of a stage: the status always, the other fields when given.
    /// Whether such a step exists.
    pub async fn update_step(
        &self,
        stage_id: i64,
        name: &str,
        update: &StepUpdate,
    ) -> Result<bool> {
        update_step_on(&mut *self.conn().await?, stage_id, name, update).await
    }

    /// Applies a runner's `writes` about one stage of build `build_id`, in order, in one
    /// transaction: one commit however many there are.
    pub async fn write_report(
        &self,
        build_id: i64,
        stage_id: i64,
        writes: &[ReportWrite],
    ) -> Result<()> {
        match writes {
            [] => Ok(()),
            [one] => apply_write(&mut *self.conn().await?, build_id, stage_id, one).await,
            many => {
                let mut conn = self.conn().await?;
                let mut tx = self.begin(&mut conn).await?;
                for write in many {
                    apply_write(&mut *tx, build_id, stage_id, write).await?;
                }
                tx.commit().await?;
                Ok(())
            }
        }
    }

    /// Leases the oldest pending stage to `runner_id` when it is one the runner may take at
    /// once: no `depends_on`, no cancel asked for, of a repository without a concurrency
    /// limit, asking for no label the runner lacks (`runner_labels`). One statement instead
    /// of reading the queue, the repository and its running count, then leasing. The stage,
    /// whole; `None` when the queue is empty, its head is another kind of stage (the caller
    /// then looks through the queue with [`Store::pending_stages`], which keeps the
    /// oldest-first order), or another runner took the head first.
    pub async fn lease_head(
        &self,
        runner_id: i64,
        runner_labels: &BTreeMap<String, String>,
        lease_expires: i64,
        now: i64,
    ) -> Result<Option<Stage>> {
        lease_head_on(
            &mut *self.conn().await?,
            self.backend,
            runner_id,
            runner_labels,
            lease_expires,
            now,
        )
        .await
    }

    /// A runner's end of the stage it leased, in one transaction (one commit): if the stage
    /// is running `end.attempt` on `end.runner_id`, it ends with `end.status` (and
    /// `end.error`), the runner's last `end.writes` are applied, the steps it left open are
    /// closed as by [`Store::finish_open_steps`], and, when `end.next` asks for it, the head
    /// of the queue is leased to the same runner as by [`Store::lease_head`]. `None`, with
    /// nothing written, when the lease is not that.
    ///
    /// On SQLite the ends of several runners that arrive together share one commit (see
    /// `commit.rs`); each is answered after that commit.
    pub async fn end_leased_stage(&self, end: LeasedEnd) -> Result<Option<EndedStage>> {
        let end = match &self.ends {
            Some(ends) => match super::commit::send(ends, end).await {
                Ok(ended) => return ended,
                Err(end) => end,
            },
            None => end,
        };
        let mut conn = self.conn().await?;
        let mut tx = self.begin(&mut conn).await?;
        let ended = end_in(&mut tx, self.backend, &end).await?;
        tx.commit().await?;
        Ok(ended)
    }

    /// The log of a step stored with the report that ended it ([`ReportWrite::Log`]), its
    /// lines each ended by `\n`; `None` when that step's log is not stored here (it is a
    /// file of the log store, or there is none).
    pub async fn step_log(
        &self,
        stage_id: i64,
        attempt: i64,
        step: &str,
    ) -> Result<Option<String>> {
        let text = sqlx::query_scalar(
            "SELECT text FROM step_logs WHERE stage_id = $1 AND attempt = $2 AND step = $3",
        )
        .bind(stage_id)
        .bind(attempt)
        .bind(step)
        .fetch_optional(&mut *self.conn().await?)
        .await?;
        Ok(text)
    }

    /// Closes the steps a stage left open: pending → skipped, running → killed with
    /// `finished = now`.
    pub async fn finish_open_steps(&self, stage_id: i64, now: i64) -> Result<()> {
        sqlx::query(CLOSE_OPEN_STEPS)
            .bind(stage_id)
            .bind(now)
            .execute(&mut *self.conn().await?)
            .await?;
        Ok(())
    }
}

/// [`Store::end_leased_stage`] within the transaction `tx`. A refused end (the lease is
/// not that) writes nothing.
pub(super) async fn end_in(
    tx: &mut sqlx::AnyConnection,
    backend: Backend,
    end: &LeasedEnd,
) -> Result<Option<EndedStage>> {
    let ended = sqlx::query(concat!(
        "UPDATE stages SET status = $2, error = COALESCE($3, error), finished = $4, \
         lease_expires = NULL \
         WHERE id = $1 AND status = 'running' AND attempt = $5 AND runner_id = $6 \
         RETURNING ",
        state_columns!()
    ))
    .bind(end.stage_id)
    .bind(end.status.as_str())
    .bind(end.error.as_deref())
    .bind(end.now)
    .bind(end.attempt)
    .bind(end.runner_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(ended) = ended else {
        return Ok(None);
    };
    let stage = rows::stage(&ended)?;
    for write in &end.writes {
        apply_write(&mut *tx, stage.build_id, end.stage_id, write).await?;
    }
    let closed = sqlx::query(&format!("{CLOSE_OPEN_STEPS} RETURNING *"))
        .bind(end.stage_id)
        .bind(end.now)
        .fetch_all(&mut *tx)
        .await?;
    let closed = rows::all(&closed, rows::step)?;
    let next = match &end.next {
        Some(head) => {
            lease_head_on(
                &mut *tx,
                backend,
                end.runner_id,
                &head.labels,
                head.lease_expires,
                end.now,
            )
            .await?
        }
        None => None,
    };
    Ok(Some(EndedStage {
        stage,
        closed,
        next,
    }))
}

/// A runner with at most this many labels gets the head of the queue in one statement
/// ([`Store::lease_head`] matches a stage's labels against every subset of the runner's);
/// one with more is served by the full look through the queue.
const HEAD_MAX_LABELS: usize = 8;

/// The head of the queue leased to `runner_id` if it is a stage the runner may take at once
/// (see [`Store::lease_head`]). The head is chosen and leased in one statement, so on
/// SQLite, where writes take turns, two runners never race for it. On PostgreSQL the head
/// is the oldest pending stage no other transaction is leasing (`SKIP LOCKED`), so runners
/// leasing at once each get their own.
///
/// A stage's labels are stored as the JSON text of a sorted map, so "asks for no label the
/// runner lacks" is "its labels text is that of a subset of the runner's labels".
async fn lease_head_on<'e, E: Executor<'e, Database = Any>>(
    executor: E,
    backend: Backend,
    runner_id: i64,
    labels: &BTreeMap<String, String>,
    lease_expires: i64,
    now: i64,
) -> Result<Option<Stage>> {
    if labels.len() > HEAD_MAX_LABELS {
        return Ok(None);
    }
    let subsets = label_subsets(labels)?;
    let placeholders: Vec<String> = (0..subsets.len()).map(|i| format!("${}", i + 4)).collect();
    let lock = match backend {
        Backend::Sqlite => "",
        Backend::Postgres => " FOR UPDATE SKIP LOCKED",
    };
    let sql = format!(
        "UPDATE stages SET status = 'running', attempt = attempt + 1, runner_id = $1, \
         lease_expires = $2, started = COALESCE(started, $3) \
         WHERE id = (SELECT id FROM stages WHERE status = 'pending' ORDER BY id LIMIT 1{lock}) \
         AND status = 'pending' AND depends_on = '[]' AND cancel_requested = 0 \
         AND repo_id IN (SELECT id FROM repos WHERE max_running = 0) \
         AND labels IN ({}) RETURNING *",
        placeholders.join(", ")
    );
    let mut query = sqlx::query(&sql)
        .bind(runner_id)
        .bind(lease_expires)
        .bind(now);
    for subset in subsets {
        query = query.bind(subset);
    }
    query
        .fetch_optional(executor)
        .await?
        .as_ref()
        .map(rows::stage)
        .transpose()
}

/// The labels text (as stored) of every subset of `labels`, the empty one included.
fn label_subsets(labels: &BTreeMap<String, String>) -> Result<Vec<String>> {
    let entries: Vec<(&String, &String)> = labels.iter().collect();
    (0..1u32 << entries.len())
        .map(|mask| {
            let subset: BTreeMap<&String, &String> = entries
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, (k, v))| (*k, *v))
                .collect();
            rows::json_text(&subset, "runner labels")
        })
        .collect()
}

/// `$1` stage id, `$2` now: pending steps → skipped, running ones → killed at `now`.
const CLOSE_OPEN_STEPS: &str = "UPDATE steps SET \
     finished = CASE WHEN status = 'running' THEN $2 ELSE finished END, \
     status = CASE WHEN status = 'running' THEN 'killed' ELSE 'skipped' END \
     WHERE stage_id = $1 AND status IN ('pending', 'running')";

async fn update_step_on<'e, E: Executor<'e, Database = Any>>(
    executor: E,
    stage_id: i64,
    name: &str,
    update: &StepUpdate,
) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE steps SET status = $3, exit_code = COALESCE($4, exit_code), \
         error = COALESCE($5, error), started = COALESCE($6, started), \
         finished = COALESCE($7, finished) WHERE stage_id = $1 AND name = $2",
    )
    .bind(stage_id)
    .bind(name)
    .bind(update.status.as_str())
    .bind(update.exit_code)
    .bind(&update.error)
    .bind(update.started)
    .bind(update.finished)
    .execute(executor)
    .await?;
    Ok(done.rows_affected() > 0)
}

async fn apply_write<'e, E: Executor<'e, Database = Any>>(
    executor: E,
    build_id: i64,
    stage_id: i64,
    write: &ReportWrite,
) -> Result<()> {
    match write {
        ReportWrite::Step { name, update } => {
            update_step_on(executor, stage_id, name, update).await?;
        }
        ReportWrite::Artifact { image, digest, now } => {
            super::misc::add_artifact_on(executor, build_id, image, digest, *now).await?;
        }
        ReportWrite::Log {
            step,
            attempt,
            text,
        } => {
            sqlx::query(
                "INSERT INTO step_logs (stage_id, attempt, step, text) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (stage_id, attempt, step) DO NOTHING",
            )
            .bind(stage_id)
            .bind(attempt)
            .bind(step)
            .bind(text)
            .execute(executor)
            .await?;
        }
    }
    Ok(())
}
