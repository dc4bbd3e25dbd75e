//! Templates: minijinja over the event's [`Context`], with Drone's variable names
//! (`DRONE_REPO_NAME`, `DRONE_BUILD_NUMBER`, `DRONE_COMMIT_AUTHOR`, `DRONE_COMMIT_MESSAGE`,
//! `DRONE_BUILD_LINK`, `DRONE_BUILD_STATUS`, ...) and the `build`, `repo` and `deploy`
//! objects, as the Drone notification plugins name their fields (`build.number`,
//! `build.author`, `repo.name`, ...), and a `commit` object (`commit.author`,
//! `commit.branch`, `commit.message`, `commit.sha`) as appleboy's plugins have it.
//! Undefined names render as empty text, as in those plugins.
//!
//! [`from_handlebars`] reads the plugins' Handlebars-style templates (`{{build.number}}`,
//! `{{#success build.status}}…{{else}}…{{/success}}`, `{{truncate build.commit 8}}`, ...)
//! as minijinja.
//!
//! A template that does not render gives a [`TemplateError`] with its line and column;
//! [`render_or_default`] then sends the default message, so a typo never silences a
//! notification.

use std::collections::BTreeMap;

use minijinja::{Environment, UndefinedBehavior};
use serde::Serialize;

use crate::{Message, Status};

/// A build, with the field names of Drone's notification plugins.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Build {
    pub number: u64,
    /// `success`, `failure`, `error`, `killed`, `running`.
    pub status: String,
    /// `push`, `pull_request`, `tag`, `promote`, `rollback`, `cron`, `custom`.
    pub event: String,
    pub branch: String,
    pub tag: String,
    pub commit: String,
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub message: String,
    pub author: String,
    pub author_name: String,
    pub author_email: String,
    pub author_avatar: String,
    pub link: String,
    pub pull: String,
    pub deploy_to: String,
    /// Unix seconds.
    pub created: i64,
    pub started: i64,
    pub finished: i64,
}

/// A repository.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Repo {
    pub owner: String,
    pub name: String,
    /// `owner/name`.
    pub full_name: String,
    pub link: String,
    pub branch: String,
}

/// A deployment (the deployer's events).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Deploy {
    pub environment: String,
    pub stack: String,
    pub revision: String,
    /// `started`, `succeeded`, `failed`, `rolled_back`.
    pub status: String,
    pub url: String,
    pub images: Vec<String>,
}

/// What a template sees.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Context {
    pub build: Build,
    pub repo: Repo,
    pub deploy: Option<Deploy>,
}

fn var(vars: &BTreeMap<String, String>, name: &str) -> String {
    vars.get(name).cloned().unwrap_or_default()
}

fn num(vars: &BTreeMap<String, String>, name: &str) -> i64 {
    vars.get(name)
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

impl Context {
    /// The context from a step's `DRONE_*` variables (what a plugin container sees).
    pub fn from_drone_env(vars: &BTreeMap<String, String>) -> Context {
        let (owner, name) = match vars.get("DRONE_REPO") {
            Some(slug) => match slug.split_once('/') {
                Some((owner, name)) => (owner.to_string(), name.to_string()),
                None => (var(vars, "DRONE_REPO_OWNER"), slug.clone()),
            },
            None => (var(vars, "DRONE_REPO_OWNER"), var(vars, "DRONE_REPO_NAME")),
        };
        let name = vars.get("DRONE_REPO_NAME").cloned().unwrap_or(name);
        let full_name = if owner.is_empty() {
            name.clone()
        } else {
            format!("{owner}/{name}")
        };
        Context {
            build: Build {
                number: num(vars, "DRONE_BUILD_NUMBER").max(0) as u64,
                status: vars
                    .get("DRONE_BUILD_STATUS")
                    .cloned()
                    .unwrap_or_else(|| "success".into()),
                event: var(vars, "DRONE_BUILD_EVENT"),
                branch: vars
                    .get("DRONE_BRANCH")
                    .or_else(|| vars.get("DRONE_COMMIT_BRANCH"))
                    .cloned()
                    .unwrap_or_default(),
                tag: var(vars, "DRONE_TAG"),
                commit: vars
                    .get("DRONE_COMMIT_SHA")
                    .or_else(|| vars.get("DRONE_COMMIT"))
                    .cloned()
                    .unwrap_or_default(),
                git_ref: var(vars, "DRONE_COMMIT_REF"),
                message: var(vars, "DRONE_COMMIT_MESSAGE"),
                author: var(vars, "DRONE_COMMIT_AUTHOR"),
                author_name: var(vars, "DRONE_COMMIT_AUTHOR_NAME"),
                author_email: var(vars, "DRONE_COMMIT_AUTHOR_EMAIL"),
                author_avatar: var(vars, "DRONE_COMMIT_AUTHOR_AVATAR"),
                link: var(vars, "DRONE_BUILD_LINK"),
                pull: var(vars, "DRONE_PULL_REQUEST"),
                deploy_to: var(vars, "DRONE_DEPLOY_TO"),
                created: num(vars, "DRONE_BUILD_CREATED"),
                started: num(vars, "DRONE_BUILD_STARTED"),
                finished: num(vars, "DRONE_BUILD_FINISHED"),
            },
            repo: Repo {
                owner,
                name,
                full_name,
                link: var(vars, "DRONE_REPO_LINK"),
                branch: var(vars, "DRONE_REPO_BRANCH"),
            },
            deploy: None,
        }
    }

    /// The `DRONE_*` variables this context stands for.
    pub fn variables(&self) -> BTreeMap<String, String> {
        let b = &self.build;
        let r = &self.repo;
        let mut vars: BTreeMap<String, String> = [
            ("DRONE_REPO", r.full_name.clone()),
            ("DRONE_REPO_OWNER", r.owner.clone()),
            ("DRONE_REPO_NAMESPACE", r.owner.clone()),
            ("DRONE_REPO_NAME", r.name.clone()),
            ("DRONE_REPO_LINK", r.link.clone()),
            ("DRONE_REPO_BRANCH", r.branch.clone()),
            ("DRONE_BUILD_NUMBER", b.number.to_string()),
            ("DRONE_BUILD_STATUS", b.status.clone()),
            ("DRONE_BUILD_EVENT", b.event.clone()),
            ("DRONE_BUILD_LINK", b.link.clone()),
            ("DRONE_BUILD_CREATED", b.created.to_string()),
            ("DRONE_BUILD_STARTED", b.started.to_string()),
            ("DRONE_BUILD_FINISHED", b.finished.to_string()),
            ("DRONE_BRANCH", b.branch.clone()),
            ("DRONE_COMMIT_BRANCH", b.branch.clone()),
            ("DRONE_TAG", b.tag.clone()),
            ("DRONE_COMMIT", b.commit.clone()),
            ("DRONE_COMMIT_SHA", b.commit.clone()),
            ("DRONE_COMMIT_REF", b.git_ref.clone()),
            ("DRONE_COMMIT_MESSAGE", b.message.clone()),
            ("DRONE_COMMIT_AUTHOR", b.author.clone()),
            ("DRONE_COMMIT_AUTHOR_NAME", b.author_name.clone()),
            ("DRONE_COMMIT_AUTHOR_EMAIL", b.author_email.clone()),
            ("DRONE_COMMIT_AUTHOR_AVATAR", b.author_avatar.clone()),
            ("DRONE_PULL_REQUEST", b.pull.clone()),
            ("DRONE_DEPLOY_TO", b.deploy_to.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        if let Some(d) = &self.deploy {
            vars.insert("DEPLOY_ENVIRONMENT".into(), d.environment.clone());
            vars.insert("DEPLOY_STACK".into(), d.stack.clone());
            vars.insert("DEPLOY_REVISION".into(), d.revision.clone());
            vars.insert("DEPLOY_URL".into(), d.url.clone());
            vars.insert("DEPLOY_STATUS".into(), d.status.clone());
        }
        vars
    }

    /// Everything a template sees: `build`, `repo`, `deploy` and the variables.
    fn value(&self) -> serde_json::Value {
        let mut value = serde_json::json!({
            "build": self.build,
            "repo": self.repo,
            "deploy": self.deploy,
        });
        // appleboy's plugins (drone-telegram, drone-discord) read the commit as its own
        // object.
        let b = &self.build;
        value["commit"] = serde_json::json!({
            "sha": b.commit, "ref": b.git_ref, "branch": b.branch, "message": b.message,
            "author": b.author, "email": b.author_email, "avatar": b.author_avatar,
            "link": self.repo.link,
        });
        for (name, text) in self.variables() {
            value[name] = serde_json::Value::String(text);
        }
        value
    }

    fn status(&self) -> Status {
        match &self.deploy {
            Some(deploy) => Status::from_drone(&deploy.status),
            None => Status::from_drone(&self.build.status),
        }
    }
}

/// A template that did not render: where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("template error at line {line}, column {column}: {message}")]
pub struct TemplateError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

fn template_error(source: &str, error: &minijinja::Error) -> TemplateError {
    let line = error.line().unwrap_or(1);
    let column = match error.range() {
        Some(range) => {
            let start = range.start.min(source.len());
            let line_start = source[..start].rfind('\n').map_or(0, |i| i + 1);
            source[line_start..start].chars().count() + 1
        }
        None => 1,
    };
    let mut message = error.kind().to_string();
    if let Some(detail) = error.detail() {
        message.push_str(": ");
        message.push_str(detail);
    }
    TemplateError {
        line,
        column,
        message,
    }
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Chainable);
    env.set_keep_trailing_newline(true);
    env.add_filter("truncate_chars", |text: String, n: usize| -> String {
        text.chars().take(n).collect()
    });
    env.add_filter("uppercasefirst", |text: String| -> String {
        let mut chars = text.chars();
        match chars.next() {
            Some(first) => first.to_uppercase().chain(chars).collect(),
            None => String::new(),
        }
    });
    env.add_filter("since", |start: i64| -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(start);
        duration_text(now.saturating_sub(start))
    });
    env.add_filter("duration", |secs: i64| -> String { duration_text(secs) });
    env
}

fn duration_text(secs: i64) -> String {
    let secs = secs.max(0);
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m{}s", secs / 60, secs % 60),
        _ => format!("{}h{}m", secs / 3600, (secs % 3600) / 60),
    }
}

/// Renders `source` over `context`.
pub fn render(source: &str, context: &Context) -> Result<String, TemplateError> {
    render_with(source, context, &serde_json::Value::Null)
}

/// Renders `source` over `context` with `extra` merged over what the template sees
/// (objects key by key, anything else replaced): a plugin's own names, such as
/// drone-email's `commit.author.name` or `repo.fullName`.
pub fn render_with(
    source: &str,
    context: &Context,
    extra: &serde_json::Value,
) -> Result<String, TemplateError> {
    let env = environment();
    let template = env
        .template_from_str(source)
        .map_err(|e| template_error(source, &e))?;
    let mut value = context.value();
    merge(&mut value, extra);
    template
        .render(value)
        .map_err(|e| template_error(source, &e))
}

/// `extra` over `base`: objects merged key by key, anything else replaced; null changes
/// nothing.
fn merge(base: &mut serde_json::Value, extra: &serde_json::Value) {
    match (base, extra) {
        (_, serde_json::Value::Null) => {}
        (serde_json::Value::Object(base), serde_json::Value::Object(extra)) => {
            for (key, value) in extra {
                merge(
                    base.entry(key.clone()).or_insert(serde_json::Value::Null),
                    value,
                );
            }
        }
        (base, extra) => *base = extra.clone(),
    }
}

/// The default message for `context`: title with the status, the commit's first line,
/// commit/author/duration fields, a button to the deployed URL or the build.
pub fn default_message(context: &Context) -> Message {
    let b = &context.build;
    let repo = if context.repo.full_name.is_empty() {
        &context.repo.name
    } else {
        &context.repo.full_name
    };
    let status = context.status();
    let mut message = match &context.deploy {
        Some(deploy) => Message::new(
            format!(
                "{repo}: deploy to {} {}",
                deploy.environment,
                deploy.status.replace('_', " ")
            ),
            format!("Revision {} of stack {}", deploy.revision, deploy.stack),
        ),
        None => Message::new(
            format!("{repo} #{} {}", b.number, b.status),
            b.message.lines().next().unwrap_or_default().to_string(),
        ),
    }
    .status(status);
    if !b.commit.is_empty() {
        let short: String = b.commit.chars().take(8).collect();
        let at = if b.branch.is_empty() {
            short
        } else {
            format!("{short} ({})", b.branch)
        };
        message = message.field("Commit", at);
    }
    if !b.author.is_empty() {
        message = message.field("Author", &b.author);
    }
    if b.started > 0 && b.finished >= b.started {
        message = message.field("Duration", duration_text(b.finished - b.started));
    }
    if let Some(deploy) = &context.deploy
        && !deploy.url.is_empty()
    {
        message = message.link(&deploy.url, "Open");
    } else if !b.link.is_empty() {
        message = message.link(&b.link, "Open build");
    }
    message.data = serde_json::to_value(context).ok();
    message
}

/// The default message with its text replaced by `template`'s output, or, when the template
/// does not render, the default message and the error (for the log).
pub fn render_or_default(
    template: Option<&str>,
    context: &Context,
) -> (Message, Option<TemplateError>) {
    let mut message = default_message(context);
    let Some(template) = template else {
        return (message, None);
    };
    match render(template, context) {
        Ok(text) => {
            message.text = text;
            // The template says what it wants said; the default fields would repeat it.
            message.fields.clear();
            (message, None)
        }
        Err(error) => (message, Some(error)),
    }
}

/// A Handlebars-style plugin template as minijinja: `{{build.number}}` stays as it is;
/// `{{#success X}}`/`{{#failure X}}` become `{% if X == "success" %}`/`!= "success"`,
/// `{{#if X}}`, `{{#unless X}}`, `{{#each X}}` (with `this`), `{{else}}` and `{{/…}}`
/// their minijinja forms; the helpers `truncate X N`, `uppercase`, `lowercase`,
/// `uppercasefirst`, `since`, `duration A B`, `datetime X …` become filters.
pub fn from_handlebars(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    let mut blocks: Vec<&'static str> = Vec::new();
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            return out;
        };
        // `{{{x}}}` (unescaped in Handlebars) is the same here: nothing is escaped.
        let raw = after[..end].trim_start_matches('{');
        let mut consumed = start + 2 + end + 2;
        if after[end + 2..].starts_with('}') {
            consumed += 1;
        }
        out.push_str(&convert_tag(raw.trim(), &mut blocks));
        rest = &rest[consumed..];
    }
    out.push_str(rest);
    out
}

fn convert_tag(tag: &str, blocks: &mut Vec<&'static str>) -> String {
    let words: Vec<&str> = tag.split_whitespace().collect();
    let arg = |i: usize| words.get(i).map_or("none".to_string(), |w| expr(w));
    if let Some(helper) = tag.strip_prefix('#') {
        let name = helper.split_whitespace().next().unwrap_or_default();
        return match name {
            "success" => {
                blocks.push("endif");
                format!("{{% if {} == \"success\" %}}", arg(1))
            }
            "failure" => {
                blocks.push("endif");
                format!("{{% if {} != \"success\" %}}", arg(1))
            }
            "if" => {
                blocks.push("endif");
                format!("{{% if {} %}}", arg(1))
            }
            "unless" => {
                blocks.push("endif");
                format!("{{% if not {} %}}", arg(1))
            }
            "each" => {
                blocks.push("endfor");
                format!("{{% for this in {} %}}", arg(1))
            }
            "equal" | "eq" => {
                blocks.push("endif");
                format!("{{% if {} == {} %}}", arg(1), arg(2))
            }
            _ => {
                blocks.push("endif");
                format!("{{% if {} %}}", arg(1))
            }
        };
    }
    if tag.starts_with('/') {
        return format!("{{% {} %}}", blocks.pop().unwrap_or("endif"));
    }
    if tag == "else" {
        return "{% else %}".to_string();
    }
    match words.first().copied() {
        Some("truncate") => format!("{{{{ {} | string | truncate_chars({}) }}}}", arg(1), arg(2)),
        Some("uppercase") => format!("{{{{ {} | string | upper }}}}", arg(1)),
        Some("lowercase") => format!("{{{{ {} | string | lower }}}}", arg(1)),
        Some("uppercasefirst") => format!("{{{{ {} | string | uppercasefirst }}}}", arg(1)),
        Some("since") => format!("{{{{ {} | since }}}}", arg(1)),
        Some("duration") => format!("{{{{ ({} - {}) | duration }}}}", arg(2), arg(1)),
        // Formatting dates needs a time zone database; the Unix time is kept as it is.
        Some("datetime") => format!("{{{{ {} }}}}", arg(1)),
        _ => format!("{{{{ {} }}}}", expr(tag)),
    }
}

/// A Handlebars path or literal as a minijinja expression.
fn expr(word: &str) -> String {
    if word.starts_with('"') || word.starts_with('\'') || word.parse::<f64>().is_ok() {
        return word.to_string();
    }
    word.trim_start_matches("this.").to_string()
}
