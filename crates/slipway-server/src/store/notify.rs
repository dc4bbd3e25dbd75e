//! Notification channels, the outbox of finished builds, deliveries and their attempts.
//!
//! A finished build leaves a `notify_outbox` row in the transaction that finishes it
//! ([`Store::finish_build`]); [`Store::fan_out`] turns that row into deliveries and deletes
//! it in one transaction, and a delivery's `dedup_key` makes a second fan-out of the same
//! row add nothing. A delivery is `pending` until an attempt is recorded that delivers it
//! or gives it up ([`Store::record_attempt`], again one transaction with the attempt row).

use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::rows::{self, flag};
use super::{Result, Store, StoreError};

/// A channel as stored; `secrets` is sealed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChannelRow {
    pub id: i64,
    pub name: String,
    pub kind: String,
    pub api_base: Option<String>,
    pub settings: std::collections::BTreeMap<String, String>,
    #[serde(skip)]
    pub secrets: String,
    /// The names of its credentials (from the API; the store has them sealed only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub secret_names: Vec<String>,
    pub template: Option<String>,
    pub repo: Option<String>,
    pub branch: Option<String>,
    pub environment: Option<String>,
    pub events: Vec<String>,
    pub created: i64,
}

/// What the outbox holds: a finished build, or a deployment's event.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    pub id: i64,
    pub build_id: Option<i64>,
    pub deploy: Option<DeployNotice>,
}

/// A deployment's state change, as the deployer tells the notifications.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct DeployNotice {
    pub environment: String,
    pub stack: String,
    pub revision: i64,
    /// `started`, `succeeded`, `failed`, `rolled_back`.
    pub status: String,
    /// Where the stack serves (its first route), if anywhere.
    #[serde(default)]
    pub url: String,
    /// `image@digest` of each service.
    #[serde(default)]
    pub images: Vec<String>,
    /// The repository and build that triggered it, when one did.
    #[serde(default)]
    pub repo: Option<String>,
    #[serde(default)]
    pub build_number: Option<i64>,
}

/// A delivery to insert at fan-out.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDelivery {
    pub channel_id: i64,
    pub dedup_key: String,
    pub event: String,
    pub repo: String,
    pub build_number: Option<i64>,
    pub title: String,
    /// The message as JSON.
    pub message: String,
    pub template_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeliveryRow {
    pub id: i64,
    pub channel_id: i64,
    pub channel: String,
    pub event: String,
    pub repo: String,
    pub build_number: Option<i64>,
    pub title: String,
    #[serde(skip)]
    pub message: String,
    pub template_error: Option<String>,
    /// `pending`, `delivered`, `failed`.
    pub status: String,
    pub attempts: i64,
    pub next_at: i64,
    pub created: i64,
    pub finished: Option<i64>,
    /// The service's last answer (masked) or the last error.
    pub answer: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AttemptRow {
    pub delivery_id: i64,
    pub number: i64,
    pub at: i64,
    pub latency_ms: i64,
    pub http_status: Option<i64>,
    pub ok: bool,
    pub answer: String,
    pub merged: i64,
}

/// One attempt to record, for [`Store::record_attempt`].
#[derive(Debug, Clone, PartialEq)]
pub struct NewAttempt {
    pub number: i64,
    pub at: i64,
    pub latency_ms: i64,
    pub http_status: Option<i64>,
    pub ok: bool,
    pub answer: String,
    pub merged: i64,
    /// `delivered`, `failed`, or `pending` (then due again at `next_at`).
    pub status: &'static str,
    pub next_at: i64,
}

fn channel(row: &AnyRow) -> Result<ChannelRow> {
    Ok(ChannelRow {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        kind: row.try_get("kind")?,
        api_base: row.try_get("api_base")?,
        settings: rows::json(row, "notify_channels", "settings")?,
        secrets: row.try_get("secrets")?,
        secret_names: Vec::new(),
        template: row.try_get("template")?,
        repo: row.try_get("repo")?,
        branch: row.try_get("branch")?,
        environment: row.try_get("environment")?,
        events: rows::json(row, "notify_channels", "events")?,
        created: row.try_get("created")?,
    })
}

fn delivery(row: &AnyRow) -> Result<DeliveryRow> {
    Ok(DeliveryRow {
        id: row.try_get("id")?,
        channel_id: row.try_get("channel_id")?,
        channel: row.try_get("channel")?,
        event: row.try_get("event")?,
        repo: row.try_get("repo")?,
        build_number: row.try_get("build_number")?,
        title: row.try_get("title")?,
        message: row.try_get("message")?,
        template_error: row.try_get("template_error")?,
        status: row.try_get("status")?,
        attempts: row.try_get("attempts")?,
        next_at: row.try_get("next_at")?,
        created: row.try_get("created")?,
        finished: row.try_get("finished")?,
        answer: row.try_get("answer")?,
    })
}

fn attempt(row: &AnyRow) -> Result<AttemptRow> {
    Ok(AttemptRow {
        delivery_id: row.try_get("delivery_id")?,
        number: row.try_get("number")?,
        at: row.try_get("at")?,
        latency_ms: row.try_get("latency_ms")?,
        http_status: row.try_get("http_status")?,
        ok: row.try_get::<i64, _>("ok")? == 1,
        answer: row.try_get("answer")?,
        merged: row.try_get("merged")?,
    })
}

const DELIVERY_SELECT: &str = "SELECT notify_deliveries.*, notify_channels.name AS channel \
     FROM notify_deliveries JOIN notify_channels ON notify_channels.id = notify_deliveries.channel_id";

impl Store {
    /// Adds a channel. [`StoreError::Conflict`] when the name is taken.
    pub async fn add_channel(&self, new: &ChannelRow) -> Result<ChannelRow> {
        let row = sqlx::query(
            "INSERT INTO notify_channels (name, kind, api_base, settings, secrets, template, \
             repo, branch, environment, events, created) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING *",
        )
        .bind(&new.name)
        .bind(&new.kind)
        .bind(&new.api_base)
        .bind(rows::json_text(&new.settings, "channel settings")?)
        .bind(&new.secrets)
        .bind(&new.template)
        .bind(&new.repo)
        .bind(&new.branch)
        .bind(&new.environment)
        .bind(rows::json_text(&new.events, "channel events")?)
        .bind(new.created)
        .fetch_one(&mut *self.conn().await?)
        .await
        .map_err(|e| {
            if rows::is_unique_violation(&e) {
                StoreError::Conflict {
                    what: "channel",
                    name: new.name.clone(),
                }
            } else {
                e.into()
            }
        })?;
        channel(&row)
    }

    /// Every channel, by name.
    pub async fn channels(&self) -> Result<Vec<ChannelRow>> {
        let rows = sqlx::query("SELECT * FROM notify_channels ORDER BY name")
            .fetch_all(&mut *self.conn().await?)
            .await?;
        rows::all(&rows, channel)
    }

    pub async fn channel_by_name(&self, name: &str) -> Result<Option<ChannelRow>> {
        let row = sqlx::query("SELECT * FROM notify_channels WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *self.conn().await?)
            .await?;
        row.as_ref().map(channel).transpose()
    }

    /// Deletes a channel with its deliveries and their attempts. Whether there was one.
    pub async fn delete_channel(&self, id: i64) -> Result<bool> {
        let mut conn = self.conn().await?;
        let mut tx = self.begin(&mut conn).await?;
        sqlx::query(
            "DELETE FROM notify_attempts WHERE delivery_id IN \
             (SELECT id FROM notify_deliveries WHERE channel_id = $1)",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM notify_deliveries WHERE channel_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query("DELETE FROM notify_channels WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }

    /// Outbox rows not yet fanned out, oldest first.
    pub async fn notify_outbox(&self, limit: i64) -> Result<Vec<OutboxRow>> {
        let rows = sqlx::query("SELECT * FROM notify_outbox ORDER BY id LIMIT $1")
            .bind(limit)
            .fetch_all(&mut *self.conn().await?)
            .await?;
        rows::all(&rows, |r| {
            Ok(OutboxRow {
                id: r.try_get("id")?,
                build_id: r.try_get("build_id")?,
                deploy: match r.try_get::<Option<String>, _>("deploy")? {
                    Some(_) => Some(rows::json(r, "notify_outbox", "deploy")?),
                    None => None,
                },
            })
        })
    }

    /// Records a deployment's event for the notifications. The deployer's own store calls
    /// keep it in the transaction that records the state change; this is the call for one
    /// that has none.
    pub async fn notify_deploy(&self, notice: &DeployNotice) -> Result<i64> {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO notify_outbox (build_id, deploy, created) VALUES (NULL, $1, $2) \
             RETURNING id",
        )
        .bind(rows::json_text(notice, "deploy notice")?)
        .bind(rows::now_ms())
        .fetch_one(&mut *self.conn().await?)
        .await?;
        Ok(id)
    }

    /// The deliveries of outbox row `outbox_id`, inserted (each once, by its key) in the
    /// transaction that removes the row. The channel ids that got a new delivery.
    pub async fn fan_out(&self, outbox_id: i64, deliveries: &[NewDelivery]) -> Result<Vec<i64>> {
        let now = rows::now_ms();
        let mut conn = self.conn().await?;
        let mut tx = self.begin(&mut conn).await?;
        let mut woken = Vec::new();
        for d in deliveries {
            let done = sqlx::query(
                "INSERT INTO notify_deliveries (channel_id, dedup_key, event, repo, \
                 build_number, title, message, template_error, status, attempts, next_at, \
                 created) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', 0, $9, $9) \
                 ON CONFLICT (dedup_key) DO NOTHING",
            )
            .bind(d.channel_id)
            .bind(&d.dedup_key)
            .bind(&d.event)
            .bind(&d.repo)
            .bind(d.build_number)
            .bind(&d.title)
            .bind(&d.message)
            .bind(&d.template_error)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() > 0 && !woken.contains(&d.channel_id) {
                woken.push(d.channel_id);
            }
        }
        sqlx::query("DELETE FROM notify_outbox WHERE id = $1")
            .bind(outbox_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(woken)
    }

    /// Pending deliveries of a channel due at `now`, oldest first.
    pub async fn due_deliveries(
        &self,
        channel_id: i64,
        now: i64,
        limit: i64,
    ) -> Result<Vec<DeliveryRow>> {
        let rows = sqlx::query(&format!(
            "{DELIVERY_SELECT} WHERE channel_id = $1 AND status = 'pending' AND next_at <= $2 \
             ORDER BY notify_deliveries.id LIMIT $3"
        ))
        .bind(channel_id)
        .bind(now)
        .bind(limit)
        .fetch_all(&mut *self.conn().await?)
        .await?;
        rows::all(&rows, delivery)
    }

    /// When the channel's next pending delivery is due.
    pub async fn next_due(&self, channel_id: i64) -> Result<Option<i64>> {
        let next: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(next_at) FROM notify_deliveries WHERE channel_id = $1 AND status = 'pending'",
        )
        .bind(channel_id)
        .fetch_one(&mut *self.conn().await?)
        .await?;
        Ok(next)
    }

    /// Records `attempt` on each of `ids` and moves them to its status, in one transaction.
    pub async fn record_attempt(&self, ids: &[i64], attempt: &NewAttempt) -> Result<()> {
        let mut conn = self.conn().await?;
        let mut tx = self.begin(&mut conn).await?;
        let finished = (attempt.status != "pending").then_some(attempt.at + attempt.latency_ms);
        for id in ids {
            sqlx::query(
                "INSERT INTO notify_attempts (delivery_id, number, at, latency_ms, http_status, \
                 ok, answer, merged) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(id)
            .bind(attempt.number)
            .bind(attempt.at)
            .bind(attempt.latency_ms)
            .bind(attempt.http_status)
            .bind(flag(attempt.ok))
            .bind(&attempt.answer)
            .bind(attempt.merged)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE notify_deliveries SET status = $2, attempts = attempts + 1, \
                 next_at = $3, finished = $4, answer = $5 WHERE id = $1",
            )
            .bind(id)
            .bind(attempt.status)
            .bind(attempt.next_at)
            .bind(finished)
            .bind(&attempt.answer)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The newest deliveries (of one channel, or all), newest first.
    pub async fn deliveries(
        &self,
        channel_id: Option<i64>,
        limit: i64,
    ) -> Result<Vec<DeliveryRow>> {
        let rows = match channel_id {
            Some(id) => {
                sqlx::query(&format!(
                    "{DELIVERY_SELECT} WHERE channel_id = $1 ORDER BY notify_deliveries.id DESC LIMIT $2"
                ))
                .bind(id)
                .bind(limit)
                .fetch_all(&mut *self.conn().await?)
                .await?
            }
            None => {
                sqlx::query(&format!(
                    "{DELIVERY_SELECT} ORDER BY notify_deliveries.id DESC LIMIT $1"
                ))
                .bind(limit)
                .fetch_all(&mut *self.conn().await?)
                .await?
            }
        };
        rows::all(&rows, delivery)
    }

    /// The attempts of each of `ids`, in order, in one query (the delivery log's page).
    pub async fn attempts_of(
        &self,
        ids: &[i64],
    ) -> Result<std::collections::BTreeMap<i64, Vec<AttemptRow>>> {
        let mut by_delivery: std::collections::BTreeMap<i64, Vec<AttemptRow>> =
            ids.iter().map(|id| (*id, Vec::new())).collect();
        if ids.is_empty() {
            return Ok(by_delivery);
        }
        let placeholders: Vec<String> = (1..=ids.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT * FROM notify_attempts WHERE delivery_id IN ({}) ORDER BY delivery_id, number, id",
            placeholders.join(", ")
        );
        let mut query = sqlx::query(&sql);
        for id in ids {
            query = query.bind(id);
        }
        let rows = query.fetch_all(&mut *self.conn().await?).await?;
        for row in rows::all(&rows, attempt)? {
            by_delivery.entry(row.delivery_id).or_default().push(row);
        }
        Ok(by_delivery)
    }

    /// The attempts of a delivery, in order.
    pub async fn attempts(&self, delivery_id: i64) -> Result<Vec<AttemptRow>> {
        let rows =
            sqlx::query("SELECT * FROM notify_attempts WHERE delivery_id = $1 ORDER BY number, id")
                .bind(delivery_id)
                .fetch_all(&mut *self.conn().await?)
                .await?;
        rows::all(&rows, attempt)
    }

    /// The status of the newest finished build of the same branch before build `number`
    /// that had an outcome (success, failure or error), for `build.fixed`/`build.broken`.
    pub async fn previous_outcome(
        &self,
        repo_id: i64,
        branch: &str,
        number: i64,
    ) -> Result<Option<String>> {
        let status: Option<String> = sqlx::query_scalar(
            "SELECT status FROM builds WHERE repo_id = $1 AND branch = $2 AND number < $3 \
             AND event <> 'pull_request' AND status IN ('success', 'failure', 'error') \
             ORDER BY number DESC LIMIT 1",
        )
        .bind(repo_id)
        .bind(branch)
        .bind(number)
        .fetch_optional(&mut *self.conn().await?)
        .await?;
        Ok(status)
    }
}
