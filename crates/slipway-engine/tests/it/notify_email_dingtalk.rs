//! Native `drone-plugins/drone-email` (`drillster/drone-email`) and
//! `lddsb/drone-dingtalk-message` steps: email through a real SMTP server (aiosmtpd with
//! STARTTLS and `AUTH`, see [`crate::smtp`]), DingTalk through a loopback stand-in of the
//! custom robot API that checks the signature by the documented algorithm. No plugin
//! container runs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::Uri;
use base64::Engine;
use hmac::Mac;
use serde_json::{Value, json};
use slipway_engine::{NotifyKind, Status};

use crate::docker_plugin::{repo_with, with_git};
use crate::smtp::{self, Smtp};
use crate::support::*;

fn plan_of(text: &str, ctx: &slipway_spec::BuildContext) -> Result<slipway_spec::Plan, String> {
    slipway_spec::compile(text, ctx)
        .map(|compiled| compiled.plan)
        .map_err(|d| format!("{d:?}"))
}

fn context() -> slipway_spec::BuildContext {
    slipway_spec::BuildContext {
        event: slipway_spec::BuildEvent::Push,
        branch: "develop".into(),
        reference: "refs/heads/develop".into(),
        commit: "0123456789abcdef0123456789abcdef01234567".into(),
        repo: "company/test".into(),
        author: "octocat".into(),
        author_name: "Octo Cat".into(),
        author_email: "octo@example.com".into(),
        message: "Fix the login page".into(),
        build_number: 7,
        build_link: "http://ci.example.com/company/test/7".into(),
        ..Default::default()
    }
}

// ---- email ----

const SMTP_USER: &str = "ci-mailer";
const SMTP_PASSWORD: &str = "smtp-pass-5ecret-771";

fn skip_without_aiosmtpd() -> bool {
    if smtp::aiosmtpd_present() {
        return false;
    }
    eprintln!("skipped: python3-aiosmtpd is not installed (apt-get install -y python3-aiosmtpd)");
    true
}

/// The 1.x `settings:` form over STARTTLS with `AUTH`: the substituted subject and HTML
/// body (with the plugin's `commit.author.*` names), one message per recipient with the
/// commit author added, the private CA from `ca_cert`; the password is in no log line.
#[tokio::test]
async fn email_plugin_over_starttls() -> TestResult {
    if skip_without_aiosmtpd() {
        return Ok(());
    }
    let (ca, cert, key) = smtp::certificates();
    let server = Smtp::start(&cert, &key, SMTP_USER, SMTP_PASSWORD);
    let text = format!(
        r#"
kind: pipeline
type: docker
name: notify
clone:
  disable: true
steps:
  - name: mail
    image: drillster/drone-email
    settings:
      host: 127.0.0.1
      port: {port}
      username: {SMTP_USER}
      password:
        from_secret: smtp_password
      ca_cert:
        from_secret: smtp_ca
      from: Slipway CI <ci@example.com>
      recipients: [dev@example.com, ops@example.com]
      subject: >
        [{{{{ build.status }}}}] {{{{ repo.owner }}}}/{{{{ repo.name }}}}
        #{{{{ build.number }}}} ({{{{ commit.branch }}}} - {{{{ truncate commit.sha 8 }}}})
      body: |
        <h1>{{{{#success build.status}}}}Build {{{{ build.number }}}} passed{{{{else}}}}Build failed{{{{/success}}}}</h1>
        <p>{{{{ commit.message }}}} by {{{{ commit.author.name }}}} ({{{{ commit.author.email }}}})</p>
      client_hostname: runner.example.com
      skip_verify: true
"#,
        port = server.port
    );
    let plan = plan_of(&text, &context())?;
    let work = tempfile::tempdir()?;
    let mut options = options(work.path());
    options
        .secrets
        .insert("smtp_password".into(), SMTP_PASSWORD.into());
    options.secrets.insert("smtp_ca".into(), ca);
    let (report, events) = run(&plan, options).await?;
    let logs = events.logs("mail").join("\n");
    assert_eq!(
        step_report(&report, "notify", "mail").status,
        Status::Success,
        "{logs}"
    );

    let mails = server.delivered();
    assert_eq!(mails.len(), 3, "{mails:#?}");
    let rcpt: BTreeSet<String> = mails
        .iter()
        .filter_map(|m| smtp::header(m, "X-RcptTo"))
        .collect();
    assert_eq!(
        rcpt,
        BTreeSet::from([
            "dev@example.com".to_string(),
            "octo@example.com".to_string(),
            "ops@example.com".to_string()
        ])
    );
    for mail in &mails {
        // One recipient a message, as the plugin sends them.
        assert_eq!(smtp::header(mail, "To"), smtp::header(mail, "X-RcptTo"));
        let from = smtp::header(mail, "From").unwrap_or_default();
        assert!(
            from.contains("Slipway CI") && from.contains("<ci@example.com>"),
            "{from}"
        );
        assert_eq!(
            smtp::header(mail, "X-MailFrom").as_deref(),
            Some("ci@example.com")
        );
        assert_eq!(
            smtp::header(mail, "Subject").as_deref(),
            Some("[success] company/test #7 (develop - 01234567)")
        );
        assert!(mail.contains("multipart/alternative"), "{mail}");
        assert!(mail.contains("<h1>Build 7 passed</h1>"), "{mail}");
        assert!(
            mail.contains("<p>Fix the login page by octocat (octo@example.com)</p>"),
            "{mail}"
        );
        // The plain part is the HTML's text.
        assert!(
            mail.contains("Build 7 passed\n\nFix the login page by octocat (octo@example.com)")
                || mail.contains(
                    "Build 7 passed\r\n\r\nFix the login page by octocat (octo@example.com)"
                ),
            "{mail}"
        );
    }
    assert!(logs.contains("runs natively"), "{logs}");
    assert!(logs.contains("STARTTLS"), "{logs}");
    assert!(logs.contains("`skip_verify` is not honoured"), "{logs}");
    assert_eq!(logs.matches("accepted the message").count(), 3, "{logs}");
    let all = events.all_logs().join("\n");
    assert!(!all.contains(SMTP_PASSWORD), "{all}");
    assert_clean(&report.build_id).await
}

/// The 0.8 inline form with the plugin's `EMAIL_PASSWORD` secret and `from.address` /
/// `from.name`: a wrong password fails the step with the server's 535 answer and the
/// password masked, nothing delivered; the right one sends the plain-text body under the
/// plugin's default subject, to the recipients only.
#[tokio::test]
async fn legacy_email_step_wrong_then_right_password() -> TestResult {
    if skip_without_aiosmtpd() {
        return Ok(());
    }
    let (ca, cert, key) = smtp::certificates();
    let server = Smtp::start(&cert, &key, SMTP_USER, SMTP_PASSWORD);
    let text = format!(
        r#"
pipeline:
  mail:
    image: drone-plugins/drone-email
    secrets: [ email_password, plugin_ca_cert ]
    host: 127.0.0.1
    port: {port}
    username: {SMTP_USER}
    from.address: ci@example.com
    from.name: Slipway Robot
    recipients: dev@example.com,ops@example.com
    recipients_only: true
    body: "Build {{{{ build.number }}}} of {{{{ repo.fullName }}}}: {{{{ build.status }}}}"
"#,
        port = server.port
    );
    let plan = plan_of(&text, &context())?;
    let wrong = "not-the-smtp-password-99";
    for (password, accepted) in [(wrong, false), (SMTP_PASSWORD, true)] {
        let work = tempfile::tempdir()?;
        let mut options = options(work.path());
        options
            .secrets
            .insert("email_password".into(), password.into());
        options.secrets.insert("plugin_ca_cert".into(), ca.clone());
        let (report, events) = run(&plan, options).await?;
        let step = &report.pipelines[0].steps.last().ok_or("no step")?;
        let logs = events.all_logs().join("\n");
        assert!(!logs.contains(password), "{logs}");
        if accepted {
            assert_eq!(step.status, Status::Success, "{logs}");
        } else {
            assert_eq!(step.status, Status::Failure, "{logs}");
            assert!(logs.contains("535"), "{logs}");
            assert!(server.delivered().is_empty());
        }
        assert_clean(&report.build_id).await?;
    }
    let mails = server.delivered();
    assert_eq!(mails.len(), 2, "{mails:#?}");
    for mail in &mails {
        assert_eq!(
            smtp::header(mail, "From").as_deref(),
            Some("\"Slipway Robot\" <ci@example.com>")
        );
        assert_eq!(
            smtp::header(mail, "Subject").as_deref(),
            Some("[success] company/test (develop - 01234567)")
        );
        assert!(mail.contains("Build 7 of company/test: success"), "{mail}");
    }
    let rcpt: BTreeSet<String> = mails
        .iter()
        .filter_map(|m| smtp::header(m, "X-RcptTo"))
        .collect();
    assert_eq!(
        rcpt,
        BTreeSet::from(["dev@example.com".to_string(), "ops@example.com".to_string()])
    );
    Ok(())
}

// ---- DingTalk ----

const DING_TOKEN: &str = "ding-access-token-8c1f";
const DING_SECRET: &str = "SEC6f1e2d3c4b5a69788796a5b4c3d2e1f0";

/// What the stand-in saw: the query (decoded) and the body.
type Seen = Arc<Mutex<Vec<(BTreeMap<String, String>, Value)>>>;

/// `application/x-www-form-urlencoded` decoding.
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The custom robot's `POST /robot/send`: the token, then `timestamp` (ms, within an hour)
/// and `sign` = base64(HMAC-SHA256(secret, "timestamp\nsecret")), else errcode 310000. Its
/// refusals quote the token, so that the test sees it masked.
async fn dingtalk_stand_in() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let record = seen.clone();
    let app = axum::Router::new().fallback(move |uri: Uri, body: Bytes| {
        let record = record.clone();
        async move {
            let query: BTreeMap<String, String> = uri
                .query()
                .unwrap_or_default()
                .split('&')
                .filter_map(|pair| pair.split_once('='))
                .map(|(k, v)| (decode(k), decode(v)))
                .collect();
            let body: Value = serde_json::from_slice(&body).unwrap_or_default();
            record
                .lock()
                .expect("lock")
                .push((query.clone(), body.clone()));
            let get = |k: &str| query.get(k).cloned().unwrap_or_default();
            if uri.path() != "/robot/send" {
                return axum::Json(json!({"errcode": 404, "errmsg": "no such api"}));
            }
            if get("access_token") != DING_TOKEN {
                return axum::Json(json!({"errcode": 300001, "errmsg": "token is not exist"}));
            }
            let timestamp = get("timestamp");
            let mut mac =
                hmac::Hmac::<sha2::Sha256>::new_from_slice(DING_SECRET.as_bytes()).expect("hmac");
            mac.update(format!("{timestamp}\n{DING_SECRET}").as_bytes());
            let expected =
                base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let fresh = timestamp
                .parse::<u64>()
                .is_ok_and(|ms| ms.abs_diff(now_ms) < 3_600_000);
            if get("sign") != expected || !fresh {
                return axum::Json(json!({
                    "errcode": 310000,
                    "errmsg": format!("sign not match, access_token {DING_TOKEN}"),
                }));
            }
            if !body["msgtype"].is_string() {
                return axum::Json(json!({"errcode": 40035, "errmsg": "缺少参数 json"}));
            }
            axum::Json(json!({"errcode": 0, "errmsg": "ok"}))
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

const DING_TPL: &str = "### [TPL_REPO_FULL_NAME] #[TPL_BUILD_NUMBER] <font color=\"[TPL_STATUS_COLOR]\">[TPL_BUILD_STATUS]</font>\n\n\
[TPL_COMMIT_MSG] ([TPL_COMMIT_BRANCH])\n\n\
[[TPL_COMMIT_SHA]]([TPL_BUILD_LINK]) by [TPL_AUTHOR_NAME] <[TPL_AUTHOR_EMAIL]> [TPL_STATUS_EMOTICON]\n\n\
@13800000000 [TPL_NOT_A_PLACEHOLDER] [DRONE_BUILD_EVENT]\n";

/// A 1.x step with a `tpl` file committed in the repository: a signed markdown message
/// whose text is the template with its placeholders substituted, `tips_title` as the title,
/// and both numbers in `at.atMobiles` (the one the template does not write is added to it).
#[tokio::test]
async fn dingtalk_markdown_from_a_workspace_tpl() -> TestResult {
    let (url, seen) = dingtalk_stand_in().await;
    let repo = tempfile::tempdir()?;
    let commit = repo_with(repo.path(), &[(".drone/dingtalk.tpl", DING_TPL)])?;
    let text = r#"
kind: pipeline
type: docker
name: notify
steps:
  - name: ding
    image: lddsb/drone-dingtalk-message:latest
    settings:
      token:
        from_secret: ding_token
      secret:
        from_secret: ding_secret
      type: markdown
      tpl: /drone/src/.drone/dingtalk.tpl
      tips_title: CI news
      tpl_build_status_success: passed
      success_color: 00aa00
      msg_at_mobiles: [13800000000, 13900000000]
      message_pic: true
"#;
    let ctx = slipway_spec::BuildContext {
        commit: commit.clone(),
        ..context()
    };
    let plan = plan_of(text, &ctx)?;
    let work = tempfile::tempdir()?;
    let mut options = options(work.path());
    with_git(&mut options, repo.path(), &commit);
    options
        .secrets
        .insert("ding_token".into(), DING_TOKEN.into());
    options
        .secrets
        .insert("ding_secret".into(), DING_SECRET.into());
    options.notify_api.insert(NotifyKind::DingTalk, url);
    let (report, events) = run(&plan, options).await?;
    let logs = events.logs("ding").join("\n");
    assert_eq!(
        step_report(&report, "notify", "ding").status,
        Status::Success,
        "{logs}"
    );

    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 1, "{seen:#?}");
    let (query, body) = &seen[0];
    assert!(query.contains_key("timestamp") && query.contains_key("sign"));
    assert_eq!(body["msgtype"], "markdown");
    assert_eq!(body["markdown"]["title"], "CI news");
    let expected = format!(
        "### company/test #7 <font color=\"#00aa00\">passed</font>\n\n\
         Fix the login page (develop)\n\n\
         [{commit}](http://ci.example.com/company/test/7) by Octo Cat <octo@example.com> :)\n\n\
         @13800000000 [TPL_NOT_A_PLACEHOLDER] push @13900000000"
    );
    assert_eq!(body["markdown"]["text"], expected);
    assert_eq!(
        body["at"]["atMobiles"],
        json!(["13800000000", "13900000000"])
    );
    assert_eq!(body["at"]["isAtAll"], false);
    assert!(logs.contains("`message_pic` is ignored"), "{logs}");
    let all = events.all_logs().join("\n");
    assert!(
        !all.contains(DING_TOKEN) && !all.contains(DING_SECRET),
        "{all}"
    );
    assert_clean(&report.build_id).await
}

/// The 0.8 inline form with its `secrets:` and a wrong signing secret: the step fails with
/// the robot's answer (errcode 310000) in its log, the token and the secret masked, after
/// one attempt. A `tpl` leaving the workspace fails the step before anything is sent.
#[tokio::test]
async fn dingtalk_wrong_secret_and_a_tpl_outside_the_workspace() -> TestResult {
    let (url, seen) = dingtalk_stand_in().await;
    let wrong_secret = "SECwrong0000000000000000000000000000";
    let step = |tpl: &str| {
        format!(
            r#"
pipeline:
  ding:
    image: lddsb/drone-dingtalk-message
    secrets: [ plugin_token, plugin_secret ]
    type: text
    msg_at_all: true
    {tpl}
"#
        )
    };
    for (text, wanted) in [
        (step(""), "310000"),
        (step("tpl: ../../etc/passwd"), "outside the workspace"),
    ] {
        let plan = plan_of(&text, &context())?;
        let work = tempfile::tempdir()?;
        let mut options = options(work.path());
        options
            .secrets
            .insert("plugin_token".into(), DING_TOKEN.into());
        options
            .secrets
            .insert("plugin_secret".into(), wrong_secret.into());
        options.notify_api.insert(NotifyKind::DingTalk, url.clone());
        let (report, events) = run(&plan, options).await?;
        let logs = events.all_logs().join("\n");
        assert_eq!(report.status, Status::Failure, "{logs}");
        assert!(logs.contains(wanted), "{logs}");
        assert!(!logs.contains(DING_TOKEN), "{logs}");
        assert!(!logs.contains(wrong_secret), "{logs}");
        assert_clean(&report.build_id).await?;
    }
    let logs_seen = seen.lock().expect("lock").clone();
    // The refused message was sent once (310000 is final); the second step sent nothing.
    assert_eq!(logs_seen.len(), 1, "{logs_seen:#?}");
    let body = &logs_seen[0].1;
    assert_eq!(body["msgtype"], "text");
    assert_eq!(body["at"]["isAtAll"], true);
    assert!(
        body["text"]["content"]
            .as_str()
            .is_some_and(|t| t.starts_with("company/test #7 success\nFix the login page")),
        "{body}"
    );
    Ok(())
}
