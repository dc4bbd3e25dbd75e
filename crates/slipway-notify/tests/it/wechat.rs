//! WeChat Work application messages and group robots against a stand-in of
//! qyapi.weixin.qq.com: `gettoken` checks corpid/corpsecret and issues tokens; `message/send`
//! checks the token (40014 unknown, 42001 expired) and the message; scripted errcodes.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use slipway_notify::{Channel, ChannelConfig, Class, WeChatRobot, WeChatRobotFormat, WeChatWork};

use crate::support::*;

const CORP_ID: &str = "ww0123456789abcdef";
const CORP_SECRET: &str = "corp-secret-Zx81kQ-never-in-logs";

/// The service's state: which tokens are valid, and answers queued for `message/send`.
#[derive(Default)]
pub struct WeChatState {
    issued: u32,
    valid: HashSet<String>,
    pub queued: VecDeque<Value>,
    pub posted: Vec<Value>,
}

impl WeChatState {
    /// Expires every token issued so far (as the service does after `expires_in`, or when
    /// the secret is reset).
    pub fn expire_all(&mut self) {
        self.valid.clear();
    }
}

pub async fn wechat_stand_in() -> (StandIn, Arc<Mutex<WeChatState>>) {
    let state = Arc::new(Mutex::new(WeChatState::default()));
    let shared = state.clone();
    let stand_in = StandIn::start(move |req| {
        let mut state = shared.lock().expect("lock");
        match req.path.as_str() {
            "/cgi-bin/gettoken" => {
                if req.query.get("corpid").map(String::as_str) != Some(CORP_ID) {
                    return Reply::json(200, json!({"errcode": 40013, "errmsg": "invalid corpid"}));
                }
                if req.query.get("corpsecret").map(String::as_str) != Some(CORP_SECRET) {
                    return Reply::json(200, json!({"errcode": 40001, "errmsg": "invalid credential"}));
                }
                state.issued += 1;
                let token = format!("token-{}", state.issued);
                state.valid.insert(token.clone());
                Reply::json(
                    200,
                    json!({"errcode": 0, "errmsg": "ok", "access_token": token, "expires_in": 7200}),
                )
            }
            "/cgi-bin/message/send" => {
                let token = req.query.get("access_token").cloned().unwrap_or_default();
                if !token.starts_with("token-") {
                    return Reply::json(200, json!({"errcode": 40014, "errmsg": "invalid access_token"}));
                }
                if !state.valid.contains(&token) {
                    return Reply::json(200, json!({"errcode": 42001, "errmsg": "access_token expired"}));
                }
                if let Some(answer) = state.queued.pop_front() {
                    return Reply::json(200, answer);
                }
                let body = req.json();
                if body.get("agentid").and_then(Value::as_i64).is_none() {
                    return Reply::json(200, json!({"errcode": 40056, "errmsg": "invalid agentid"}));
                }
                state.posted.push(body);
                Reply::json(
                    200,
                    json!({"errcode": 0, "errmsg": "ok", "invaliduser": "", "msgid": "m1"}),
                )
            }
            _ => Reply::json(404, json!({"errcode": 404, "errmsg": "no such api"})),
        }
    })
    .await;
    (stand_in, state)
}

fn channel(base: &str) -> Channel {
    let mut config = WeChatWork::new(CORP_ID, CORP_SECRET, 1000002);
    config.to_user = vec!["zhangsan".into(), "lisi".into()];
    Channel::new("team", ChannelConfig::WeChatWork(config)).with_api_base(base)
}

#[tokio::test]
async fn textcard_with_button_text_and_duplicate_check() {
    let (stand_in, state) = wechat_stand_in().await;
    let notifier = notifier();
    let delivery = notifier
        .deliver(&channel(&stand_in.url()), &message())
        .await;
    assert!(delivery.is_accepted(), "{:?}", delivery.outcome);
    let posted = state.lock().expect("lock").posted.clone();
    assert_eq!(posted.len(), 1);
    let body = &posted[0];
    assert_eq!(body["msgtype"], "textcard");
    assert_eq!(body["agentid"], 1000002);
    assert_eq!(body["touser"], "zhangsan|lisi");
    assert!(body.get("toparty").is_none());
    assert_eq!(body["enable_duplicate_check"], 1);
    assert_eq!(body["textcard"]["title"], "acme/app #42 success");
    assert_eq!(body["textcard"]["btntxt"], "Open build");
    assert!(body["textcard"].get("btntext").is_none());
    assert_eq!(body["textcard"]["url"], "http://ci.example.com/acme/app/42");
    assert!(
        body["textcard"]["description"]
            .as_str()
            .is_some_and(|d| d.contains("Fix the login page") && d.contains("Author: octocat"))
    );
}

#[tokio::test]
async fn token_is_cached_across_messages() {
    let (stand_in, _state) = wechat_stand_in().await;
    let notifier = notifier();
    let channel = channel(&stand_in.url());
    for _ in 0..3 {
        notifier.send(&channel, &message()).await.expect("sent");
    }
    assert_eq!(stand_in.requests_to("/gettoken").len(), 1);
    assert_eq!(stand_in.requests_to("/message/send").len(), 3);
}

#[tokio::test]
async fn expired_token_is_refetched_and_the_message_sent_once() {
    let (stand_in, state) = wechat_stand_in().await;
    let notifier = notifier();
    let channel = channel(&stand_in.url());
    notifier.send(&channel, &message()).await.expect("first");
    state.lock().expect("lock").expire_all();
    let second = notifier.deliver(&channel, &message()).await;
    assert!(second.is_accepted(), "{:?}", second.outcome);
    // The refresh and resend are inside one attempt.
    assert_eq!(second.attempts.len(), 1);
    assert_eq!(stand_in.requests_to("/gettoken").len(), 2);
    // first send, the refused send with the old token, the resend with the new one
    assert_eq!(stand_in.requests_to("/message/send").len(), 3);
    assert_eq!(state.lock().expect("lock").posted.len(), 2);
}

#[tokio::test]
async fn busy_errcode_is_retried_with_backoff() {
    let (stand_in, state) = wechat_stand_in().await;
    state
        .lock()
        .expect("lock")
        .queued
        .push_back(json!({"errcode": -1, "errmsg": "system busy"}));
    let delivery = notifier()
        .deliver(&channel(&stand_in.url()), &message())
        .await;
    assert!(delivery.is_accepted(), "{:?}", delivery.outcome);
    assert_eq!(delivery.attempts.len(), 2);
    let first = delivery.attempts[0].result.as_ref().expect_err("busy");
    assert!(first.is_retryable());
    assert!(
        first
            .answer
            .as_deref()
            .is_some_and(|a| a.contains("system busy"))
    );
    assert_eq!(state.lock().expect("lock").posted.len(), 1);
}

#[tokio::test]
async fn http_200_with_an_errcode_is_a_final_refusal_and_no_secret_leaks() {
    let (stand_in, _state) = wechat_stand_in().await;
    let mut config = WeChatWork::new(CORP_ID, "wrong-secret-value-123", 1000002);
    config.to_party = vec!["2".into()];
    let channel =
        Channel::new("team", ChannelConfig::WeChatWork(config)).with_api_base(stand_in.url());
    let delivery = notifier().deliver(&channel, &message()).await;
    let error = delivery.outcome.clone().expect_err("refused");
    assert_eq!(error.class, Class::Final);
    assert_eq!(delivery.attempts.len(), 1);
    let text = error.to_string();
    assert!(text.contains("40001"), "{text}");
    assert!(!text.contains("wrong-secret-value-123"), "{text}");
    assert!(!format!("{delivery:?}").contains("wrong-secret-value-123"));
}

#[tokio::test]
async fn party_only_does_not_message_everyone() {
    let (stand_in, state) = wechat_stand_in().await;
    let mut config = WeChatWork::new(CORP_ID, CORP_SECRET, 7);
    config.to_party = vec!["2".into(), "3".into()];
    let channel =
        Channel::new("team", ChannelConfig::WeChatWork(config)).with_api_base(stand_in.url());
    notifier().send(&channel, &message()).await.expect("sent");
    let body = state.lock().expect("lock").posted[0].clone();
    assert_eq!(body["toparty"], "2|3");
    assert!(body.get("touser").is_none(), "{body}");
}

#[tokio::test]
async fn an_unreachable_service_is_retryable_and_the_error_has_no_token() {
    // A port nobody listens on.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let channel = channel(&format!("http://127.0.0.1:{port}"));
    let error = notifier()
        .send(&channel, &message())
        .await
        .expect_err("down");
    assert!(error.is_retryable());
    assert!(!error.to_string().contains(CORP_SECRET), "{error}");
}

#[tokio::test]
async fn robot_markdown_and_rate_limit_code() {
    let calls = Arc::new(Mutex::new(0u32));
    let counter = calls.clone();
    let stand_in = StandIn::start(move |req| {
        if req.path != "/cgi-bin/webhook/send" {
            return Reply::json(404, json!({"errcode": 404}));
        }
        if req.query.get("key").map(String::as_str) != Some("robot-key-1234") {
            return Reply::json(
                200,
                json!({"errcode": 93000, "errmsg": "invalid webhook url"}),
            );
        }
        let mut calls = counter.lock().expect("lock");
        *calls += 1;
        if *calls == 1 {
            return Reply::json(
                200,
                json!({"errcode": 45009, "errmsg": "api freq out of limit"}),
            );
        }
        let body = req.json();
        if body["msgtype"] != "markdown" || body["markdown"]["content"].as_str().is_none() {
            return Reply::json(
                200,
                json!({"errcode": 40008, "errmsg": "invalid message type"}),
            );
        }
        Reply::json(200, json!({"errcode": 0, "errmsg": "ok"}))
    })
    .await;
    let robot = WeChatRobot {
        key: "robot-key-1234".into(),
        format: WeChatRobotFormat::Markdown,
        mentioned: vec![],
        mentioned_mobiles: vec![],
    };
    let channel = Channel::new("robot", ChannelConfig::WeChatWorkRobot(robot.clone()))
        .with_api_base(stand_in.url());
    let delivery = notifier().deliver(&channel, &message()).await;
    assert!(delivery.is_accepted(), "{:?}", delivery.outcome);
    assert_eq!(delivery.attempts.len(), 2);
    let content = stand_in
        .requests()
        .last()
        .map(|r| r.json()["markdown"]["content"].clone());
    assert!(content.is_some_and(|c| {
        c.as_str()
            .is_some_and(|c| c.contains("**acme/app #42 success**"))
    }));

    let wrong = WeChatRobot {
        key: "other-key-5678".into(),
        ..robot
    };
    let channel =
        Channel::new("robot", ChannelConfig::WeChatWorkRobot(wrong)).with_api_base(stand_in.url());
    let error = notifier()
        .send(&channel, &message())
        .await
        .expect_err("bad key");
    assert_eq!(error.class, Class::Final);
    assert!(error.to_string().contains("93000"));
    assert!(!error.to_string().contains("other-key-5678"));
}
