//! Environments, their secrets, stacks, revisions and the steps of their rollouts.
//!
//! Invariants:
//! - **Revision numbers** are per stack, from 1, without gaps: the next number is taken in
//!   the transaction that inserts the revision.
//! - **A revision's state change and its notification are one write**: starting and
//!   finishing a revision insert the deployment's `notify_outbox` row in the same
//!   transaction (see [`super::notify`]), so a crash cannot lose a `deploy.*` event or send
//!   one for a change that was not recorded.
//! - A stack's `current` revision only moves to a revision that succeeded.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::notify::DeployNotice;
use super::rows::{self, json_text};
use super::{Result, Store, StoreError};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EnvRow {
    pub id: i64,
    pub name: String,
    pub domain: Option<String>,
    pub vars: BTreeMap<String, String>,
    pub created: i64,
}

/// An environment's secret; the value is sealed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EnvSecretRow {
    pub name: String,
    #[serde(skip)]
    pub ciphertext: String,
    pub created: i64,
    pub updated: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StackRow {
    pub id: i64,
    pub env_id: i64,
    /// The environment's name.
    pub env: String,
    pub name: String,
    /// The revision serving now (the last that succeeded).
    pub current: Option<i64>,
    #[serde(skip)]
    pub webhook_hash: Option<String>,
    pub created: i64,
}

/// A revision to record.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRevision {
    pub compose: String,
    pub rancher: Option<String>,
    pub vars: BTreeMap<String, String>,
    /// Service → `image@digest`.
    pub images: BTreeMap<String, String>,
    /// Service → the image as referenced (a tag), for a redeploy to resolve again.
    pub refs: BTreeMap<String, String>,
    /// `user:NAME`, `build:REPO#N`, `rule:ENV`, `webhook`, `rollback:N`.
    pub cause: String,
    pub build_id: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RevisionRow {
    pub id: i64,
    pub stack_id: i64,
    pub number: i64,
    pub compose: String,
    pub rancher: Option<String>,
    pub vars: BTreeMap<String, String>,
    pub images: BTreeMap<String, String>,
    pub refs: BTreeMap<String, String>,
    pub cause: String,
    pub build_id: Option<i64>,
    /// `pending`, `rolling`, `paused`, `succeeded`, `failed`, `rolled_back`.
    pub status: String,
    pub message: Option<String>,
    pub created: i64,
    pub finished: Option<i64>,
}

/// An environment rule: each successful build of `repo`'s `branch` deploys `stack`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EnvRuleRow {
    pub id: i64,
    pub env_id: i64,
    pub repo: String,
    pub branch: String,
    pub stack: String,
    /// The stack file's path in the repository; `None`: `compose.yaml`, `compose.yml`,
    /// `docker-compose.yaml`, `docker-compose.yml`.
    pub file: Option<String>,
    /// A tag glob: the rule deploys pushes of matching tags of the registry repository
    /// `repo` (and `branch` is empty).
    pub image_tag: Option<String>,
    pub created: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepRow {
    pub at: i64,
    pub kind: String,
    pub detail: serde_json::Value,
}

/// A revision a build triggered, for the build's page.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BuildDeploy {
    pub env: String,
    pub stack: String,
    pub number: i64,
    pub status: String,
    pub created: i64,
}

/// The statuses a revision ends in.
pub const FINAL_STATUSES: [&str; 3] = ["succeeded", "failed", "rolled_back"];

fn env(row: &AnyRow) -> Result<EnvRow> {
    Ok(EnvRow {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        domain: row.try_get("domain")?,
        vars: rows::json(row, "environments", "vars")?,
        created: row.try_get("created")?,
    })
}

fn env_rule(row: &AnyRow) -> Result<EnvRuleRow> {
    Ok(EnvRuleRow {
        id: row.try_get("id")?,
        env_id: row.try_get("env_id")?,
        repo: row.try_get("repo")?,
        branch: row.try_get("branch")?,
        stack: row.try_get("stack")?,
        file: row.try_get("file")?,
        image_tag: row.try_get("image_tag")?,
        created: row.try_get("created")?,
    })
}

fn stack(row: &AnyRow) -> Result<StackRow> {
    Ok(StackRow {
        id: row.try_get("id")?,
        env_id: row.try_get("env_id")?,
        env: row.try_get("env")?,
        name: row.try_get("name")?,
        current: row.try_get("current")?,
        webhook_hash: row.try_get("webhook_hash")?,
        created: row.try_get("created")?,
    })
}

fn revision(row: &AnyRow) -> Result<RevisionRow> {
    Ok(RevisionRow {
        id: row.try_get("id")?,
        stack_id: row.try_get("stack_id")?,
        number: row.try_get("number")?,
        compose: row.try_get("compose")?,
        rancher: row.try_get("rancher")?,
        vars: rows::json(row, "revisions", "vars")?,
        images: rows::json(row, "revisions", "images")?,
        refs: rows::json(row, "revisions", "refs")?,
        cause: row.try_get("cause")?,
        build_id: row.try_get("build_id")?,
        status: row.try_get("status")?,
        message: row.try_get("message")?,
        created: row.try_get("created")?,
        finished: row.try_get("finished")?,
    })
}

const STACK_SELECT: &str = "SELECT stacks.*, environments.name AS env FROM stacks \
     JOIN environments ON environments.id = stacks.env_id";

impl Store {
    // ---------------------------------------------------------------- environments

    /// Adds an environment. [`StoreError::Conflict`] when the name is taken.
    pub async fn add_env(
        &self,
        name: &str,
        domain: Option<&str>,
        vars: &BTreeMap<String, String>,
    ) -> Result<EnvRow> {
        let row = sqlx::query(
            "INSERT INTO environments (name, domain, vars, created) VALUES ($1, $2, $3, $4) \
             RETURNING *",
        )
        .bind(name)
        .bind(domain)
        .bind(json_text(vars, "environment vars")?)
        .bind(rows::now_ms())
        .fetch_one(&mut *self.conn().await?)
        .await
        .map_err(|e| {
            if rows::is_unique_violation(&e) {
                StoreError::Conflict {
                    what: "environment",
                    name: name.to_owned(),
                }
            } else {
                e.into()
            }
        })?;
        env(&row)
    }

    pub async fn envs(&self) -> Result<Vec<EnvRow>> {
        let rows = sqlx::query("SELECT * FROM environments ORDER BY name")
            .fetch_all(&mut *self.conn().await?)
            .await?;
        rows::all(&rows, env)
    }

    pub async fn env_by_name(&self, name: &str) -> Result<Option<EnvRow>> {
        let row = sqlx::query("SELECT * FROM environments WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *self.conn().await?)
            .await?;
        row.as_ref().map(env).transpose()
    }

    /// Deletes an environment and its secrets; refused ([`StoreError::Conflict`]) while it
    /// has stacks. Whether there was one.
    pub async fn delete_env(&self, id: i64, name: &str) -> Result<bool> {
        let mut conn = self.conn().await?;
        let mut tx = self.begin(&mut conn).await?;
        let stacks: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM stacks WHERE env_id = $1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        if stacks > 0 {
            tx.rollback().await?;
            return Err(StoreError::Conflict {
                what: "environment with stacks (remove them first)",
                name: name.to_owned(),
            });
        }
        for table in ["env_secrets", "env_rules"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE env_id = $1"))
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        let done = sqlx::query("DELETE FROM environments WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }

    /// Adds or replaces an environment's secret (sealed by the caller).
    pub async fn put_env_secret(&self, env_id: i64, name: &str, ciphertext: &str) -> Result<()> {
        let now = rows::now_ms();
        sqlx::query(
            "INSERT INTO env_secrets (env_id, name, ciphertext, created, updated) \
             VALUES ($1, $2, $3, $4, $4) ON CONFLICT (env_id, name) DO UPDATE SET \
             ciphertext = excluded.ciphertext, updated = excluded.updated",
        )
        .bind(env_id)
        .bind(name)
        .bind(ciphertext)
        .bind(now)
        .execute(&mut *self.conn().await?)
        .await?;
        Ok(())
    }

    pub async fn env_secrets(&self, env_id: i64) -> Result<Vec<EnvSecretRow>> {
        let rows = sqlx::query("SELECT * FROM env_secrets WHERE env_id = $1 ORDER BY name")
            .bind(env_id)
            .fetch_all(&mut *self.conn().await?)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(EnvSecretRow {
                    name: r.try_get("name")?,
                    ciphertext: r.try_get("ciphertext")?,
                    created: r.try_get("created")?,
                    updated: r.try_get("updated")?,
                })
            })
            .collect()
    }

    pub async fn delete_env_secret(&self, env_id: i64, name: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM env_secrets WHERE env_id = $1 AND name = $2")
            .bind(env_id)
            .bind(name)
            .execute(&mut *self.conn().await?)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    // ---------------------------------------------------------------- rules

    pub async fn add_env_rule(&self, env_id: i64, rule: &EnvRuleRow) -> Result<EnvRuleRow> {
        let row = sqlx::query(
            "INSERT INTO env_rules (env_id, repo, branch, stack, file, image_tag, created) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING *",
        )
        .bind(env_id)
        .bind(&rule.repo)
        .bind(&rule.branch)
        .bind(&rule.stack)
        .bind(&rule.file)
        .bind(&rule.image_tag)
        .bind(rows::now_ms())
        .fetch_one(&mut *self.conn().await?)
        .await?;
        env_rule(&row)
    }

    /// Every rule (of one environment), oldest first.
    pub async fn env_rules(&self, env_id: Option<i64>) -> Result<Vec<EnvRuleRow>> {
        let rows = match env_id {
            Some(id) => {
                sqlx::query("SELECT * FROM env_rules WHERE env_id = $1 ORDER BY id")
                    .bind(id)
                    .fetch_all(&mut *self.conn().await?)
                    .await?
            }
            None => {
                sqlx::query("SELECT * FROM env_rules ORDER BY id")
                    .fetch_all(&mut *self.conn().await?)
                    .await?
            }
        };
        rows::all(&rows, env_rule)
    }

    pub async fn delete_env_rule(&self, env_id: i64, id: i64) -> Result<bool> {
        let done = sqlx::query("DELETE FROM env_rules WHERE env_id = $1 AND id = $2")
            .bind(env_id)
            .bind(id)
            .execute(&mut *self.conn().await?)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Successful builds the rules have not looked at yet: `(outbox id, build id)`.
    pub async fn deploy_outbox(&self, limit: i64) -> Result<Vec<(i64, i64)>> {
        let rows = sqlx::query("SELECT id, build_id FROM deploy_outbox ORDER BY id LIMIT $1")
            .bind(limit)
            .fetch_all(&mut *self.conn().await?)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("id")?, r.try_get("build_id")?)))
            .collect()
    }

    pub async fn done_deploy_outbox(&self, id: i64) -> Result<()> {
        sqlx::query("DELETE FROM deploy_outbox WHERE id = $1")
            .bind(id)
            .execute(&mut *self.conn().await?)
            .await?;
        Ok(())
    }

    /// Whether a revision of the stack was made for this build already (a rule applied
    /// twice after a crash deploys once).
    pub async fn stack_has_build(&self, stack_id: i64, build_id: i64) -> Result<bool> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM revisions WHERE stack_id = $1 AND build_id = $2",
        )
        .bind(stack_id)
        .bind(build_id)
        .fetch_one(&mut *self.conn().await?)
        .await?;
        Ok(n > 0)
    }

    // ---------------------------------------------------------------- stacks

    /// The stack `name` of an environment, created when new.
    pub async fn ensure_stack(&self, env_id: i64, name: &str) -> Result<StackRow> {
        sqlx::query(
            "INSERT INTO stacks (env_id, name, created) VALUES ($1, $2, $3) \
             ON CONFLICT (env_id, name) DO NOTHING",
        )
        .bind(env_id)
        .bind(name)
        .bind(rows::now_ms())
        .execute(&mut *self.conn().await?)
        .await?;
        self.stack(env_id, name)
            .await?
            .ok_or_else(|| sqlx::Error::RowNotFound.into())
    }

    pub async fn stack(&self, env_id: i64, name: &str) -> Result<Option<StackRow>> {
        let row = sqlx::query(&format!(
            "{STACK_SELECT} WHERE stacks.env_id = $1 AND stacks.name = $2"
        ))
        .bind(env_id)
        .bind(name)
        .fetch_optional(&mut *self.conn().await?)
        .await?;
        row.as_ref().map(stack).transpose()
    }

    /// Every stack (of one environment), by environment and name.
    pub async fn stacks(&self, env_id: Option<i64>) -> Result<Vec<StackRow>> {
        let rows = match env_id {
            Some(id) => {
                sqlx::query(&format!(
                    "{STACK_SELECT} WHERE stacks.env_id = $1 ORDER BY stacks.name"
                ))
                .bind(id)
                .fetch_all(&mut *self.conn().await?)
                .await?
            }
            None => {
                sqlx::query(&format!(
                    "{STACK_SELECT} ORDER BY environments.name, stacks.name"
                ))
                .fetch_all(&mut *self.conn().await?)
                .await?
            }
        };
        rows::all(&rows, stack)
    }

    /// Sets (or clears) the hash of a stack's redeploy webhook token.
    pub async fn set_stack_webhook(&self, stack_id: i64, hash: Option<&str>) -> Result<()> {
        sqlx::query("UPDATE stacks SET webhook_hash = $2 WHERE id = $1")
            .bind(stack_id)
            .bind(hash)
            .execute(&mut *self.conn().await?)
            .await?;
        Ok(())
    }

    /// Deletes a stack with its revisions and their steps.
    pub async fn delete_stack(&self, stack_id: i64) -> Result<bool> {
        let mut conn = self.conn().await?;
        let mut tx = self.begin(&mut conn).await?;
        sqlx::query(
            "DELETE FROM rollout_steps WHERE revision_id IN \
             (SELECT id FROM revisions WHERE stack_id = $1)",
        )
        .bind(stack_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM revisions WHERE stack_id = $1")
            .bind(stack_id)
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query("DELETE FROM stacks WHERE id = $1")
            .bind(stack_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }

    // ---------------------------------------------------------------- revisions

    /// Records the stack's next revision, `pending`.
    pub async fn new_revision(&self, stack_id: i64, new: &NewRevision) -> Result<RevisionRow> {
        let mut conn = self.conn().await?;
        let mut tx = self.begin(&mut conn).await?;
        // Writing the stack row first locks it on PostgreSQL until commit, so two deploys
        // of one stack take numbers in turn.
        sqlx::query("UPDATE stacks SET created = created WHERE id = $1")
            .bind(stack_id)
            .execute(&mut *tx)
            .await?;
        let last: Option<i64> =
            sqlx::query_scalar("SELECT MAX(number) FROM revisions WHERE stack_id = $1")
                .bind(stack_id)
                .fetch_one(&mut *tx)
                .await?;
        let row = sqlx::query(
            "INSERT INTO revisions (stack_id, number, compose, rancher, vars, images, refs, \
             cause, build_id, status, created) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending', $10) RETURNING *",
        )
        .bind(stack_id)
        .bind(last.unwrap_or(0) + 1)
        .bind(&new.compose)
        .bind(&new.rancher)
        .bind(json_text(&new.vars, "revision vars")?)
        .bind(json_text(&new.images, "revision images")?)
        .bind(json_text(&new.refs, "revision refs")?)
        .bind(&new.cause)
        .bind(new.build_id)
        .bind(rows::now_ms())
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        revision(&row)
    }

    /// Moves a revision to `status` (`rolling`, `paused`, or one of [`FINAL_STATUSES`]),
    /// with the deployment's notification in the same transaction. A revision that
    /// succeeded becomes its stack's current one.
    pub async fn set_revision_status(
        &self,
        revision_id: i64,
        status: &str,
        message: Option<&str>,
        notice: Option<&DeployNotice>,
    ) -> Result<()> {
        let now = rows::now_ms();
        let finished = FINAL_STATUSES.contains(&status).then_some(now);
        let mut conn = self.conn().await?;
        let mut tx = self.begin(&mut conn).await?;
        sqlx::query(
            "UPDATE revisions SET status = $2, message = COALESCE($3, message), finished = $4 \
             WHERE id = $1",
        )
        .bind(revision_id)
        .bind(status)
        .bind(message)
        .bind(finished)
        .execute(&mut *tx)
        .await?;
        if status == "succeeded" {
            sqlx::query(
                "UPDATE stacks SET current = (SELECT number FROM revisions WHERE id = $1) \
                 WHERE id = (SELECT stack_id FROM revisions WHERE id = $1)",
            )
            .bind(revision_id)
            .execute(&mut *tx)
            .await?;
        }
        if let Some(notice) = notice {
            sqlx::query(
                "INSERT INTO notify_outbox (build_id, deploy, created) VALUES (NULL, $1, $2)",
            )
            .bind(json_text(notice, "deploy notice")?)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Appends one step of a revision's rollout; when it was recorded (ms).
    pub async fn record_step(
        &self,
        revision_id: i64,
        kind: &str,
        detail: &serde_json::Value,
    ) -> Result<i64> {
        let at = rows::now_ms();
        sqlx::query(
            "INSERT INTO rollout_steps (revision_id, at, kind, detail) VALUES ($1, $2, $3, $4)",
        )
        .bind(revision_id)
        .bind(at)
        .bind(kind)
        .bind(json_text(detail, "rollout step")?)
        .execute(&mut *self.conn().await?)
        .await?;
        Ok(at)
    }

    pub async fn rollout_steps(&self, revision_id: i64) -> Result<Vec<StepRow>> {
        let rows = sqlx::query("SELECT * FROM rollout_steps WHERE revision_id = $1 ORDER BY id")
            .bind(revision_id)
            .fetch_all(&mut *self.conn().await?)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(StepRow {
                    at: r.try_get("at")?,
                    kind: r.try_get("kind")?,
                    detail: rows::json(r, "rollout_steps", "detail")?,
                })
            })
            .collect()
    }

    /// A stack's revisions, newest first.
    pub async fn revisions(&self, stack_id: i64, limit: i64) -> Result<Vec<RevisionRow>> {
        let rows = sqlx::query(
            "SELECT * FROM revisions WHERE stack_id = $1 ORDER BY number DESC LIMIT $2",
        )
        .bind(stack_id)
        .bind(limit)
        .fetch_all(&mut *self.conn().await?)
        .await?;
        rows::all(&rows, revision)
    }

    pub async fn revision(&self, stack_id: i64, number: i64) -> Result<Option<RevisionRow>> {
        let row = sqlx::query("SELECT * FROM revisions WHERE stack_id = $1 AND number = $2")
            .bind(stack_id)
            .bind(number)
            .fetch_optional(&mut *self.conn().await?)
            .await?;
        row.as_ref().map(revision).transpose()
    }

    /// The revisions a build triggered (by its environment rules or a deploy naming it),
    /// newest first, each with its environment and stack.
    pub async fn revisions_of_build(&self, build_id: i64) -> Result<Vec<BuildDeploy>> {
        let rows = sqlx::query(
            "SELECT environments.name AS env, stacks.name AS stack, revisions.number, \
             revisions.status, revisions.created FROM revisions \
             JOIN stacks ON stacks.id = revisions.stack_id \
             JOIN environments ON environments.id = stacks.env_id \
             WHERE revisions.build_id = $1 ORDER BY revisions.id DESC",
        )
        .bind(build_id)
        .fetch_all(&mut *self.conn().await?)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(BuildDeploy {
                    env: r.try_get("env")?,
                    stack: r.try_get("stack")?,
                    number: r.try_get("number")?,
                    status: r.try_get("status")?,
                    created: r.try_get("created")?,
                })
            })
            .collect()
    }

    /// Revisions that were not finished (a server stopped mid-rollout), oldest first.
    pub async fn unfinished_revisions(&self) -> Result<Vec<RevisionRow>> {
        let rows = sqlx::query(
            "SELECT * FROM revisions WHERE status IN ('pending', 'rolling', 'paused') ORDER BY id",
        )
        .fetch_all(&mut *self.conn().await?)
        .await?;
        rows::all(&rows, revision)
    }

    /// The `image@digest`s of the newest `keep` revisions of every stack: roots the
    /// registry's garbage collection must keep.
    pub async fn kept_images(&self, keep: i64) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT r.images FROM revisions r WHERE r.number > \
             (SELECT COALESCE(MAX(number), 0) FROM revisions x WHERE x.stack_id = r.stack_id) - $1",
        )
        .bind(keep)
        .fetch_all(&mut *self.conn().await?)
        .await?;
        let mut images = Vec::new();
        for row in &rows {
            let map: BTreeMap<String, String> = rows::json(row, "revisions", "images")?;
            images.extend(map.into_values());
        }
        images.sort();
        images.dedup();
        Ok(images)
    }
}
