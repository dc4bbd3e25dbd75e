//! Rows to types. Every value from the database is checked: an unknown status, a flag
//! that is not 0/1 or JSON that does not parse is [`StoreError::Corrupt`], never a panic.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use slipway_engine::Status;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Artifact, Build, Repo, Result, Runner, SecretRow, Stage, Step, StoreError, Token};

/// Now, in unix milliseconds.
pub(super) use crate::now_ms;

/// A flag as stored.
pub(super) fn flag(value: bool) -> i64 {
    i64::from(value)
}

/// JSON text of a value that always serializes (maps of strings, lists, `Value`s).
pub(super) fn json_text<T: serde::Serialize>(value: &T, what: &str) -> Result<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt {
        what: what.to_owned(),
        message: e.to_string(),
    })
}

fn corrupt(table: &str, column: &str, row: &AnyRow, message: impl ToString) -> StoreError {
    let id = row
        .try_get::<i64, _>("id")
        .map(|id| id.to_string())
        .unwrap_or_else(|_| "?".to_owned());
    StoreError::Corrupt {
        what: format!("{table}.{column} of id {id}"),
        message: message.to_string(),
    }
}

fn status(row: &AnyRow, table: &str) -> Result<Status> {
    let text: String = row.try_get("status")?;
    Status::parse(&text)
        .ok_or_else(|| corrupt(table, "status", row, format!("unknown status `{text}`")))
}

fn boolean(row: &AnyRow, table: &str, column: &str) -> Result<bool> {
    match row.try_get::<i64, _>(column)? {
        0 => Ok(false),
        1 => Ok(true),
        other => Err(corrupt(
            table,
            column,
            row,
            format!("flag is {other}, not 0 or 1"),
        )),
    }
}

pub(super) fn json<T: DeserializeOwned>(row: &AnyRow, table: &str, column: &str) -> Result<T> {
    let text: String = row.try_get(column)?;
    serde_json::from_str(&text).map_err(|e| corrupt(table, column, row, e))
}

pub(super) fn repo(row: &AnyRow) -> Result<Repo> {
    Ok(Repo {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        provider: row.try_get("provider")?,
        clone_url: row.try_get("clone_url")?,
        config_path: row.try_get("config_path")?,
        webhook_secret: row.try_get("webhook_secret")?,
        default_branch: row.try_get("default_branch")?,
        trusted: boolean(row, "repos", "trusted")?,
        auto_cancel: boolean(row, "repos", "auto_cancel")?,
        max_running: row.try_get("max_running")?,
        status_url: row.try_get("status_url")?,
        status_token: row.try_get("status_token")?,
        registry_paths: row
            .try_get::<String, _>("registry_paths")?
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect(),
        created: row.try_get("created")?,
    })
}

pub(super) fn build(row: &AnyRow) -> Result<Build> {
    Ok(Build {
        id: row.try_get("id")?,
        repo_id: row.try_get("repo_id")?,
        number: row.try_get("number")?,
        status: status(row, "builds")?,
        event: row.try_get("event")?,
        reference: row.try_get("reference")?,
        branch: row.try_get("branch")?,
        commit: row.try_get("commit_sha")?,
        message: row.try_get("message")?,
        author: row.try_get("author")?,
        trigger: row.try_get("build_trigger")?,
        deploy_to: row.try_get("deploy_to")?,
        delivery_id: row.try_get("delivery_id")?,
        context: json(row, "builds", "context")?,
        error: row.try_get("error")?,
        created: row.try_get("created")?,
        started: row.try_get("started")?,
        finished: row.try_get("finished")?,
    })
}

pub(super) fn stage(row: &AnyRow) -> Result<Stage> {
    Ok(Stage {
        id: row.try_get("id")?,
        build_id: row.try_get("build_id")?,
        repo_id: row.try_get("repo_id")?,
        number: row.try_get("number")?,
        name: row.try_get("name")?,
        status: status(row, "stages")?,
        depends_on: json::<Vec<String>>(row, "stages", "depends_on")?,
        labels: json::<BTreeMap<String, String>>(row, "stages", "labels")?,
        plan: json(row, "stages", "plan")?,
        attempt: row.try_get("attempt")?,
        runner_id: row.try_get("runner_id")?,
        lease_expires: row.try_get("lease_expires")?,
        cancel_requested: boolean(row, "stages", "cancel_requested")?,
        error: row.try_get("error")?,
        created: row.try_get("created")?,
        started: row.try_get("started")?,
        finished: row.try_get("finished")?,
    })
}

pub(super) fn step(row: &AnyRow) -> Result<Step> {
    Ok(Step {
        id: row.try_get("id")?,
        stage_id: row.try_get("stage_id")?,
        number: row.try_get("number")?,
        name: row.try_get("name")?,
        status: status(row, "steps")?,
        exit_code: row.try_get("exit_code")?,
        error: row.try_get("error")?,
        started: row.try_get("started")?,
        finished: row.try_get("finished")?,
    })
}

pub(super) fn secret(row: &AnyRow) -> Result<SecretRow> {
    Ok(SecretRow {
        id: row.try_get("id")?,
        repo_id: row.try_get("repo_id")?,
        name: row.try_get("name")?,
        ciphertext: row.try_get("ciphertext")?,
        allow_pull_request: boolean(row, "secrets", "allow_pull_request")?,
        created: row.try_get("created")?,
        updated: row.try_get("updated")?,
    })
}

pub(super) fn runner(row: &AnyRow) -> Result<Runner> {
    Ok(Runner {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        labels: json::<BTreeMap<String, String>>(row, "runners", "labels")?,
        capacity: row.try_get("capacity")?,
        version: row.try_get("version")?,
        last_seen: row.try_get("last_seen")?,
        created: row.try_get("created")?,
        credential_hash: row.try_get("credential_hash")?,
    })
}

pub(super) fn token(row: &AnyRow) -> Result<Token> {
    Ok(Token {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        hash: row.try_get("hash")?,
        scope: row.try_get("scope")?,
        created: row.try_get("created")?,
    })
}

pub(super) fn artifact(row: &AnyRow) -> Result<Artifact> {
    Ok(Artifact {
        id: row.try_get("id")?,
        build_id: row.try_get("build_id")?,
        image: row.try_get("image")?,
        digest: row.try_get("digest")?,
        created: row.try_get("created")?,
    })
}

/// Every row through `f`, stopping at the first error.
pub(super) fn all<T>(rows: &[AnyRow], f: fn(&AnyRow) -> Result<T>) -> Result<Vec<T>> {
    rows.iter().map(f).collect()
}

/// Whether a database error is a unique-constraint violation.
pub(super) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}
