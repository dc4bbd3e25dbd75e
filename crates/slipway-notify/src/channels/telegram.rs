//! Telegram Bot API: `POST /bot{token}/sendMessage` with `chat_id` and an HTML `text`.
//! The answer is `{"ok": true, ...}` or `{"ok": false, "error_code", "description",
//! "parameters": {"retry_after"}}`: 429 waits `retry_after`, 5xx retried, the rest final.

use std::time::Duration;

use serde_json::{Value, json};

use super::{Channel, execute};
use crate::error::{Class, DeliveryError};
use crate::notifier::{Accepted, Notifier};
use crate::{Kind, Message, Secret};

pub(crate) const DEFAULT_BASE: &str = "https://api.telegram.org";

#[derive(Debug, Clone, Default)]
pub struct Telegram {
    pub token: Secret,
    /// A chat id (`-100…`) or `@channelusername`.
    pub chat_id: String,
    pub disable_notification: bool,
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

pub(crate) fn payload(config: &Telegram, message: &Message) -> Value {
    let mut text = String::new();
    if !message.title.is_empty() {
        text.push_str(&format!("<b>{}</b>\n", escape(&message.title)));
    }
    text.push_str(&escape(&message.plain_body()));
    if let Some(link) = &message.link {
        text.push_str(&format!(
            "\n<a href=\"{}\">{}</a>",
            escape(&link.url),
            escape(&link.label)
        ));
    }
    json!({
        "chat_id": config.chat_id,
        "text": super::cut(&text, 4096),
        "parse_mode": "HTML",
        "disable_web_page_preview": true,
        "disable_notification": config.disable_notification,
    })
}

pub(crate) async fn send(
    notifier: &Notifier,
    channel: &Channel,
    config: &Telegram,
    message: &Message,
) -> Result<Accepted, DeliveryError> {
    let kind = Kind::Telegram;
    let base = notifier.base(channel, DEFAULT_BASE);
    let request = notifier
        .http
        .post(format!("{base}/bot{}/sendMessage", config.token.expose()))
        .json(&payload(config, message));
    let answer = execute(kind, request).await?;
    let value: Option<Value> = serde_json::from_str(&answer.body).ok();
    let ok = value
        .as_ref()
        .and_then(|v| v.get("ok"))
        .and_then(Value::as_bool);
    if (200..300).contains(&answer.status) && ok == Some(true) {
        return Ok(answer.accepted());
    }
    let description = value
        .as_ref()
        .and_then(|v| v.get("description"))
        .and_then(Value::as_str)
        .unwrap_or("no description");
    let class = match answer.status {
        429 => Class::Retryable {
            after: value
                .as_ref()
                .and_then(|v| v.pointer("/parameters/retry_after"))
                .and_then(Value::as_u64)
                .map(Duration::from_secs)
                .or(answer.retry_after),
        },
        500..=599 => Class::Retryable {
            after: answer.retry_after,
        },
        _ => Class::Final,
    };
    Err(answer.error(kind, class, format!("sendMessage refused: {description}")))
}
