//! Errors: a channel's configuration that cannot work, and a delivery the service did not
//! accept (classified so the caller knows whether to retry).

use std::time::Duration;

/// A setting that cannot work, named with what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "unknown channel kind `{0}` (known: wechat-work, wechat-work-robot, dingtalk, feishu, slack, discord, teams, telegram, webhook, email)"
    )]
    UnknownKind(String),

    #[error("`--notify-api {0}`: expected KIND=URL with an http:// or https:// URL")]
    ApiOverride(String),

    #[error("the HTTP client could not be built: {0}")]
    Client(String),
}

/// Whether trying again can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// A network error, 5xx, 429 or a busy code: try again, not before `after` when the
    /// service said how long to wait.
    Retryable { after: Option<Duration> },
    /// The service refused the message for a reason retrying cannot fix.
    Final,
}

/// A delivery attempt that failed. `what` and `answer` never hold a secret of the channel.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{kind}: {what}{}", answer_suffix(.status, .answer))]
pub struct DeliveryError {
    pub kind: crate::Kind,
    pub class: Class,
    /// What went wrong, for a person.
    pub what: String,
    /// The HTTP status, when there was an answer.
    pub status: Option<u16>,
    /// The service's answer (its body, shortened), when there was one.
    pub answer: Option<String>,
}

fn answer_suffix(status: &Option<u16>, answer: &Option<String>) -> String {
    match (status, answer) {
        (Some(status), Some(answer)) if !answer.is_empty() => {
            format!(" (HTTP {status}, answer: {answer})")
        }
        (Some(status), _) => format!(" (HTTP {status})"),
        (None, Some(answer)) if !answer.is_empty() => format!(" (answer: {answer})"),
        _ => String::new(),
    }
}

impl DeliveryError {
    pub(crate) fn new(kind: crate::Kind, class: Class, what: impl Into<String>) -> DeliveryError {
        DeliveryError {
            kind,
            class,
            what: what.into(),
            status: None,
            answer: None,
        }
    }

    pub(crate) fn with_answer(mut self, status: Option<u16>, answer: &str) -> DeliveryError {
        self.status = status;
        self.answer = Some(shorten(answer));
        self
    }

    pub fn is_retryable(&self) -> bool {
        matches!(self.class, Class::Retryable { .. })
    }

    /// Replaces every secret in the text with `******`.
    pub(crate) fn masked(mut self, secrets: &[&str]) -> DeliveryError {
        self.what = mask(&self.what, secrets);
        self.answer = self.answer.map(|answer| mask(&answer, secrets));
        self
    }
}

/// A service's answer as kept: at most 2 KiB, on a character boundary.
pub(crate) fn shorten(text: &str) -> String {
    const MAX: usize = 2048;
    let text = text.trim();
    if text.len() <= MAX {
        return text.to_string();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// `text` with every one of `secrets` (the non-trivial ones) replaced by `******`.
pub(crate) fn mask(text: &str, secrets: &[&str]) -> String {
    let mut text = text.to_string();
    // Longest first, so a secret containing another is masked whole.
    let mut secrets: Vec<&str> = secrets.iter().copied().filter(|s| s.len() >= 3).collect();
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    for secret in secrets {
        if text.contains(secret) {
            text = text.replace(secret, "******");
        }
    }
    text
}
