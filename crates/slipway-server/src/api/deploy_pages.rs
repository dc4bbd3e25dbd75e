//! The web UI's deployer pages: environments with their stacks and rules (`/deploy`), and
//! a stack's page (`/deploy/{env}/{stack}`: its services with replicas, health, version and
//! URL; the newest rollout's steps, followed live from `/api/stacks/{env}/{stack}/events`,
//! with its canary weight, state and the pause / resume / promote / abort buttons while it
//! runs; the history, with what changed from each revision's predecessor (images, the
//! stack file's lines) and a rollback button per revision that succeeded; the redeploy
//! webhook). The work is [`super::deploy`]'s and [`crate::deploy`]'s; this reads forms and
//! lays out what they answer.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::ApiError;
use super::pages::{PageForm, PageUser, error_page, field, render};
use crate::app::AppState;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/deploy", get(overview))
        .route("/deploy/{env}/{stack}", get(stack_page))
        .route("/deploy/{env}/{stack}/rollback", post(rollback))
        .route("/deploy/{env}/{stack}/rollout/{command}", post(steer))
        .route("/deploy/{env}/{stack}/webhook", post(webhook))
}

async fn overview(State(state): State<Arc<AppState>>, PageUser(user): PageUser) -> Response {
    let result: Result<Value, ApiError> = async {
        let mut envs = Vec::new();
        for env in state.store.envs().await? {
            let mut stacks = Vec::new();
            for stack in state.store.stacks(Some(env.id)).await? {
                let latest = state.store.revisions(stack.id, 1).await?;
                stacks.push(json!({"stack": stack, "latest": latest.first()}));
            }
            let rules = state.store.env_rules(Some(env.id)).await?;
            envs.push(json!({"env": env, "stacks": stacks, "rules": rules}));
        }
        Ok(json!({"envs": envs}))
    }
    .await;
    match result {
        Ok(ctx) => render(&state, "deploy.html", "Deployments", Some(&user), ctx),
        Err(e) => error_page(&state, Some(&user), e),
    }
}

async fn stack_page(
    State(state): State<Arc<AppState>>,
    Path((env, stack)): Path<(String, String)>,
    PageUser(user): PageUser,
) -> Response {
    match stack_context(&state, &env, &stack, None).await {
        Ok(ctx) => render(&state, "stack.html", "Stack", Some(&user), ctx),
        Err(e) => error_page(&state, Some(&user), e),
    }
}

/// The stack page's context; `webhook_url` is a redeploy URL just made (shown once).
async fn stack_context(
    state: &Arc<AppState>,
    env: &str,
    stack: &str,
    webhook_url: Option<String>,
) -> Result<Value, ApiError> {
    let (env, stack) = super::deploy::find_stack(state, env, stack).await?;
    let revisions = state.store.revisions(stack.id, 20).await?;
    let steps = match revisions.first() {
        Some(r) => state.store.rollout_steps(r.id).await?,
        None => Vec::new(),
    };
    // The engine may be away: the page still shows the history.
    let (containers, engine_error) =
        match crate::deploy::containers(state, &env.name, &stack.name).await {
            Ok(c) => (c, None),
            Err(e) => (Vec::new(), Some(e.to_string())),
        };
    let current = revisions.iter().find(|r| Some(r.number) == stack.current);
    let urls = crate::deploy::service_urls(state, &env, &stack).await;
    let services = services(&containers, current, &urls);
    let asked = crate::deploy::rollout_asked(state, stack.id);
    let rollout = revisions.first().map(|r| {
        let (state, weight) = progress(&r.status, &steps);
        json!({"number": r.number, "status": r.status, "state": state,
               "state_text": state_text(&state), "weight": weight,
               "running": asked.is_some() && !super::live::rollout_over(&r.status),
               "live": !super::live::rollout_over(&r.status), "asked": asked})
    });
    let history: Vec<Value> = revisions
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let changes = revisions.get(i + 1).map(|before| changes(before, r));
            json!({"revision": r, "changes": changes})
        })
        .collect();
    Ok(
        json!({"env": env, "stack": stack, "revisions": revisions, "history": history,
        "steps": steps, "containers": containers, "engine_error": engine_error,
        "services": services, "rollout": rollout, "has_webhook": stack.webhook_hash.is_some(),
        "webhook_url": webhook_url}),
    )
}

/// Each service: its containers' count, how many run and their health, the version the
/// current revision pins, and where it serves.
fn services(
    containers: &[crate::deploy::ContainerView],
    current: Option<&crate::store::RevisionRow>,
    urls: &BTreeMap<String, String>,
) -> Vec<Value> {
    let mut names: Vec<&str> = containers.iter().map(|c| c.service.as_str()).collect();
    if let Some(r) = current {
        names.extend(r.images.keys().map(String::as_str));
    }
    names.sort_unstable();
    names.dedup();
    names
        .into_iter()
        .map(|name| {
            let own: Vec<_> = containers.iter().filter(|c| c.service == name).collect();
            let running = own.iter().filter(|c| c.state == "running").count();
            let mut health: BTreeMap<&str, usize> = BTreeMap::new();
            for c in &own {
                *health.entry(c.health.as_str()).or_default() += 1;
            }
            let health: Vec<String> = health
                .iter()
                .map(|(h, n)| match *h {
                    "none" => format!("{n} without a health check"),
                    h => format!("{n} {h}"),
                })
                .collect();
            json!({"name": name, "containers": own.len(), "running": running,
                "health": health.join(", "),
                "version": current.and_then(|r| r.images.get(name)),
                "reference": current.and_then(|r| r.refs.get(name)),
                "url": urls.get(name)})
        })
        .collect()
}

/// Where the newest rollout is, from its status and steps (the page's script follows the
/// same rules live): `rolling`, `held` (paused by a user), `baking`, or the revision's
/// status once it is over; and the canary's last weight.
fn progress(status: &str, steps: &[crate::store::StepRow]) -> (String, Option<u64>) {
    let mut state = "rolling";
    let mut weight = None;
    for step in steps {
        match step.kind.as_str() {
            "held" => state = "held",
            "resumed" | "bake_passed" | "promoted" => state = "rolling",
            "bake_started" => state = "baking",
            // Without a weight, the new revision serves alone: a canary's end is 100%.
            "traffic_shifted" => {
                weight = match step.detail["new_weight"].as_u64() {
                    Some(w) => Some(w),
                    None => weight.map(|_| 100),
                };
            }
            _ => {}
        }
    }
    if super::live::rollout_over(status) {
        state = status;
    }
    (state.to_owned(), weight)
}

fn state_text(state: &str) -> &'static str {
    match state {
        "held" => "paused by a user",
        "baking" => "baking",
        "succeeded" => "succeeded",
        "rolled_back" => "rolled back",
        "failed" => "failed",
        "paused" => "paused after a failure",
        _ => "rolling",
    }
}

/// What changed from `before` to `after`: each service's image (pinned, and as
/// referenced) that differs, and the stack file's changed lines.
fn changes(before: &crate::store::RevisionRow, after: &crate::store::RevisionRow) -> Value {
    let mut services: Vec<&String> = before.images.keys().chain(after.images.keys()).collect();
    services.sort();
    services.dedup();
    let images: Vec<Value> = services
        .into_iter()
        .filter(|s| {
            before.images.get(*s) != after.images.get(*s)
                || before.refs.get(*s) != after.refs.get(*s)
        })
        .map(|s| {
            json!({"service": s, "old": before.images.get(s), "new": after.images.get(s),
                "old_ref": before.refs.get(s), "new_ref": after.refs.get(s)})
        })
        .collect();
    let mut diff = line_diff(&before.compose, &after.compose);
    if before.rancher != after.rancher {
        diff.extend(line_diff(
            before.rancher.as_deref().unwrap_or(""),
            after.rancher.as_deref().unwrap_or(""),
        ));
    }
    let added = diff.iter().filter(|d| d["op"] == "+").count();
    let removed = diff.iter().filter(|d| d["op"] == "-").count();
    json!({"from": before.number, "images": images, "diff": diff, "added": added,
        "removed": removed})
}

/// The lines of `old` and `new` that differ (`op` `-` or `+`), each run of changes with a
/// line of context (` `) on either side and `…` for the unchanged lines between: a
/// longest-common-subsequence diff, enough for a stack file's size.
fn line_diff(old: &str, new: &str) -> Vec<Value> {
    let (a, b): (Vec<&str>, Vec<&str>) = (old.lines().collect(), new.lines().collect());
    if a == b {
        return Vec::new();
    }
    // A table of a.len() × b.len(): past that the file is no stack file to read by eye.
    if a.len().saturating_mul(b.len()) > 4_000_000 {
        return vec![json!({"op": "…", "line": "(too long to compare line by line)"})];
    }
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut ops: Vec<(char, &str)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            ops.push((' ', a[i]));
            (i, j) = (i + 1, j + 1);
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            // A removal before the addition that replaces it, as diffs read.
            ops.push(('-', a[i]));
            i += 1;
        } else {
            ops.push(('+', b[j]));
            j += 1;
        }
    }
    let near_change =
        |k: usize| (k.saturating_sub(1)..=(k + 1).min(ops.len() - 1)).any(|n| ops[n].0 != ' ');
    let mut out = Vec::new();
    let mut skipped = false;
    for (k, (op, line)) in ops.iter().enumerate() {
        if *op == ' ' && !near_change(k) {
            if !skipped {
                out.push(json!({"op": "…", "line": ""}));
                skipped = true;
            }
            continue;
        }
        skipped = false;
        out.push(json!({"op": op.to_string(), "line": line}));
    }
    out
}

async fn steer(
    State(state): State<Arc<AppState>>,
    Path((env, stack, command)): Path<(String, String, String)>,
    PageForm { user, .. }: PageForm,
) -> Response {
    let command: slipway_deploy::rollout::Command = match command.parse() {
        Ok(c) => c,
        Err(e) => return error_page(&state, Some(&user), ApiError::bad_request(e)),
    };
    tracing::info!("{env}/{stack}: {command:?} by {} (web UI)", user.token.name);
    match crate::deploy::steer(&state, &env, &stack, command).await {
        Ok(_) => {
            Redirect::to(&format!("/deploy/{}/{}", urlpart(&env), urlpart(&stack))).into_response()
        }
        Err(e) => error_page(&state, Some(&user), e.into()),
    }
}

/// Makes a new redeploy URL and shows the page with it (its token is shown only now).
async fn webhook(
    State(state): State<Arc<AppState>>,
    Path((env, stack)): Path<(String, String)>,
    PageForm { user, .. }: PageForm,
) -> Response {
    let result = async {
        let (env_row, stack_row) = super::deploy::find_stack(&state, &env, &stack).await?;
        let url = super::deploy::new_webhook(&state, &env_row, &stack_row).await?;
        stack_context(&state, &env, &stack, Some(url)).await
    }
    .await;
    match result {
        Ok(ctx) => render(&state, "stack.html", "Stack", Some(&user), ctx),
        Err(e) => error_page(&state, Some(&user), e),
    }
}

/// A path segment, percent-encoded (names are restricted, but a redirect should not trust
/// that).
fn urlpart(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn rollback(
    State(state): State<Arc<AppState>>,
    Path((env, stack)): Path<(String, String)>,
    PageForm { user, form }: PageForm,
) -> Response {
    let to = field(&form, "to").and_then(|t| t.parse::<i64>().ok());
    match super::deploy::rollback(&state, &env, &stack, to, &user.token.name).await {
        Ok(_) => {
            Redirect::to(&format!("/deploy/{}/{}", urlpart(&env), urlpart(&stack))).into_response()
        }
        Err(e) => error_page(&state, Some(&user), e),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn a_line_diff_shows_the_changed_lines_with_a_line_of_context() {
        let old = "a\nb\nc\nd\ne\nf\n";
        let new = "a\nb\nc\nD\ne\nf\ng\n";
        assert_eq!(
            super::line_diff(old, new),
            vec![
                json!({"op": "…", "line": ""}),
                json!({"op": " ", "line": "c"}),
                json!({"op": "-", "line": "d"}),
                json!({"op": "+", "line": "D"}),
                json!({"op": " ", "line": "e"}),
                json!({"op": " ", "line": "f"}),
                json!({"op": "+", "line": "g"}),
            ]
        );
        assert!(super::line_diff(old, old).is_empty());
    }
}
