//! Slack incoming webhook: `POST` the webhook URL with `text` (the fallback notifications
//! show) and an attachment in the status colour holding Block Kit blocks (header, text,
//! fields, a button). Slack answers `ok`, or 4xx with a code (`invalid_payload`,
//! `channel_not_found`, `no_service`, ...: final), 429 with `Retry-After`, 5xx.

use serde_json::{Value, json};

use super::{Channel, check_status, execute, rebase};
use crate::error::DeliveryError;
use crate::notifier::{Accepted, Notifier};
use crate::{Kind, Message, Secret};

#[derive(Debug, Clone, Default)]
pub struct Slack {
    /// The webhook URL (`https://hooks.slack.com/services/…`), itself a secret.
    pub url: Secret,
    pub channel: Option<String>,
    pub username: Option<String>,
    pub icon_url: Option<String>,
    pub icon_emoji: Option<String>,
    pub link_names: bool,
    /// Overrides the status colour (`#RRGGBB`, `good`, `warning`, `danger`).
    pub color: Option<String>,
}

pub(crate) fn payload(config: &Slack, message: &Message) -> Value {
    let mut blocks = Vec::new();
    if !message.title.is_empty() {
        blocks.push(json!({
            "type": "header",
            "text": { "type": "plain_text", "text": super::cut(&message.title, 150) },
        }));
    }
    if !message.text.trim().is_empty() {
        blocks.push(json!({
            "type": "section",
            "text": { "type": "mrkdwn", "text": message.text.trim_end() },
        }));
    }
    if !message.fields.is_empty() {
        blocks.push(json!({
            "type": "section",
            "fields": message.fields.iter().take(10).map(|f| json!({
                "type": "mrkdwn", "text": format!("*{}*\n{}", f.name, f.value),
            })).collect::<Vec<_>>(),
        }));
    }
    if let Some(link) = &message.link {
        blocks.push(json!({
            "type": "actions",
            "elements": [{
                "type": "button",
                "text": { "type": "plain_text", "text": link.label },
                "url": link.url,
            }],
        }));
    }
    let color = config
        .color
        .clone()
        .or_else(|| message.status.map(|s| s.color().to_string()));
    let mut body = json!({
        "text": message.plain(),
        "attachments": [{ "color": color, "blocks": blocks, "fallback": message.plain() }],
    });
    for (key, value) in [
        ("channel", &config.channel),
        ("username", &config.username),
        ("icon_url", &config.icon_url),
        ("icon_emoji", &config.icon_emoji),
    ] {
        if let Some(value) = value {
            body[key] = json!(value);
        }
    }
    if config.link_names {
        body["link_names"] = json!(true);
    }
    body
}

pub(crate) async fn send(
    notifier: &Notifier,
    channel: &Channel,
    config: &Slack,
    message: &Message,
) -> Result<Accepted, DeliveryError> {
    let kind = Kind::Slack;
    let url = rebase(
        config.url.expose(),
        notifier.base_override(channel).as_deref(),
    );
    let answer = execute(
        kind,
        notifier.http.post(url).json(&payload(config, message)),
    )
    .await?;
    check_status(kind, &answer)?;
    Ok(answer.accepted())
}
