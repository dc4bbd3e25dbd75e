//! Feishu / Lark custom bot: `POST /open-apis/bot/v2/hook/{token}` with an interactive
//! card. Signed when the bot has a secret: `timestamp` (seconds, as text) and `sign` =
//! base64(HMAC-SHA256(key = "timestamp\nsecret", message = empty)), both in the body.
//!
//! Answers carry `code` (older deployments `StatusCode`): 0 accepted; 11232 (frequency
//! limited) retried; 19021 (bad signature or stale timestamp), 19022 (IP), 19024
//! (keyword), 9499 (bad request) and the rest final. Lark is the same API on
//! `https://open.larksuite.com` (set it as the API base).

use base64::Engine;
use serde_json::{Value, json};

use super::{Channel, check_status, execute};
use crate::error::{Class, DeliveryError};
use crate::notifier::{Accepted, Notifier};
use crate::{Kind, Message, Secret, Status};

pub(crate) const DEFAULT_BASE: &str = "https://open.feishu.cn";

#[derive(Debug, Clone, Default)]
pub struct Feishu {
    /// The hook id, the last part of the webhook URL.
    pub token: Secret,
    pub secret: Option<Secret>,
}

/// The documented signature for `timestamp` (seconds).
pub fn feishu_sign(secret: &str, timestamp: u64) -> String {
    let key = format!("{timestamp}\n{secret}");
    base64::engine::general_purpose::STANDARD.encode(super::hmac_sha256(key.as_bytes(), b""))
}

fn header_template(status: Option<Status>) -> &'static str {
    match status {
        Some(Status::Success) => "green",
        Some(Status::Failure) => "red",
        Some(Status::Error) => "orange",
        Some(Status::Killed) => "grey",
        Some(Status::Running) | None => "blue",
    }
}

pub(crate) fn card(message: &Message) -> Value {
    let mut elements = vec![json!({
        "tag": "div",
        "text": { "tag": "lark_md", "content": message.text.trim_end() },
    })];
    if !message.fields.is_empty() {
        elements.push(json!({
            "tag": "div",
            "fields": message.fields.iter().map(|f| json!({
                "is_short": true,
                "text": { "tag": "lark_md", "content": format!("**{}**\n{}", f.name, f.value) },
            })).collect::<Vec<_>>(),
        }));
    }
    if let Some(link) = &message.link {
        elements.push(json!({
            "tag": "action",
            "actions": [{
                "tag": "button",
                "text": { "tag": "plain_text", "content": link.label },
                "url": link.url,
                "type": "primary",
            }],
        }));
    }
    json!({
        "config": { "wide_screen_mode": true },
        "header": {
            "title": { "tag": "plain_text", "content": message.title },
            "template": header_template(message.status),
        },
        "elements": elements,
    })
}

pub(crate) async fn send(
    notifier: &Notifier,
    channel: &Channel,
    config: &Feishu,
    message: &Message,
) -> Result<Accepted, DeliveryError> {
    let kind = Kind::Feishu;
    let base = notifier.base(channel, DEFAULT_BASE);
    let mut body = json!({ "msg_type": "interactive", "card": card(message) });
    if let Some(secret) = config.secret.as_ref().filter(|s| !s.is_empty()) {
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        body["timestamp"] = json!(timestamp.to_string());
        body["sign"] = json!(feishu_sign(secret.expose(), timestamp));
    }
    let request = notifier
        .http
        .post(format!(
            "{base}/open-apis/bot/v2/hook/{}",
            config.token.expose()
        ))
        .json(&body);
    let answer = execute(kind, request).await?;
    check_status(kind, &answer)?;
    let value = answer.json(kind)?;
    let code = value
        .get("code")
        .or_else(|| value.get("StatusCode"))
        .and_then(Value::as_i64);
    match code {
        Some(0) => Ok(answer.accepted()),
        Some(11232) => Err(answer.error(
            kind,
            Class::Retryable { after: None },
            "the bot refused with code 11232 (frequency limited)",
        )),
        Some(code) => {
            let hint = match code {
                19021 => " (signature does not match or the timestamp is stale: check the secret)",
                19022 => " (IP not allowed)",
                19024 => " (keyword rule not met)",
                19001 => " (unknown hook token)",
                _ => "",
            };
            Err(answer.error(
                kind,
                Class::Final,
                format!("the bot refused with code {code}{hint}"),
            ))
        }
        None => Err(answer.error(kind, Class::Final, "the bot answered without a code")),
    }
}
