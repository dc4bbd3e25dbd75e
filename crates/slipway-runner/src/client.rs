//! HTTP calls to the server, their errors, and the retry loop with backoff.

use std::error::Error as _;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::protocol::{LEASE_LOST, ProtocolError};

/// Every request but the poll gets this long (a batch is at most ~512 KiB).
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// A poll may be held by the server for the poll timeout; the client waits this much longer.
pub(crate) const POLL_MARGIN: Duration = Duration::from_secs(10);

/// One failed call.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    #[error("POST {url}: {reason}")]
    Transport { url: String, reason: String },
    #[error("POST {url}: the server answered {status}: {message}")]
    Status {
        url: String,
        status: StatusCode,
        /// [`ProtocolError::code`], when the body was one.
        code: Option<String>,
        message: String,
    },
    #[error("POST {url}: cannot read the server's answer ({status}): {reason}")]
    BadAnswer {
        url: String,
        status: StatusCode,
        reason: String,
    },
}

/// What to do about a [`CallError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Connection trouble, 5xx, 408/429, an unreadable answer: try again later.
    Retry,
    /// `409 lease_lost`: the stage is not ours any more.
    LeaseLost,
    /// `401`: the token is wrong or revoked; nothing will work.
    Unauthorized,
    /// Any other 4xx: the server will not take this request, however often it is sent.
    Rejected,
}

impl CallError {
    pub(crate) fn verdict(&self) -> Verdict {
        match self {
            CallError::Transport { .. } | CallError::BadAnswer { .. } => Verdict::Retry,
            CallError::Status { status, code, .. } => {
                if *status == StatusCode::UNAUTHORIZED {
                    Verdict::Unauthorized
                } else if *status == StatusCode::CONFLICT && code.as_deref() == Some(LEASE_LOST) {
                    Verdict::LeaseLost
                } else if status.is_server_error()
                    || *status == StatusCode::REQUEST_TIMEOUT
                    || *status == StatusCode::TOO_MANY_REQUESTS
                {
                    Verdict::Retry
                } else {
                    Verdict::Rejected
                }
            }
        }
    }

    pub(crate) fn url(&self) -> &str {
        match self {
            CallError::Transport { url, .. }
            | CallError::Status { url, .. }
            | CallError::BadAnswer { url, .. } => url,
        }
    }

    /// The server's message (or the whole text, for transport errors).
    pub(crate) fn message(&self) -> String {
        match self {
            CallError::Status { message, .. } => message.clone(),
            other => other.to_string(),
        }
    }
}

/// A 2xx answer.
#[derive(Debug)]
pub(crate) struct Reply {
    pub status: StatusCode,
    pub url: String,
    pub body: Bytes,
}

impl Reply {
    pub(crate) fn json<T: DeserializeOwned>(&self) -> Result<T, CallError> {
        serde_json::from_slice(&self.body).map_err(|e| CallError::BadAnswer {
            url: self.url.clone(),
            status: self.status,
            reason: e.to_string(),
        })
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Client {
    http: reqwest::Client,
    base: String,
    auth: String,
}

impl Client {
    pub(crate) fn new(base: &str, token: &str) -> Result<Client, reqwest::Error> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("slipway-runner/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        Ok(Client {
            http,
            base: base.trim_end_matches('/').to_string(),
            auth: format!("Bearer {token}"),
        })
    }

    /// The same client, sending `token` from now on.
    pub(crate) fn with_token(&self, token: &str) -> Result<Client, reqwest::Error> {
        Ok(Client {
            http: self.http.clone(),
            base: self.base.clone(),
            auth: format!("Bearer {token}"),
        })
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POSTs a JSON body (already serialized, so a resend is byte for byte the same).
    pub(crate) async fn post(
        &self,
        path: &str,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Reply, CallError> {
        let url = self.url(path);
        let response = self.send_post(&url, body, Some(timeout)).await?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| transport(&url, e))?;
        Ok(Reply { status, url, body })
    }

    /// POSTs a JSON body and hands back a 2xx answer unread, for a streamed body (no time
    /// limit: the caller's own limit drops it).
    pub(crate) async fn post_streamed(
        &self,
        path: &str,
        body: Bytes,
    ) -> Result<reqwest::Response, CallError> {
        self.send_post(&self.url(path), body, None).await
    }

    /// The POST both share: a 2xx answer unread, anything else as a [`CallError`] with the
    /// protocol's error code and message when the body has them.
    async fn send_post(
        &self,
        url: &str,
        body: Bytes,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, CallError> {
        let mut request = self
            .http
            .post(url)
            .header(reqwest::header::AUTHORIZATION, &self.auth)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(t) = timeout {
            request = request.timeout(t);
        }
        let response = request.send().await.map_err(|e| transport(url, e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.bytes().await.map_err(|e| transport(url, e))?;
        let (code, message) = match serde_json::from_slice::<ProtocolError>(&body) {
            Ok(error) => (Some(error.code), error.message),
            Err(_) => {
                let text = String::from_utf8_lossy(&body);
                let text: String = text.trim().chars().take(300).collect();
                (
                    None,
                    if text.is_empty() {
                        "(no body)".into()
                    } else {
                        text
                    },
                )
            }
        };
        Err(CallError::Status {
            url: url.to_owned(),
            status,
            code,
            message,
        })
    }
}

/// A request that got no answer (the URL is in our message already).
fn transport(url: &str, e: reqwest::Error) -> CallError {
    CallError::Transport {
        url: url.to_owned(),
        reason: error_chain(&e.without_url()),
    }
}

/// `error: cause: cause`, since reqwest's own message hides the interesting part.
fn error_chain(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Exponential backoff: 100 ms doubling up to 5 s, each delay jittered to 50–100 %.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    pub(crate) const FIRST: Duration = Duration::from_millis(100);
    pub(crate) const MAX: Duration = Duration::from_secs(5);

    pub(crate) fn new() -> Backoff {
        Backoff { next: Self::FIRST }
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        delay.mul_f64(rand::random_range(0.5..=1.0))
    }
}

/// Why [`retry`] gave up.
#[derive(Debug)]
pub(crate) enum GaveUp {
    /// `stop` was cancelled.
    Stopped,
    /// A failure retrying cannot fix (see [`Verdict`]).
    Failed(CallError),
}

/// Calls `call` until it succeeds, waiting with [`Backoff`] after each retriable failure.
/// Logs a warning at the first failure and a note when it works again, not at every try.
pub(crate) async fn retry<T, F, Fut>(
    what: &str,
    stop: &CancellationToken,
    mut call: F,
) -> Result<T, GaveUp>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, CallError>>,
{
    let mut backoff = Backoff::new();
    let mut failures = 0u32;
    loop {
        let result = tokio::select! {
            biased;
            () = stop.cancelled() => return Err(GaveUp::Stopped),
            result = call() => result,
        };
        match result {
            Ok(value) => {
                if failures > 0 {
                    tracing::info!(
                        "{what}: the server answered again after {failures} failed attempts"
                    );
                }
                return Ok(value);
            }
            Err(e) if e.verdict() == Verdict::Retry => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!("{what}: {e}; retrying with backoff");
                } else {
                    tracing::debug!("{what}: attempt {failures} failed: {e}");
                }
            }
            Err(e) => return Err(GaveUp::Failed(e)),
        }
        tokio::select! {
            () = stop.cancelled() => return Err(GaveUp::Stopped),
            () = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let mut backoff = Backoff::new();
        let delays: Vec<Duration> = (0..10).map(|_| backoff.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(50) && delays[0] <= Duration::from_millis(100));
        assert!(delays[1] >= Duration::from_millis(100) && delays[1] <= Duration::from_millis(200));
        assert!(delays.iter().all(|d| *d <= Backoff::MAX));
        assert!(delays[9] >= Backoff::MAX / 2);
    }

    #[test]
    fn verdicts() {
        let status = |status: u16, code: Option<&str>| CallError::Status {
            url: "u".into(),
            status: StatusCode::from_u16(status).expect("valid status"),
            code: code.map(String::from),
            message: "m".into(),
        };
        assert_eq!(status(503, None).verdict(), Verdict::Retry);
        assert_eq!(status(401, None).verdict(), Verdict::Unauthorized);
        assert_eq!(status(409, Some(LEASE_LOST)).verdict(), Verdict::LeaseLost);
        assert_eq!(status(409, Some("log_gap")).verdict(), Verdict::Rejected);
        assert_eq!(status(400, None).verdict(), Verdict::Rejected);
        assert_eq!(status(429, None).verdict(), Verdict::Retry);
    }
}
