//! Secrets, runners, tokens, sessions, artifacts and the queue counts.

use std::collections::BTreeMap;

use super::rows::{self, flag, json_text};
use sqlx::Row;

use super::{Artifact, QueueStats, Result, Runner, SecretRow, Session, Store, StoreError, Token};

impl Store {
    // ---------------------------------------------------------------- secrets

    /// Adds the secret `name` of a repository, or replaces its value and flag (keeping its
    /// id and `created`).
    pub async fn put_secret(
        &self,
        repo_id: i64,
        name: &str,
        ciphertext: &str,
        allow_pull_request: bool,
        now: i64,
    ) -> Result<SecretRow> {
        let row = sqlx::query(
            "INSERT INTO secrets (repo_id, name, ciphertext, allow_pull_request, created, updated) \
             VALUES ($1, $2, $3, $4, $5, $5) \
             ON CONFLICT (repo_id, name) DO UPDATE SET ciphertext = excluded.ciphertext, \
             allow_pull_request = excluded.allow_pull_request, updated = excluded.updated \
             RETURNING *",
        )
        .bind(repo_id)
        .bind(name)
        .bind(ciphertext)
        .bind(flag(allow_pull_request))
        .bind(now)
        .fetch_one(&mut *self.conn().await?)
        .await?;
        rows::secret(&row)
    }

    /// A repository's secrets, by name.
    pub async fn secrets(&self, repo_id: i64) -> Result<Vec<SecretRow>> {
        let rows = sqlx::query("SELECT * FROM secrets WHERE repo_id = $1 ORDER BY name")
            .bind(repo_id)
            .fetch_all(&mut *self.conn().await?)
            .await?;
        rows::all(&rows, rows::secret)
    }

    /// Whether there was such a secret.
    pub async fn delete_secret(&self, repo_id: i64, name: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM secrets WHERE repo_id = $1 AND name = $2")
            .bind(repo_id)
            .bind(name)
            .execute(&mut *self.conn().await?)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    // ---------------------------------------------------------------- runners

    /// Registers a runner by name; registering a known name again updates its labels,
    /// capacity, version, last-seen time and credential (the old one stops working) and
    /// keeps its id and `created`.
    pub async fn register_runner(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
        capacity: i64,
        version: &str,
        credential_hash: &str,
        now: i64,
    ) -> Result<Runner> {
        let row = sqlx::query(
            "INSERT INTO runners (name, labels, capacity, version, last_seen, created, \
             credential_hash) VALUES ($1, $2, $3, $4, $5, $5, $6) \
             ON CONFLICT (name) DO UPDATE SET labels = excluded.labels, \
             capacity = excluded.capacity, version = excluded.version, \
             last_seen = excluded.last_seen, credential_hash = excluded.credential_hash \
             RETURNING *",
        )
        .bind(name)
        .bind(json_text(labels, "runner labels")?)
        .bind(capacity)
        .bind(version)
        .bind(now)
        .bind(credential_hash)
        .fetch_one(&mut *self.conn().await?)
        .await?;
        rows::runner(&row)
    }

    pub async fn runner(&self, id: i64) -> Result<Option<Runner>> {
        sqlx::query("SELECT * FROM runners WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *self.conn().await?)
            .await?
            .as_ref()
            .map(rows::runner)
            .transpose()
    }

    /// Every runner, by name.
    pub async fn runners(&self) -> Result<Vec<Runner>> {
        let rows = sqlx::query("SELECT * FROM runners ORDER BY name")
            .fetch_all(&mut *self.conn().await?)
            .await?;
        rows::all(&rows, rows::runner)
    }

    pub async fn touch_runner(&self, id: i64, now: i64) -> Result<()> {
        sqlx::query("UPDATE runners SET last_seen = $2 WHERE id = $1")
            .bind(id)
            .bind(now)
            .execute(&mut *self.conn().await?)
            .await?;
        Ok(())
    }

    // ---------------------------------------------------------------- tokens

    /// Stores a token by its hash. [`StoreError::Conflict`] (`what: "token"`, the name)
    /// when that hash is already stored.
    pub async fn create_token(
        &self,
        name: &str,
        hash: &str,
        scope: &str,
        now: i64,
    ) -> Result<Token> {
        let row = sqlx::query(
            "INSERT INTO tokens (name, hash, scope, created) VALUES ($1, $2, $3, $4) RETURNING *",
        )
        .bind(name)
        .bind(hash)
        .bind(scope)
        .bind(now)
        .fetch_one(&mut *self.conn().await?)
        .await
        .map_err(|e| {
            if rows::is_unique_violation(&e) {
                StoreError::Conflict {
                    what: "token",
                    name: name.to_owned(),
                }
            } else {
                e.into()
            }
        })?;
        rows::token(&row)
    }

    pub async fn token_by_hash(&self, hash: &str) -> Result<Option<Token>> {
        sqlx::query("SELECT * FROM tokens WHERE hash = $1")
            .bind(hash)
            .fetch_optional(&mut *self.conn().await?)
            .await?
            .as_ref()
            .map(rows::token)
            .transpose()
    }

    pub async fn token_by_id(&self, id: i64) -> Result<Option<Token>> {
        sqlx::query("SELECT * FROM tokens WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *self.conn().await?)
            .await?
            .as_ref()
            .map(rows::token)
            .transpose()
    }

    /// Every token, oldest first.
    pub async fn tokens(&self) -> Result<Vec<Token>> {
        let rows = sqlx::query("SELECT * FROM tokens ORDER BY id")
            .fetch_all(&mut *self.conn().await?)
            .await?;
        rows::all(&rows, rows::token)
    }

    /// Whether there was such a token. Its sessions go with it.
    pub async fn delete_token(&self, id: i64) -> Result<bool> {
        let mut conn = self.conn().await?;
        // Explicitly, not only by the foreign key: a session must never outlive its token.
        sqlx::query("DELETE FROM sessions WHERE token_id = $1")
            .bind(id)
            .execute(&mut *conn)
            .await?;
        let done = sqlx::query("DELETE FROM tokens WHERE id = $1")
            .bind(id)
            .execute(&mut *conn)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    // ---------------------------------------------------------------- sessions

    /// Stores a session by the hash of its id; sessions already expired are dropped.
    pub async fn create_session(
        &self,
        hash: &str,
        token_id: i64,
        csrf: &str,
        now: i64,
        expires: i64,
    ) -> Result<Session> {
        let mut conn = self.conn().await?;
        sqlx::query("DELETE FROM sessions WHERE expires <= $1")
            .bind(now)
            .execute(&mut *conn)
            .await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO sessions (hash, token_id, csrf, created, expires) \
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
        )
        .bind(hash)
        .bind(token_id)
        .bind(csrf)
        .bind(now)
        .bind(expires)
        .fetch_one(&mut *conn)
        .await?;
        drop(conn);
        self.session_by_hash(hash, now)
            .await?
            .filter(|s| s.id == id)
            .ok_or_else(|| StoreError::Corrupt {
                what: "session".to_owned(),
                message: format!("session {id} vanished as it was made"),
            })
    }

    /// The live session (not expired, its token still there) with this id hash.
    pub async fn session_by_hash(&self, hash: &str, now: i64) -> Result<Option<Session>> {
        let row = sqlx::query(
            "SELECT s.id AS session_id, s.csrf, s.created AS session_created, s.expires, \
                    t.id, t.name, t.hash, t.scope, t.created \
             FROM sessions s JOIN tokens t ON t.id = s.token_id \
             WHERE s.hash = $1 AND s.expires > $2",
        )
        .bind(hash)
        .bind(now)
        .fetch_optional(&mut *self.conn().await?)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        Ok(Some(Session {
            id: row.try_get("session_id")?,
            token: rows::token(&row)?,
            csrf: row.try_get("csrf")?,
            created: row.try_get("session_created")?,
            expires: row.try_get("expires")?,
        }))
    }

    /// Ends the session with this id hash; whether there was one.
    pub async fn delete_session(&self, hash: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM sessions WHERE hash = $1")
            .bind(hash)
            .execute(&mut *self.conn().await?)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Deletes every token whose name starts with `prefix`; how many.
    pub async fn delete_tokens_named(&self, prefix: &str) -> Result<u64> {
        // `LIKE` would treat `_` and `%` in the prefix as wildcards; `substr` does not.
        let done = sqlx::query(
            "DELETE FROM tokens WHERE substr(name, 1, length(CAST($1 AS TEXT))) = CAST($1 AS TEXT)",
        )
        .bind(prefix)
        .execute(&mut *self.conn().await?)
        .await?;
        Ok(done.rows_affected())
    }

    // ---------------------------------------------------------------- artifacts

    pub async fn add_artifact(
        &self,
        build_id: i64,
        image: &str,
        digest: &str,
        now: i64,
    ) -> Result<Artifact> {
        add_artifact_on(&mut *self.conn().await?, build_id, image, digest, now).await
    }

    /// A build's artifacts, in the order they were added.
    pub async fn artifacts(&self, build_id: i64) -> Result<Vec<Artifact>> {
        let rows = sqlx::query("SELECT * FROM artifacts WHERE build_id = $1 ORDER BY id")
            .bind(build_id)
            .fetch_all(&mut *self.conn().await?)
            .await?;
        rows::all(&rows, rows::artifact)
    }

    // ---------------------------------------------------------------- stats

    /// Counts for `/metrics`.
    pub async fn queue_stats(&self) -> Result<QueueStats> {
        let (pending_stages, running_stages, builds_total, runners): (i64, i64, i64, i64) =
            sqlx::query_as(
                "SELECT \
                 (SELECT COUNT(*) FROM stages WHERE status = 'pending'), \
                 (SELECT COUNT(*) FROM stages WHERE status = 'running'), \
                 (SELECT COUNT(*) FROM builds), \
                 (SELECT COUNT(*) FROM runners)",
            )
            .fetch_one(&mut *self.conn().await?)
            .await?;
        Ok(QueueStats {
            pending_stages,
            running_stages,
            builds_total,
            runners,
        })
    }
}

pub(super) async fn add_artifact_on<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(
    executor: E,
    build_id: i64,
    image: &str,
    digest: &str,
    now: i64,
) -> Result<Artifact> {
    let row = sqlx::query(
        "INSERT INTO artifacts (build_id, image, digest, created) VALUES ($1, $2, $3, $4) \
         RETURNING *",
    )
    .bind(build_id)
    .bind(image)
    .bind(digest)
    .bind(now)
    .fetch_one(executor)
    .await?;
    rows::artifact(&row)
}
