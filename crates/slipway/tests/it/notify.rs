//! Notifications through a real `slipway up`: channels added with `slipway notify add`,
//! builds run in Docker, messages delivered to loopback stand-ins that follow the services'
//! documented wire formats (WeChat Work's app API with expiring tokens, its group robot, a
//! signed generic webhook) and to a real SMTP server (Debian's aiosmtpd, STARTTLS with a
//! private CA); retries, the delivery log, a kill with a delivery in flight, and template
//! errors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::server::{ADMIN, Up, api, start_up};
use super::{git, slipway, test_image, text};

const PYTHON: &str = "/usr/bin/python3";

/// One request a stand-in saw.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    query: BTreeMap<String, String>,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

impl Seen {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// What a stand-in answers; `None`: it never answers (the request hangs).
type Answer = Option<(u16, Vec<(String, String)>, String)>;

fn json_answer(status: u16, body: Value) -> Answer {
    Some((
        status,
        vec![("content-type".into(), "application/json".into())],
        body.to_string(),
    ))
}

/// A loopback HTTP server in its own thread: records every request, answers from `reply`.
struct StandIn {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl StandIn {
    fn start(reply: impl Fn(&Seen) -> Answer + Send + Sync + 'static) -> StandIn {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let recorded = seen.clone();
        let reply = Arc::new(reply);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let app = axum::Router::new().fallback(
                    move |uri: axum::http::Uri,
                          headers: axum::http::HeaderMap,
                          body: axum::body::Bytes| {
                        let recorded = recorded.clone();
                        let reply = reply.clone();
                        async move {
                            let query = uri
                                .query()
                                .unwrap_or_default()
                                .split('&')
                                .filter_map(|pair| pair.split_once('='))
                                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                                .collect();
                            let seen = Seen {
                                path: uri.path().to_owned(),
                                query,
                                headers: headers
                                    .iter()
                                    .map(|(k, v)| {
                                        (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned())
                                    })
                                    .collect(),
                                body: body.to_vec(),
                            };
                            let answer = reply(&seen);
                            recorded.lock().expect("lock").push(seen);
                            let Some((status, headers, body)) = answer else {
                                std::future::pending::<()>().await;
                                unreachable!();
                            };
                            let mut response =
                                axum::response::Response::new(axum::body::Body::from(body));
                            *response.status_mut() =
                                axum::http::StatusCode::from_u16(status).expect("status");
                            for (k, v) in headers {
                                response.headers_mut().insert(
                                    axum::http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                                    axum::http::HeaderValue::from_str(&v).expect("value"),
                                );
                            }
                            response
                        }
                    },
                );
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                tx.send(listener.local_addr().expect("addr")).expect("send");
                axum::serve(listener, app).await.expect("serve");
            });
        });
        let addr = rx.recv().expect("stand-in address");
        StandIn {
            url: format!("http://{addr}"),
            seen,
        }
    }

    fn seen(&self, path: &str) -> Vec<Seen> {
        self.seen
            .lock()
            .expect("lock")
            .iter()
            .filter(|s| s.path == path)
            .cloned()
            .collect()
    }
}

const CORP_ID: &str = "ww-test-corp";
const CORP_SECRET: &str = "corp-secret-do-not-leak-4711";
const ROBOT_KEY: &str = "robot-key-0815";
const HOOK_SECRET: &str = "hook-signing-secret";

/// WeChat Work's app API: `gettoken` issues tokens, `message/send` checks them (40014
/// unknown, 42001 expired) and answers `errcode` 0. `expire` invalidates every token.
struct WeChat {
    stand_in: StandIn,
    valid: Arc<Mutex<Vec<String>>>,
    /// The messages it accepted (sent with a valid token).
    accepted: Arc<Mutex<Vec<Value>>>,
}

impl WeChat {
    fn start() -> WeChat {
        let valid: Arc<Mutex<Vec<String>>> = Arc::default();
        let accepted: Arc<Mutex<Vec<Value>>> = Arc::default();
        let (tokens, taken) = (valid.clone(), accepted.clone());
        let issued = Arc::new(Mutex::new(0));
        let stand_in = StandIn::start(move |req| match req.path.as_str() {
            "/cgi-bin/gettoken" => {
                if req.query.get("corpid").map(String::as_str) != Some(CORP_ID)
                    || req.query.get("corpsecret").map(String::as_str) != Some(CORP_SECRET)
                {
                    return json_answer(
                        200,
                        json!({"errcode": 40001, "errmsg": "invalid credential"}),
                    );
                }
                let mut n = issued.lock().expect("lock");
                *n += 1;
                let token = format!("token-{n}");
                tokens.lock().expect("lock").push(token.clone());
                json_answer(
                    200,
                    json!({"errcode": 0, "errmsg": "ok", "access_token": token, "expires_in": 7200}),
                )
            }
            "/cgi-bin/message/send" => {
                let token = req.query.get("access_token").cloned().unwrap_or_default();
                if !token.starts_with("token-") {
                    return json_answer(
                        200,
                        json!({"errcode": 40014, "errmsg": "invalid access_token"}),
                    );
                }
                if !tokens.lock().expect("lock").contains(&token) {
                    return json_answer(
                        200,
                        json!({"errcode": 42001, "errmsg": "access_token expired"}),
                    );
                }
                taken.lock().expect("lock").push(req.json());
                json_answer(200, json!({"errcode": 0, "errmsg": "ok", "msgid": "m"}))
            }
            _ => json_answer(404, json!({"errcode": 404, "errmsg": "no such api"})),
        });
        WeChat {
            stand_in,
            valid,
            accepted,
        }
    }

    fn expire(&self) {
        self.valid.lock().expect("lock").clear();
    }
}

fn aiosmtpd_present() -> bool {
    Command::new(PYTHON)
        .args(["-c", "import aiosmtpd"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A CA and a leaf for `localhost`: (CA PEM, leaf PEM, key PEM).
fn certificates() -> (String, String, String) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "slipway notify e2e CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca_key = rcgen::KeyPair::generate().expect("ca key");
    let ca = ca_params.self_signed(&ca_key).expect("ca cert");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("leaf");
    let leaf_key = rcgen::KeyPair::generate().expect("leaf key");
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).expect("leaf");
    (ca.pem(), leaf.pem(), leaf_key.serialize_pem())
}

/// aiosmtpd with STARTTLS on loopback, writing a Maildir.
struct Smtp {
    child: Child,
    port: u16,
    maildir: PathBuf,
    ca_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

fn start_smtp() -> Smtp {
    let (ca, cert, key) = certificates();
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert_path, key_path, ca_file) = (
        dir.path().join("cert.pem"),
        dir.path().join("key.pem"),
        dir.path().join("ca.pem"),
    );
    std::fs::write(&cert_path, cert).expect("cert");
    std::fs::write(&key_path, key).expect("key");
    std::fs::write(&ca_file, ca).expect("ca");
    let maildir = dir.path().join("mail");
    let port = free_port();
    let child = Command::new(PYTHON)
        .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
        .args(["-c", "aiosmtpd.handlers.Mailbox"])
        .arg("--tlscert")
        .arg(&cert_path)
        .arg("--tlskey")
        .arg(&key_path)
        .arg(&maildir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("aiosmtpd starts");
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "aiosmtpd did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    Smtp {
        child,
        port,
        maildir,
        ca_file,
        _dir: dir,
    }
}

fn mails(maildir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(maildir.join("new")) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .collect()
}

/// `slipway ARGS --server … --token …`, asserting success; its stdout and stderr.
fn cli(up: &Up, args: &[&str]) -> (String, String) {
    let out = slipway()
        .args(args)
        .args(["--server", &up.url, "--token", ADMIN])
        .output()
        .expect("slipway runs");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "slipway {args:?}: {stderr}");
    (stdout, stderr)
}

fn pipeline(command: &str) -> String {
    format!(
        "kind: pipeline\nname: default\nsteps:\n- name: check\n  image: {}\n  commands:\n  - {command}\n",
        test_image()
    )
}

/// Commits `pipeline` in the work tree and pushes it to the bare repository served.
fn commit_pipeline(repo: &super::ServedRepo, pipeline: &str, message: &str) {
    std::fs::write(repo.work.path().join(".drone.yml"), pipeline).expect("write");
    git(repo.work.path(), &["add", "-A"]);
    git(
        repo.work.path(),
        &[
            "-c",
            "user.name=Dev One",
            "-c",
            "user.email=dev@example.invalid",
            "commit",
            "-q",
            "-m",
            message,
        ],
    );
    let bare = repo.clone_url.trim_start_matches("file://");
    git(repo.work.path(), &["push", "-q", bare, "main"]);
}

fn run_build(up: &Up, repo: &str) -> i64 {
    let build = api(up, &["build", "run", repo, "--branch", "main"]);
    let number = build["number"].as_i64().expect("number");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let b = api(up, &["build", "show", repo, &number.to_string()]);
        let status = b["status"].as_str().unwrap_or_default().to_owned();
        if !["pending", "running"].contains(&status.as_str()) {
            return number;
        }
        assert!(Instant::now() < deadline, "build #{number} still {status}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until `check` holds of the delivery log, and returns it.
fn wait_log(up: &Up, what: &str, check: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let log = api(up, &["notify", "log", "--limit", "100"]);
        let log = log.as_array().cloned().unwrap_or_default();
        if check(&log) {
            return log;
        }
        assert!(Instant::now() < deadline, "{what}: delivery log {log:#?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn of_channel<'a>(log: &'a [Value], channel: &str) -> Vec<&'a Value> {
    // Newest first in the log: oldest first here.
    log.iter()
        .rev()
        .filter(|d| d["channel"] == channel)
        .collect()
}

fn delivered(log: &[Value], channel: &str) -> Vec<String> {
    of_channel(log, channel)
        .into_iter()
        .filter(|d| d["status"] == "delivered")
        .map(|d| d["event"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn a_failing_then_fixed_build_reaches_robot_app_email_and_a_retried_webhook() {
    if !aiosmtpd_present() {
        eprintln!("skipping: python3-aiosmtpd is not installed (scripts/test installs it)");
        return;
    }
    let robot = StandIn::start(|req| {
        if req.query.get("key").map(String::as_str) != Some(ROBOT_KEY) {
            return json_answer(
                200,
                json!({"errcode": 93000, "errmsg": "invalid webhook url"}),
            );
        }
        json_answer(200, json!({"errcode": 0, "errmsg": "ok"}))
    });
    let wechat = WeChat::start();
    // The webhook answers 500 twice, then 200; each answer checks the signature first.
    let hook_calls = Arc::new(Mutex::new(0));
    let calls = hook_calls.clone();
    let hook = StandIn::start(move |req| {
        let signature = req
            .headers
            .get("x-drone-signature")
            .cloned()
            .unwrap_or_default();
        if signature != super::server::sign(HOOK_SECRET, &req.body) {
            return json_answer(401, json!({"error": "bad signature"}));
        }
        let mut n = calls.lock().expect("lock");
        *n += 1;
        if *n <= 2 {
            return json_answer(500, json!({"error": "try later"}));
        }
        json_answer(200, json!({"ok": true}))
    });
    let smtp = start_smtp();

    let repo = super::served_repo(&[(".drone.yml", &pipeline("exit 3"))]);
    let data = tempfile::tempdir().expect("data dir");
    let robot_api = format!("wechat-work-robot={}", robot.url);
    let wechat_api = format!("wechat-work={}", wechat.stand_in.url);
    let up = start_up(
        data.path(),
        &["--notify-api", &robot_api, "--notify-api", &wechat_api],
    );
    api(
        &up,
        &["repo", "add", "team/app", "--clone-url", &repo.clone_url],
    );

    let on = ["--on", "build.failure", "--on", "build.fixed"];
    let robot_url = format!("https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key={ROBOT_KEY}");
    let mut add = vec![
        "notify",
        "add",
        "robot",
        "--kind",
        "wechat-work-robot",
        "--url",
        &robot_url,
    ];
    add.extend(on);
    cli(&up, &add);
    let secret = format!("corp_secret={CORP_SECRET}");
    let corp = format!("corp_id={CORP_ID}");
    let mut add = vec![
        "notify",
        "add",
        "app",
        "--kind",
        "wechat-work",
        "--set",
        &corp,
        "--set",
        "agent_id=1000002",
        "--set",
        "to_user=devone",
        "--secret",
        &secret,
        "--repo",
        "team/*",
    ];
    add.extend(on);
    cli(&up, &add);
    let port = smtp.port.to_string();
    let (host, port_set, ca) = (
        "host=127.0.0.1".to_owned(),
        format!("port={port}"),
        format!("ca_file={}", smtp.ca_file.display()),
    );
    let mut add = vec![
        "notify",
        "add",
        "mail",
        "--kind",
        "email",
        "--set",
        &host,
        "--set",
        &port_set,
        "--set",
        "tls=starttls",
        "--set",
        &ca,
        "--set",
        "tls_name=localhost",
        "--set",
        "from=Slipway <ci@example.com>",
        "--set",
        "to=dev@example.com",
    ];
    add.extend(on);
    cli(&up, &add);
    let hook_url = format!("{}/hook", hook.url);
    let signing = format!("signature_secret={HOOK_SECRET}");
    cli(
        &up,
        &[
            "notify",
            "add",
            "hook",
            "--kind",
            "webhook",
            "--url",
            &hook_url,
            "--secret",
            &signing,
            "--on",
            "build.failure",
        ],
    );
    let listed = api(&up, &["notify", "ls"]);
    assert_eq!(listed.as_array().map(Vec::len), Some(4), "{listed}");
    let shown = api(&up, &["notify", "show", "app"]);
    assert_eq!(shown["secret_names"], json!(["corp_secret"]), "{shown}");
    assert!(!shown.to_string().contains(CORP_SECRET), "{shown}");

    // Build 1 fails: build.failure to all four.
    let first = run_build(&up, "team/app");
    let log = wait_log(&up, "build 1", |log| {
        ["robot", "app", "mail", "hook"]
            .iter()
            .all(|c| delivered(log, c).len() == 1)
    });
    for channel in ["robot", "app", "mail", "hook"] {
        assert_eq!(
            delivered(&log, channel),
            ["build.failure"],
            "{channel}: {log:#?}"
        );
    }
    // The webhook: three attempts recorded, 500, 500, 200; posted once.
    let hook_delivery = of_channel(&log, "hook")[0];
    let attempts = hook_delivery["attempt_log"].as_array().expect("attempts");
    let statuses: Vec<i64> = attempts
        .iter()
        .map(|a| a["http_status"].as_i64().unwrap_or(0))
        .collect();
    assert_eq!(statuses, [500, 500, 200], "{hook_delivery:#}");
    assert_eq!(hook_delivery["attempts"], 3);
    assert_eq!(hook.seen("/hook").len(), 3);
    let posted = hook.seen("/hook")[2].json();
    // The generic webhook's body: the message, and the event's data under `event`.
    assert_eq!(posted["event"]["event"], "build.failure", "{posted}");
    assert_eq!(posted["event"]["build"]["number"], first, "{posted}");

    // The token expires between the two messages; the app gets each message once.
    wechat.expire();
    commit_pipeline(&repo, &pipeline("true"), "fix the check");
    let second = run_build(&up, "team/app");
    assert_eq!(second, first + 1);
    let log = wait_log(&up, "build 2", |log| {
        ["robot", "app", "mail"]
            .iter()
            .all(|c| delivered(log, c).len() == 2)
    });
    for channel in ["robot", "app", "mail"] {
        assert_eq!(
            delivered(&log, channel),
            ["build.failure", "build.fixed"],
            "{channel}: {log:#?}"
        );
    }
    // The webhook only wanted failures.
    assert_eq!(delivered(&log, "hook"), ["build.failure"]);
    assert_eq!(hook.seen("/hook").len(), 3);

    let robot_posts = robot.seen("/cgi-bin/webhook/send");
    assert_eq!(robot_posts.len(), 2, "{robot_posts:?}");
    let fixed = robot_posts[1].json().to_string();
    assert!(
        fixed.contains("team/app") && fixed.contains("#2"),
        "{fixed}"
    );
    assert_eq!(
        wechat.stand_in.seen("/cgi-bin/gettoken").len(),
        2,
        "one refresh"
    );
    let accepted = wechat.accepted.lock().expect("lock").clone();
    assert_eq!(accepted.len(), 2, "{accepted:#?}");
    assert_eq!(accepted[1]["touser"], "devone");
    assert_eq!(accepted[1]["enable_duplicate_check"], 1);
    for d in of_channel(&log, "app") {
        assert_eq!(
            d["attempts"], 1,
            "a token refresh is part of one attempt: {d:#}"
        );
    }
    let mail = mails(&smtp.maildir);
    assert_eq!(mail.len(), 2, "two mails");
    assert!(
        mail.iter()
            .any(|m| m.contains("team/app") && m.contains("#2")),
        "{mail:#?}"
    );
    // The corp secret went to WeChat Work's gettoken only: not into the log or the API.
    let log_text = serde_json::to_string(&log).expect("json");
    assert!(!log_text.contains(CORP_SECRET) && !log_text.contains(ROBOT_KEY));
    for req in robot.seen.lock().expect("lock").iter() {
        assert!(!String::from_utf8_lossy(&req.body).contains(CORP_SECRET));
    }
}

#[test]
fn a_delivery_in_flight_when_the_server_is_killed_is_sent_once_after_the_restart() {
    // The first request hangs (the server is killed while it waits); later ones succeed.
    let hang = Arc::new(Mutex::new(true));
    let hanging = hang.clone();
    let hook = StandIn::start(move |_| {
        if *hanging.lock().expect("lock") {
            return None;
        }
        json_answer(200, json!({"ok": true}))
    });
    let repo = super::served_repo(&[(".drone.yml", &pipeline("exit 1"))]);
    let data = tempfile::tempdir().expect("data dir");
    let mut up = start_up(data.path(), &[]);
    api(
        &up,
        &["repo", "add", "team/app", "--clone-url", &repo.clone_url],
    );
    let hook_url = format!("{}/in", hook.url);
    cli(
        &up,
        &[
            "notify", "add", "hook", "--kind", "webhook", "--url", &hook_url,
        ],
    );
    run_build(&up, "team/app");
    let deadline = Instant::now() + Duration::from_secs(30);
    while hook.seen("/in").is_empty() {
        assert!(Instant::now() < deadline, "the webhook was not called");
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = api(&up, &["notify", "log"]);
    assert_eq!(log[0]["status"], "pending", "{log:#}");
    // SIGKILL: no chance to record anything.
    up.child.kill().expect("kill");
    up.child.wait().expect("wait");
    *hang.lock().expect("lock") = false;

    let up = start_up(data.path(), &[]);
    let log = wait_log(&up, "after the restart", |log| {
        log.first().is_some_and(|d| d["status"] == "delivered")
    });
    assert_eq!(log.len(), 1, "{log:#?}");
    assert_eq!(log[0]["attempts"], 1, "{:#}", log[0]);
    // Give a second send time to show if there were one.
    std::thread::sleep(Duration::from_secs(2));
    let seen = hook.seen("/in");
    assert_eq!(
        seen.len(),
        2,
        "the hung request and the one after the restart"
    );
    assert_eq!(seen[0].body, seen[1].body, "the same message");
    let log = api(&up, &["notify", "log"]);
    assert_eq!(log[0]["attempts"], 1, "{log:#}");
}

#[test]
fn a_wrong_template_is_reported_with_line_and_column_and_the_default_message_is_sent() {
    let hook = StandIn::start(|_| json_answer(200, json!({"ok": true})));
    let data = tempfile::tempdir().expect("data dir");
    let up = start_up(data.path(), &[]);
    let template = tempfile::NamedTempFile::new().expect("template");
    std::fs::write(
        template.path(),
        "Build {{ build.number }}\nby {{ build.author | nosuchfilter }}\n",
    )
    .expect("write");
    let hook_url = format!("{}/t", hook.url);
    let template_path = template.path().display().to_string();
    let (_, stderr) = cli(
        &up,
        &[
            "notify",
            "add",
            "hook",
            "--kind",
            "webhook",
            "--url",
            &hook_url,
            "--template",
            &template_path,
        ],
    );
    assert!(stderr.contains("line 2, column"), "{stderr}");
    let out = slipway()
        .args([
            "notify", "test", "hook", "--server", &up.url, "--token", ADMIN,
        ])
        .output()
        .expect("slipway runs");
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("template error at line 2, column"),
        "{stderr}"
    );
    assert!(
        stderr.contains("nosuchfilter") || stderr.contains("unknown filter"),
        "{stderr}"
    );
    let sent = hook.seen("/t");
    assert_eq!(sent.len(), 1);
    assert!(
        sent[0].json()["title"].is_string(),
        "the default message went"
    );

    // The UI page: the channel, a test sent from it, and a channel added by its form.
    let cookie = super::server::ui_session(&up);
    let browser = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let page = browser
        .get(format!("{}/notify", up.url))
        .header("cookie", &cookie)
        .send()
        .and_then(|r| r.text())
        .expect("GET /notify");
    assert!(page.contains("data-channel=\"hook\""), "{page}");
    assert!(
        page.contains("url=******") && !page.contains(&hook_url),
        "{page}"
    );
    let csrf = super::server::form_token(&page);
    let tested = browser
        .post(format!("{}/notify/hook/test", up.url))
        .header("cookie", &cookie)
        .header("origin", &up.url)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .expect("POST test");
    assert_eq!(tested.status().as_u16(), 200);
    let flash = tested.text().expect("page");
    assert!(flash.contains("hook: delivered"), "{flash}");
    assert!(flash.contains("template error at line 2"), "{flash}");
    assert_eq!(hook.seen("/t").len(), 2);
    let added = browser
        .post(format!("{}/notify", up.url))
        .header("cookie", &cookie)
        .header("origin", &up.url)
        .form(&[
            ("csrf", csrf.as_str()),
            ("name", "from-ui"),
            ("kind", "webhook"),
            ("url", &hook_url),
            ("events", "build.failure, build.fixed"),
        ])
        .send()
        .expect("POST /notify");
    assert_eq!(added.status().as_u16(), 303);
    let shown = api(&up, &["notify", "show", "from-ui"]);
    assert_eq!(
        shown["events"],
        json!(["build.failure", "build.fixed"]),
        "{shown}"
    );
    cli(&up, &["notify", "rm", "from-ui"]);

    // Bad settings say what and where, and nothing is stored.
    let out = slipway()
        .args([
            "notify",
            "add",
            "x",
            "--kind",
            "wechat-work",
            "--set",
            "corp_id=c",
        ])
        .args(["--server", &up.url, "--token", ADMIN])
        .output()
        .expect("slipway runs");
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("`corp_secret` is required"), "{stderr}");
    let out = slipway()
        .args([
            "notify",
            "add",
            "y",
            "--kind",
            "slack",
            "--set",
            "url=https://hooks.slack.com/x",
        ])
        .args(["--server", &up.url, "--token", ADMIN])
        .output()
        .expect("slipway runs");
    assert!(text(&out).1.contains("--secret url="), "{}", text(&out).1);
    let out = slipway()
        .args([
            "notify",
            "add",
            "z",
            "--kind",
            "webhook",
            "--url",
            "http://127.0.0.1:1/x",
        ])
        .args(["--on", "build.fial", "--server", &up.url, "--token", ADMIN])
        .output()
        .expect("slipway runs");
    assert!(
        text(&out).1.contains("unknown event `build.fial`"),
        "{}",
        text(&out).1
    );
    assert_eq!(
        api(&up, &["notify", "ls"]).as_array().map(Vec::len),
        Some(1)
    );
    cli(&up, &["notify", "rm", "hook"]);
    assert_eq!(
        api(&up, &["notify", "ls"]).as_array().map(Vec::len),
        Some(0)
    );
}
