//! DingTalk (钉钉) custom robot: `POST /robot/send?access_token=…`, signed when the robot
//! has a secret: `timestamp` (ms) and `sign` = base64(HMAC-SHA256(key = secret,
//! message = "timestamp\nsecret")), URL-encoded, both in the query.
//!
//! The body is `msgtype` and the object of that name: `markdown` (the default; `title`
//! and `text`), `text` (`content`), `link` (`title`, `text`, `messageUrl`, `picUrl`),
//! `actionCard` (`title`, `text` and one button, `singleTitle`/`singleURL`) or `feedCard`
//! (one entry of `links`). `link`, `actionCard` and `feedCard` need the message's link;
//! without one the message goes as `markdown`. Only `text` and `markdown` carry `at`.
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

/// The robot message types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DingTalkMsgType {
    #[default]
    Markdown,
    Text,
    Link,
    ActionCard,
    FeedCard,
}

impl DingTalkMsgType {
    /// The API's names (`markdown`, `text`, `link`, `actionCard`, `feedCard`), in any case,
    /// with `_` or `-` allowed between the words (`action_card`).
    pub fn parse(text: &str) -> Option<DingTalkMsgType> {
        let name: String = text
            .trim()
            .chars()
            .filter(|c| !matches!(c, '_' | '-' | ' '))
            .collect::<String>()
            .to_ascii_lowercase();
        match name.as_str() {
            "markdown" => Some(DingTalkMsgType::Markdown),
            "text" => Some(DingTalkMsgType::Text),
            "link" => Some(DingTalkMsgType::Link),
            "actioncard" => Some(DingTalkMsgType::ActionCard),
            "feedcard" => Some(DingTalkMsgType::FeedCard),
            _ => None,
        }
    }

    /// The API's `msgtype`.
    pub fn as_str(self) -> &'static str {
        match self {
            DingTalkMsgType::Markdown => "markdown",
            DingTalkMsgType::Text => "text",
            DingTalkMsgType::Link => "link",
            DingTalkMsgType::ActionCard => "actionCard",
            DingTalkMsgType::FeedCard => "feedCard",
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct DingTalk {
    pub access_token: Secret,
    /// The robot's signing secret (`SEC…`), when it has "additional signature" on.
    pub secret: Option<Secret>,
    pub at_mobiles: Vec<String>,
    pub at_all: bool,
    /// The robot's keyword rules, if any.
    pub keywords: Vec<String>,
    pub msg_type: DingTalkMsgType,
    /// The `title` of markdown, link, action card and feed card messages (what the
    /// notification shows); default the message's title, else `Slipway`.
    pub title: Option<String>,
    /// The picture of link and feed card messages.
    pub pic_url: Option<String>,
}

/// The documented signature for `timestamp_ms` (before URL encoding).
pub fn dingtalk_sign(secret: &str, timestamp_ms: u128) -> String {
    let to_sign = format!("{timestamp_ms}\n{secret}");
    base64::engine::general_purpose::STANDARD
        .encode(super::hmac_sha256(secret.as_bytes(), to_sign.as_bytes()))
}

/// `text` with the first keyword appended when the robot has keyword rules and neither the
/// text nor the title holds one.
fn with_keyword(config: &DingTalk, title: &str, mut text: String) -> String {
    if let Some(first) = config.keywords.first()
        && !config.keywords.iter().any(|k| text.contains(k.as_str()))
        && !title.contains(first.as_str())
    {
        text.push_str(&format!("\n\n{first}"));
    }
    text
}

pub(crate) fn payload(config: &DingTalk, message: &Message) -> Value {
    let title = config
        .title
        .clone()
        .filter(|t| !t.is_empty())
        .or_else(|| Some(message.title.clone()).filter(|t| !t.is_empty()))
        .unwrap_or_else(|| "Slipway".to_string());
    let link = message.link.as_ref().filter(|l| !l.url.is_empty());
    // Without a link, the types built around one go as markdown.
    let msg_type = match (config.msg_type, link) {
        (DingTalkMsgType::Link | DingTalkMsgType::ActionCard | DingTalkMsgType::FeedCard, None) => {
            DingTalkMsgType::Markdown
        }
        (other, _) => other,
    };
    // The link is the message's button or target there, not a line of its text.
    let unlinked = Message {
        link: None,
        ..message.clone()
    };
    // Text and markdown messages mention only the numbers written in the text: those the
    // text does not name yet are added.
    let body = message.markdown();
    let mentions: String = config
        .at_mobiles
        .iter()
        .filter(|mobile| !body.contains(&format!("@{mobile}")))
        .map(|mobile| format!(" @{mobile}"))
        .collect();
    let at = json!({ "atMobiles": config.at_mobiles, "isAtAll": config.at_all });
    match (msg_type, link) {
        (DingTalkMsgType::Text, _) => {
            let content = with_keyword(config, "", message.plain()) + &mentions;
            json!({ "msgtype": "text", "text": { "content": content }, "at": at })
        }
        (DingTalkMsgType::Link, Some(link)) => json!({
            "msgtype": "link",
            "link": {
                "title": title,
                "text": with_keyword(config, &title, unlinked.plain_body()),
                "messageUrl": link.url,
                "picUrl": config.pic_url.clone().unwrap_or_default(),
            },
        }),
        (DingTalkMsgType::ActionCard, Some(link)) => json!({
            "msgtype": "actionCard",
            "actionCard": {
                "title": title,
                "text": with_keyword(config, &title, unlinked.markdown()),
                "btnOrientation": "0",
                "singleTitle": link.label,
                "singleURL": link.url,
            },
        }),
        (DingTalkMsgType::FeedCard, Some(link)) => json!({
            "msgtype": "feedCard",
            "feedCard": { "links": [{
                "title": with_keyword(config, "", title.clone()),
                "messageURL": link.url,
                "picURL": config.pic_url.clone().unwrap_or_default(),
            }] },
        }),
        _ => {
            let text = with_keyword(config, &message.title, body) + &mentions;
            json!({
                "msgtype": "markdown",
                "markdown": { "title": title, "text": text },
                "at": at,
            })
        }
    }
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
