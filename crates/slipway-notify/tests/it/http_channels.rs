//! DingTalk, Feishu, Slack, Discord, Teams, Telegram and the generic webhook against
//! stand-ins that check signatures by the documented algorithms and give the documented
//! failure answers.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};
use slipway_notify::{
    Channel, ChannelConfig, Class, DingTalk, DingTalkMsgType, Discord, Feishu, Kind, Notifier,
    NotifierConfig, Slack, Teams, Telegram, Webhook, WebhookBody,
};

use crate::support::*;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

// ---- DingTalk ----

const DING_SECRET: &str = "SEC0123456789abcdef0123456789abcdef";

/// oapi.dingtalk.com/robot/send: token, then `sign` = base64(HMAC-SHA256(secret,
/// "timestamp\nsecret")) with a timestamp within an hour, then the keyword rule.
async fn dingtalk_stand_in() -> StandIn {
    StandIn::start(|req| {
        if req.path != "/robot/send" {
            return Reply::json(404, json!({"errcode": 404}));
        }
        if req.query.get("access_token").map(String::as_str) != Some("ding-token-abc") {
            return Reply::json(
                200,
                json!({"errcode": 300001, "errmsg": "token is not exist"}),
            );
        }
        let timestamp = req.query.get("timestamp").cloned().unwrap_or_default();
        let sign = req.query.get("sign").cloned().unwrap_or_default();
        let expected = b64(&hmac_sha256(
            DING_SECRET.as_bytes(),
            format!("{timestamp}\n{DING_SECRET}").as_bytes(),
        ));
        let fresh = timestamp
            .parse::<u64>()
            .is_ok_and(|ms| (ms / 1000).abs_diff(now_secs()) < 3600);
        if sign != expected || !fresh {
            return Reply::json(200, json!({"errcode": 310000, "errmsg": "sign not match"}));
        }
        let body = req.json();
        let text = body["markdown"]["text"].as_str().unwrap_or_default();
        if !text.contains("[deploy]") {
            return Reply::json(
                200,
                json!({"errcode": 310000, "errmsg": "keywords not in content"}),
            );
        }
        Reply::json(200, json!({"errcode": 0, "errmsg": "ok"}))
    })
    .await
}

#[tokio::test]
async fn dingtalk_signed_with_keyword() {
    let stand_in = dingtalk_stand_in().await;
    let config = DingTalk {
        access_token: "ding-token-abc".into(),
        secret: Some(DING_SECRET.into()),
        keywords: vec!["[deploy]".into()],
        at_mobiles: vec!["13800000000".into()],
        ..DingTalk::default()
    };
    let channel =
        Channel::new("ding", ChannelConfig::DingTalk(config.clone())).with_api_base(stand_in.url());
    let accepted = notifier()
        .send(&channel, &message())
        .await
        .expect("accepted");
    assert!(accepted.answer.contains("\"errcode\":0"));
    let body = stand_in.requests()[0].json();
    assert_eq!(body["msgtype"], "markdown");
    assert_eq!(body["at"]["atMobiles"][0], "13800000000");
    assert!(
        body["markdown"]["text"]
            .as_str()
            .is_some_and(|t| t.contains("@13800000000"))
    );

    let wrong = DingTalk {
        secret: Some("SECwrongwrongwrong".into()),
        ..config
    };
    let channel =
        Channel::new("ding", ChannelConfig::DingTalk(wrong)).with_api_base(stand_in.url());
    let delivery = notifier().deliver(&channel, &message()).await;
    let error = delivery.outcome.expect_err("bad signature");
    assert_eq!(error.class, Class::Final);
    assert_eq!(delivery.attempts.len(), 1);
    assert!(error.to_string().contains("310000"), "{error}");
    assert!(!error.to_string().contains("SECwrongwrongwrong"));
    assert!(!error.to_string().contains("ding-token-abc"));
}

/// Each message type's documented body; the types built around a link go as markdown
/// without one, and only text and markdown carry `at`.
#[tokio::test]
async fn dingtalk_message_types() {
    let stand_in = dingtalk_stand_in_any().await;
    let send = |msg_type, message: slipway_notify::Message| {
        let config = DingTalk {
            access_token: "ding-token-abc".into(),
            msg_type,
            title: Some("CI".into()),
            pic_url: Some("http://img.example.com/ok.png".into()),
            at_mobiles: vec!["13800000000".into()],
            ..DingTalk::default()
        };
        let channel =
            Channel::new("ding", ChannelConfig::DingTalk(config)).with_api_base(stand_in.url());
        async move { notifier().send(&channel, &message).await }
    };
    for msg_type in [
        DingTalkMsgType::Text,
        DingTalkMsgType::Link,
        DingTalkMsgType::ActionCard,
        DingTalkMsgType::FeedCard,
    ] {
        send(msg_type, message()).await.expect("accepted");
    }
    let mut unlinked = message();
    unlinked.link = None;
    send(DingTalkMsgType::Link, unlinked)
        .await
        .expect("accepted");
    let bodies: Vec<Value> = stand_in.requests().iter().map(|r| r.json()).collect();
    assert_eq!(bodies.len(), 5);

    assert_eq!(bodies[0]["msgtype"], "text");
    let content = bodies[0]["text"]["content"].as_str().unwrap_or_default();
    assert!(
        content.starts_with("acme/app #42 success\nFix the login page"),
        "{content}"
    );
    assert!(content.ends_with(" @13800000000"), "{content}");
    assert_eq!(bodies[0]["at"]["atMobiles"][0], "13800000000");

    assert_eq!(bodies[1]["msgtype"], "link");
    assert_eq!(bodies[1]["link"]["title"], "CI");
    assert_eq!(
        bodies[1]["link"]["messageUrl"],
        "http://ci.example.com/acme/app/42"
    );
    assert_eq!(bodies[1]["link"]["picUrl"], "http://img.example.com/ok.png");
    let text = bodies[1]["link"]["text"].as_str().unwrap_or_default();
    assert!(
        text.contains("Fix the login page") && !text.contains("http://ci."),
        "{text}"
    );
    assert!(bodies[1].get("at").is_none());

    assert_eq!(bodies[2]["msgtype"], "actionCard");
    let card = &bodies[2]["actionCard"];
    assert_eq!(card["title"], "CI");
    assert_eq!(card["singleTitle"], "Open build");
    assert_eq!(card["singleURL"], "http://ci.example.com/acme/app/42");
    assert!(
        card["text"]
            .as_str()
            .is_some_and(|t| t.contains("**acme/app #42 success**")),
        "{card}"
    );

    assert_eq!(bodies[3]["msgtype"], "feedCard");
    let entry = &bodies[3]["feedCard"]["links"][0];
    assert_eq!(entry["title"], "CI");
    assert_eq!(entry["messageURL"], "http://ci.example.com/acme/app/42");
    assert_eq!(entry["picURL"], "http://img.example.com/ok.png");

    assert_eq!(bodies[4]["msgtype"], "markdown");
    assert_eq!(bodies[4]["markdown"]["title"], "CI");
    assert_eq!(
        DingTalkMsgType::parse("action_card"),
        Some(DingTalkMsgType::ActionCard)
    );
    assert_eq!(
        DingTalkMsgType::parse("FeedCard"),
        Some(DingTalkMsgType::FeedCard)
    );
    assert_eq!(DingTalkMsgType::parse("card"), None);
}

/// Any robot message, unsigned, accepted.
async fn dingtalk_stand_in_any() -> StandIn {
    StandIn::start(|req| match req.path.as_str() {
        "/robot/send" if req.json()["msgtype"].is_string() => {
            Reply::json(200, json!({"errcode": 0, "errmsg": "ok"}))
        }
        _ => Reply::json(200, json!({"errcode": 40035, "errmsg": "缺少参数 json"})),
    })
    .await
}

// ---- Feishu ----

const FEISHU_SECRET: &str = "feishu-secret-q1w2e3";

/// open.feishu.cn/open-apis/bot/v2/hook/{token}: `sign` = base64(HMAC-SHA256(key =
/// "timestamp\nsecret", message = "")), timestamp within an hour.
async fn feishu_stand_in() -> StandIn {
    StandIn::start(|req| {
        let Some(token) = req.path.strip_prefix("/open-apis/bot/v2/hook/") else {
            return Reply::json(404, json!({"code": 404}));
        };
        if token != "hook-token-xyz" {
            return Reply::json(200, json!({"code": 19001, "msg": "param invalid: incoming webhook access token invalid"}));
        }
        let body = req.json();
        let timestamp = body["timestamp"].as_str().unwrap_or_default().to_string();
        let expected = b64(&hmac_sha256(format!("{timestamp}\n{FEISHU_SECRET}").as_bytes(), b""));
        let fresh = timestamp.parse::<u64>().is_ok_and(|s| s.abs_diff(now_secs()) < 3600);
        if body["sign"].as_str() != Some(expected.as_str()) || !fresh {
            return Reply::json(200, json!({"code": 19021, "msg": "sign match fail or timestamp is not within one hour from current time"}));
        }
        if body["msg_type"] != "interactive" || body["card"]["header"]["title"]["content"].as_str().is_none() {
            return Reply::json(200, json!({"code": 9499, "msg": "Bad Request"}));
        }
        Reply::json(200, json!({"code": 0, "msg": "success", "data": {}}))
    })
    .await
}

#[tokio::test]
async fn feishu_signed_interactive_card() {
    let stand_in = feishu_stand_in().await;
    let config = Feishu {
        token: "hook-token-xyz".into(),
        secret: Some(FEISHU_SECRET.into()),
    };
    let channel =
        Channel::new("lark", ChannelConfig::Feishu(config.clone())).with_api_base(stand_in.url());
    notifier()
        .send(&channel, &message())
        .await
        .expect("accepted");
    let card = stand_in.requests()[0].json()["card"].clone();
    assert_eq!(card["header"]["template"], "green");
    assert_eq!(
        card["elements"][2]["actions"][0]["url"],
        "http://ci.example.com/acme/app/42"
    );

    let wrong = Feishu {
        secret: Some("not-the-secret".into()),
        ..config
    };
    let channel = Channel::new("lark", ChannelConfig::Feishu(wrong)).with_api_base(stand_in.url());
    let error = notifier()
        .send(&channel, &message())
        .await
        .expect_err("bad sign");
    assert_eq!(error.class, Class::Final);
    assert!(error.to_string().contains("19021"), "{error}");
}

// ---- Slack ----

#[tokio::test]
async fn slack_blocks_and_retry_after_is_honoured() {
    let calls = Arc::new(Mutex::new(0u32));
    let counter = calls.clone();
    let stand_in = StandIn::start(move |req| {
        if req.path != "/services/T000/B000/XXXXSECRETXXXX" {
            return Reply::text(404, "no_service");
        }
        let body = req.json();
        if body["text"].as_str().is_none() {
            return Reply::text(400, "invalid_payload");
        }
        let mut calls = counter.lock().expect("lock");
        *calls += 1;
        if *calls == 1 {
            return Reply::text(429, "rate_limited").header("Retry-After", "1");
        }
        Reply::text(200, "ok")
    })
    .await;
    let config = Slack {
        url: "https://hooks.slack.com/services/T000/B000/XXXXSECRETXXXX".into(),
        channel: Some("#builds".into()),
        ..Slack::default()
    };
    // The kind-wide base (`--notify-api slack=...`) replaces hooks.slack.com.
    let mut api = std::collections::BTreeMap::new();
    api.insert(Kind::Slack, stand_in.url());
    let notifier = Notifier::new(NotifierConfig {
        api,
        ..NotifierConfig::default()
    })
    .expect("notifier");
    let channel = Channel::new("slack", ChannelConfig::Slack(config));
    let started = Instant::now();
    let delivery = notifier.deliver(&channel, &message()).await;
    assert!(delivery.is_accepted(), "{:?}", delivery.outcome);
    assert_eq!(delivery.attempts.len(), 2);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After was not waited for"
    );
    let first = delivery.attempts[0].result.as_ref().expect_err("429");
    assert_eq!(
        first.class,
        Class::Retryable {
            after: Some(Duration::from_secs(1))
        }
    );
    assert_eq!(first.answer.as_deref(), Some("rate_limited"));
    let body = stand_in.requests()[1].json();
    assert_eq!(body["channel"], "#builds");
    assert_eq!(body["attachments"][0]["color"], "#2EB67D");
    assert_eq!(body["attachments"][0]["blocks"][0]["type"], "header");
}

#[tokio::test]
async fn slack_4xx_is_final_and_the_url_token_is_masked() {
    let stand_in = StandIn::start(|_| Reply::text(404, "no_service for XXXXSECRETXXXX")).await;
    let config = Slack {
        url: format!("{}/services/T000/B000/XXXXSECRETXXXX", stand_in.url()).into(),
        ..Slack::default()
    };
    let channel = Channel::new("slack", ChannelConfig::Slack(config));
    let delivery = notifier().deliver(&channel, &message()).await;
    let error = delivery.outcome.expect_err("404");
    assert_eq!(error.class, Class::Final);
    assert_eq!(delivery.attempts.len(), 1);
    assert_eq!(error.status, Some(404));
    assert!(!error.to_string().contains("XXXXSECRETXXXX"), "{error}");
}

// ---- Discord ----

#[tokio::test]
async fn discord_waits_for_the_post_and_reads_retry_after_from_the_body() {
    let calls = Arc::new(Mutex::new(0u32));
    let counter = calls.clone();
    let stand_in = StandIn::start(move |req| {
        if req.query.get("wait").map(String::as_str) != Some("true") {
            // Without wait=true Discord answers 204 before posting.
            return Reply::text(204, "");
        }
        let mut calls = counter.lock().expect("lock");
        *calls += 1;
        if *calls == 1 {
            return Reply::json(
                429,
                json!({"message": "You are being rate limited.", "retry_after": 0.3, "global": false}),
            );
        }
        let embeds = req.json()["embeds"].clone();
        Reply::json(200, json!({"id": "1", "embeds": embeds}))
    })
    .await;
    let config = Discord {
        url: format!("{}/api/webhooks/123/discord-token-abc", stand_in.url()).into(),
        username: Some("Slipway".into()),
        avatar_url: None,
    };
    let channel = Channel::new("discord", ChannelConfig::Discord(config));
    let delivery = notifier().deliver(&channel, &message()).await;
    assert!(delivery.is_accepted(), "{:?}", delivery.outcome);
    let first = delivery.attempts[0].result.as_ref().expect_err("429");
    assert_eq!(
        first.class,
        Class::Retryable {
            after: Some(Duration::from_millis(300))
        }
    );
    let body = stand_in.requests()[1].json();
    assert_eq!(body["embeds"][0]["color"], 0x2EB67D);
    assert_eq!(
        body["embeds"][0]["url"],
        "http://ci.example.com/acme/app/42"
    );
    assert_eq!(body["username"], "Slipway");
}

// ---- Teams ----

#[tokio::test]
async fn teams_adaptive_card_after_two_server_errors() {
    let calls = Arc::new(Mutex::new(0u32));
    let counter = calls.clone();
    let stand_in = StandIn::start(move |req| {
        let mut calls = counter.lock().expect("lock");
        *calls += 1;
        if *calls <= 2 {
            return Reply::json(500, json!({"error": {"code": "InternalServerError"}}));
        }
        let body = req.json();
        let attachment = &body["attachments"][0];
        if body["type"] != "message"
            || attachment["contentType"] != "application/vnd.microsoft.card.adaptive"
            || attachment["content"]["type"] != "AdaptiveCard"
        {
            return Reply::json(400, json!({"error": {"code": "InvalidRequestContent"}}));
        }
        Reply::text(202, "")
    })
    .await;
    let config = Teams {
        url: format!(
            "{}/workflows/abc/triggers/manual/paths/invoke?sig=teams-sig-123",
            stand_in.url()
        )
        .into(),
    };
    let channel = Channel::new("teams", ChannelConfig::Teams(config));
    let delivery = notifier().deliver(&channel, &message()).await;
    assert!(delivery.is_accepted(), "{:?}", delivery.outcome);
    assert_eq!(delivery.attempts.len(), 3);
    assert_eq!(
        delivery.outcome.as_ref().map(|a| a.status).ok(),
        Some(Some(202))
    );
    let card = &stand_in.requests()[2].json()["attachments"][0]["content"];
    assert_eq!(card["actions"][0]["type"], "Action.OpenUrl");
    assert_eq!(card["body"][0]["color"], "Good");
}

// ---- Telegram ----

#[tokio::test]
async fn telegram_send_message_and_its_errors() {
    let calls = Arc::new(Mutex::new(0u32));
    let counter = calls.clone();
    let stand_in = StandIn::start(move |req| {
        if req.path != "/bot123456:tg-token-abc/sendMessage" {
            return Reply::json(401, json!({"ok": false, "error_code": 401, "description": "Unauthorized"}));
        }
        let body = req.json();
        if body["chat_id"] != "-1001" {
            return Reply::json(400, json!({"ok": false, "error_code": 400, "description": "Bad Request: chat not found"}));
        }
        let mut calls = counter.lock().expect("lock");
        *calls += 1;
        if *calls == 1 {
            return Reply::json(429, json!({"ok": false, "error_code": 429,
                "description": "Too Many Requests: retry after 1", "parameters": {"retry_after": 1}}));
        }
        Reply::json(200, json!({"ok": true, "result": {"message_id": 7, "text": body["text"]}}))
    })
    .await;
    let config = Telegram {
        token: "123456:tg-token-abc".into(),
        chat_id: "-1001".into(),
        disable_notification: false,
    };
    let channel =
        Channel::new("tg", ChannelConfig::Telegram(config.clone())).with_api_base(stand_in.url());
    let delivery = notifier().deliver(&channel, &message()).await;
    assert!(delivery.is_accepted(), "{:?}", delivery.outcome);
    let first = delivery.attempts[0].result.as_ref().expect_err("429");
    assert_eq!(
        first.class,
        Class::Retryable {
            after: Some(Duration::from_secs(1))
        }
    );
    let text = stand_in.requests()[1].json()["text"].clone();
    assert!(
        text.as_str()
            .is_some_and(|t| t.starts_with("<b>acme/app #42 success</b>"))
    );

    let lost = Telegram {
        chat_id: "-999".into(),
        ..config
    };
    let channel = Channel::new("tg", ChannelConfig::Telegram(lost)).with_api_base(stand_in.url());
    let error = notifier()
        .send(&channel, &message())
        .await
        .expect_err("chat not found");
    assert_eq!(error.class, Class::Final);
    assert!(error.to_string().contains("chat not found"));
    assert!(!error.to_string().contains("tg-token-abc"));
}

// ---- generic webhook ----

#[tokio::test]
async fn webhook_signature_headers_and_valid_codes() {
    let stand_in = StandIn::start(|req| {
        let expected = format!(
            "sha256={}",
            hex::encode(hmac_sha256(b"hook-signing-secret", &req.body))
        );
        if req.header("x-drone-signature") != Some(expected) {
            return Reply::text(401, "bad signature");
        }
        if req.header("x-team") != Some("core".into()) {
            return Reply::text(400, "missing header");
        }
        if req.header("authorization") != Some("Bearer hook-bearer-token".into()) {
            return Reply::text(403, "forbidden");
        }
        Reply::text(201, "created")
    })
    .await;
    let mut config = Webhook::new(format!("{}/hooks/builds", stand_in.url()));
    config.headers = vec![("X-Team".into(), "core".into())];
    config.token = Some("hook-bearer-token".into());
    config.signature_secret = Some("hook-signing-secret".into());
    let channel = Channel::new("hook", ChannelConfig::Webhook(config.clone()));
    let accepted = notifier()
        .send(&channel, &message())
        .await
        .expect("accepted");
    assert_eq!(accepted.status, Some(201));
    let body: Value = stand_in.requests()[0].json();
    assert_eq!(body["title"], "acme/app #42 success");
    assert_eq!(body["status"], "success");
    assert_eq!(body["fields"][0]["name"], "Author");

    // A text body, and a 201 that is not among the valid codes.
    config.body = WebhookBody::Text;
    config.valid_codes = vec![200];
    let channel = Channel::new("hook", ChannelConfig::Webhook(config.clone()));
    let error = notifier()
        .send(&channel, &message())
        .await
        .expect_err("201 not valid");
    assert_eq!(error.class, Class::Final);
    assert_eq!(&stand_in.requests()[1].body[..], b"Fix the login page");

    config.signature_secret = Some("another-secret".into());
    config.valid_codes = vec![];
    let channel = Channel::new("hook", ChannelConfig::Webhook(config));
    let error = notifier()
        .send(&channel, &message())
        .await
        .expect_err("bad signature");
    assert_eq!(error.status, Some(401));
    assert!(!error.to_string().contains("another-secret"));
}

#[tokio::test]
async fn a_redirect_is_reported_and_not_followed() {
    let elsewhere = StandIn::start(|_| Reply::text(200, "took it")).await;
    let target = format!("{}/stolen", elsewhere.url());
    let stand_in =
        StandIn::start(move |_| Reply::text(307, "moved").header("location", &target)).await;
    let mut config = Webhook::new(format!("{}/hooks/builds", stand_in.url()));
    config.signature_secret = Some("hook-signing-secret".into());
    let channel = Channel::new("hook", ChannelConfig::Webhook(config));
    let error = notifier()
        .send(&channel, &message())
        .await
        .expect_err("a redirect is not a delivery");
    assert_eq!(error.class, Class::Final);
    assert_eq!(error.status, Some(307));
    assert!(error.to_string().contains("redirect"), "{error}");
    assert!(elsewhere.requests().is_empty(), "the redirect was followed");
}
