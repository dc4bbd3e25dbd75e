//! The data model shared by the collector, the store and the routes.
//!
//! A [`Record`] is one log record of one container: a line, or several joined (Docker's
//! 16 KiB partial messages, a multi-line stack trace). Records are kept per service
//! ([`ServiceKey`]); what is known of the container that wrote them ([`ContainerMeta`]:
//! its name, labels, image) is kept beside them once, not in every record.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The service a record belongs to: the unit of storage, retention and search.
///
/// For a container Slipway deployed, its `io.slipway.env`/`stack`/`service` labels. For
/// one that opted in, `env` is [`ServiceKey::OTHER_ENV`], `stack` its compose project (or
/// `-`) and `service` its compose service (or its container name).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServiceKey {
    pub env: String,
    pub stack: String,
    pub service: String,
}

impl ServiceKey {
    /// The environment of containers that Slipway did not deploy but collects.
    pub const OTHER_ENV: &'static str = "-";

    pub fn new(
        env: impl Into<String>,
        stack: impl Into<String>,
        service: impl Into<String>,
    ) -> Self {
        Self {
            env: env.into(),
            stack: stack.into(),
            service: service.into(),
        }
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.env, self.stack, self.service)
    }
}

/// Which of a container's outputs a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One log record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// When the engine received the record's first line, in nanoseconds since the Unix
    /// epoch (the engine's `timestamps` stamp, not the collector's clock).
    pub time_ns: i64,
    pub stream: Stream,
    /// The container's id, 12 hex digits as Docker shows it.
    pub container: String,
    /// The replica number and revision of a container Slipway deployed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// The text with its line breaks inside (a joined record) but without the final one;
    /// ANSI escapes are kept for display ([`strip_ansi`] gives the text searched).
    pub line: String,
    /// Fields parsed from a JSON line, when the service asked for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<serde_json::Map<String, serde_json::Value>>,
}

/// What is known of a container that wrote records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerMeta {
    /// The full container id.
    pub id: String,
    /// Its name without Docker's leading `/`.
    pub name: String,
    pub image: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl ContainerMeta {
    /// The 12-digit id a [`Record`] carries.
    pub fn short_id(&self) -> &str {
        self.id.get(..12).unwrap_or(&self.id)
    }
}

/// `text` without ANSI escape sequences (CSI `ESC [ … final`, OSC `ESC ] … BEL|ST`, and
/// two-byte `ESC x`): what search matches and what plain-text sinks may want.
pub fn strip_ansi(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains('\u{1b}') {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('[') => {
                // CSI: parameters and intermediates, then one final byte in @..~.
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            Some(']') => {
                // OSC: ends with BEL or ST (ESC \).
                while let Some(c) = chars.next() {
                    if c == '\u{7}' {
                        break;
                    }
                    if c == '\u{1b}' && chars.peek() == Some(&'\\') {
                        chars.next();
                        break;
                    }
                }
            }
            _ => {}
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ansi_is_stripped_for_search() {
        assert_eq!(strip_ansi("plain"), "plain");
        assert_eq!(strip_ansi("\u{1b}[1;31merror\u{1b}[0m: x"), "error: x");
        assert_eq!(strip_ansi("a\u{1b}]0;title\u{7}b"), "ab");
        assert_eq!(
            strip_ansi("a\u{1b}]8;;http://x\u{1b}\\link\u{1b}]8;;\u{1b}\\b"),
            "alinkb"
        );
        assert_eq!(strip_ansi("ends with \u{1b}["), "ends with ");
    }
}
