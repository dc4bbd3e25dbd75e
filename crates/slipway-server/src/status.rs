//! Commit statuses back to the git host, through each host's documented REST API.
//!
//! Owns the HTTP calls that mark a commit pending, running, passed or failed on GitHub,
//! Gitea/Forgejo and GitLab. Main types: [`StatusClient`], [`StatusTarget`],
//! [`CommitState`], [`StatusError`].
//!
//! | host | request | auth header |
//! |---|---|---|
//! | GitHub | `POST {base}/repos/{owner}/{repo}/statuses/{sha}`, JSON `state`, `target_url`, `description`, `context` | `Authorization: Bearer <token>` (+ `Accept: application/vnd.github+json`, `X-GitHub-Api-Version: 2022-11-28`) |
//! | Gitea / Forgejo | `POST {base}/repos/{owner}/{repo}/statuses/{sha}` (base `https://host/api/v1`), same JSON | `Authorization: token <token>` |
//! | GitLab | `POST {base}/projects/{url-encoded path}/statuses/{sha}` (base `https://host/api/v4`), JSON `state`, `target_url`, `description`, `name` | `PRIVATE-TOKEN: <token>` |
//!
//! Invariants:
//! - The token is sent only in its header (marked sensitive), never in a URL, a log line or
//!   an error message; a host's error message that echoes it is scrubbed.
//! - Redirects are not followed (a redirect could carry the token header to another host);
//!   a 3xx is reported as an error with its `Location`.
//! - Connection errors, timeouts, 429 and 5xx answers are retried with exponential backoff
//!   (4 attempts by default); any other non-2xx answer fails at once and quotes the URL,
//!   the status and the host's own message.
//! - GitLab answers 400 "Cannot transition status via :run from :running" when the commit
//!   already has that state; that is success, not an error.
//! - Descriptions are cut to what the host accepts (140 characters on GitHub, 255
//!   elsewhere). [`Provider::Generic`] has no status API: posting is a no-op.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{StatusCode, Url};
use serde_json::{Value, json};

use crate::webhook::Provider;

/// How long one request may take, connection included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts per status (the first one included) unless [`StatusClient::with_attempts`].
pub const DEFAULT_ATTEMPTS: u32 = 4;
/// The first retry's delay; each further one doubles it.
pub const DEFAULT_BACKOFF: Duration = Duration::from_millis(500);
/// The longest wait a `Retry-After` can ask for before it is capped.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// A build's (or stage's) state, as Slipway knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommitState {
    Pending,
    Running,
    Success,
    Failure,
    Error,
    Killed,
}

impl CommitState {
    /// The host's name for this state; `None` for [`Provider::Generic`].
    ///
    /// GitHub and Gitea have no "running" (→ `pending`) nor "cancelled" (→ `error`);
    /// GitLab has no "error" (→ `failed`) and calls a killed build `canceled`.
    pub fn for_provider(self, provider: Provider) -> Option<&'static str> {
        use CommitState::*;
        Some(match provider {
            Provider::GitHub | Provider::Gitea => match self {
                Pending | Running => "pending",
                Success => "success",
                Failure => "failure",
                Error | Killed => "error",
            },
            Provider::GitLab => match self {
                Pending => "pending",
                Running => "running",
                Success => "success",
                Failure | Error => "failed",
                Killed => "canceled",
            },
            Provider::Generic => return None,
        })
    }
}

/// Where a repository's statuses go.
#[derive(Clone)]
pub struct StatusTarget {
    pub provider: Provider,
    /// `https://api.github.com`, `https://gitea.example/api/v1`,
    /// `https://gitlab.example/api/v4` (a trailing `/` is fine).
    pub api_base: String,
    pub token: String,
    /// `owner/name` on GitHub and Gitea; the full path (`group/sub/name`) or the numeric
    /// project id on GitLab.
    pub repo: String,
}

impl std::fmt::Debug for StatusTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusTarget")
            .field("provider", &self.provider)
            .field("api_base", &self.api_base)
            .field("token", &"<redacted>")
            .field("repo", &self.repo)
            .finish()
    }
}

/// Why a status could not be posted.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("commit status for {repo} on {provider}: {reason}")]
    InvalidTarget {
        provider: &'static str,
        repo: String,
        reason: String,
    },
    #[error("POST {url} was refused with {status}: {message}")]
    Rejected {
        url: String,
        status: u16,
        message: String,
    },
    #[error("POST {url} kept failing with {status} after {attempts} attempts: {message}")]
    ServerError {
        url: String,
        status: u16,
        attempts: u32,
        message: String,
    },
    #[error("POST {url} failed after {attempts} attempts: {detail}")]
    Unreachable {
        url: String,
        attempts: u32,
        /// The error and its causes, e.g. `error sending request: client error (Connect):
        /// tcp connect error: Connection refused (os error 111)`.
        detail: String,
        #[source]
        source: reqwest::Error,
    },
}

/// Posts commit statuses; one connection pool for all hosts.
#[derive(Debug, Clone)]
pub struct StatusClient {
    http: reqwest::Client,
    attempts: u32,
    backoff: Duration,
}

impl Default for StatusClient {
    fn default() -> Self {
        StatusClient::new()
    }
}

impl StatusClient {
    /// A client with rustls, a [`REQUEST_TIMEOUT`] per request, no redirects, and
    /// [`DEFAULT_ATTEMPTS`] attempts with [`DEFAULT_BACKOFF`].
    pub fn new() -> StatusClient {
        let built = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("slipway/", env!("CARGO_PKG_VERSION")))
            .build();
        let http = match built {
            Ok(http) => http,
            Err(e) => {
                tracing::warn!(error = %e, "commit statuses: building the HTTP client failed; using defaults");
                reqwest::Client::new()
            }
        };
        StatusClient::with_client(http)
    }

    /// Uses `http` as it is (its timeouts, proxy and redirect policy).
    pub fn with_client(http: reqwest::Client) -> StatusClient {
        StatusClient {
            http,
            attempts: DEFAULT_ATTEMPTS,
            backoff: DEFAULT_BACKOFF,
        }
    }

    /// Attempts per status, the first included (at least 1).
    pub fn with_attempts(mut self, attempts: u32) -> StatusClient {
        self.attempts = attempts.max(1);
        self
    }

    /// The delay before the first retry; each later retry waits twice as long.
    pub fn with_backoff(mut self, backoff: Duration) -> StatusClient {
        self.backoff = backoff;
        self
    }

    /// Sets the status `context` of commit `sha` to `state`, linking to `target_url`.
    /// A no-op for [`Provider::Generic`].
    pub async fn post(
        &self,
        target: &StatusTarget,
        sha: &str,
        state: CommitState,
        target_url: &str,
        description: &str,
        context: &str,
    ) -> Result<(), StatusError> {
        let Some(request) = build_request(target, sha, state, target_url, description, context)?
        else {
            return Ok(());
        };
        let url_text = request.url.to_string();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let sent = self
                .http
                .post(request.url.clone())
                .headers(request.headers.clone())
                .json(&request.body)
                .send()
                .await;
            let last = attempt >= self.attempts;
            let delay = self.backoff.saturating_mul(1 << (attempt - 1).min(16));
            match sent {
                Err(source) => {
                    if last {
                        let source = source.without_url();
                        return Err(StatusError::Unreachable {
                            url: url_text,
                            attempts: attempt,
                            detail: error_chain(&source),
                            source,
                        });
                    }
                    tracing::debug!(url = %url_text, attempt, error = %source, "commit status: retrying");
                    tokio::time::sleep(delay).await;
                }
                Ok(response) => {
                    let status = response.status();
                    if status.is_success() {
                        return Ok(());
                    }
                    let retry_after = retry_after(response.headers());
                    let location = response
                        .headers()
                        .get(reqwest::header::LOCATION)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    let body = response.text().await.unwrap_or_default();
                    let mut message = host_message(&body, &target.token);
                    if let (true, Some(location)) = (status.is_redirection(), location) {
                        message = format!(
                            "redirected to {location} (not followed; check the API base URL)"
                        );
                    }
                    if target.provider == Provider::GitLab
                        && status == StatusCode::BAD_REQUEST
                        && message.contains("Cannot transition status")
                    {
                        tracing::debug!(url = %url_text, %message, "commit status already set");
                        return Ok(());
                    }
                    let retryable =
                        status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS;
                    if !retryable {
                        return Err(StatusError::Rejected {
                            url: url_text,
                            status: status.as_u16(),
                            message,
                        });
                    }
                    if last {
                        return Err(StatusError::ServerError {
                            url: url_text,
                            status: status.as_u16(),
                            attempts: attempt,
                            message,
                        });
                    }
                    tracing::debug!(url = %url_text, attempt, status = status.as_u16(), "commit status: retrying");
                    tokio::time::sleep(retry_after.unwrap_or(delay)).await;
                }
            }
        }
    }
}

/// One status request, ready to send (and to resend).
struct Request {
    url: Url,
    headers: HeaderMap,
    body: Value,
}

fn build_request(
    target: &StatusTarget,
    sha: &str,
    state: CommitState,
    target_url: &str,
    description: &str,
    context: &str,
) -> Result<Option<Request>, StatusError> {
    let provider = target.provider;
    let Some(state_name) = state.for_provider(provider) else {
        return Ok(None);
    };
    let invalid = |reason: String| StatusError::InvalidTarget {
        provider: provider.as_str(),
        repo: target.repo.clone(),
        reason,
    };
    if !(7..=64).contains(&sha.len()) || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid(format!("{sha:?} is not a commit sha")));
    }
    let mut url = Url::parse(target.api_base.trim())
        .map_err(|e| invalid(format!("API base URL {:?}: {e}", target.api_base)))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(format!(
            "API base URL {:?} is not http(s)",
            target.api_base
        )));
    }
    url.set_query(None);
    url.set_fragment(None);
    let repo = target.repo.trim().trim_matches('/');
    let mut headers = HeaderMap::new();
    let token_header = |value: String| {
        let mut value = HeaderValue::from_str(&value)
            .map_err(|_| invalid("the token holds characters not allowed in a header".into()))?;
        value.set_sensitive(true);
        Ok::<_, StatusError>(value)
    };
    let mut segments: Vec<&str> = Vec::new();
    let body = match provider {
        Provider::GitHub | Provider::Gitea => {
            let (owner, name) = repo
                .split_once('/')
                .filter(|(o, n)| !o.is_empty() && !n.is_empty() && !n.contains('/'))
                .ok_or_else(|| invalid("expected the repository as `owner/name`".into()))?;
            segments.extend(["repos", owner, name, "statuses", sha]);
            if provider == Provider::GitHub {
                headers.insert(
                    reqwest::header::AUTHORIZATION,
                    token_header(format!("Bearer {}", target.token))?,
                );
                headers.insert(
                    reqwest::header::ACCEPT,
                    HeaderValue::from_static("application/vnd.github+json"),
                );
                headers.insert(
                    HeaderName::from_static("x-github-api-version"),
                    HeaderValue::from_static("2022-11-28"),
                );
            } else {
                headers.insert(
                    reqwest::header::AUTHORIZATION,
                    token_header(format!("token {}", target.token))?,
                );
                headers.insert(
                    reqwest::header::ACCEPT,
                    HeaderValue::from_static("application/json"),
                );
            }
            let limit = if provider == Provider::GitHub {
                140
            } else {
                255
            };
            json!({
                "state": state_name,
                "target_url": target_url,
                "description": truncate(description, limit),
                "context": context,
            })
        }
        Provider::GitLab => {
            if repo.is_empty() {
                return Err(invalid(
                    "expected the project's full path or numeric id".into(),
                ));
            }
            // One path segment: the url crate encodes its `/` as %2F, as GitLab requires.
            segments.extend(["projects", repo, "statuses", sha]);
            headers.insert(
                HeaderName::from_static("private-token"),
                token_header(target.token.clone())?,
            );
            headers.insert(
                reqwest::header::ACCEPT,
                HeaderValue::from_static("application/json"),
            );
            json!({
                "state": state_name,
                "target_url": target_url,
                "description": truncate(description, 255),
                "name": context,
            })
        }
        Provider::Generic => return Ok(None),
    };
    url.path_segments_mut()
        .map_err(|()| {
            invalid(format!(
                "API base URL {:?} cannot take a path",
                target.api_base
            ))
        })?
        .pop_if_empty()
        .extend(segments);
    Ok(Some(Request { url, headers, body }))
}

/// `text` cut to at most `max` characters, ending in `…` when cut.
fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// The host's own words from an error body: `message` (GitHub, Gitea, GitLab) or `error`
/// (GitLab), else the start of the body; with the token scrubbed.
fn host_message(body: &str, token: &str) -> String {
    let from_json = serde_json::from_str::<Value>(body).ok().and_then(|v| {
        let field = |name: &str| match v.get(name) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Null) | None => None,
            Some(other) => Some(other.to_string()),
        };
        match (field("message"), field("error")) {
            (Some(m), _) => Some(m),
            (None, Some(e)) => Some(e),
            (None, None) => None,
        }
    });
    let mut message = from_json.unwrap_or_else(|| body.trim().to_owned());
    if message.is_empty() {
        message = "(empty body)".to_owned();
    }
    if !token.is_empty() {
        message = message.replace(token, "******");
    }
    truncate(&message, 500)
}

/// A `Retry-After` in seconds, capped.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

/// `error: cause: cause ...`, each distinct message once.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(e) = next {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}
