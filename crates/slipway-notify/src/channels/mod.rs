//! Channels: one module per service, each with its settings type, its rendering of a
//! [`Message`] and its reading of the service's answer; and the HTTP plumbing they share
//! (sending without leaking URLs into errors, classifying statuses, `Retry-After`).

pub(crate) mod dingtalk;
pub(crate) mod discord;
pub(crate) mod email;
pub(crate) mod feishu;
pub(crate) mod slack;
pub(crate) mod teams;
pub(crate) mod telegram;
pub(crate) mod webhook;
pub(crate) mod wechat;

use std::time::Duration;

use crate::error::{Class, DeliveryError};
use crate::notifier::{Accepted, Notifier};
use crate::{Kind, Message};

/// One destination.
#[derive(Debug, Clone)]
pub struct Channel {
    /// For logs and the delivery record.
    pub name: String,
    /// Replaces the service's API base (`https://qyapi.weixin.qq.com`, ...). For the kinds
    /// addressed by a whole URL (Slack, Discord, Teams, webhook) it replaces that URL's
    /// scheme, host and port, keeping the path. Unused by email.
    pub api_base: Option<String>,
    pub config: ChannelConfig,
}

/// A channel's service and its settings.
#[derive(Debug, Clone)]
pub enum ChannelConfig {
    WeChatWork(wechat::WeChatWork),
    WeChatWorkRobot(wechat::WeChatRobot),
    DingTalk(dingtalk::DingTalk),
    Feishu(feishu::Feishu),
    Slack(slack::Slack),
    Discord(discord::Discord),
    Teams(teams::Teams),
    Telegram(telegram::Telegram),
    Webhook(webhook::Webhook),
    Email(email::Email),
}

impl Channel {
    pub fn new(name: impl Into<String>, config: ChannelConfig) -> Channel {
        Channel {
            name: name.into(),
            api_base: None,
            config,
        }
    }

    pub fn with_api_base(mut self, base: impl Into<String>) -> Channel {
        self.api_base = Some(base.into());
        self
    }

    pub fn kind(&self) -> Kind {
        match &self.config {
            ChannelConfig::WeChatWork(_) => Kind::WeChatWork,
            ChannelConfig::WeChatWorkRobot(_) => Kind::WeChatWorkRobot,
            ChannelConfig::DingTalk(_) => Kind::DingTalk,
            ChannelConfig::Feishu(_) => Kind::Feishu,
            ChannelConfig::Slack(_) => Kind::Slack,
            ChannelConfig::Discord(_) => Kind::Discord,
            ChannelConfig::Teams(_) => Kind::Teams,
            ChannelConfig::Telegram(_) => Kind::Telegram,
            ChannelConfig::Webhook(_) => Kind::Webhook,
            ChannelConfig::Email(_) => Kind::Email,
        }
    }

    /// Every credential of the channel, for masking.
    pub fn secrets(&self) -> Vec<&str> {
        let secrets: Vec<&crate::Secret> = match &self.config {
            ChannelConfig::WeChatWork(c) => vec![&c.corp_secret],
            ChannelConfig::WeChatWorkRobot(c) => vec![&c.key],
            ChannelConfig::DingTalk(c) => [Some(&c.access_token), c.secret.as_ref()]
                .into_iter()
                .flatten()
                .collect(),
            ChannelConfig::Feishu(c) => [Some(&c.token), c.secret.as_ref()]
                .into_iter()
                .flatten()
                .collect(),
            ChannelConfig::Slack(c) => vec![&c.url],
            ChannelConfig::Discord(c) => vec![&c.url],
            ChannelConfig::Teams(c) => vec![&c.url],
            ChannelConfig::Telegram(c) => vec![&c.token],
            ChannelConfig::Webhook(c) => [
                Some(&c.url),
                c.password.as_ref(),
                c.token.as_ref(),
                c.signature_secret.as_ref(),
            ]
            .into_iter()
            .flatten()
            .collect(),
            ChannelConfig::Email(c) => c.password.iter().collect(),
        };
        let mut out: Vec<&str> = secrets
            .into_iter()
            .map(crate::Secret::expose)
            .filter(|s| !s.is_empty())
            .collect();
        // A secret URL's token part may be echoed alone (Discord, Slack): mask it too.
        for secret in out.clone() {
            if secret.contains("://")
                && let Some(last) = secret.rsplit('/').next()
                && last.len() >= 8
            {
                out.push(last);
            }
        }
        out
    }
}

/// One attempt on whichever service the channel is.
pub(crate) async fn send(
    notifier: &Notifier,
    channel: &Channel,
    message: &Message,
) -> Result<Accepted, DeliveryError> {
    match &channel.config {
        ChannelConfig::WeChatWork(c) => wechat::send_app(notifier, channel, c, message).await,
        ChannelConfig::WeChatWorkRobot(c) => {
            wechat::send_robot(notifier, channel, c, message).await
        }
        ChannelConfig::DingTalk(c) => dingtalk::send(notifier, channel, c, message).await,
        ChannelConfig::Feishu(c) => feishu::send(notifier, channel, c, message).await,
        ChannelConfig::Slack(c) => slack::send(notifier, channel, c, message).await,
        ChannelConfig::Discord(c) => discord::send(notifier, channel, c, message).await,
        ChannelConfig::Teams(c) => teams::send(notifier, channel, c, message).await,
        ChannelConfig::Telegram(c) => telegram::send(notifier, channel, c, message).await,
        ChannelConfig::Webhook(c) => webhook::send(notifier, channel, c, message).await,
        ChannelConfig::Email(c) => email::send(notifier, c, message).await,
    }
}

/// An HTTP answer, read whole.
#[derive(Debug)]
pub(crate) struct Answer {
    pub status: u16,
    pub retry_after: Option<Duration>,
    pub body: String,
}

impl Answer {
    pub(crate) fn accepted(&self) -> Accepted {
        Accepted {
            status: Some(self.status),
            answer: crate::error::shorten(&self.body),
        }
    }

    pub(crate) fn error(&self, kind: Kind, class: Class, what: impl Into<String>) -> DeliveryError {
        DeliveryError::new(kind, class, what).with_answer(Some(self.status), &self.body)
    }

    /// The body as JSON, or a final error saying the service answered something else.
    pub(crate) fn json(&self, kind: Kind) -> Result<serde_json::Value, DeliveryError> {
        serde_json::from_str(&self.body).map_err(|_| {
            self.error(
                kind,
                Class::Final,
                "the service's answer is not the JSON its API documents",
            )
        })
    }
}

/// Sends `request` and reads the answer. A network error or time-out is retryable; the
/// error never quotes the URL (it may hold a token).
pub(crate) async fn execute(
    kind: Kind,
    request: reqwest::RequestBuilder,
) -> Result<Answer, DeliveryError> {
    let response = request.send().await.map_err(|e| network_error(kind, e))?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    let body = response.text().await.map_err(|e| network_error(kind, e))?;
    Ok(Answer {
        status,
        retry_after,
        body,
    })
}

fn network_error(kind: Kind, error: reqwest::Error) -> DeliveryError {
    let what = if error.is_timeout() {
        "the request timed out".to_string()
    } else if error.is_connect() {
        format!("could not connect: {}", error_chain(&error.without_url()))
    } else {
        format!("request failed: {}", error_chain(&error.without_url()))
    };
    DeliveryError::new(kind, Class::Retryable { after: None }, what)
}

/// An error and its sources, `: `-joined (reqwest's own message says little alone).
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
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

/// `Retry-After` in seconds (integer or decimal); an HTTP date is left to the backoff.
pub(crate) fn parse_retry_after(value: &str) -> Option<Duration> {
    value
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|secs| secs.is_finite() && *secs >= 0.0)
        .map(Duration::from_secs_f64)
}

/// The HTTP status's verdict: `Ok` for 2xx, else the error (429, 408 and 5xx retryable).
pub(crate) fn check_status(kind: Kind, answer: &Answer) -> Result<(), DeliveryError> {
    match answer.status {
        200..=299 => Ok(()),
        429 => Err(answer.error(
            kind,
            Class::Retryable {
                after: answer.retry_after,
            },
            "rate limited by the service",
        )),
        408 | 500..=599 => Err(answer.error(
            kind,
            Class::Retryable {
                after: answer.retry_after,
            },
            "the service failed to take the message",
        )),
        300..=399 => Err(answer.error(
            kind,
            Class::Final,
            "the service answered with a redirect, which is not followed (configure the URL it points to)",
        )),
        401 | 403 => Err(answer.error(
            kind,
            Class::Final,
            "the service refused the credentials (check the token or URL)",
        )),
        404 | 410 => Err(answer.error(
            kind,
            Class::Final,
            "the service does not know this webhook or endpoint (check the URL or token)",
        )),
        _ => Err(answer.error(kind, Class::Final, "the service refused the message")),
    }
}

/// `url` with its scheme, host and port replaced by `base` (which may carry a path
/// prefix), for URL-addressed kinds with an API base set.
pub(crate) fn rebase(url: &str, base: Option<&str>) -> String {
    let Some(base) = base else {
        return url.to_string();
    };
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let path = url[after_scheme..]
        .find('/')
        .map_or("", |i| &url[after_scheme + i..]);
    format!("{}{}", base.trim_end_matches('/'), path)
}

/// HMAC-SHA256 of `message` under `key`.
pub(crate) fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key)
        .expect("HMAC-SHA256 takes keys of any length");
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

/// `text` cut to at most `max` bytes on a character boundary, `…` marking a cut (the
/// services refuse over-long fields rather than cutting them).
pub(crate) fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}
