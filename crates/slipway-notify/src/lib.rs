//! Notifications: telling people how a build or a deployment went, on the services they
//! read (WeChat Work, DingTalk, Feishu/Lark, Slack, Discord, Microsoft Teams, Telegram, a
//! signed JSON webhook, email). Owns each service's wire protocol, the message model and
//! its rendering per service, templates with Drone's variable names, and delivery with
//! retries. It depends on no other Slipway crate: the engine's native plugin steps and the
//! server's event bus both call it.
//!
//! Main types:
//! - [`Message`]: what is said, independent of the service: a title, a [`Status`] (which
//!   gives the colour where the service has one), a text, [`Field`]s and a [`Link`].
//!   Each channel renders it in its own format (a WeChat Work `textcard`, a Feishu
//!   interactive card, Slack blocks with a text fallback, a Teams Adaptive Card, ...).
//! - [`Channel`]: one destination: a [`ChannelConfig`] (one variant per [`Kind`], with the
//!   service's own settings) and an optional API base URL that replaces the service's
//!   (for self-hosted Feishu/Lark, WeChat Work proxies and tests).
//! - [`Notifier`]: sends. One HTTP client for all channels, the kind-wide API bases
//!   (`--notify-api KIND=URL`), the WeChat Work access-token cache, and the
//!   [`RetryPolicy`]. [`Notifier::send`] is one attempt; [`Notifier::deliver`] retries and
//!   returns a [`Delivery`] with every [`Attempt`].
//! - [`template`]: minijinja templates over a [`template::Context`] (`build`, `repo`,
//!   `deploy` objects and the `DRONE_*` variables); [`template::render_or_default`] falls
//!   back to the default message when a template does not render, and says where it broke.
//! - [`settings`]: a channel from named settings ([`settings::Settings`]: plain ones and
//!   credentials apart, checked against each kind's [`settings::specs`]), as the server
//!   stores them.
//! - [`outbox`]: deliveries from a persisted [`outbox::Outbox`], one worker per channel
//!   ([`outbox::Dispatcher`]) with stored backoff, the services' rate limits
//!   ([`outbox::rate_limit`]) and digests of what piled up.
//! - [`rules`]: the [`rules::Event`]s a finished build or a deployment raises (`build.fixed`
//!   and `build.broken` from the branch's previous outcome) and the [`rules::Rule`]s
//!   (repository, branch, environment globs and events) that pick them.
//!
//! Invariants:
//! - **HTTP 200 is not success.** Every service that answers with a code in its body
//!   (WeChat Work `errcode`, DingTalk `errcode`, Feishu `code`, Telegram `ok`) has it
//!   checked; a delivery is [`Accepted`] only when the service said so.
//! - **Retry only what retrying can fix.** A failure is [`Class::Retryable`] for network
//!   errors, 5xx, 429 (with the `Retry-After` it gave, which the retry waits for) and each
//!   service's documented busy codes; anything else (a bad signature, an unknown token, a
//!   4xx) is [`Class::Final`]. Either way the service's answer is kept.
//! - **No double posts on a retry** where the service offers it: WeChat Work messages carry
//!   `enable_duplicate_check`; Discord is asked to `wait=true` so a 2xx means posted.
//! - **Secrets never leave for anywhere but their service.** Every [`Secret`] prints as
//!   `******` in `Debug`; errors never hold a URL with a token (reqwest errors are taken
//!   without their URL) and every secret of the channel is masked in an error's text and in
//!   the service's answer before it is returned or logged.
//! - **WeChat Work tokens** are fetched once per (API base, corp id, secret) and cached until
//!   `expires_in` (less a margin); an answer of 40014/42001 (invalid/expired token) drops
//!   the token, fetches a new one and sends again once, within the same attempt.

mod channels;
mod error;
mod message;
mod notifier;
pub mod outbox;
pub mod rules;
pub mod settings;
pub mod template;

pub use channels::dingtalk::{DingTalk, DingTalkMsgType};
pub use channels::discord::Discord;
pub use channels::email::{Email, EmailTls, html_text};
pub use channels::feishu::Feishu;
pub use channels::slack::Slack;
pub use channels::teams::Teams;
pub use channels::telegram::Telegram;
pub use channels::webhook::{Webhook, WebhookBody};
pub use channels::wechat::{WeChatMsgType, WeChatRobot, WeChatRobotFormat, WeChatWork};
pub use channels::{Channel, ChannelConfig};
pub use error::{Class, ConfigError, DeliveryError};
pub use message::{Field, Link, Message, Status};
pub use notifier::{Accepted, Attempt, Delivery, Notifier, NotifierConfig, RetryPolicy};

use std::fmt;
use std::str::FromStr;

/// A credential: a token, a secret, a password or a URL that is one. Its `Debug` never
/// shows it; [`Secret::expose`] is called only where it goes on the wire.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value, for the request that sends it to its own service.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("******")
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Secret {
        Secret(value.to_string())
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Secret {
        Secret(value)
    }
}

/// The kinds of channel, by the names users write (`--kind`, `--notify-api KIND=URL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    WeChatWork,
    WeChatWorkRobot,
    DingTalk,
    Feishu,
    Slack,
    Discord,
    Teams,
    Telegram,
    Webhook,
    Email,
}

impl Kind {
    pub const ALL: [Kind; 10] = [
        Kind::WeChatWork,
        Kind::WeChatWorkRobot,
        Kind::DingTalk,
        Kind::Feishu,
        Kind::Slack,
        Kind::Discord,
        Kind::Teams,
        Kind::Telegram,
        Kind::Webhook,
        Kind::Email,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::WeChatWork => "wechat-work",
            Kind::WeChatWorkRobot => "wechat-work-robot",
            Kind::DingTalk => "dingtalk",
            Kind::Feishu => "feishu",
            Kind::Slack => "slack",
            Kind::Discord => "discord",
            Kind::Teams => "teams",
            Kind::Telegram => "telegram",
            Kind::Webhook => "webhook",
            Kind::Email => "email",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Kind, ConfigError> {
        Kind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == s)
            .ok_or_else(|| ConfigError::UnknownKind(s.to_string()))
    }
}

/// Parses one `--notify-api KIND=URL` value.
pub fn parse_api_override(text: &str) -> Result<(Kind, String), ConfigError> {
    let (kind, url) = text
        .split_once('=')
        .ok_or_else(|| ConfigError::ApiOverride(text.to_string()))?;
    let kind: Kind = kind.trim().parse()?;
    let url = url.trim().trim_end_matches('/');
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(ConfigError::ApiOverride(text.to_string()));
    }
    Ok((kind, url.to_string()))
}
