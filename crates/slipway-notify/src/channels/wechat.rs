//! WeChat Work (企业微信): application messages (`cgi-bin/gettoken` + `cgi-bin/message/send`)
//! and group robots (`cgi-bin/webhook/send?key=`).
//!
//! Every answer carries `errcode`; HTTP 200 with a non-zero `errcode` is a refusal. Codes
//! retried: -1 (system busy), 45009 (API frequency limit), 45033 (too many concurrent
//! calls). 40014 (invalid access_token) and 42001 (access_token expired) drop the cached
//! token, fetch a new one and send again once.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{Answer, Channel, check_status, cut, execute};
use crate::error::{Class, DeliveryError};
use crate::notifier::{Accepted, CachedToken, Notifier};
use crate::{Kind, Message, Secret};

pub(crate) const DEFAULT_BASE: &str = "https://qyapi.weixin.qq.com";

/// The `msgtype` of an application message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeChatMsgType {
    /// Title, description, a link and its button (`btntxt`). Needs a link; without one the
    /// message goes as `text`.
    #[default]
    TextCard,
    Markdown,
    Text,
}

impl WeChatMsgType {
    /// The plugins' `msgtype` values (`textcard`, `markdown`, `text`).
    pub fn parse(text: &str) -> Option<WeChatMsgType> {
        match text.trim().to_ascii_lowercase().as_str() {
            "textcard" => Some(WeChatMsgType::TextCard),
            "markdown" => Some(WeChatMsgType::Markdown),
            "text" => Some(WeChatMsgType::Text),
            _ => None,
        }
    }
}

/// An application's messages. With no `to_user`, `to_party` or `to_tag`, it goes to
/// `@all` (everyone who sees the app); naming any of them sends only to those.
#[derive(Debug, Clone)]
pub struct WeChatWork {
    pub corp_id: String,
    pub corp_secret: Secret,
    pub agent_id: i64,
    pub to_user: Vec<String>,
    pub to_party: Vec<String>,
    pub to_tag: Vec<String>,
    pub msg_type: WeChatMsgType,
    /// `duplicate_check_interval` in seconds (the API's default is 1800, its maximum 4
    /// hours): the same content within it is posted once.
    pub duplicate_check_secs: u32,
}

impl WeChatWork {
    pub fn new(
        corp_id: impl Into<String>,
        corp_secret: impl Into<Secret>,
        agent_id: i64,
    ) -> WeChatWork {
        WeChatWork {
            corp_id: corp_id.into(),
            corp_secret: corp_secret.into(),
            agent_id,
            to_user: Vec::new(),
            to_party: Vec::new(),
            to_tag: Vec::new(),
            msg_type: WeChatMsgType::TextCard,
            duplicate_check_secs: 1800,
        }
    }
}

/// A group robot's webhook.
#[derive(Debug, Clone)]
pub struct WeChatRobot {
    /// The `key` of the webhook URL.
    pub key: Secret,
    pub format: WeChatRobotFormat,
    /// User ids to mention (`@all` for everyone); text messages only.
    pub mentioned: Vec<String>,
    pub mentioned_mobiles: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeChatRobotFormat {
    #[default]
    Markdown,
    Text,
}

/// Limits the API documents for a textcard (bytes).
const TITLE_MAX: usize = 128;
const DESCRIPTION_MAX: usize = 512;
const TEXT_MAX: usize = 2048;

/// The `message/send` body (without the token).
pub(crate) fn app_payload(config: &WeChatWork, message: &Message) -> Value {
    let none = config.to_user.is_empty() && config.to_party.is_empty() && config.to_tag.is_empty();
    let mut body = json!({
        "agentid": config.agent_id,
        "enable_duplicate_check": 1,
        "duplicate_check_interval": config.duplicate_check_secs.clamp(1, 14400),
    });
    if none {
        body["touser"] = json!("@all");
    } else {
        for (key, list) in [
            ("touser", &config.to_user),
            ("toparty", &config.to_party),
            ("totag", &config.to_tag),
        ] {
            if !list.is_empty() {
                body[key] = json!(list.join("|"));
            }
        }
    }
    match (config.msg_type, &message.link) {
        (WeChatMsgType::TextCard, Some(link)) => {
            body["msgtype"] = json!("textcard");
            let mut card = json!({
                "title": cut(&message.title, TITLE_MAX),
                "description": cut(&message.plain_body(), DESCRIPTION_MAX),
                "url": link.url,
            });
            if !link.label.is_empty() {
                card["btntxt"] = json!(cut(&link.label, 16));
            }
            body["textcard"] = card;
        }
        (WeChatMsgType::Markdown, _) => {
            body["msgtype"] = json!("markdown");
            body["markdown"] = json!({ "content": cut(&message.markdown(), TEXT_MAX) });
        }
        _ => {
            body["msgtype"] = json!("text");
            body["text"] = json!({ "content": cut(&message.plain(), TEXT_MAX) });
        }
    }
    body
}

fn errcode(value: &Value) -> Option<i64> {
    value.get("errcode").and_then(Value::as_i64)
}

/// A non-zero `errcode`'s verdict.
fn refused(kind: Kind, answer: &Answer, code: i64, doing: &str) -> DeliveryError {
    let class = match code {
        -1 | 45009 | 45033 => Class::Retryable { after: None },
        _ => Class::Final,
    };
    let hint = match code {
        -1 => " (system busy)",
        40001 => " (invalid secret: check corp_secret)",
        40013 => " (invalid corpid)",
        40056 | 301002 => " (invalid agentid)",
        81013 => " (no valid recipient: check to_user, to_party and to_tag)",
        93000 => " (invalid webhook key)",
        45009 => " (API frequency limit)",
        _ => "",
    };
    answer.error(
        kind,
        class,
        format!("{doing} refused with errcode {code}{hint}"),
    )
}

fn token_key(base: &str, config: &WeChatWork) -> String {
    let fingerprint = hex::encode(Sha256::digest(config.corp_secret.expose().as_bytes()));
    format!("{base}\n{}\n{fingerprint}", config.corp_id)
}

/// The cached token, else a new one from `gettoken`.
async fn token(
    notifier: &Notifier,
    base: &str,
    config: &WeChatWork,
) -> Result<String, DeliveryError> {
    let key = token_key(base, config);
    if let Some(cached) = notifier.tokens.lock().await.get(&key)
        && cached.until > Instant::now()
    {
        return Ok(cached.token.clone());
    }
    let kind = Kind::WeChatWork;
    let request = notifier
        .http
        .get(format!("{base}/cgi-bin/gettoken"))
        .query(&[
            ("corpid", config.corp_id.as_str()),
            ("corpsecret", config.corp_secret.expose()),
        ]);
    let answer = execute(kind, request).await?;
    check_status(kind, &answer)?;
    let value = answer.json(kind)?;
    match errcode(&value) {
        Some(0) | None => {}
        Some(code) => return Err(refused(kind, &answer, code, "gettoken")),
    }
    let Some(token) = value.get("access_token").and_then(Value::as_str) else {
        return Err(answer.error(
            kind,
            Class::Final,
            "gettoken answered without an access_token",
        ));
    };
    let expires_in = value
        .get("expires_in")
        .and_then(Value::as_u64)
        .unwrap_or(7200);
    // Refresh a little early so a token never expires between the check and the send.
    let lifetime = Duration::from_secs(expires_in.saturating_sub(expires_in.min(300) / 5));
    notifier.tokens.lock().await.insert(
        key,
        CachedToken {
            token: token.to_string(),
            until: Instant::now() + lifetime,
        },
    );
    Ok(token.to_string())
}

pub(crate) async fn send_app(
    notifier: &Notifier,
    channel: &Channel,
    config: &WeChatWork,
    message: &Message,
) -> Result<Accepted, DeliveryError> {
    let kind = Kind::WeChatWork;
    let base = notifier.base(channel, DEFAULT_BASE);
    let body = app_payload(config, message);
    let mut refreshed = false;
    loop {
        let access_token = token(notifier, &base, config).await?;
        let request = notifier
            .http
            .post(format!("{base}/cgi-bin/message/send"))
            .query(&[("access_token", access_token.as_str())])
            .json(&body);
        let answer = execute(kind, request).await?;
        check_status(kind, &answer)?;
        let value = answer.json(kind)?;
        match errcode(&value) {
            Some(0) => return Ok(answer.accepted()),
            Some(40014 | 42001) if !refreshed => {
                // The token was revoked or expired early: fetch a new one and send again.
                notifier
                    .tokens
                    .lock()
                    .await
                    .remove(&token_key(&base, config));
                refreshed = true;
            }
            Some(code) => return Err(refused(kind, &answer, code, "message/send")),
            None => {
                return Err(answer.error(
                    kind,
                    Class::Final,
                    "message/send answered without errcode",
                ));
            }
        }
    }
}

pub(crate) fn robot_payload(config: &WeChatRobot, message: &Message) -> Value {
    match config.format {
        WeChatRobotFormat::Markdown => json!({
            "msgtype": "markdown",
            "markdown": { "content": cut(&message.markdown(), 4096) },
        }),
        WeChatRobotFormat::Text => json!({
            "msgtype": "text",
            "text": {
                "content": cut(&message.plain(), TEXT_MAX),
                "mentioned_list": config.mentioned,
                "mentioned_mobile_list": config.mentioned_mobiles,
            },
        }),
    }
}

pub(crate) async fn send_robot(
    notifier: &Notifier,
    channel: &Channel,
    config: &WeChatRobot,
    message: &Message,
) -> Result<Accepted, DeliveryError> {
    let kind = Kind::WeChatWorkRobot;
    let base = notifier.base(channel, DEFAULT_BASE);
    let request = notifier
        .http
        .post(format!("{base}/cgi-bin/webhook/send"))
        .query(&[("key", config.key.expose())])
        .json(&robot_payload(config, message));
    let answer = execute(kind, request).await?;
    check_status(kind, &answer)?;
    let value = answer.json(kind)?;
    match errcode(&value) {
        Some(0) => Ok(answer.accepted()),
        Some(code) => Err(refused(kind, &answer, code, "webhook/send")),
        None => Err(answer.error(kind, Class::Final, "webhook/send answered without errcode")),
    }
}
