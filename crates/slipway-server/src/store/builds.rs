//! Repositories and builds (with the creation of a build's stages and steps).

use slipway_engine::Status;

use super::rows::{self, flag, json_text, now_ms};
use super::{
    Build, CompiledBuild, NewBuild, NewRepo, Repo, RepoCache, Result, Stage, Store, StoreError,
};

impl Store {
    // ---------------------------------------------------------------- repositories

    /// Adds a repository. [`StoreError::Conflict`] when the name is taken.
    pub async fn create_repo(&self, new: &NewRepo) -> Result<Repo> {
        let row = sqlx::query(
            "INSERT INTO repos (name, provider, clone_url, config_path, webhook_secret, \
             default_branch, trusted, auto_cancel, max_running, status_url, status_token, \
             build_counter, created) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 0, $12) RETURNING *",
        )
        .bind(&new.name)
        .bind(&new.provider)
        .bind(&new.clone_url)
        .bind(&new.config_path)
        .bind(&new.webhook_secret)
        .bind(&new.default_branch)
        .bind(flag(new.trusted))
        .bind(flag(new.auto_cancel))
        .bind(new.max_running)
        .bind(&new.status_url)
        .bind(&new.status_token)
        .bind(now_ms())
        .fetch_one(&mut *self.conn().await?)
        .await
        .map_err(|e| {
            if rows::is_unique_violation(&e) {
                StoreError::Conflict {
                    what: "repository",
                    name: new.name.clone(),
                }
            } else {
                e.into()
            }
        })?;
        rows::repo(&row)
    }

    pub async fn repo(&self, id: i64) -> Result<Option<Repo>> {
        let updates = match self.cached_repos() {
            Some(cache) => match cache.rows.get(&id) {
                Some(repo) => return Ok(Some(repo.clone())),
                None => Some(cache.updates),
            },
            None => None,
        };
        let repo = sqlx::query("SELECT * FROM repos WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *self.conn().await?)
            .await?
            .as_ref()
            .map(rows::repo)
            .transpose()?;
        if let (Some(repo), Some(mut cache)) = (&repo, self.cached_repos())
            && Some(cache.updates) == updates
        {
            cache.rows.insert(id, repo.clone());
        }
        Ok(repo)
    }

    fn cached_repos(&self) -> Option<std::sync::MutexGuard<'_, RepoCache>> {
        let cache = self.repos.as_ref()?;
        Some(cache.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub async fn repo_by_name(&self, name: &str) -> Result<Option<Repo>> {
        sqlx::query("SELECT * FROM repos WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *self.conn().await?)
            .await?
            .as_ref()
            .map(rows::repo)
            .transpose()
    }

    /// Every repository, by name.
    pub async fn repos(&self) -> Result<Vec<Repo>> {
        let rows = sqlx::query("SELECT * FROM repos ORDER BY name")
            .fetch_all(&mut *self.conn().await?)
            .await?;
        rows::all(&rows, rows::repo)
    }

    /// Writes every field of `repo` but `id`, `name` and `created`.
    pub async fn update_repo(&self, repo: &Repo) -> Result<()> {
        sqlx::query(
            "UPDATE repos SET provider = $2, clone_url = $3, config_path = $4, \
             webhook_secret = $5, default_branch = $6, trusted = $7, auto_cancel = $8, \
             max_running = $9, status_url = $10, status_token = $11, registry_paths = $12 \
             WHERE id = $1",
        )
        .bind(repo.id)
        .bind(&repo.provider)
        .bind(&repo.clone_url)
        .bind(&repo.config_path)
        .bind(&repo.webhook_secret)
        .bind(&repo.default_branch)
        .bind(flag(repo.trusted))
        .bind(flag(repo.auto_cancel))
        .bind(repo.max_running)
        .bind(&repo.status_url)
        .bind(&repo.status_token)
        .bind(repo.registry_paths.join("\n"))
        .execute(&mut *self.conn().await?)
        .await?;
        if let Some(mut cache) = self.cached_repos() {
            cache.updates += 1;
            cache.rows.remove(&repo.id);
        }
        Ok(())
    }

    // ---------------------------------------------------------------- builds

    /// The id of the build a delivery created, if it was recorded for this repository.
    pub async fn delivery_build(&self, repo_id: i64, delivery_id: &str) -> Result<Option<i64>> {
        let id: Option<i64> =
            sqlx::query_scalar("SELECT id FROM builds WHERE repo_id = $1 AND delivery_id = $2")
                .bind(repo_id)
                .bind(delivery_id)
                .fetch_optional(&mut *self.conn().await?)
                .await?;
        Ok(id)
    }

    /// The id of the build that the webhook body with this SHA-256 created within the
    /// replay window, if any.
    pub async fn body_build(&self, repo_id: i64, digest: &str) -> Result<Option<i64>> {
        let mut conn = self.conn().await?;
        Self::body_build_in(&mut conn, repo_id, digest).await
    }

    async fn body_build_in(
        conn: &mut sqlx::AnyConnection,
        repo_id: i64,
        digest: &str,
    ) -> Result<Option<i64>> {
        let id: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM builds WHERE repo_id = $1 AND body_digest = $2 AND created > $3 \
             ORDER BY id LIMIT 1",
        )
        .bind(repo_id)
        .bind(digest)
        .bind(now_ms() - super::REPLAY_WINDOW_MS)
        .fetch_optional(&mut *conn)
        .await?;
        Ok(id)
    }

    /// Creates a build whole, in one transaction: takes the repository's next number,
    /// calls `compile(number)` for the status, context and stages, and inserts the build,
    /// its stages (numbered 1.. in the given order) and their steps (pending, numbered 1..).
    ///
    /// A delivery id already recorded for the repository is
    /// [`StoreError::DuplicateDelivery`] and changes nothing (`compile` is not called), and
    /// so is a body digest built within the replay window ([`StoreError::ReplayedBody`]); a
    /// missing repository is `Database(RowNotFound)`. On any error nothing is left behind
    /// and the number is not used up.
    ///
    /// A build or stage created with a done status (`Error`, `Skipped`) gets `finished`
    /// set to its creation time.
    pub async fn create_build<F>(&self, new: &NewBuild, compile: F) -> Result<(Build, Vec<Stage>)>
    where
        F: FnOnce(i64) -> CompiledBuild + Send,
    {
        let mut conn = self.conn().await?;
        let mut tx = self.begin(&mut conn).await?;
        // Write first: on PostgreSQL this locks the repository row until commit, so
        // concurrent creates for one repository queue here (and then see each other's
        // delivery ids); on SQLite the transaction already holds the write lock.
        let number: Option<i64> = sqlx::query_scalar(
            "UPDATE repos SET build_counter = build_counter + 1 WHERE id = $1 \
             RETURNING build_counter",
        )
        .bind(new.repo_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(number) = number else {
            return Err(sqlx::Error::RowNotFound.into());
        };
        if let Some(delivery_id) = &new.delivery_id {
            let existing: Option<i64> =
                sqlx::query_scalar("SELECT id FROM builds WHERE repo_id = $1 AND delivery_id = $2")
                    .bind(new.repo_id)
                    .bind(delivery_id)
                    .fetch_optional(&mut *tx)
                    .await?;
            if let Some(build_id) = existing {
                tx.rollback().await?;
                return Err(StoreError::DuplicateDelivery {
                    delivery_id: delivery_id.clone(),
                    build_id,
                });
            }
        }

        if let Some(digest) = &new.body_digest
            && let Some(build_id) = Self::body_build_in(&mut tx, new.repo_id, digest).await?
        {
            tx.rollback().await?;
            return Err(StoreError::ReplayedBody { build_id });
        }

        let compiled = compile(number);
        let now = now_ms();
        let done_at = |status: Status| status.is_done().then_some(now);
        let inserted = sqlx::query(
            "INSERT INTO builds (repo_id, number, status, event, reference, branch, commit_sha, \
             message, author, build_trigger, deploy_to, delivery_id, context, error, created, \
             started, finished, body_digest) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, NULL, $16, \
             $17) RETURNING *",
        )
        .bind(new.repo_id)
        .bind(number)
        .bind(compiled.status.as_str())
        .bind(&new.event)
        .bind(&new.reference)
        .bind(&new.branch)
        .bind(&new.commit)
        .bind(&new.message)
        .bind(&new.author)
        .bind(&new.trigger)
        .bind(&new.deploy_to)
        .bind(&new.delivery_id)
        .bind(json_text(&compiled.context, "build context")?)
        .bind(&compiled.error)
        .bind(now)
        .bind(done_at(compiled.status))
        .bind(&new.body_digest)
        .fetch_one(&mut *tx)
        .await;
        let build_row = match inserted {
            Ok(row) => row,
            Err(e) if rows::is_unique_violation(&e) => {
                // Only reachable if the row lock above did not serialize us (it does on
                // both engines); answer as for a duplicate all the same.
                drop(tx);
                if let Some(delivery_id) = &new.delivery_id
                    && let Some(build_id) = self.delivery_build(new.repo_id, delivery_id).await?
                {
                    return Err(StoreError::DuplicateDelivery {
                        delivery_id: delivery_id.clone(),
                        build_id,
                    });
                }
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        };
        let build = rows::build(&build_row)?;

        // Many rows a statement: a build of a hundred pipelines takes a few statements, not
        // a few hundred, while it holds the write lock every stage end waits for.
        let mut stages = Vec::with_capacity(compiled.stages.len());
        for (chunk_index, chunk) in compiled.stages.chunks(ROWS_A_STATEMENT).enumerate() {
            let sql = format!(
                "INSERT INTO stages (build_id, repo_id, number, name, status, depends_on, labels, \
                 plan, created, finished, attempt, runner_id, lease_expires, cancel_requested, \
                 error, started) VALUES {} RETURNING *",
                values(chunk.len(), 10, ", 0, NULL, NULL, 0, NULL, NULL")
            );
            // A whole chunk's statement is prepared once; a shorter one's text is seldom
            // seen again and would crowd the connection's statement cache.
            let mut query = sqlx::query(&sql).persistent(chunk.len() == ROWS_A_STATEMENT);
            for (offset, stage) in chunk.iter().enumerate() {
                query = query
                    .bind(build.id)
                    .bind(new.repo_id)
                    .bind(position(chunk_index * ROWS_A_STATEMENT + offset))
                    .bind(&stage.name)
                    .bind(stage.status.as_str())
                    .bind(json_text(&stage.depends_on, "stage depends_on")?)
                    .bind(json_text(&stage.labels, "stage labels")?)
                    .bind(json_text(&stage.plan, "stage plan")?)
                    .bind(now)
                    .bind(done_at(stage.status));
            }
            let mut stored = rows::all(&query.fetch_all(&mut *tx).await?, rows::stage)?;
            // RETURNING gives no order.
            stored.sort_by_key(|stage| stage.number);
            stages.extend(stored);
        }
        let steps: Vec<(i64, i64, &String)> = stages
            .iter()
            .zip(&compiled.stages)
            .flat_map(|(stored, stage)| {
                (stage.steps.iter().enumerate())
                    .map(move |(index, name)| (stored.id, position(index), name))
            })
            .collect();
        for chunk in steps.chunks(ROWS_A_STATEMENT) {
            let sql = format!(
                "INSERT INTO steps (stage_id, number, name, status) VALUES {}",
                values(chunk.len(), 3, ", 'pending'")
            );
            let mut query = sqlx::query(&sql).persistent(chunk.len() == ROWS_A_STATEMENT);
            for (stage_id, number, name) in chunk {
                query = query.bind(*stage_id).bind(*number).bind(*name);
            }
            query.execute(&mut *tx).await?;
        }
        // A build that is over as it is created (a pipeline file that does not parse) is
        // owed its notification like one a stage end finished.
        if build.status.is_done() {
            sqlx::query("INSERT INTO notify_outbox (build_id, created) VALUES ($1, $2)")
                .bind(build.id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok((build, stages))
    }

    pub async fn build(&self, id: i64) -> Result<Option<Build>> {
        sqlx::query("SELECT * FROM builds WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *self.conn().await?)
            .await?
            .as_ref()
            .map(rows::build)
            .transpose()
    }

    pub async fn build_by_number(&self, repo_id: i64, number: i64) -> Result<Option<Build>> {
        sqlx::query("SELECT * FROM builds WHERE repo_id = $1 AND number = $2")
            .bind(repo_id)
            .bind(number)
            .fetch_optional(&mut *self.conn().await?)
            .await?
            .as_ref()
            .map(rows::build)
            .transpose()
    }

    /// A repository's builds, newest (highest number) first, at most `limit`, only those
    /// numbered below `before_number` when given (the next page).
    pub async fn builds(
        &self,
        repo_id: i64,
        limit: i64,
        before_number: Option<i64>,
    ) -> Result<Vec<Build>> {
        let rows = sqlx::query(
            "SELECT * FROM builds WHERE repo_id = $1 AND number < $2 \
             ORDER BY number DESC LIMIT $3",
        )
        .bind(repo_id)
        .bind(before_number.unwrap_or(i64::MAX))
        .bind(limit.max(0))
        .fetch_all(&mut *self.conn().await?)
        .await?;
        rows::all(&rows, rows::build)
    }

    /// Pending builds of a branch and event numbered below `below_number`, oldest first
    /// (what a newer push auto-cancels).
    pub async fn pending_builds_on_branch(
        &self,
        repo_id: i64,
        branch: &str,
        event: &str,
        below_number: i64,
    ) -> Result<Vec<Build>> {
        let rows = sqlx::query(
            "SELECT * FROM builds WHERE repo_id = $1 AND branch = $2 AND event = $3 \
             AND number < $4 AND status = 'pending' ORDER BY number",
        )
        .bind(repo_id)
        .bind(branch)
        .bind(event)
        .bind(below_number)
        .fetch_all(&mut *self.conn().await?)
        .await?;
        rows::all(&rows, rows::build)
    }

    /// `pending` → `running` (with `started`), only if the build is still pending: a build
    /// cancelled meanwhile stays finished. Whether it changed.
    pub async fn start_build(&self, id: i64, now: i64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE builds SET status = 'running', started = COALESCE(started, $2) \
             WHERE id = $1 AND status = 'pending'",
        )
        .bind(id)
        .bind(now)
        .execute(&mut *self.conn().await?)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Sets a final status, only if the build is not finished yet, so two settles at once
    /// finish it once, and records in the same transaction what the notifications owe it
    /// (a `notify_outbox` row, see [`super::notify`]) and, for a success, the environment
    /// rules (a `deploy_outbox` row, see [`super::deploy`]). Whether it changed.
    pub async fn finish_build(&self, id: i64, status: Status, now: i64) -> Result<bool> {
        let mut conn = self.conn().await?;
        let mut tx = self.begin(&mut conn).await?;
        let done = sqlx::query(
            "UPDATE builds SET status = $2, finished = $3 \
             WHERE id = $1 AND status IN ('pending', 'running')",
        )
        .bind(id)
        .bind(status.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        sqlx::query("INSERT INTO notify_outbox (build_id, created) VALUES ($1, $2)")
            .bind(id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        // What the environment rules owe a successful build (see `super::deploy`).
        if status == Status::Success {
            sqlx::query("INSERT INTO deploy_outbox (build_id, created) VALUES ($1, $2)")
                .bind(id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// The newest builds of all repositories (highest id first), with the repository name.
    pub async fn recent_builds(&self, limit: i64) -> Result<Vec<(Build, String)>> {
        let rows = sqlx::query(
            "SELECT builds.*, repos.name AS repo_name FROM builds \
             JOIN repos ON repos.id = builds.repo_id ORDER BY builds.id DESC LIMIT $1",
        )
        .bind(limit.max(0))
        .fetch_all(&mut *self.conn().await?)
        .await?;
        rows.iter()
            .map(|row| {
                use sqlx::Row;
                Ok((rows::build(row)?, row.try_get::<String, _>("repo_name")?))
            })
            .collect()
    }
}

/// 1-based position of the `index`th element.
fn position(index: usize) -> i64 {
    i64::try_from(index).map_or(i64::MAX, |i| i + 1)
}

/// Rows one multi-row `INSERT` writes: far below both engines' limits on parameters.
const ROWS_A_STATEMENT: usize = 100;

/// `($1, …, $n)<fixed>), (…)` for `rows` rows of `params` parameters each, numbered on.
fn values(rows: usize, params: usize, fixed: &str) -> String {
    (0..rows)
        .map(|row| {
            let numbers: Vec<String> = (1..=params)
                .map(|i| format!("${}", row * params + i))
                .collect();
            format!("({}{fixed})", numbers.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}
