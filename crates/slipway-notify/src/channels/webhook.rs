//! A generic webhook, like `plugins/webhook`: any method, a JSON body (the message and the
//! event's data) or a text body (a rendered template), extra headers, basic auth or a
//! bearer token, and when a secret is set an `X-Drone-Signature: sha256=HEX` header, the
//! HMAC-SHA256 of the exact body bytes. Success is a 2xx, or one of `valid_codes`.

use serde_json::json;

use super::{Channel, check_status, execute, rebase};
use crate::error::{Class, DeliveryError};
use crate::notifier::{Accepted, Notifier};
use crate::{Kind, Message, Secret};

/// What the body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WebhookBody {
    /// `{"title", "status", "text", "fields", "link", "event"}` as JSON.
    #[default]
    Message,
    /// The message's text as it is (a template's output), sent with `content_type`.
    Text,
}

#[derive(Debug, Clone)]
pub struct Webhook {
    pub url: Secret,
    pub method: String,
    pub content_type: String,
    pub headers: Vec<(String, String)>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// Sent as `Authorization: Bearer …`.
    pub token: Option<Secret>,
    pub signature_secret: Option<Secret>,
    /// When not empty, the statuses that count as accepted (instead of any 2xx).
    pub valid_codes: Vec<u16>,
    pub body: WebhookBody,
}

impl Webhook {
    pub fn new(url: impl Into<Secret>) -> Webhook {
        Webhook {
            url: url.into(),
            method: "POST".into(),
            content_type: "application/json".into(),
            headers: Vec::new(),
            username: None,
            password: None,
            token: None,
            signature_secret: None,
            valid_codes: Vec::new(),
            body: WebhookBody::Message,
        }
    }
}

/// The documented signature header's value for `body`.
pub fn webhook_signature(secret: &str, body: &[u8]) -> String {
    format!(
        "sha256={}",
        hex::encode(super::hmac_sha256(secret.as_bytes(), body))
    )
}

pub(crate) fn body(config: &Webhook, message: &Message) -> Vec<u8> {
    match config.body {
        WebhookBody::Text => message.text.clone().into_bytes(),
        WebhookBody::Message => json!({
            "title": message.title,
            "status": message.status,
            "text": message.text,
            "fields": message.fields,
            "link": message.link,
            "event": message.data,
        })
        .to_string()
        .into_bytes(),
    }
}

pub(crate) async fn send(
    notifier: &Notifier,
    channel: &Channel,
    config: &Webhook,
    message: &Message,
) -> Result<Accepted, DeliveryError> {
    let kind = Kind::Webhook;
    let url = rebase(
        config.url.expose(),
        notifier.base_override(channel).as_deref(),
    );
    let method = reqwest::Method::from_bytes(config.method.to_ascii_uppercase().as_bytes())
        .map_err(|_| {
            DeliveryError::new(
                kind,
                Class::Final,
                format!(
                    "setting `method`: `{}` is not an HTTP method",
                    config.method
                ),
            )
        })?;
    let body = body(config, message);
    let mut request = notifier
        .http
        .request(method, url)
        .header(reqwest::header::CONTENT_TYPE, &config.content_type);
    for (name, value) in &config.headers {
        request = request.header(name.as_str(), value.as_str());
    }
    if let Some(username) = &config.username {
        request = request.basic_auth(username, config.password.as_ref().map(Secret::expose));
    }
    if let Some(token) = config.token.as_ref().filter(|t| !t.is_empty()) {
        request = request.bearer_auth(token.expose());
    }
    if let Some(secret) = config.signature_secret.as_ref().filter(|s| !s.is_empty()) {
        request = request.header(
            "X-Drone-Signature",
            webhook_signature(secret.expose(), &body),
        );
    }
    let answer = execute(kind, request.body(body)).await?;
    if !config.valid_codes.is_empty() {
        if config.valid_codes.contains(&answer.status) {
            return Ok(answer.accepted());
        }
        check_status(kind, &answer)?;
        return Err(answer.error(
            kind,
            Class::Final,
            format!("HTTP {} is not one of valid_response_codes", answer.status),
        ));
    }
    check_status(kind, &answer)?;
    Ok(answer.accepted())
}
