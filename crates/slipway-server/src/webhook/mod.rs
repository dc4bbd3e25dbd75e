//! Git-host webhook deliveries: who sent them, whether they are signed with the
//! repository's secret, and what they ask to build. Pure: no IO, no async.
//!
//! # How the server uses this module
//!
//! 1. [`repository`] reads the repository name from the body (unverified) so the server can
//!    find the repository and its secret — unknown repository: HTTP 404.
//! 2. [`verify`] checks the signature or token against that secret — HTTP 401 on error.
//! 3. [`delivery_id`] is recorded; a delivery id seen before does not build again.
//! 4. [`parse`] gives [`Parsed::Build`] with a [`Hook`], [`Parsed::Ignored`] with a reason
//!    (HTTP 202), or a [`WebhookError`] (HTTP 400 for bodies: see [`WebhookError::status`]).
//!    Nothing is created in the error and ignored cases.
//! 5. [`Hook::skip_ci`] says whether the push asked not to be built (`[ci skip]`,
//!    `[skip ci]`); [`Hook::context`] starts the build's `BuildContext`.
//!
//! Headers come through the [`Headers`] trait (names are case-insensitive), so this module
//! does not depend on an HTTP crate.
//!
//! # Providers
//!
//! | [`Provider`] | event header | signature | delivery id |
//! |---|---|---|---|
//! | `GitHub` | `X-GitHub-Event` | `X-Hub-Signature-256: sha256=<hex HMAC-SHA256>` | `X-GitHub-Delivery` |
//! | `Gitea` (also Forgejo, Gogs) | `X-Forgejo-Event`, `X-Gitea-Event`, `X-Gogs-Event`, then `X-GitHub-Event` | `X-Forgejo-Signature`, `X-Gitea-Signature` or `X-Gogs-Signature: <hex HMAC-SHA256>`, else `X-Hub-Signature-256: sha256=<hex>` (the first present is checked) | `X-Forgejo-Delivery`, `X-Gitea-Delivery`, `X-Gogs-Delivery`, `X-GitHub-Delivery` |
//! | `GitLab` | `X-Gitlab-Event` | `X-Gitlab-Token: <secret>` (plain token, compared in constant time) | `Idempotency-Key` (stable across retries), else `X-Gitlab-Event-UUID` |
//! | `Generic` | — | `X-Slipway-Signature: sha256=<hex HMAC-SHA256>` | `Idempotency-Key`, else `X-Request-Id` |
//!
//! GitHub's legacy SHA-1 `X-Hub-Signature` is not accepted. An empty secret verifies
//! nothing ([`WebhookError::NoSecret`]).
//!
//! # What builds
//!
//! | delivery | result |
//! |---|---|
//! | push to `refs/heads/B` | `push`, branch `B`; action `created` for a new branch |
//! | push to `refs/tags/T` | `tag` `T`; branch from GitHub's `base_ref` when present; action `created` for a new tag |
//! | push whose `after` is all zeros (ref deleted) | ignored |
//! | push to another ref (`refs/notes/…`) | ignored |
//! | GitHub / Gitea `pull_request` `opened`, `synchronize` (Gitea: `synchronized`), `reopened` | `pull_request` on `refs/pull/N/head`, branch = target branch |
//! | GitLab `Merge Request Hook` `open`, `reopen`, `update` with `oldrev` | `pull_request` on `refs/merge-requests/N/head` |
//! | other PR / MR actions (`closed`, `edited`, `labeled`, `merge`, `update` without `oldrev`, …) | ignored |
//! | GitHub / Gitea `create`, `delete`; `ping`; any other event | ignored |
//!
//! GitLab tags: the commit is `checkout_sha` (for an annotated tag `after` is the tag
//! object, not a commit), as Drone does. The GitLab `System Hook` is read by its
//! `object_kind`. Clone URLs are taken as the host sends them (`http://` included).
//!
//! # Where Drone and Woodpecker disagree (the corpus's `"either"` cases)
//!
//! - **Gitea tags**: Gitea sends both a `create` and a `push` to `refs/tags/…`. Slipway
//!   builds the push and ignores the create, like Drone (and like both servers do for
//!   GitHub), so a tag builds exactly once and always from a delivery that names the commit.
//! - **GitLab merge request `update` without `oldrev`**: a title, description or label edit
//!   with no new commits. Slipway ignores it, like Woodpecker; Drone would build the same
//!   commit again.
//!
//! # The generic trigger
//!
//! For CI systems and scripts without a git host. The body is a JSON object:
//!
//! ```json
//! {
//!   "repo": "team/app",
//!   "ref": "refs/heads/main",
//!   "commit": "4522cbcefc20728a5b72b3a86af35e608622c514",
//!   "event": "custom",
//!   "before": "", "message": "deploy from nightly job", "link": "https://ci.example/run/7",
//!   "author": "nightly", "author_name": "", "author_email": "", "author_avatar": "",
//!   "clone_url": "",
//!   "params": {"TARGET": "staging", "REPLICAS": 2}
//! }
//! ```
//!
//! `repo`, `ref` and `commit` are required; everything else is optional. `ref` is a full
//! ref, or a bare branch name meaning `refs/heads/<name>`. `commit` is a full sha (40 or 64
//! hex digits). `event` is `custom` (the default), `push` (the ref must be a branch) or
//! `tag` (the ref must be a tag); branch and tag are derived from the ref whatever the
//! event. `params` values are strings, or numbers and booleans written as text; they become
//! build parameters (`null` drops one). An empty `clone_url` means the repository's stored clone URL. Sign
//! with `X-Slipway-Signature: sha256=<hex>`, e.g.
//! `openssl dgst -sha256 -hmac "$SECRET" -hex < body.json`.

mod generic;
mod gitea;
mod github;
mod gitlab;
mod signature;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use slipway_spec::{BuildContext, BuildEvent};

pub use signature::sign;

/// The kind of sender of a webhook: it decides the headers and the body format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    GitHub,
    /// Gitea, and its forks Forgejo (and Codeberg) and Gogs, which send the same bodies.
    Gitea,
    GitLab,
    /// Slipway's own JSON trigger (see the module documentation).
    Generic,
}

impl Provider {
    /// The name used in configuration and in the store: `github`, `gitea`, `gitlab`,
    /// `generic`.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::GitHub => "github",
            Provider::Gitea => "gitea",
            Provider::GitLab => "gitlab",
            Provider::Generic => "generic",
        }
    }

    /// Reads [`Provider::as_str`]'s names, plus `forgejo` and `gogs` for [`Provider::Gitea`]
    /// (ASCII case-insensitive).
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text.trim().to_ascii_lowercase().as_str() {
            "github" => Provider::GitHub,
            "gitea" | "forgejo" | "gogs" => Provider::Gitea,
            "gitlab" => Provider::GitLab,
            "generic" => Provider::Generic,
            _ => return None,
        })
    }

    /// Guesses the provider from a delivery's headers. Gitea is recognised before GitHub
    /// because Gitea also sends `X-GitHub-Event`.
    pub fn detect(headers: &(impl Headers + ?Sized)) -> Option<Self> {
        if first_header(headers, GITEA_EVENT_HEADERS[..3].iter().copied()).is_some() {
            Some(Provider::Gitea)
        } else if headers.header("X-Gitlab-Event").is_some() {
            Some(Provider::GitLab)
        } else if headers.header("X-GitHub-Event").is_some() {
            Some(Provider::GitHub)
        } else if headers.header(signature::GENERIC_HEADER).is_some() {
            Some(Provider::Generic)
        } else {
            None
        }
    }

    /// The headers that carry the event name, in the order they are read.
    pub fn event_headers(self) -> &'static [&'static str] {
        match self {
            Provider::GitHub => &["X-GitHub-Event"],
            Provider::Gitea => GITEA_EVENT_HEADERS,
            Provider::GitLab => &["X-Gitlab-Event"],
            Provider::Generic => &[],
        }
    }

    /// The headers that carry the delivery id, in the order they are read.
    pub fn delivery_headers(self) -> &'static [&'static str] {
        match self {
            Provider::GitHub => &["X-GitHub-Delivery"],
            Provider::Gitea => &[
                "X-Forgejo-Delivery",
                "X-Gitea-Delivery",
                "X-Gogs-Delivery",
                "X-GitHub-Delivery",
            ],
            Provider::GitLab => &["Idempotency-Key", "X-Gitlab-Event-UUID"],
            Provider::Generic => &["Idempotency-Key", "X-Request-Id"],
        }
    }
}

const GITEA_EVENT_HEADERS: &[&str] = &[
    "X-Forgejo-Event",
    "X-Gitea-Event",
    "X-Gogs-Event",
    "X-GitHub-Event",
];

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Provider::GitHub => "GitHub",
            Provider::Gitea => "Gitea",
            Provider::GitLab => "GitLab",
            Provider::Generic => "generic trigger",
        })
    }
}

/// Read access to a request's headers. Implementations match names ASCII
/// case-insensitively and return the first value of a repeated header; a value that is not
/// UTF-8 is `None`.
///
/// Implemented for lists of pairs (`[(K, V)]`, `[(K, V); N]`, `Vec<(K, V)>`); the HTTP
/// layer implements it for its header map.
pub trait Headers {
    fn header(&self, name: &str) -> Option<&str>;
}

impl<K: AsRef<str>, V: AsRef<str>> Headers for [(K, V)] {
    fn header(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(k, _)| k.as_ref().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_ref())
    }
}

impl<K: AsRef<str>, V: AsRef<str>, const N: usize> Headers for [(K, V); N] {
    fn header(&self, name: &str) -> Option<&str> {
        self.as_slice().header(name)
    }
}

impl<K: AsRef<str>, V: AsRef<str>> Headers for Vec<(K, V)> {
    fn header(&self, name: &str) -> Option<&str> {
        self.as_slice().header(name)
    }
}

impl<T: Headers + ?Sized> Headers for &T {
    fn header(&self, name: &str) -> Option<&str> {
        (**self).header(name)
    }
}

/// The first of `names` present with a non-blank value: (name, trimmed value).
fn first_header(
    headers: &(impl Headers + ?Sized),
    names: impl IntoIterator<Item = &'static str>,
) -> Option<(&'static str, &str)> {
    names.into_iter().find_map(|name| {
        let value = headers.header(name)?.trim();
        (!value.is_empty()).then_some((name, value))
    })
}

/// Why a delivery was refused. Each maps to one HTTP status ([`WebhookError::status`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error(
        "the repository has no webhook secret, so no delivery to it can be verified; set a secret in its settings and in the git host's webhook"
    )]
    NoSecret,
    #[error(
        "the {provider} delivery has no `{header}` header; set this repository's webhook secret in the git host's webhook settings"
    )]
    MissingSignature {
        provider: Provider,
        header: &'static str,
    },
    #[error("the `{header}` header is malformed: {reason}")]
    MalformedSignature {
        header: &'static str,
        reason: String,
    },
    #[error(
        "the `{header}` header does not match this repository's webhook secret (the body was signed with another secret, or changed on the way)"
    )]
    BadSignature { header: &'static str },
    #[error("the {provider} delivery has no event header (expected {expected})")]
    MissingEvent {
        provider: Provider,
        expected: &'static str,
    },
    /// The body is not JSON, or lacks a field the event needs; `message` names the JSON
    /// line/column or the field's path.
    #[error("malformed webhook body: {message}")]
    Malformed { message: String },
}

impl WebhookError {
    /// The HTTP status to answer with: 401 when the delivery cannot be authenticated, 400
    /// when it is not a delivery this provider would send.
    pub fn status(&self) -> u16 {
        match self {
            WebhookError::NoSecret
            | WebhookError::MissingSignature { .. }
            | WebhookError::MalformedSignature { .. }
            | WebhookError::BadSignature { .. } => 401,
            WebhookError::MissingEvent { .. } | WebhookError::Malformed { .. } => 400,
        }
    }
}

/// What a delivery asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Build this.
    Build(Box<Hook>),
    /// Nothing to build (answered with HTTP 202 and the reason): an event Slipway does not
    /// build, a deleted ref, a PR action without new commits, the half of a pair of
    /// deliveries that is built from the other half, …
    Ignored { reason: String },
}

/// The facts of one delivery that asks for a build: what `BuildContext` is made of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hook {
    pub provider: Provider,
    /// `push`, `tag`, `pull_request`, or `custom` (generic trigger).
    pub event: BuildEvent,
    /// `created` for a new branch or tag; the PR/MR action as the host spells it
    /// (`opened`, `synchronize`, `synchronized`, `reopened`, `open`, `reopen`, `update`);
    /// otherwise empty.
    pub action: String,
    /// The ref the build checks out: `refs/heads/…`, `refs/tags/…`, `refs/pull/N/head`,
    /// `refs/merge-requests/N/head`.
    pub reference: String,
    /// The commit to build (40 or 64 hex digits).
    pub commit: String,
    /// The commit before: the previous head of a branch (all zeros for a new ref), a PR's
    /// base or previous head where the host says; may be empty.
    pub before: String,
    /// push: the branch; pull request: the target branch; tag: the branch GitHub names in
    /// `base_ref`, if any.
    pub branch: Option<String>,
    pub tag: Option<String>,
    /// Pull requests only: the branch with the changes.
    pub source_branch: String,
    /// Pull requests only: the branch the changes go into.
    pub target_branch: String,
    pub pull_request: Option<u64>,
    pub pull_request_title: String,
    /// `owner/name`; GitLab keeps the full group path (`group/subgroup/name`).
    pub repo: String,
    /// The repository's web page.
    pub repo_link: String,
    /// HTTP(S) clone URL of `repo`, as the host sent it. Empty only from the generic trigger
    /// (the stored URL is meant).
    pub clone_url: String,
    pub default_branch: String,
    /// A web page for this change: compare view, commit or pull request.
    pub link: String,
    /// The head commit's message; a pull request's title.
    pub message: String,
    /// The commit author's login on the host (for GitLab: the pusher's, as commits there
    /// carry no login).
    pub author: String,
    pub author_name: String,
    pub author_email: String,
    pub author_avatar: String,
    /// Who caused the delivery (pusher, PR author, user of the trigger).
    pub sender: String,
    /// Pull requests: `owner/name` of the repository the changes come from, empty when the
    /// body does not say.
    pub source_repo: String,
    /// Pull requests: the changes come from another repository, or the body does not say
    /// where from (so secrets stay back unless allowed).
    pub from_fork: bool,
    /// The push rewrote history (GitHub's `forced`).
    pub forced: bool,
    /// Generic trigger: build parameters.
    pub params: BTreeMap<String, String>,
    /// The host's id for this delivery; a redelivery carries the same id.
    pub delivery_id: Option<String>,
}

impl Hook {
    /// A hook with only its provider and event; the parsers fill in the rest.
    pub fn new(provider: Provider, event: BuildEvent) -> Hook {
        Hook {
            provider,
            event,
            action: String::new(),
            reference: String::new(),
            commit: String::new(),
            before: String::new(),
            branch: None,
            tag: None,
            source_branch: String::new(),
            target_branch: String::new(),
            pull_request: None,
            pull_request_title: String::new(),
            repo: String::new(),
            repo_link: String::new(),
            clone_url: String::new(),
            default_branch: String::new(),
            link: String::new(),
            message: String::new(),
            author: String::new(),
            author_name: String::new(),
            author_email: String::new(),
            author_avatar: String::new(),
            sender: String::new(),
            source_repo: String::new(),
            from_fork: false,
            forced: false,
            params: BTreeMap::new(),
            delivery_id: None,
        }
    }

    /// `[ci skip]` or `[skip ci]` (any case) in the message of a branch push. Tags, pull
    /// requests and generic triggers are always built: a release tag on a commit that
    /// said "skip ci" (semantic-release's `chore(release): 1.2.0 [skip ci]`) is exactly
    /// the build that publishes — Drone behaves the same way.
    pub fn skip_ci(&self) -> bool {
        if self.event != BuildEvent::Push {
            return false;
        }
        let message = self.message.to_lowercase();
        message.contains("[ci skip]") || message.contains("[skip ci]")
    }

    /// A [`BuildContext`] with everything this delivery knows; the server adds the rest
    /// (build number, links, system, times).
    pub fn context(&self) -> BuildContext {
        BuildContext {
            event: self.event,
            branch: self.branch.clone().unwrap_or_default(),
            tag: self.tag.clone(),
            reference: self.reference.clone(),
            commit: self.commit.clone(),
            before: self.before.clone(),
            message: self.message.clone(),
            author: self.author.clone(),
            author_name: self.author_name.clone(),
            author_email: self.author_email.clone(),
            author_avatar: self.author_avatar.clone(),
            repo: self.repo.clone(),
            repo_link: self.repo_link.clone(),
            clone_url: self.clone_url.clone(),
            default_branch: self.default_branch.clone(),
            pull_request: self.pull_request,
            pull_request_title: self.pull_request_title.clone(),
            source_branch: self.source_branch.clone(),
            target_branch: self.target_branch.clone(),
            action: self.action.clone(),
            trigger: "@hook".to_owned(),
            params: self.params.clone(),
            ..BuildContext::default()
        }
    }
}

/// Checks the delivery's signature (or GitLab's token) against the repository's webhook
/// secret, in constant time. See the module documentation for the headers.
pub fn verify(
    provider: Provider,
    headers: &(impl Headers + ?Sized),
    body: &[u8],
    secret: &[u8],
) -> Result<(), WebhookError> {
    signature::verify(provider, headers, body, secret)
}

/// The host's id for this delivery (trimmed), from the headers listed by
/// [`Provider::delivery_headers`]. Values longer than 200 bytes are not ids and give `None`.
pub fn delivery_id(provider: Provider, headers: &(impl Headers + ?Sized)) -> Option<String> {
    let (_, value) = first_header(headers, provider.delivery_headers().iter().copied())?;
    (value.len() <= 200).then(|| value.to_owned())
}

/// The event name the delivery carries (`push`, `Merge Request Hook`, …); `None` for the
/// generic trigger, which has no event header.
pub fn event_name(provider: Provider, headers: &(impl Headers + ?Sized)) -> Option<&str> {
    first_header(headers, provider.event_headers().iter().copied()).map(|(_, value)| value)
}

/// The repository a delivery is for (`owner/name`, GitLab's full path), read before the
/// signature is checked so that the server can find the repository's secret. Untrusted
/// until [`verify`] succeeds. `None` when the body names no repository.
pub fn repository(provider: Provider, body: &[u8]) -> Result<Option<String>, WebhookError> {
    let root = json(provider, body)?;
    let p = Payload::new(provider, "", &root);
    let name = match provider {
        Provider::GitHub | Provider::Gitea => p.str("repository.full_name"),
        Provider::GitLab => p
            .str("project.path_with_namespace")
            .or_else(|| p.str("object_attributes.target.path_with_namespace")),
        Provider::Generic => p.str("repo"),
    };
    Ok(name
        .map(|n| n.trim())
        .filter(|n| !n.is_empty())
        .map(str::to_owned))
}

/// Reads a delivery: [`Parsed::Build`] with the [`Hook`], [`Parsed::Ignored`] with the
/// reason, or [`WebhookError::Malformed`] / [`WebhookError::MissingEvent`]. Does not check
/// the signature: call [`verify`] first.
pub fn parse(
    provider: Provider,
    headers: &(impl Headers + ?Sized),
    body: &[u8],
) -> Result<Parsed, WebhookError> {
    let expected = match provider {
        Provider::GitHub => Some("`X-GitHub-Event`"),
        Provider::Gitea => Some("`X-Gitea-Event` or `X-Forgejo-Event`"),
        Provider::GitLab => Some("`X-Gitlab-Event`"),
        Provider::Generic => None,
    };
    let event = match expected {
        Some(expected) => event_name(provider, headers)
            .ok_or(WebhookError::MissingEvent { provider, expected })?,
        None => "",
    };
    let root = json(provider, body)?;
    let mut parsed = match provider {
        Provider::GitHub => github::parse(event, &root)?,
        Provider::Gitea => gitea::parse(event, &root)?,
        Provider::GitLab => gitlab::parse(event, &root)?,
        Provider::Generic => generic::parse(&root)?,
    };
    if let Parsed::Build(hook) = &mut parsed {
        hook.delivery_id = delivery_id(provider, headers);
    }
    Ok(parsed)
}

/// The body as a JSON object.
fn json(provider: Provider, body: &[u8]) -> Result<Value, WebhookError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        let hint = if body.starts_with(b"payload=") {
            " (it is form-encoded: set the webhook's content type to application/json)"
        } else {
            ""
        };
        WebhookError::Malformed {
            message: format!("the {provider} body is not JSON: {e}{hint}"),
        }
    })?;
    if !value.is_object() {
        return Err(WebhookError::Malformed {
            message: format!(
                "the {provider} body is {}, expected a JSON object",
                kind(&value)
            ),
        });
    }
    Ok(value)
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// At most `max` characters of `text`, for quoting untrusted values in messages.
fn quote(text: &str, max: usize) -> String {
    let mut out: String = text.chars().take(max).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    out
}

/// A body with the names of its provider and event, for messages: lookups by dotted path.
/// Optional fields are read leniently (absent, null or of the wrong type: none); required
/// ones are strict and name their path when they are missing.
struct Payload<'a> {
    provider: Provider,
    event: &'static str,
    root: &'a Value,
}

impl<'a> Payload<'a> {
    fn new(provider: Provider, event: &'static str, root: &'a Value) -> Self {
        Payload {
            provider,
            event,
            root,
        }
    }

    /// The value at `path` (`a.b.c`); `None` when absent or null.
    fn at(&self, path: &str) -> Option<&'a Value> {
        let mut value = self.root;
        for key in path.split('.') {
            value = value.get(key)?;
        }
        (!value.is_null()).then_some(value)
    }

    fn str(&self, path: &str) -> Option<&'a str> {
        self.at(path)?.as_str()
    }

    /// The first of `paths` that is a non-empty string, or "".
    fn text(&self, paths: &[&str]) -> String {
        paths
            .iter()
            .find_map(|path| self.str(path).filter(|s| !s.is_empty()))
            .unwrap_or_default()
            .to_owned()
    }

    fn flag(&self, path: &str) -> bool {
        self.at(path).and_then(Value::as_bool).unwrap_or(false)
    }

    fn malformed(&self, message: impl fmt::Display) -> WebhookError {
        let event = if self.event.is_empty() {
            String::new()
        } else {
            format!(" {}", self.event)
        };
        WebhookError::Malformed {
            message: format!("{}{event} payload {message}", self.provider),
        }
    }

    /// A required, non-blank string.
    fn required(&self, path: &str) -> Result<&'a str, WebhookError> {
        match self.at(path) {
            None => Err(self.malformed(format_args!("has no `{path}`"))),
            Some(Value::String(s)) if s.trim().is_empty() => {
                Err(self.malformed(format_args!("has an empty `{path}`")))
            }
            Some(Value::String(s)) => Ok(s),
            Some(other) => Err(self.malformed(format_args!(
                "has `{path}` as {}, expected a string",
                kind(other)
            ))),
        }
    }

    /// The first of `paths` present; strict like [`Payload::required`]. The error names
    /// the first path.
    fn required_any(&self, paths: &[&str]) -> Result<&'a str, WebhookError> {
        let present = paths.iter().find(|path| self.at(path).is_some());
        self.required(present.or(paths.first()).copied().unwrap_or_default())
    }

    /// A required commit sha (40 or 64 hex digits; all zeros allowed).
    fn sha(&self, path: &str) -> Result<&'a str, WebhookError> {
        let sha = self.required(path)?;
        check_sha(sha).map_err(|()| {
            self.malformed(format_args!(
                "has `{path}` = `{}`, which is not a commit sha (40 or 64 hex digits)",
                quote(sha, 80)
            ))
        })?;
        Ok(sha)
    }

    /// A required non-negative integer from the first of `paths` present.
    fn number(&self, paths: &[&str]) -> Result<u64, WebhookError> {
        let path = paths
            .iter()
            .find(|path| self.at(path).is_some())
            .or(paths.first())
            .copied()
            .unwrap_or_default();
        match self.at(path) {
            None => Err(self.malformed(format_args!("has no `{path}`"))),
            Some(value) => value.as_u64().ok_or_else(|| {
                self.malformed(format_args!(
                    "has `{path}` as {}, expected a positive integer",
                    kind(value)
                ))
            }),
        }
    }

    /// A required ref that git accepts (see [`check_ref`]).
    fn reference(&self, path: &str) -> Result<&'a str, WebhookError> {
        let reference = self.required(path)?;
        check_ref(reference).map_err(|why| {
            self.malformed(format_args!(
                "has `{path}` = `{}`, which is not a valid git ref: {why}",
                quote(reference, 120)
            ))
        })?;
        Ok(reference)
    }
}

fn check_sha(sha: &str) -> Result<(), ()> {
    let ok = matches!(sha.len(), 40 | 64) && sha.bytes().all(|b| b.is_ascii_hexdigit());
    if ok { Ok(()) } else { Err(()) }
}

fn is_zero_sha(sha: &str) -> bool {
    !sha.is_empty() && sha.bytes().all(|b| b == b'0')
}

/// git's ref-name rules (`git check-ref-format`), as far as they keep a ref safe to hand
/// to git: it starts with `refs/`, has no empty or dot-led component, no `..`, `@{`,
/// control character, space, `~^:?*[\`, and does not end in `/`, `.` or `.lock`.
fn check_ref(reference: &str) -> Result<(), &'static str> {
    let Some(rest) = reference.strip_prefix("refs/") else {
        return Err("it does not start with `refs/`");
    };
    if rest.is_empty() || reference.ends_with('/') || reference.ends_with('.') {
        return Err("it ends with `/` or `.`");
    }
    if reference.ends_with(".lock") {
        return Err("it ends with `.lock`");
    }
    if reference.contains("..") || reference.contains("@{") {
        return Err("it contains `..` or `@{`");
    }
    if reference
        .chars()
        .any(|c| c.is_control() || matches!(c, ' ' | '~' | '^' | ':' | '?' | '*' | '[' | '\\'))
    {
        return Err("it contains a space, a control character or one of ~^:?*[\\");
    }
    if rest
        .split('/')
        .any(|part| part.is_empty() || part.starts_with('.'))
    {
        return Err("it has an empty component or one starting with `.`");
    }
    Ok(())
}

/// What a push to a ref builds.
enum RefKind<'a> {
    Branch(&'a str),
    Tag(&'a str),
}

/// `Ok(kind)` for `refs/heads/…` and `refs/tags/…`; `Err(reason)` for anything else.
fn ref_kind(reference: &str) -> Result<RefKind<'_>, String> {
    if let Some(branch) = reference.strip_prefix("refs/heads/") {
        Ok(RefKind::Branch(branch))
    } else if let Some(tag) = reference.strip_prefix("refs/tags/") {
        Ok(RefKind::Tag(tag))
    } else {
        Err(format!(
            "push to `{}`: not a branch or a tag, nothing to build",
            quote(reference, 120)
        ))
    }
}

/// The first non-empty string, or "".
fn first_nonempty<const N: usize>(candidates: [String; N]) -> String {
    candidates
        .into_iter()
        .find(|s| !s.is_empty())
        .unwrap_or_default()
}

fn deleted_reason(reference: &str) -> String {
    format!("push deletes `{}`: nothing to build", quote(reference, 120))
}

/// A PR/MR action that is not built.
fn ignored_action(event: &str, action: &str, built: &str) -> Parsed {
    Parsed::Ignored {
        reason: format!(
            "{event} action `{}`: nothing to build (built: {built})",
            quote(action, 64)
        ),
    }
}

/// An event that is never built.
fn ignored_event(provider: Provider, event: &str, built: &str) -> Parsed {
    let event = quote(event, 64);
    let reason = if event == "ping" {
        "ping: nothing to build".to_owned()
    } else {
        format!("`{event}` events are not built (built from {provider}: {built})")
    };
    Parsed::Ignored { reason }
}
