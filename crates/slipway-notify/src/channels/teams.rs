//! Microsoft Teams through a Workflows ("Post to a channel when a webhook request is
//! received") webhook: `POST` a message whose one attachment is an Adaptive Card 1.4
//! (title in the status colour, text, a fact set, an open-URL action). The workflow answers
//! 202 Accepted; 4xx final, 429 and 5xx retried.

use serde_json::{Value, json};

use super::{Channel, check_status, execute, rebase};
use crate::error::DeliveryError;
use crate::notifier::{Accepted, Notifier};
use crate::{Kind, Message, Secret, Status};

#[derive(Debug, Clone, Default)]
pub struct Teams {
    /// The workflow's webhook URL (it carries a signature: a secret).
    pub url: Secret,
}

pub(crate) fn card(message: &Message) -> Value {
    let color = match message.status {
        Some(Status::Success) => "Good",
        Some(Status::Failure) => "Attention",
        Some(Status::Error) => "Warning",
        _ => "Default",
    };
    let mut body = vec![json!({
        "type": "TextBlock", "text": message.title, "weight": "Bolder",
        "size": "Medium", "color": color, "wrap": true,
    })];
    if !message.text.trim().is_empty() {
        body.push(json!({ "type": "TextBlock", "text": message.text.trim_end(), "wrap": true }));
    }
    if !message.fields.is_empty() {
        body.push(json!({
            "type": "FactSet",
            "facts": message.fields.iter().map(|f| json!({ "title": f.name, "value": f.value }))
                .collect::<Vec<_>>(),
        }));
    }
    let mut card = json!({
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": body,
    });
    if let Some(link) = &message.link {
        card["actions"] =
            json!([{ "type": "Action.OpenUrl", "title": link.label, "url": link.url }]);
    }
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": card,
        }],
    })
}

pub(crate) async fn send(
    notifier: &Notifier,
    channel: &Channel,
    config: &Teams,
    message: &Message,
) -> Result<Accepted, DeliveryError> {
    let kind = Kind::Teams;
    let url = rebase(
        config.url.expose(),
        notifier.base_override(channel).as_deref(),
    );
    let answer = execute(kind, notifier.http.post(url).json(&card(message))).await?;
    check_status(kind, &answer)?;
    Ok(answer.accepted())
}
