//! Discord webhook: `POST {url}?wait=true` with one embed (title, description, URL,
//! colour, inline fields). `wait=true` makes Discord answer only once the message is
//! posted (200 with the message), so a 2xx means it exists and a retry follows only a
//! failure. 429 carries `Retry-After` (and `retry_after` in the body, in seconds).

use std::time::Duration;

use serde_json::{Value, json};

use super::{Channel, check_status, execute, rebase};
use crate::error::{Class, DeliveryError};
use crate::notifier::{Accepted, Notifier};
use crate::{Kind, Message, Secret};

#[derive(Debug, Clone, Default)]
pub struct Discord {
    /// `https://discord.com/api/webhooks/{id}/{token}`, itself a secret.
    pub url: Secret,
    pub username: Option<String>,
    pub avatar_url: Option<String>,
}

pub(crate) fn payload(config: &Discord, message: &Message) -> Value {
    let mut embed = json!({
        "title": super::cut(&message.title, 256),
        "description": super::cut(message.text.trim_end(), 4096),
        "fields": message.fields.iter().take(25).map(|f| json!({
            "name": super::cut(&f.name, 256), "value": super::cut(&f.value, 1024), "inline": true,
        })).collect::<Vec<_>>(),
    });
    if let Some(status) = message.status {
        embed["color"] = json!(status.color_number());
    }
    if let Some(link) = &message.link {
        embed["url"] = json!(link.url);
    }
    let mut body = json!({ "embeds": [embed] });
    if let Some(username) = &config.username {
        body["username"] = json!(username);
    }
    if let Some(avatar) = &config.avatar_url {
        body["avatar_url"] = json!(avatar);
    }
    body
}

pub(crate) async fn send(
    notifier: &Notifier,
    channel: &Channel,
    config: &Discord,
    message: &Message,
) -> Result<Accepted, DeliveryError> {
    let kind = Kind::Discord;
    let url = rebase(
        config.url.expose(),
        notifier.base_override(channel).as_deref(),
    );
    let separator = if url.contains('?') { '&' } else { '?' };
    let request = notifier
        .http
        .post(format!("{url}{separator}wait=true"))
        .json(&payload(config, message));
    let answer = execute(kind, request).await?;
    match check_status(kind, &answer) {
        Ok(()) => Ok(answer.accepted()),
        Err(mut error) if answer.status == 429 && answer.retry_after.is_none() => {
            let after = serde_json::from_str::<Value>(&answer.body)
                .ok()
                .and_then(|v| v.get("retry_after").and_then(Value::as_f64))
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(Duration::from_secs_f64);
            error.class = Class::Retryable { after };
            Err(error)
        }
        Err(error) => Err(error),
    }
}
