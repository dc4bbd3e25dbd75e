//! The web UI: server-rendered HTML pages (minijinja templates embedded in the binary with
//! `include_str!`), one stylesheet and one plain JavaScript file. No Node build step, no
//! framework; every page works without JavaScript except the live updates of the build page.
//! This module owns the templates, the template filters and functions, and the static
//! assets. It knows nothing about HTTP: the axum handlers (elsewhere) load data from the
//! store, call [`Ui::render`] and serve [`Ui::asset`].
//!
//! # API
//! - [`Ui::new`] builds the template environment (auto-escaping on for every `.html`
//!   template; undefined values are an error when printed, allowed in `if`).
//! - [`Ui::render`]`(template, context)` renders one page to a string.
//! - [`Ui::asset`]`(path)` gives the content type and bytes of `/static/app.css` and
//!   `/static/app.js` (a `?v=...` query is ignored). Pages link them as
//!   `/static/app.css?v=<hash of the file>`, so the handler may serve them with
//!   `Cache-Control: public, max-age=31536000, immutable`. [`asset_url`] gives those URLs.
//!
//! # Templates and their contexts
//! Every page extends `layout.html` (nav: Repositories `/`, Runners `/runners`, Registry
//! `/registry`, Proxy `/proxy`, Deployments `/deploy`, Notifications `/notify`, and a logout form POSTing to `/logout`, or a "Log in" link). Every context
//! has `title: String` and `user: {name: String} | null`, and may have `flash: String | null`
//! (a notice shown above the content). A context with a `user` has `csrf: String`, the
//! session's form token: every form but the login form carries it as the hidden field
//! `csrf`, and the server refuses a form without it. Times are unix ms; statuses are the lowercase names.
//! Checkboxes are sent as `true` when checked and are absent otherwise.
//!
//! | template | context (besides `title`, `user`) |
//! |---|---|
//! | `index.html` | `repos: [{repo: Repo, last_build: Build \| null}]`, `builds: [{build: Build, repo: String}]` (latest builds across repositories; `repo` is the name) |
//! | `repo.html` | `repo: Repo`, `builds: [Build]`, `webhook_url: String`, `next_before: Int \| null` (the "Older" link is `?before=N`) |
//! | `build.html` | `repo: Repo`, `build: Build`, `stages: [{stage: Stage, steps: [Step]}]`, `artifacts: [Artifact]`, `registry_host: String`, `deploys: [{env, stack, number, status, created}]` |
//! | `run.html` | `repo: Repo`, `branches: [String]`, `tags: [String]` (`v*` tags are listed first) |
//! | `secrets.html` | `repo: Repo`, `secrets: [{name: String, allow_pull_request: bool, updated: ms}]` |
//! | `settings.html` | `repo: Repo`, `webhook_url: String` |
//! | `new_repo.html` | nothing else |
//! | `runners.html` | `runners: [{runner: Runner, online: bool, running: Int}]` |
//! | `proxy.html` | `running: bool`, `routes: [RouteStatus]`, `conflicts: [Conflict]`, `diagnostics: [Diagnostic]`, `docker_error: String \| null` (`slipway_proxy::status`) |
//! | `deploy.html` | `envs: [{env: EnvRow, stacks: [{stack: StackRow, latest: RevisionRow \| null}], rules: [EnvRuleRow]}]` |
//! | `stack.html` | `env: EnvRow`, `stack: StackRow`, `revisions: [RevisionRow]` (newest first), `history: [{revision: RevisionRow, changes: {from, images: [{service, old, new, old_ref, new_ref}], diff: [{op, line}], added, removed} \| null}]`, `steps: [StepRow]` (of the newest), `containers: [ContainerView]`, `services: [{name, containers, running, health, version, reference, url}]`, `rollout: {number, status, state, state_text, weight, running, live, asked} \| null`, `has_webhook: bool`, `webhook_url: String \| null`, `engine_error: String \| null` |
//! | `notify.html` | `channels: [Channel (with secret_names)]`, `deliveries: [Delivery (with attempt_log)]`, `kinds: [{name, settings: [{name, secret, required, help}]}]`, `flash: String \| null` |
//! | `service_logs.html` | `env`, `stack`, `services: [String]` (those with records), `stream_url` (the live tail's SSE URL), `query: {service, since, grep, revision, replica, stream}` |
//! | `log_routes.html` | `routes: [{id, uri, configured, delivered, rejected, lag_bytes, lag_records, last_error}]`, `error: String \| null` |
//! | `registry.html` | `repositories: [{name: String, tags: Int}]` |
//! | `registry_repo.html` | `name: String`, `registry_host: String`, `tags: [{tag, digest, size: Int (bytes), pushed: ms}]` |
//! | `login.html` | `error: String \| null` |
//! | `error.html` | `status: Int`, `message: String` |
//!
//! Forms (all `method="post"`, `application/x-www-form-urlencoded`):
//! - `POST /repos` (`new_repo.html`): `name`, `clone_url`, `provider` (github|gitea|gitlab|generic), `config_path`.
//! - `POST /repos/{repo}/run` (`run.html`): `kind` (branch|tag|commit), `branch`, `tag`, `commit`, `params` (KEY=VALUE lines).
//! - `POST /repos/{repo}/builds/{n}/restart`, `.../cancel`, `.../promote` (`target`) (`build.html`).
//! - `POST /repos/{repo}/secrets` (`name`, `value`, `allow_pull_request`), `POST /repos/{repo}/secrets/{name}/delete`.
//! - `POST /repos/{repo}/settings`: `clone_url`, `config_path`, `default_branch`, `trusted`,
//!   `auto_cancel`, `max_running`, `status_url`, `status_token` (blank keeps the old one),
//!   `registry_paths` (patterns a pipeline's registry token may push to besides the
//!   repository's own path, one a line; blank clears).
//! - `POST /notify` (`notify.html`): `name`, `kind`, `url`, `settings` and `secrets`
//!   (NAME=VALUE lines), `repo`, `branch`, `events` (comma-separated), `template`;
//!   `POST /notify/{name}/test`, `POST /notify/{name}/delete`.
//! - `POST /deploy/{env}/{stack}/rollback` (`stack.html`): `to` (a revision number);
//!   `POST /deploy/{env}/{stack}/rollout/{pause|resume|promote|abort}` and
//!   `POST /deploy/{env}/{stack}/webhook` (no fields).
//! - `POST /log-routes` (`log_routes.html`): `uri`; `POST /log-routes/{id}/delete`.
//! - `POST /registry/{name}/tags/{tag}/delete`, `POST /login` (`token`), `POST /logout`.
//! - Every form above but `/login` also sends `csrf`.
//!
//! Repository names go into URLs as they are, segment by segment percent-encoded
//! (`/repos/owner/name/builds/3`); step names in API URLs are percent-encoded whole.
//!
//! # Filters and functions
//! - `duration(start_ms, end_ms | none)` (function and filter `start|duration(end)`): a
//!   `<span class="duration" data-started data-finished>` reading "1m 03s"; without an end
//!   it counts from now, and the JavaScript keeps counting every second.
//! - `ms|ago`: `<time datetime="ISO" data-ago>` with the UTC time; JS turns it into "3 min ago".
//! - `status|status`: the badge `<span class="badge status-NAME" data-status="NAME">` with an
//!   icon and the name as text (not colour alone).
//! - `text|first_line`, `sha|short_sha` (7 characters), `bytes|filesize`, `name|path`
//!   (percent-encode for a URL path, keeping `/`), `text|urlpart` (percent-encode all),
//!   `name|dom_id` (an id-safe form: other characters become `-`),
//!   `image|image_repo(registry_host)` (`host/team/app:tag` -> `team/app`).
//! - Globals `css_url`, `js_url`: the cache-busted asset URLs.
//!
//! # Build page behaviours (`app.js`) and the selectors they (and tests) rely on
//! - `#build-status` holds the build's badge; `#build` carries `data-repo`, `data-number`,
//!   `data-status`, and `data-events` (the SSE URL `/api/repos/{repo}/builds/{n}/events`,
//!   present only while the build is pending or running).
//! - Stage cards: `.stage[data-stage="N"]`, badge inside `.stage-status`.
//! - Steps: `.step[data-stage="N"][data-step="NAME"]` (in the graph), containing `.badge`,
//!   `.duration`, `.exit-code`; the link `a.step-link` opens its log panel.
//! - Log panels: `.log-panel[data-stage][data-step]` (id `panel-{stage}-{dom_id(step)}`),
//!   the log container `.log[data-stage][data-step]` with id `log-{stage}-{dom_id(step)}`
//!   and `data-stream` (SSE URL `.../logs/{stage}/{step}/stream`); a `a.raw` link to
//!   `.../logs/{stage}/{step}`. Each log line is `<div class="line" data-seq="N">` holding
//!   `<span class="ln">` (its line number) and `<span class="text">` whose children are
//!   text spans with classes `ansi-fg-red`, `ansi-fg-bright-red`, `ansi-bg-red`,
//!   `ansi-bold`, ... (30–37, 90–97, 40–47, 1, reset; other escapes are stripped).
//! - The event stream updates badges, durations and exit codes in place; a finished build
//!   removes `#cancel-form` (the cancel button is `#cancel`) and shows `#promote-form`.
//! - A log stream appends lines in `seq` order, ignores a `seq` already shown (reconnects
//!   resend), renders ANSI colours by creating nodes with `textContent` only, keeps
//!   scrolled to the bottom while the reader is at the bottom, and closes on `end`.
//! - The panel opened by itself: the `#panel-...` of the URL hash, else the running step,
//!   else the first failed, else the last; it follows the running step until the reader
//!   chooses one.
//! - Every page: `time[data-ago]` becomes relative; `button[data-copy]` copies its text.

use std::fmt::Write as _;

use std::sync::OnceLock;

use minijinja::{Environment, UndefinedBehavior, Value};
use sha2::{Digest, Sha256};

const CSS: &str = include_str!("static/app.css");
const JS: &str = include_str!("static/app.js");

const TEMPLATES: &[(&str, &str)] = &[
    ("layout.html", include_str!("templates/layout.html")),
    ("macros.html", include_str!("templates/macros.html")),
    ("index.html", include_str!("templates/index.html")),
    ("repo.html", include_str!("templates/repo.html")),
    ("build.html", include_str!("templates/build.html")),
    ("run.html", include_str!("templates/run.html")),
    ("secrets.html", include_str!("templates/secrets.html")),
    ("settings.html", include_str!("templates/settings.html")),
    ("new_repo.html", include_str!("templates/new_repo.html")),
    ("runners.html", include_str!("templates/runners.html")),
    ("registry.html", include_str!("templates/registry.html")),
    ("proxy.html", include_str!("templates/proxy.html")),
    ("notify.html", include_str!("templates/notify.html")),
    ("deploy.html", include_str!("templates/deploy.html")),
    ("stack.html", include_str!("templates/stack.html")),
    (
        "service_logs.html",
        include_str!("templates/service_logs.html"),
    ),
    ("log_routes.html", include_str!("templates/log_routes.html")),
    (
        "registry_repo.html",
        include_str!("templates/registry_repo.html"),
    ),
    ("login.html", include_str!("templates/login.html")),
    ("error.html", include_str!("templates/error.html")),
];

/// Why a page could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum UiError {
    #[error("cannot render template `{template}`: {source:#}")]
    Render {
        template: String,
        #[source]
        source: minijinja::Error,
    },
}

/// The template environment. Build it once ([`Ui::new`]) and share it (it is `Send + Sync`).
#[derive(Debug)]
pub struct Ui {
    env: Environment<'static>,
}

impl Default for Ui {
    fn default() -> Self {
        Ui::new()
    }
}

impl Ui {
    /// Every template, filter, function and global registered.
    pub fn new() -> Ui {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
        env.set_formatter(format_value);
        for (name, source) in TEMPLATES {
            if let Err(err) = env.add_template(name, source) {
                // The templates are compiled in and checked by the unit tests; a broken one
                // still must not take the server down, so it renders as an error instead.
                tracing::error!("template {name} does not parse: {err:#}");
            }
        }
        env.add_function("duration", duration);
        env.add_filter("duration", duration);
        env.add_filter("ago", ago);
        env.add_filter("status", status_badge);
        env.add_filter("first_line", first_line);
        env.add_filter("short_sha", short_sha);
        env.add_filter("filesize", filesize);
        env.add_filter("path", url_path);
        env.add_filter("urlpart", url_part);
        env.add_filter("dom_id", dom_id);
        env.add_filter("image_repo", image_repo);
        env.add_global("css_url", asset_url("app.css"));
        env.add_global("js_url", asset_url("app.js"));
        Ui { env }
    }

    /// Renders `template` (for example `"build.html"`) with `context` (see the module doc
    /// for what each template expects).
    pub fn render(
        &self,
        template: &str,
        context: impl serde::Serialize,
    ) -> Result<String, UiError> {
        let err = |source| UiError::Render {
            template: template.to_owned(),
            source,
        };
        let tmpl = self.env.get_template(template).map_err(err)?;
        tmpl.render(Value::from_serialize(&context)).map_err(err)
    }

    /// The content type and bytes of a static asset: `/static/app.css`, `/static/app.js`
    /// (also without the `/static/` prefix; a `?v=...` query is ignored).
    pub fn asset(path: &str) -> Option<(&'static str, &'static [u8])> {
        let path = path.split('?').next().unwrap_or(path);
        let name = path.strip_prefix("/static/").unwrap_or(path);
        match name {
            "app.css" => Some(("text/css; charset=utf-8", CSS.as_bytes())),
            "app.js" => Some(("text/javascript; charset=utf-8", JS.as_bytes())),
            _ => None,
        }
    }
}

/// `/static/app.css?v=<first 12 hex digits of its SHA-256>` (same for `app.js`); `None`
/// for another name.
pub fn asset_url(name: &str) -> Option<String> {
    static VERSIONS: OnceLock<(String, String)> = OnceLock::new();
    let (css, js) = VERSIONS.get_or_init(|| (version(CSS), version(JS)));
    match name {
        "app.css" => Some(format!("/static/app.css?v={css}")),
        "app.js" => Some(format!("/static/app.js?v={js}")),
        _ => None,
    }
}

fn version(content: &str) -> String {
    let digest = Sha256::digest(content.as_bytes());
    hex::encode(&digest[..6])
}

/// Milliseconds as "12s", "1m 03s", "2h 05m".
pub fn format_duration(ms: i64) -> String {
    let secs = ms.max(0) / 1000;
    if secs < 60 {
        format!("{secs}s")
    } else if secs < 3600 {
        format!("{}m {:02}s", secs / 60, secs % 60)
    } else {
        format!("{}h {:02}m", secs / 3600, (secs % 3600) / 60)
    }
}

use crate::now_ms;

/// HTML-escapes text for element content and quoted attribute values.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// Like minijinja's formatter, but HTML escaping leaves `/` alone (URLs stay readable and
/// `/` needs no escaping in text or quoted attributes).
fn format_value(
    out: &mut minijinja::Output,
    state: &minijinja::State,
    value: &Value,
) -> Result<(), minijinja::Error> {
    if let (minijinja::AutoEscape::Html, Some(text), false) =
        (state.auto_escape(), value.as_str(), value.is_safe())
    {
        return out
            .write_str(&esc(text))
            .map_err(|_| minijinja::Error::from(minijinja::ErrorKind::WriteFailure));
    }
    minijinja::escape_formatter(out, state, value)
}

fn duration(start: Option<i64>, end: Option<i64>) -> Value {
    let Some(start) = start else {
        return Value::from_safe_string("<span class=\"duration\">–</span>".to_owned());
    };
    let (finished_attr, ms) = match end {
        Some(end) => (format!(" data-finished=\"{end}\""), end - start),
        None => (String::new(), now_ms() - start),
    };
    Value::from_safe_string(format!(
        "<span class=\"duration\" data-started=\"{start}\"{finished_attr}>{}</span>",
        format_duration(ms)
    ))
}

/// `YYYY-MM-DDTHH:MM:SSZ` of a unix time in ms (UTC; times before 1970 show as 1970).
pub fn iso_time(ms: i64) -> String {
    let since = std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + since).to_string()
}

fn ago(ms: Option<i64>) -> Value {
    let Some(ms) = ms else {
        return Value::from_safe_string("<span class=\"never\">never</span>".to_owned());
    };
    let iso = iso_time(ms);
    let shown = format!("{} {} UTC", &iso[..10], &iso[11..16]);
    Value::from_safe_string(format!(
        "<time datetime=\"{iso}\" data-ago title=\"{iso}\">{shown}</time>"
    ))
}

/// The icon shown before each status name (kept in step with `ICONS` in app.js).
pub fn status_icon(status: &str) -> &'static str {
    match status {
        "pending" => "○",
        "running" => "◔",
        "success" => "✓",
        "failure" => "✗",
        "killed" => "■",
        "error" => "!",
        "skipped" => "↷",
        "online" => "●",
        "offline" => "○",
        _ => "?",
    }
}

fn status_badge(status: Value) -> Value {
    let name = status
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| status.to_string());
    let known = status_icon(&name) != "?";
    let class = if known {
        esc(&name)
    } else {
        "unknown".to_owned()
    };
    Value::from_safe_string(format!(
        "<span class=\"badge status-{class}\" data-status=\"{}\"><span class=\"icon\" aria-hidden=\"true\">{}</span><span class=\"label\">{}</span></span>",
        esc(&name),
        status_icon(&name),
        esc(&name)
    ))
}

fn first_line(text: Option<String>) -> String {
    text.unwrap_or_default()
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
        .to_owned()
}

fn short_sha(sha: Option<String>) -> String {
    sha.unwrap_or_default().chars().take(7).collect()
}

fn filesize(bytes: Option<i64>) -> String {
    let b = bytes.unwrap_or(0).max(0);
    #[allow(clippy::cast_precision_loss)]
    let f = b as f64;
    if b < 1024 {
        format!("{b} B")
    } else if b < 1024 * 1024 {
        format!("{:.1} KiB", f / 1024.0)
    } else if b < 1024 * 1024 * 1024 {
        format!("{:.1} MiB", f / (1024.0 * 1024.0))
    } else {
        format!("{:.2} GiB", f / (1024.0 * 1024.0 * 1024.0))
    }
}

fn percent_encode(text: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        let keep = b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (keep_slash && b == b'/');
        if keep {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn url_path(text: String) -> String {
    percent_encode(&text, true)
}

fn url_part(text: Value) -> String {
    percent_encode(&text.to_string(), false)
}

/// A name made safe for an HTML id: characters other than ASCII letters, digits, `-` and `_`
/// become `-`.
pub fn dom_id(name: String) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// `host/team/app:tag` (or `@sha256:...`) -> `team/app`; the host is `registry_host` when
/// given, else a first segment with a `.` or `:` or `localhost`.
fn image_repo(image: String, registry_host: Option<String>) -> String {
    let mut rest = image.as_str();
    if let Some(host) = registry_host.as_deref().filter(|h| !h.is_empty())
        && let Some(stripped) = rest.strip_prefix(host).and_then(|r| r.strip_prefix('/'))
    {
        rest = stripped;
    } else if let Some((first, tail)) = rest.split_once('/')
        && (first.contains('.') || first.contains(':') || first == "localhost")
    {
        rest = tail;
    }
    let rest = rest.split('@').next().unwrap_or(rest);
    match rest.rfind(':') {
        Some(colon) if !rest[colon..].contains('/') => rest[..colon].to_owned(),
        _ => rest.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Artifact, Build, Repo, Runner, Stage, Step};
    use serde_json::json;
    use slipway_engine::Status;

    const NOW: i64 = 1_714_563_296_000; // 2024-05-01T11:34:56Z

    fn repo() -> Repo {
        Repo {
            id: 1,
            name: "team/app".into(),
            provider: "github".into(),
            clone_url: "https://git.example/team/app.git".into(),
            config_path: None,
            webhook_secret: "s3cret-hook".into(),
            default_branch: "main".into(),
            trusted: false,
            auto_cancel: true,
            max_running: 2,
            status_url: Some("https://api.github.com".into()),
            status_token: Some("ciphertext".into()),
            registry_paths: vec!["team/shared-*".into()],
            created: NOW - 86_400_000,
        }
    }

    fn build(number: i64, status: Status, message: &str) -> Build {
        Build {
            id: number,
            repo_id: 1,
            number,
            status,
            event: "push".into(),
            reference: "refs/heads/main".into(),
            branch: "main".into(),
            commit: "0123456789abcdef0123456789abcdef01234567".into(),
            message: message.into(),
            author: "Ada <ada@example.com>".into(),
            trigger: "webhook".into(),
            deploy_to: String::new(),
            delivery_id: Some("d-1".into()),
            context: json!({}),
            error: None,
            created: NOW - 120_000,
            started: Some(NOW - 63_000),
            finished: if status == Status::Running {
                None
            } else {
                Some(NOW)
            },
        }
    }

    fn stage(number: i64, name: &str, status: Status, attempt: i64) -> Stage {
        Stage {
            id: number,
            build_id: 1,
            repo_id: 1,
            number,
            name: name.into(),
            status,
            depends_on: vec![],
            labels: Default::default(),
            plan: json!({}),
            attempt,
            runner_id: Some(1),
            lease_expires: None,
            cancel_requested: false,
            error: None,
            created: NOW - 60_000,
            started: Some(NOW - 60_000),
            finished: None,
        }
    }

    fn step(number: i64, name: &str, status: Status, exit_code: Option<i64>) -> Step {
        Step {
            id: number,
            stage_id: 1,
            number,
            name: name.into(),
            status,
            exit_code,
            error: None,
            started: Some(NOW - 50_000),
            finished: exit_code.map(|_| NOW - 10_000),
        }
    }

    const EVIL: &str = "<script>alert(1)</script> fix \"quotes\" & stuff\n\nbody <b>line</b>";

    fn build_context() -> serde_json::Value {
        let mut failed = build(7, Status::Error, EVIL);
        failed.error =
            Some(".drone.yml:3:1: error: <bad> key\n.drone.yml:9:2: error: cycle".into());
        json!({
            "title": "team/app #7",
            "user": {"name": "admin"}, "csrf": "a-form-token",
            "repo": repo(),
            "build": failed,
            "stages": [
                {"stage": stage(1, "default", Status::Running, 2), "steps": [
                    step(1, "clone", Status::Success, Some(0)),
                    step(2, "build & test", Status::Running, None),
                    step(3, "deploy", Status::Pending, None),
                ]},
                {"stage": stage(2, "docs", Status::Failure, 1), "steps": [
                    step(1, "clone", Status::Success, Some(0)),
                    step(2, "docs", Status::Failure, Some(2)),
                    step(3, "skipme", Status::Skipped, None),
                ]},
            ],
            "artifacts": [Artifact {
                id: 1, build_id: 7,
                image: "ci.example:8080/team/app:1.2".into(),
                digest: "sha256:0123456789abcdef0123456789abcdef".into(),
                created: NOW,
            }],
            "registry_host": "ci.example:8080",
            "deploys": [{"env": "production", "stack": "shop", "number": 4,
                         "status": "succeeded", "created": NOW}],
        })
    }

    /// A sample context for every template.
    fn samples() -> Vec<(&'static str, serde_json::Value)> {
        let user = json!({"name": "admin"});
        let runner = Runner {
            id: 1,
            name: "runner-1".into(),
            labels: [("os".to_owned(), "linux".to_owned())]
                .into_iter()
                .collect(),
            capacity: 4,
            version: "0.1.0".into(),
            last_seen: NOW - 5_000,
            created: NOW - 86_400_000,
            credential_hash: String::new(),
        };
        vec![
            (
                "index.html",
                json!({"title": "Repositories", "user": user, "csrf": "a-form-token",
                "repos": [{"repo": repo(), "last_build": build(3, Status::Success, EVIL)},
                          {"repo": Repo { name: "team/empty".into(), ..repo() }, "last_build": null}],
                "builds": [{"build": build(3, Status::Success, EVIL), "repo": "team/app"},
                           {"build": build(4, Status::Running, "wip"), "repo": "team/app"}]}),
            ),
            (
                "index.html",
                json!({"title": "Repositories", "user": user, "csrf": "a-form-token", "repos": [], "builds": []}),
            ),
            (
                "repo.html",
                json!({"title": "team/app", "user": user, "csrf": "a-form-token", "repo": repo(),
                "builds": [build(3, Status::Success, EVIL), Build { reference: "refs/tags/v1.2".into(), event: "tag".into(), ..build(2, Status::Failure, "tagged") },
                           Build { reference: "refs/pull/12/head".into(), event: "pull_request".into(), ..build(1, Status::Killed, "pr") }],
                "webhook_url": "https://ci.example/hook/team/app", "next_before": 1}),
            ),
            (
                "repo.html",
                json!({"title": "team/app", "user": user, "csrf": "a-form-token", "repo": repo(), "builds": [],
                "webhook_url": "https://ci.example/hook/team/app", "next_before": null}),
            ),
            ("build.html", build_context()),
            (
                "run.html",
                json!({"title": "Run", "user": user, "csrf": "a-form-token", "repo": repo(),
                "branches": ["main", "dev"], "tags": ["latest", "v1.0", "v1.1"]}),
            ),
            (
                "secrets.html",
                json!({"title": "Secrets", "user": user, "csrf": "a-form-token", "repo": repo(),
                "secrets": [{"name": "docker_password", "allow_pull_request": false, "updated": NOW}]}),
            ),
            (
                "settings.html",
                json!({"title": "Settings", "user": user, "csrf": "a-form-token", "repo": repo(),
                "webhook_url": "https://ci.example/hook/team/app"}),
            ),
            (
                "new_repo.html",
                json!({"title": "Add repository", "user": user, "csrf": "a-form-token"}),
            ),
            (
                "runners.html",
                json!({"title": "Runners", "user": user, "csrf": "a-form-token",
                "runners": [{"runner": runner, "online": true, "running": 1}]}),
            ),
            (
                "proxy.html",
                json!({"title": "Proxy", "user": user, "csrf": "a-form-token", "running": true,
                "routes": [{"host": "app.example.com", "path": "/api", "priority": 0,
                    "source": "labels of container web-1", "origin": "router web",
                    "tls": {"mode": "acme", "certificate": {"present": false,
                        "last_error": "urn:ietf:params:acme:error:connection", "last_error_at": "2026-12-07T08:00:00Z",
                        "next_attempt": "2026-12-07T08:05:00Z"}},
                    "backends": [{"address": "172.18.0.2:80", "set": "default", "set_weight": 1,
                        "weight": 1, "state": "serving", "in_flight": 2}]}],
                "conflicts": [{"key": {"host": "app.example.com"}, "winner": {"kind": "file"},
                    "loser": {"kind": "labels"}, "reason": "different backends"}],
                "diagnostics": [{"severity": "warning", "origin": "container web-1",
                    "key": "traefik.http.routers.web.rule", "message": "unknown matcher", "hint": "use Host()"}],
                "docker_error": "cannot reach the Docker engine at /var/run/docker.sock"}),
            ),
            (
                "proxy.html",
                json!({"title": "Proxy", "user": user, "csrf": "a-form-token", "running": false,
                "routes": [], "conflicts": []}),
            ),
            (
                "notify.html",
                json!({"title": "Notifications", "user": user, "csrf": "a-form-token",
                "flash": "robot: delivered (12 ms)",
                "channels": [{"name": "robot", "kind": "wechat-work-robot", "settings": {"format": "markdown"},
                    "secret_names": ["url"], "events": ["build.failure"], "repo": "team/*",
                    "template": null, "branch": null, "environment": null}],
                "deliveries": [{"id": 1, "channel": "robot", "event": "build.failure", "repo": "team/app",
                    "build_number": 3, "status": "delivered", "attempts": 2, "created": NOW,
                    "answer": "{\"errcode\":0}", "template_error": "template error at line 1, column 4: x",
                    "attempt_log": [{"at": NOW, "http_status": 500, "latency_ms": 3, "merged": 1},
                        {"at": NOW, "http_status": null, "latency_ms": 3, "merged": 2}]}],
                "kinds": [{"name": "email", "settings": [{"name": "host", "secret": false, "required": true, "help": "the SMTP server"}]}]}),
            ),
            (
                "notify.html",
                json!({"title": "Notifications", "user": user, "csrf": "a-form-token",
                "channels": [], "deliveries": [], "kinds": []}),
            ),
            (
                "deploy.html",
                json!({"title": "Deployments", "user": user, "csrf": "a-form-token",
                "envs": [{"env": {"name": "production", "domain": "example.com", "vars": {"A": "1"}},
                    "stacks": [{"stack": {"name": "shop", "current": 3},
                        "latest": {"number": 4, "status": "rolled_back", "cause": "build:team/shop#9"}}],
                    "rules": [{"repo": "team/shop", "branch": "main", "stack": "shop"}]},
                    {"env": {"name": "qa", "domain": null, "vars": {}}, "stacks": [], "rules": []}]}),
            ),
            (
                "deploy.html",
                json!({"title": "Deployments", "user": user, "csrf": "a-form-token", "envs": []}),
            ),
            (
                "stack.html",
                json!({"title": "Stack", "user": user, "csrf": "a-form-token",
                "env": {"name": "production"}, "stack": {"name": "shop", "current": 3},
                "containers": [{"service": "web", "name": "production-shop-web-3-1", "revision": "3",
                    "state": "running", "health": "healthy"}],
                "engine_error": null,
                "revisions": [
                    {"number": 4, "status": "rolled_back", "message": "service web: unhealthy", "cause": "user:admin",
                     "created": NOW, "images": {"web": "reg/web@sha256:ab"}},
                    {"number": 3, "status": "succeeded", "message": null, "cause": "rollback:1", "created": NOW,
                     "images": {"web": "reg/web@sha256:cd"}},
                    {"number": 2, "status": "succeeded", "message": null, "cause": "webhook", "created": NOW,
                     "images": {}}],
                "steps": [{"at": NOW, "kind": "container_failed", "detail": {"service": "web",
                    "container": "c4", "reason": "unhealthy"}}],
                "history": [
                    {"revision": {"number": 4, "status": "rolled_back", "message": "service web: unhealthy",
                      "cause": "user:admin", "created": NOW, "images": {"web": "reg/web@sha256:ab"}},
                     "changes": {"from": 3, "added": 1, "removed": 1,
                      "images": [{"service": "web", "old": "reg/web@sha256:cd", "new": "reg/web@sha256:ab",
                                  "old_ref": "reg/web:v1", "new_ref": "reg/web:v2"}],
                      "diff": [{"op": " ", "line": "services:"}, {"op": "-", "line": "    image: reg/web:v1"},
                               {"op": "+", "line": "    image: reg/web:v2"}, {"op": "…", "line": ""}]}},
                    {"revision": {"number": 3, "status": "succeeded", "message": null, "cause": "rollback:1",
                      "created": NOW, "images": {"web": "reg/web@sha256:cd"}},
                     "changes": {"from": 2, "added": 0, "removed": 0, "images": [], "diff": []}},
                    {"revision": {"number": 2, "status": "succeeded", "message": null, "cause": "webhook",
                      "created": NOW, "images": {}}, "changes": null}],
                "services": [{"name": "web", "containers": 1, "running": 1, "health": "1 healthy",
                    "version": "reg/web@sha256:cd", "reference": "reg/web:v1", "url": "http://web.example.com/"}],
                "rollout": {"number": 4, "status": "rolling", "state": "held", "state_text": "paused by a user",
                    "weight": 10, "running": true, "live": true,
                    "asked": {"paused": true, "promoted": false, "aborted": false}},
                "has_webhook": true, "webhook_url": "http://ci.example:8080/hooks/deploy/production/shop/t0k3n"}),
            ),
            (
                "stack.html",
                json!({"title": "Stack", "user": user, "csrf": "a-form-token",
                "env": {"name": "qa"}, "stack": {"name": "x", "current": null}, "containers": [],
                "engine_error": "cannot reach the Docker engine", "revisions": [], "steps": [],
                "history": [], "services": [], "rollout": null, "has_webhook": false, "webhook_url": null}),
            ),
            (
                "service_logs.html",
                json!({"title": "Logs", "user": user, "csrf": "a-form-token", "env": "production",
                "stack": "shop", "services": ["web", EVIL],
                "stream_url": "/api/logs/production/shop?grep=%3Cscript%3E&follow=1",
                "query": {"service": "web", "since": "1h", "grep": EVIL, "revision": "4", "replica": "2", "stream": "stderr"}}),
            ),
            (
                "log_routes.html",
                json!({"title": "Log routes", "user": user, "csrf": "a-form-token",
                "routes": [{"id": "a1b2c3d4", "uri": "relp://logs.example:2514", "configured": false,
                    "delivered": 1200, "rejected": 0, "lag_bytes": 2048, "lag_records": 31, "last_error": EVIL},
                    {"id": "e5f6", "uri": "syslog+tcp://10.0.0.5:514", "configured": true,
                    "delivered": 0, "rejected": 0, "lag_bytes": 0, "lag_records": 0, "last_error": null}],
                "error": "unknown scheme `ftp`"}),
            ),
            (
                "registry.html",
                json!({"title": "Registry", "user": user, "csrf": "a-form-token",
                "repositories": [{"name": "team/app", "tags": 2}]}),
            ),
            (
                "registry_repo.html",
                json!({"title": "team/app", "user": user, "csrf": "a-form-token", "name": "team/app",
                "registry_host": "ci.example:8080",
                "tags": [{"tag": "1.2", "digest": "sha256:0123456789abcdef0123456789abcdef", "size": 12_345_678, "pushed": NOW}]}),
            ),
            (
                "login.html",
                json!({"title": "Log in", "user": null, "error": "bad token"}),
            ),
            (
                "login.html",
                json!({"title": "Log in", "user": null, "error": null}),
            ),
            (
                "error.html",
                json!({"title": "Not found", "user": null, "status": 404, "message": "no such build"}),
            ),
        ]
    }

    #[test]
    fn ui_every_template_renders() {
        let ui = Ui::new();
        let mut seen = std::collections::BTreeSet::new();
        for (name, ctx) in samples() {
            let html = ui
                .render(name, &ctx)
                .unwrap_or_else(|e| panic!("{name} renders: {e}"));
            assert!(html.starts_with("<!doctype html>"), "{name}");
            assert!(html.contains("/static/app.css?v="), "{name} links the css");
            assert!(html.contains("/static/app.js?v="), "{name} links the js");
            assert!(!html.contains("<script>alert"), "{name} escapes");
            seen.insert(name);
        }
        for (name, _) in TEMPLATES {
            if *name != "layout.html" && *name != "macros.html" {
                assert!(seen.contains(name), "{name} has a sample");
            }
        }
    }

    #[test]
    fn ui_escapes_script_in_commit_message() {
        let ui = Ui::new();
        for (name, ctx) in samples()
            .into_iter()
            .filter(|(_, ctx)| ctx.to_string().contains("<script>alert(1)</script>"))
        {
            let html = ui.render(name, &ctx).expect("renders");
            assert!(
                !html.contains("<script>alert(1)</script>"),
                "{name}: {html}"
            );
            assert!(
                html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
                "{name} shows it escaped: {html}"
            );
        }
        let html = ui.render("build.html", build_context()).expect("renders");
        assert!(html.contains(r#"href="/deploy/production/shop#revision-4""#));
        assert!(html.contains("&lt;bad&gt; key"), "lint messages escaped");
        assert!(!html.contains("<b>line</b>"));
    }

    #[test]
    fn ui_build_page_has_the_selectors_of_the_js() {
        let ui = Ui::new();
        let mut ctx = build_context();
        ctx["build"]["status"] = json!("running");
        ctx["build"]["finished"] = json!(null);
        let html = ui.render("build.html", &ctx).expect("renders");
        for needle in [
            r#"id="build""#,
            r#"data-events="/api/repos/team/app/builds/7/events""#,
            r#"id="build-status""#,
            r#"<button type="submit" id="cancel""#,
            r#"action="/repos/team/app/builds/7/cancel""#,
            r#"action="/repos/team/app/builds/7/restart""#,
            r#"action="/repos/team/app/builds/7/promote""#,
            r#"id="promote-form" hidden"#,
            r#"class="step" data-stage="1" data-step="build &amp; test" data-status="running""#,
            r#"id="log-1-build---test""#,
            r#"data-stream="/api/repos/team/app/builds/7/logs/1/build%20%26%20test/stream""#,
            r#"href="/api/repos/team/app/builds/7/logs/1/build%20%26%20test""#,
            "attempt 2",
            "exit 2",
            r#"href="/registry/team/app""#,
            r#"<span class="badge status-running" data-status="running">"#,
        ] {
            assert!(html.contains(needle), "missing {needle}");
        }
        // Finished: no cancel, promote visible.
        let html = ui.render("build.html", build_context()).expect("renders");
        assert!(!html.contains(r#"id="cancel""#));
        assert!(!html.contains("data-events"));
        assert!(html.contains(r#"id="promote-form">"#));
    }

    #[test]
    fn ui_filters() {
        assert_eq!(format_duration(63_000), "1m 03s");
        assert_eq!(format_duration(9_999), "9s");
        assert_eq!(format_duration(3_725_000), "1h 02m");
        assert_eq!(iso_time(NOW), "2024-05-01T11:34:56Z");
        assert_eq!(iso_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso_time(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(first_line(Some("\n  fix it  \nmore".into())), "fix it");
        assert_eq!(short_sha(Some("0123456789".into())), "0123456");
        assert_eq!(dom_id("build & test".into()), "build---test");
        assert_eq!(url_path("team/my app".into()), "team/my%20app");
        assert_eq!(
            image_repo(
                "ci.example:8080/team/app:1.2".into(),
                Some("ci.example:8080".into())
            ),
            "team/app"
        );
        assert_eq!(
            image_repo("localhost:5000/app@sha256:ab".into(), None),
            "app"
        );
        assert_eq!(image_repo("team/app".into(), None), "team/app");
        let ui = Ui::new();
        let d = ui.render_str("{{ duration(1000, 64000) }}");
        assert_eq!(
            d,
            r#"<span class="duration" data-started="1000" data-finished="64000">1m 03s</span>"#
        );
        let a = ui.render_str("{{ 1714563296000 | ago }}");
        assert!(
            a.contains(r#"datetime="2024-05-01T11:34:56Z""#) && a.contains("data-ago"),
            "{a}"
        );
        for s in [
            "pending", "running", "success", "failure", "killed", "error", "skipped",
        ] {
            let b = ui.render_str(&format!("{{{{ '{s}' | status }}}}"));
            assert!(
                b.contains(&format!("status-{s}")) && b.contains(&format!(">{s}</span>")),
                "{b}"
            );
            assert_ne!(status_icon(s), "?");
        }
        let b = ui.render_str("{{ '<x>' | status }}");
        assert!(
            b.contains("status-unknown") && b.contains("&lt;x&gt;"),
            "{b}"
        );
    }

    #[test]
    fn ui_assets() {
        let (ct, css) = Ui::asset("/static/app.css").expect("css");
        assert!(ct.starts_with("text/css") && !css.is_empty());
        let (ct, js) = Ui::asset("/static/app.js?v=123").expect("js");
        assert!(ct.starts_with("text/javascript") && !js.is_empty());
        assert!(Ui::asset("/static/../mod.rs").is_none());
        let url = asset_url("app.js").expect("url");
        assert!(
            url.starts_with("/static/app.js?v=") && url.len() == "/static/app.js?v=".len() + 12
        );
        let js = std::str::from_utf8(js).expect("utf-8");
        assert!(!js.contains("innerHTML"), "app.js never uses innerHTML");
    }

    impl Ui {
        fn render_str(&self, source: &str) -> String {
            self.env.render_str(source, ()).expect("renders")
        }
    }
}
