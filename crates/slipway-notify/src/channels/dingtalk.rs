//! DingTalk (钉钉) custom robot: `POST /robot/send?access_token=…`, signed when the robot
//! has a secret: `timestamp` (ms) and `sign` = base64(HMAC-SHA256(key = secret,
//! message = "timestamp\nsecret")), URL-encoded, both in the query.
//!
//! Answers carry `errcode`: 0 accepted; -1 (busy) and 130101 (sending too fast) retried;
//! 310000 (bad signature, keyword missing, IP not allowed) and the rest final. A robot
//! with keyword rules drops messages without one of them: when `keywords` are given and the
//! text has none, the first is appended.

use base64::Engine;
use serde_json::{Value, json};

use super::{Channel, check_status, execute};
use crate::error::{Class, DeliveryError};
use crate::notifier::{Accepted, Notifier};
use crate::{Kind, Message, Secret};

pub(crate) const DEFAULT_BASE: &str = "https://oapi.dingtalk.com";

#[derive(Debug, Clone, Default)]
pub struct DingTalk {
    pub access_token: Secret,
    /// The robot's signing secret (`SEC…`), when it has "additional signature" on.
    pub secret: Option<Secret>,
    pub at_mobiles: Vec<String>,
    pub at_all: bool,
    /// The robot's keyword rules, if any.
    pub keywords: Vec<String>,
}

/// The documented signature for `timestamp_ms` (before URL encoding).
pub fn dingtalk_sign(secret: &str, timestamp_ms: u128) -> String {
    let to_sign = format!("{timestamp_ms}\n{secret}");
    base64::engine::general_purpose::STANDARD
        .encode(super::hmac_sha256(secret.as_bytes(), to_sign.as_bytes()))
}

pub(crate) fn payload(config: &DingTalk, message: &Message) -> Value {
    let mut text = message.markdown();
    if !config.keywords.is_empty()
        && !config.keywords.iter().any(|k| text.contains(k.as_str()))
        && !message.title.contains(config.keywords[0].as_str())
    {
        text.push_str(&format!("\n\n{}", config.keywords[0]));
    }
    // Markdown messages mention only the numbers written in the text.
    for mobile in &config.at_mobiles {
        text.push_str(&format!(" @{mobile}"));
    }
    let title = if message.title.is_empty() {
        "Slipway".to_string()
    } else {
        message.title.clone()
    };
    json!({
        "msgtype": "markdown",
        "markdown": { "title": title, "text": text },
        "at": { "atMobiles": config.at_mobiles, "isAtAll": config.at_all },
    })
}

pub(crate) async fn send(
    notifier: &Notifier,
    channel: &Channel,
    config: &DingTalk,
    message: &Message,
) -> Result<Accepted, DeliveryError> {
    let kind = Kind::DingTalk;
    let base = notifier.base(channel, DEFAULT_BASE);
    let mut query = vec![(
        "access_token".to_string(),
        config.access_token.expose().to_string(),
    )];
    if let Some(secret) = config.secret.as_ref().filter(|s| !s.is_empty()) {
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        query.push(("timestamp".into(), timestamp.to_string()));
        // `query` URL-encodes it, as the API wants.
        query.push(("sign".into(), dingtalk_sign(secret.expose(), timestamp)));
    }
    let request = notifier
        .http
        .post(format!("{base}/robot/send"))
        .query(&query)
        .json(&payload(config, message));
    let answer = execute(kind, request).await?;
    check_status(kind, &answer)?;
    let value = answer.json(kind)?;
    match value.get("errcode").and_then(Value::as_i64) {
        Some(0) => Ok(answer.accepted()),
        Some(code @ (-1 | 130101)) => Err(answer.error(
            kind,
            Class::Retryable { after: None },
            format!("robot/send refused with errcode {code} (busy or sending too fast)"),
        )),
        Some(code) => {
            let hint = match code {
                310000 => {
                    " (signature, keyword or IP rule not met: check the secret and the robot's security settings)"
                }
                300001 | 400102 => " (invalid or disabled access_token)",
                _ => "",
            };
            Err(answer.error(
                kind,
                Class::Final,
                format!("robot/send refused with errcode {code}{hint}"),
            ))
        }
        None => Err(answer.error(kind, Class::Final, "robot/send answered without errcode")),
    }
}
