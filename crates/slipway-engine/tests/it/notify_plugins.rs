//! Native notification plugin steps (`clem109/drone-wechat`, `lizheming/drone-wechat`,
//! `plugins/slack`, `plugins/webhook`) against loopback stand-ins of the services, reached
//! through `RunOptions::notify_api`: no plugin container runs.

use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderMap, Uri};
use serde_json::{Value, json};
use slipway_engine::{NotifyKind, Status};

use crate::support::*;

const CORP_ID: &str = "ww-seed-corp";
const CORP_SECRET: &str = "seed-corp-secret-9f8e7d6c5b";

/// What a stand-in saw: path, query, headers, body.
type Seen = Arc<Mutex<Vec<(String, String, HeaderMap, Bytes)>>>;

/// The plan of pipeline `text` for `ctx`, its diagnostics as the error.
fn plan_of(text: &str, ctx: &slipway_spec::BuildContext) -> Result<slipway_spec::Plan, String> {
    slipway_spec::compile(text, ctx)
        .map(|compiled| compiled.plan)
        .map_err(|d| format!("{d:?}"))
}

/// A loopback HTTP server answering with `answer(path, query, body)`.
async fn stand_in(
    answer: impl Fn(&str, &str, &Bytes) -> Value + Send + Sync + 'static,
) -> (String, Seen) {
    let seen: Seen = Arc::default();
    let record = seen.clone();
    let answer = Arc::new(answer);
    let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: Bytes| {
        let record = record.clone();
        let answer = answer.clone();
        async move {
            let query = uri.query().unwrap_or_default().to_string();
            let reply = answer(uri.path(), &query, &body);
            record
                .lock()
                .expect("lock")
                .push((uri.path().to_string(), query, headers, body));
            axum::Json(reply)
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, seen)
}

/// WeChat Work's `gettoken` and `message/send`, with their documented error codes.
async fn wechat_stand_in() -> (String, Seen) {
    stand_in(|path, query, body| match path {
        "/cgi-bin/gettoken" => {
            let wanted = format!("corpid={CORP_ID}&corpsecret={CORP_SECRET}");
            if query == wanted {
                json!({"errcode": 0, "errmsg": "ok", "access_token": "tok-1", "expires_in": 7200})
            } else {
                json!({"errcode": 40001, "errmsg": "invalid credential, hint: [seed]"})
            }
        }
        "/cgi-bin/message/send" if query == "access_token=tok-1" => {
            let body: Value = serde_json::from_slice(body).unwrap_or_default();
            if body["agentid"].as_i64().is_none() {
                json!({"errcode": 40056, "errmsg": "invalid agentid"})
            } else {
                json!({"errcode": 0, "errmsg": "ok", "invaliduser": ""})
            }
        }
        "/cgi-bin/message/send" => json!({"errcode": 40014, "errmsg": "invalid access_token"}),
        _ => json!({"errcode": 404, "errmsg": "no such api"}),
    })
    .await
}

fn posted(seen: &Seen, suffix: &str) -> Vec<Value> {
    seen.lock()
        .expect("lock")
        .iter()
        .filter(|(path, ..)| path.ends_with(suffix))
        .map(|(_, _, _, body)| serde_json::from_slice(body).unwrap_or_default())
        .collect()
}

/// The seed `legacy-harbor-rancher-wechat.drone.yml`: its `report-deploy` step (0.8 inline
/// settings, 0.8 `secrets:`) delivers a textcard with the substituted title and
/// description and the button text; the corp secret appears in no log line.
#[tokio::test]
async fn seed_report_deploy_sends_a_textcard() -> TestResult {
    let seed = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/examples/legacy-harbor-rancher-wechat.drone.yml");
    let Ok(text) = std::fs::read_to_string(&seed) else {
        eprintln!("skipping: {} is not there", seed.display());
        return Ok(());
    };
    let (url, seen) = wechat_stand_in().await;
    let ctx = slipway_spec::BuildContext {
        event: slipway_spec::BuildEvent::Push,
        branch: "develop".into(),
        reference: "refs/heads/develop".into(),
        commit: "0123456789abcdef0123456789abcdef01234567".into(),
        repo: "company/test".into(),
        author: "octocat".into(),
        message: "Fix the login page".into(),
        default_branch: "main".into(),
        build_number: 14,
        ..Default::default()
    };
    let mut plan = plan_of(&text, &ctx)?;
    for pipeline in &mut plan.pipelines {
        for step in &mut pipeline.steps {
            // The image build and the Rancher update are other tests' business.
            if step.name != "report-deploy" {
                step.skipped = true;
            }
        }
    }
    let work = tempfile::tempdir()?;
    let mut options = options(work.path());
    options.secrets = [
        ("plugin_corp_secret", CORP_SECRET),
        ("plugin_corpid", CORP_ID),
        ("plugin_agent_id", "1000002"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    options.notify_api.insert(NotifyKind::WeChatWork, url);
    let (report, events) = run(&plan, options).await?;
    let pipeline = &report.pipelines[0].name;
    let step = step_report(&report, pipeline, "report-deploy");
    let logs = events.logs("report-deploy");
    assert_eq!(step.status, Status::Success, "{step:#?}\n{logs:#?}");

    let sent = posted(&seen, "/message/send");
    assert_eq!(sent.len(), 1, "{sent:#?}");
    let card = &sent[0]["textcard"];
    assert_eq!(sent[0]["msgtype"], "textcard");
    assert_eq!(sent[0]["agentid"], 1000002);
    assert_eq!(sent[0]["touser"], "@all");
    assert_eq!(sent[0]["enable_duplicate_check"], 1);
    assert_eq!(card["title"], "test");
    let description = card["description"].as_str().unwrap_or_default();
    assert!(
        description.contains("Build sequence: 14 Deployment successful, well done octocat!"),
        "{description}"
    );
    assert!(
        description.contains("Updated content: Fix the login page"),
        "{description}"
    );
    assert_eq!(card["url"], "http://project.company.com");
    assert_eq!(card["btntxt"], "Click to go");

    let all = events.all_logs().join("\n");
    assert!(!all.contains(CORP_SECRET), "{all}");
    assert!(all.contains("runs natively"), "{all}");
    assert!(all.contains("accepted the message"), "{all}");
    assert_clean(&report.build_id).await
}

/// A 1.x `settings:` step of `lizheming/drone-wechat` whose secret the service refuses: the
/// step fails with the service's answer in its log, and the secret is masked.
#[tokio::test]
async fn refused_message_fails_the_step_with_the_answer() -> TestResult {
    let (url, seen) = wechat_stand_in().await;
    let text = r#"
kind: pipeline
type: docker
name: notify
clone:
  disable: true
steps:
  - name: wechat
    image: lizheming/drone-wechat:latest
    settings:
      corpid: ww-seed-corp
      corp_secret:
        from_secret: corp_secret
      agent_id: 7
      to_party: 2|3
      msg_type: markdown
      message: "{{#success build.status}}**{{repo.name}}** #{{build.number}} ok{{else}}failed{{/success}}"
"#;
    let ctx = slipway_spec::BuildContext {
        event: slipway_spec::BuildEvent::Push,
        branch: "main".into(),
        repo: "company/test".into(),
        build_number: 3,
        ..Default::default()
    };
    let plan = plan_of(text, &ctx)?;
    let work = tempfile::tempdir()?;
    let mut first = options(work.path());
    first
        .secrets
        .insert("corp_secret".into(), "a-wrong-corp-secret-123".into());
    first.notify_api.insert(NotifyKind::WeChatWork, url.clone());
    let (report, events) = run(&plan, first).await?;
    let step = step_report(&report, "notify", "wechat");
    let logs = events.logs("wechat").join("\n");
    assert_eq!(step.status, Status::Failure, "{logs}");
    assert!(
        logs.contains("40001") && logs.contains("invalid credential"),
        "{logs}"
    );
    assert!(!logs.contains("a-wrong-corp-secret-123"), "{logs}");
    assert!(posted(&seen, "/message/send").is_empty());

    // With the right secret the same step sends the markdown to the parties only.
    let work = tempfile::tempdir()?;
    let mut second = options(work.path());
    second
        .secrets
        .insert("corp_secret".into(), CORP_SECRET.into());
    second.notify_api.insert(NotifyKind::WeChatWork, url);
    let (report, events) = run(&plan, second).await?;
    let step = step_report(&report, "notify", "wechat");
    assert_eq!(step.status, Status::Success, "{:#?}", events.logs("wechat"));
    let sent = posted(&seen, "/message/send");
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["msgtype"], "markdown");
    assert_eq!(sent[0]["markdown"]["content"], "**test** #3 ok");
    assert_eq!(sent[0]["toparty"], "2|3");
    assert!(sent[0].get("touser").is_none());
    assert_clean(&report.build_id).await
}

/// `plugins/slack` and `plugins/webhook` with their templates, through the kind-wide API
/// bases (the webhook and Slack URLs keep their paths).
#[tokio::test]
async fn slack_and_webhook_plugins() -> TestResult {
    let (url, seen) = stand_in(|_, _, _| json!({"ok": true})).await;
    let text = r#"
kind: pipeline
type: docker
name: notify
clone:
  disable: true
steps:
  - name: slack
    image: plugins/slack
    settings:
      webhook:
        from_secret: slack_webhook
      channel: dev
      template: "{{#success build.status}}build {{build.number}} of {{repo.owner}}/{{repo.name}} succeeded{{else}}failed{{/success}}"
  - name: hook
    image: plugins/webhook
    settings:
      urls: https://hooks.example.com/deploy
      content_type: text/plain
      headers:
        - X-Team=core
      signature_secret:
        from_secret: hook_secret
      template: "{{repo.name}} {{build.number}} {{truncate build.commit 7}}"
"#;
    let ctx = slipway_spec::BuildContext {
        event: slipway_spec::BuildEvent::Push,
        branch: "main".into(),
        commit: "abcdef0123456789".into(),
        repo: "company/test".into(),
        build_number: 9,
        ..Default::default()
    };
    let plan = plan_of(text, &ctx)?;
    let work = tempfile::tempdir()?;
    let mut options = options(work.path());
    options.secrets.insert(
        "slack_webhook".into(),
        "https://hooks.slack.com/services/T1/B2/slack-secret-path".into(),
    );
    options
        .secrets
        .insert("hook_secret".into(), "hook-signing-secret".into());
    options.notify_api.insert(NotifyKind::Slack, url.clone());
    options.notify_api.insert(NotifyKind::Webhook, url);
    let (report, events) = run(&plan, options).await?;
    for step in ["slack", "hook"] {
        assert_eq!(
            step_report(&report, "notify", step).status,
            Status::Success,
            "{:#?}",
            events.logs(step)
        );
    }
    let seen = seen.lock().expect("lock").clone();
    let slack = seen
        .iter()
        .find(|(path, ..)| path == "/services/T1/B2/slack-secret-path")
        .ok_or("nothing posted to the Slack path")?;
    let body: Value = serde_json::from_slice(&slack.3)?;
    assert_eq!(body["channel"], "dev");
    assert!(
        body["text"]
            .as_str()
            .is_some_and(|t| t.contains("build 9 of company/test succeeded")),
        "{body}"
    );
    let hook = seen
        .iter()
        .find(|(path, ..)| path == "/deploy")
        .ok_or("nothing posted to the webhook")?;
    assert_eq!(&hook.3[..], b"test 9 abcdef0");
    assert_eq!(
        hook.2.get("x-team").and_then(|v| v.to_str().ok()),
        Some("core")
    );
    let signature = hook
        .2
        .get("x-drone-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(
        signature.starts_with("sha256=") && signature.len() == 7 + 64,
        "{signature}"
    );
    let all = events.all_logs().join("\n");
    assert!(!all.contains("slack-secret-path"), "{all}");
    assert_clean(&report.build_id).await
}

/// `appleboy/drone-telegram` (1.x, the corpus's template with `commit.*`) and
/// `appleboy/drone-discord` (0.8 inline, its `secrets:`), through their kinds' API bases.
#[tokio::test]
async fn telegram_and_discord_plugins() -> TestResult {
    let (url, seen) = stand_in(|path, _, _| {
        if path.contains("/sendMessage") {
            json!({"ok": true, "result": {"message_id": 1}})
        } else {
            json!({"id": "1"})
        }
    })
    .await;
    let ctx = slipway_spec::BuildContext {
        event: slipway_spec::BuildEvent::Push,
        branch: "main".into(),
        repo: "company/test".into(),
        author: "octocat".into(),
        message: "Fix the login page".into(),
        build_number: 12,
        ..Default::default()
    };
    let telegram = r#"
kind: pipeline
type: docker
name: notify
clone:
  disable: true
steps:
  - name: telegram
    image: appleboy/drone-telegram:linux-amd64
    settings:
      message: "{{#success build.status}}Build #{{build.number}} of `{{repo.name}}` succeeded. Commit by {{commit.author}} on `{{commit.branch}}`: {{commit.message}}{{else}}failed{{/success}}"
      to:
        from_secret: telegram_to
      token:
        from_secret: telegram_token
"#;
    let discord = r#"
pipeline:
  discord:
    image: appleboy/drone-discord:1.0.0
    secrets: [ discord_webhook_id, discord_webhook_token ]
    message: "{{repo.name}} #{{build.number}} {{build.status}}"
"#;
    let secrets = [
        ("telegram_to", "-1001,-1002"),
        ("telegram_token", "123:tg-secret-token"),
        ("discord_webhook_id", "42"),
        ("discord_webhook_token", "discord-secret-token"),
    ];
    let mut all_logs = String::new();
    for text in [telegram, discord] {
        let plan = plan_of(text, &ctx)?;
        let work = tempfile::tempdir()?;
        let mut options = options(work.path());
        options.secrets = secrets
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        options.notify_api.insert(NotifyKind::Telegram, url.clone());
        options.notify_api.insert(NotifyKind::Discord, url.clone());
        let (report, events) = run(&plan, options).await?;
        assert_eq!(report.status, Status::Success, "{:#?}", events.all_logs());
        all_logs.push_str(&events.all_logs().join("\n"));
        assert_clean(&report.build_id).await?;
    }
    let telegram = posted(&seen, "/bot123:tg-secret-token/sendMessage");
    assert_eq!(telegram.len(), 2, "{telegram:#?}");
    assert_eq!(telegram[0]["chat_id"], "-1001");
    assert_eq!(telegram[1]["chat_id"], "-1002");
    assert_eq!(
        telegram[0]["text"],
        "Build #12 of `test` succeeded. Commit by octocat on `main`: Fix the login page"
    );
    let discord = posted(&seen, "/api/webhooks/42/discord-secret-token");
    assert_eq!(discord.len(), 1);
    assert_eq!(discord[0]["embeds"][0]["description"], "test #12 success");
    let queries: Vec<String> = seen
        .lock()
        .expect("lock")
        .iter()
        .map(|s| s.1.clone())
        .collect();
    assert!(queries.contains(&"wait=true".to_string()), "{queries:?}");
    assert!(!all_logs.contains("tg-secret-token"), "{all_logs}");
    assert!(!all_logs.contains("discord-secret-token"), "{all_logs}");
    Ok(())
}
