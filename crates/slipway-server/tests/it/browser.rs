//! Headless-Chromium tests of the web UI, and the harness for them.
//!
//! Harness: [`Browser::start`]`(width, height)` starts Debian's `/usr/bin/chromedriver` on a
//! free loopback port, waits until `/status` says ready, and opens a WebDriver session
//! (fantoccini) on headless `/usr/bin/chromium` with a fresh profile; `None` (after a
//! message) when chromedriver is not installed, so a test skips. [`Browser::eval`] runs a
//! script and returns its JSON value, [`Browser::wait_for`] polls a script until it returns
//! something truthy, [`Browser::screenshot`] saves a PNG. [`Browser::close`] ends the
//! session; dropping a `Browser` (also on a panic) ends a session still open (so Chromium
//! quits) and kills chromedriver.
//!
//! ```ignore
//! let Some(browser) = Browser::start(1280, 900).await else { return };
//! browser.client().goto(&url).await.expect("page loads");
//! browser.wait_for("the log", "return document.querySelectorAll('.line').length >= 3").await;
//! browser.close().await;
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use slipway_engine::Status;
use slipway_server::store::{Artifact, Build, Repo, Stage, Step};
use slipway_server::ui::Ui;
use tokio::sync::{mpsc, watch};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// A headless Chromium driven over WebDriver.
#[derive(Debug)]
pub struct Browser {
    client: Option<Client>,
    /// chromedriver's port and the session id, to end the session from `Drop`.
    port: u16,
    session: Option<String>,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a `width`×`height` window; `None`
    /// when `/usr/bin/chromedriver` is absent (`scripts/lib/prepare.sh` installs it).
    pub async fn start(width: u32, height: u32) -> Option<Browser> {
        if !Path::new(CHROMEDRIVER).exists() {
            eprintln!(
                "skipping: {CHROMEDRIVER} not found (apt-get install chromium chromium-driver)"
            );
            return None;
        }
        let port = free_port();
        let profile = tempfile::tempdir().expect("a temporary profile directory");
        let log = std::fs::File::create(profile.path().join("chromedriver.log"))
            .expect("chromedriver log file");
        let mut command = Command::new(CHROMEDRIVER);
        command
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log);
        let driver = command.spawn().expect("chromedriver starts");
        let mut browser = Browser {
            client: None,
            port,
            session: None,
            driver,
            _profile: profile,
        };
        let url = format!("http://127.0.0.1:{port}");
        wait_ready(port).await;
        let profile_dir = browser._profile.path().join("profile");
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                    format!("--window-size={width},{height}"),
                    format!("--user-data-dir={}", profile_dir.display()),
                ],
            },
        });
        let serde_json::Value::Object(caps) = caps else {
            unreachable!("capabilities are an object")
        };
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&url)
            .await
            .unwrap_or_else(|e| {
                let log = std::fs::read_to_string(browser._profile.path().join("chromedriver.log"))
                    .unwrap_or_default();
                panic!("WebDriver session on {url}: {e}\nchromedriver log:\n{log}")
            });
        browser.session = client.session_id().await.ok().flatten();
        browser.client = Some(client);
        Some(browser)
    }

    /// The WebDriver client.
    pub fn client(&self) -> &Client {
        self.client.as_ref().expect("the session is open")
    }

    /// Runs `script` (a function body: `return ...`) in the page and gives its value.
    pub async fn eval(&self, script: &str) -> Value {
        self.client()
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Signs in on `url`'s login page with `token` as a person does (types it, presses the
    /// button) and waits for the start page.
    pub async fn log_in(&self, url: &str, token: &str) {
        let client = self.client();
        client
            .goto(&format!("{url}/login"))
            .await
            .expect("login page");
        client
            .find(Locator::Id("token"))
            .await
            .expect("the token field")
            .send_keys(token)
            .await
            .expect("type the token");
        client
            .find(Locator::Css(
                "form[action=\"/login\"] button[type=\"submit\"]",
            ))
            .await
            .expect("the log-in button")
            .click()
            .await
            .expect("log in");
        self.wait_for(
            "the logged-in start page",
            "return location.pathname === '/' && document.readyState === 'complete';",
        )
        .await;
    }

    /// Polls `script` every 100 ms until it returns something truthy (not null, false, 0,
    /// "" or []), for at most 15 s; panics naming `what` (and the last value) otherwise.
    pub async fn wait_for(&self, what: &str, script: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let value = self.eval(script).await;
            let truthy = match &value {
                Value::Null | Value::Bool(false) => false,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                Value::Array(a) => !a.is_empty(),
                Value::Object(_) => true,
                Value::Bool(true) => true,
            };
            if truthy {
                return value;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what} (last value {value})");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Saves a PNG of the viewport.
    pub async fn screenshot(&self, path: &Path) {
        let png = self.client().screenshot().await.expect("screenshot");
        std::fs::write(path, png).expect("screenshot written");
    }

    /// Ends the session (Chromium quits); chromedriver is killed when `self` drops.
    pub async fn close(mut self) {
        if let Some(client) = self.client.take() {
            let _ = client.close().await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Still open (a test panicked): end the session so that Chromium quits, with a plain
        // blocking request since Drop cannot await. Then chromedriver goes.
        if self.client.take().is_some()
            && let Some(session) = self.session.take()
        {
            delete_session(self.port, &session);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// `DELETE /session/{id}` to chromedriver, waiting at most a few seconds for its answer.
fn delete_session(port: u16, session: &str) {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let request = format!(
        "DELETE /session/{session} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    );
    if stream.write_all(request.as_bytes()).is_ok() {
        // The reply's first bytes mean the session is gone.
        let mut buf = [0u8; 512];
        let _ = stream.read(&mut buf);
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
    listener.local_addr().expect("bound address").port()
}

/// Waits until chromedriver's `/status` reports ready (10 s at most).
async fn wait_ready(port: u16) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            // chromedriver keeps the connection open: read until the body says ready.
            let request = format!(
                "GET /status HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
            );
            if stream.write_all(request.as_bytes()).await.is_ok() {
                let mut reply = Vec::new();
                let mut buf = [0u8; 4096];
                let read_until = Instant::now() + Duration::from_secs(2);
                while let Ok(Ok(n)) =
                    tokio::time::timeout_at(read_until.into(), stream.read(&mut buf)).await
                {
                    if n == 0 {
                        break;
                    }
                    reply.extend_from_slice(&buf[..n]);
                    if String::from_utf8_lossy(&reply).contains("\"ready\":true") {
                        return;
                    }
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "chromedriver did not get ready on port {port}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---- the build page, live, against fake SSE endpoints ---------------------------------------

const NOW: i64 = 1_714_563_296_000;

fn sample_repo() -> Repo {
    Repo {
        id: 1,
        name: "team/app".into(),
        provider: "github".into(),
        clone_url: "https://git.example/team/app.git".into(),
        config_path: None,
        webhook_secret: "hook-secret".into(),
        default_branch: "main".into(),
        trusted: false,
        auto_cancel: false,
        max_running: 0,
        status_url: None,
        status_token: None,
        registry_paths: Vec::new(),
        created: NOW,
    }
}

fn sample_step(number: i64, name: &str, status: Status, started: Option<i64>) -> Step {
    Step {
        id: number,
        stage_id: 1,
        number,
        name: name.into(),
        status,
        exit_code: (status == Status::Success).then_some(0),
        error: None,
        started,
        finished: (status == Status::Success).then(|| started.unwrap_or(NOW) + 4_000),
    }
}

fn sample_stage(number: i64, name: &str, status: Status, started: Option<i64>) -> Stage {
    Stage {
        id: number,
        build_id: 7,
        repo_id: 1,
        number,
        name: name.into(),
        status,
        depends_on: vec![],
        labels: Default::default(),
        plan: json!({}),
        attempt: 1,
        runner_id: None,
        lease_expires: None,
        cancel_requested: false,
        error: None,
        created: NOW,
        started,
        finished: None,
    }
}

/// The context of `build.html` for a running build #7 of `team/app`.
fn now_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    i64::try_from(since.as_millis()).expect("ms fit i64")
}

fn build_page_context() -> Value {
    let now = now_ms();
    let build = Build {
        id: 7,
        repo_id: 1,
        number: 7,
        status: Status::Running,
        event: "push".into(),
        reference: "refs/heads/main".into(),
        branch: "main".into(),
        commit: "9f2c1e0d8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e".into(),
        message: "Add health check <script>alert(1)</script>\n\nAnd a longer body.".into(),
        author: "Ada Lovelace".into(),
        trigger: "webhook".into(),
        deploy_to: String::new(),
        delivery_id: None,
        context: json!({}),
        error: None,
        created: now - 70_000,
        started: Some(now - 65_000),
        finished: None,
    };
    json!({
        "title": "team/app #7",
        "user": {"name": "admin"}, "csrf": "a-form-token",
        "repo": sample_repo(),
        "build": build,
        "stages": [
            {"stage": sample_stage(1, "default", Status::Running, Some(now - 65_000)), "steps": [
                sample_step(1, "clone", Status::Success, Some(now - 65_000)),
                sample_step(2, "build", Status::Running, Some(now - 60_000)),
                sample_step(3, "deploy", Status::Pending, None),
            ]},
            {"stage": sample_stage(2, "docs", Status::Pending, None), "steps": [
                sample_step(1, "clone", Status::Pending, None),
                sample_step(2, "mkdocs", Status::Pending, None),
            ]},
        ],
        "artifacts": [Artifact {
            id: 1, build_id: 7, image: "127.0.0.1:8080/team/app:7".into(),
            digest: "sha256:3b1f0c9e2d8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c".into(), created: now,
        }],
        "registry_host": "127.0.0.1:8080",
    })
}

/// The test server's state: the script phase the test advances, and what the browser did.
#[derive(Clone)]
struct Fake {
    ui: Arc<Ui>,
    phase: watch::Receiver<u32>,
    /// When the test began (unix ms): the events' times are relative to it.
    started: i64,
    log_connections: Arc<Mutex<u32>>,
    posts: Arc<Mutex<Vec<String>>>,
}

/// Log lines of `default › build` and the phase that releases each; `None` = `end`.
fn log_script() -> Vec<(u32, Option<(u64, &'static str)>)> {
    vec![
        (0, Some((1, "+ cargo build --release"))),
        (
            0,
            Some((2, "\u{1b}[31merror: red line\u{1b}[0m after reset")),
        ),
        (
            0,
            Some((
                3,
                "<img src=x onerror=alert(1)> \u{1b}[1;32mbold green\u{1b}[0m\u{1b}[2K",
            )),
        ),
        (1, Some((4, "   Compiling slipway v0.1.0"))),
        (1, Some((5, "\u{1b}]0;title\u{7}warning: unused variable"))),
        (2, Some((6, "    Finished `release` profile"))),
        (3, Some((7, "done"))),
        (3, None),
    ]
}

/// Build events and the phase that releases each (times relative to `now`, unix ms).
fn event_script(now: i64) -> Vec<(u32, Value)> {
    vec![
        (0, json!({"kind": "stage", "stage": 1, "status": "running"})),
        (
            3,
            json!({"kind": "step", "stage": 1, "step": "build", "status": "success",
                   "exit_code": 0, "started": now - 63_000, "finished": now}),
        ),
        (
            3,
            json!({"kind": "step", "stage": 1, "step": "deploy", "status": "running",
                   "exit_code": null, "started": now, "finished": null}),
        ),
        (
            4,
            json!({"kind": "step", "stage": 1, "step": "deploy", "status": "killed",
                   "exit_code": 137, "started": now, "finished": now + 1_000}),
        ),
        (4, json!({"kind": "stage", "stage": 1, "status": "killed"})),
        (
            4,
            json!({"kind": "build", "status": "killed", "finished": now + 1_000}),
        ),
    ]
}

fn sse_frame(data: &Value) -> Bytes {
    Bytes::from(format!("data: {data}\n\n"))
}

/// An SSE response fed by `rx`; the stream ends when the sender drops.
fn sse(rx: mpsc::Receiver<Bytes>) -> Response {
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .expect("response")
}

/// Sends every item of `script` whose phase has been reached, in order, as the phase grows.
/// `stop_after` ends the stream once that many items were sent (a dropped connection).
fn play(
    mut phase: watch::Receiver<u32>,
    script: Vec<(u32, Bytes)>,
    stop_after: Option<usize>,
) -> mpsc::Receiver<Bytes> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        // Reconnect quickly; the browser's default is 3 s.
        if tx
            .send(Bytes::from_static(b"retry: 200\n\n"))
            .await
            .is_err()
        {
            return;
        }
        let mut sent = 0;
        for (at, frame) in script {
            while *phase.borrow_and_update() < at {
                if phase.changed().await.is_err() {
                    return;
                }
            }
            if tx.send(frame).await.is_err() {
                return;
            }
            sent += 1;
            if stop_after == Some(sent) {
                return;
            }
        }
        // Keep the stream open (like a server whose build goes on) until the client goes.
        tx.closed().await;
    });
    rx
}

async fn page(State(fake): State<Fake>) -> Response {
    match fake.ui.render("build.html", build_page_context()) {
        Ok(html) => Html(html).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn asset(UrlPath(file): UrlPath<String>) -> Response {
    match Ui::asset(&format!("/static/{file}")) {
        Some((content_type, bytes)) => {
            ([(header::CONTENT_TYPE, content_type)], bytes).into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn events(State(fake): State<Fake>) -> Response {
    let script = event_script(fake.started)
        .into_iter()
        .map(|(at, v)| (at, sse_frame(&v)))
        .collect();
    sse(play(fake.phase.clone(), script, None))
}

async fn log_stream(State(fake): State<Fake>) -> Response {
    let connection = {
        let mut n = fake.log_connections.lock().expect("lock");
        *n += 1;
        *n
    };
    let script: Vec<(u32, Bytes)> = log_script()
        .into_iter()
        .map(|(at, item)| {
            let data = match item {
                Some((seq, line)) => json!({"kind": "line", "seq": seq, "line": line}),
                None => json!({"kind": "end"}),
            };
            (at, sse_frame(&data))
        })
        .collect();
    // The first connection drops after line 5, before the end: the browser must reconnect,
    // get lines 1..5 again, and show each once.
    let stop = (connection == 1).then_some(5);
    sse(play(fake.phase.clone(), script, stop))
}

async fn other_log_stream() -> Response {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let _ = tx
            .send(sse_frame(&json!({"kind": "line", "seq": 1, "line": "ok"})))
            .await;
        let _ = tx.send(sse_frame(&json!({"kind": "end"}))).await;
    });
    sse(rx)
}

async fn cancel(State(fake): State<Fake>) -> Redirect {
    fake.posts
        .lock()
        .expect("lock")
        .push("/repos/team/app/builds/7/cancel".to_owned());
    Redirect::to("/repos/team/app/builds/7")
}

async fn serve(fake: Fake) -> SocketAddr {
    let app = Router::new()
        .route("/repos/team/app/builds/7", get(page))
        .route("/static/{file}", get(asset))
        .route("/api/repos/team/app/builds/7/events", get(events))
        .route(
            "/api/repos/team/app/builds/7/logs/1/build/stream",
            get(log_stream),
        )
        .route(
            "/api/repos/team/app/builds/7/logs/{stage}/{step}/stream",
            get(other_log_stream),
        )
        .route("/repos/team/app/builds/7/cancel", post(cancel))
        .with_state(fake);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

const SEQS: &str = "return Array.from(document.querySelectorAll('#log-1-build .line')).map(l => Number(l.dataset.seq));";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_build_page_streams_logs_and_cancels() {
    let (phase_tx, phase) = watch::channel(0u32);
    let fake = Fake {
        ui: Arc::new(Ui::new()),
        phase,
        started: now_ms(),
        log_connections: Arc::new(Mutex::new(0)),
        posts: Arc::new(Mutex::new(Vec::new())),
    };
    let addr = serve(fake.clone()).await;
    let Some(browser) = Browser::start(1280, 900).await else {
        return;
    };
    let url = format!("http://{addr}/repos/team/app/builds/7");
    browser.client().goto(&url).await.expect("build page loads");

    // The running step's panel opens by itself and streams the first lines.
    browser
        .wait_for(
            "lines 1-3",
            "return document.querySelectorAll('#log-1-build .line').length >= 3;",
        )
        .await;
    let open = browser
        .eval("return document.querySelector('.log-panel.open').id")
        .await;
    assert_eq!(
        open,
        json!("panel-1-build"),
        "the running step's panel is open"
    );
    assert_eq!(browser.eval(SEQS).await, json!([1, 2, 3]));

    // ANSI red becomes a span with a red class and a red colour; escapes are not shown.
    let red = browser
        .eval(
            "const s = document.querySelector('#log-1-build .line[data-seq=\"2\"] .text .ansi-fg-red');
             return s && {text: s.textContent, color: getComputedStyle(s).color,
                          line: s.closest('.line').querySelector('.text').textContent};",
        )
        .await;
    assert_eq!(red["text"], json!("error: red line"), "{red}");
    assert_eq!(red["line"], json!("error: red line after reset"), "{red}");
    let color = red["color"].as_str().expect("a colour");
    let rgb: Vec<u32> = color
        .trim_start_matches("rgb(")
        .trim_end_matches(')')
        .split(',')
        .map(|c| c.trim().parse().expect("rgb component"))
        .collect();
    assert!(rgb[0] > 180 && rgb[1] < 140 && rgb[2] < 140, "red: {color}");
    // Log text is text: the <img> is not an element, the bold green is a span.
    let line3 = browser
        .eval(
            "const l = document.querySelector('#log-1-build .line[data-seq=\"3\"]');
             return {imgs: l.querySelectorAll('img').length, text: l.querySelector('.text').textContent,
                     green: l.querySelector('.ansi-fg-green.ansi-bold').textContent,
                     ln: l.querySelector('.ln').textContent};",
        )
        .await;
    assert_eq!(
        line3,
        json!({"imgs": 0, "text": "<img src=x onerror=alert(1)> bold green", "green": "bold green", "ln": "3"})
    );

    // Lines 4-5, then the server drops the stream; the EventSource reconnects and is sent
    // lines 1-5 again: each is shown once.
    phase_tx.send(1).expect("phase 1");
    browser
        .wait_for(
            "lines 4-5",
            "return document.querySelectorAll('#log-1-build .line').length >= 5;",
        )
        .await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while *fake.log_connections.lock().expect("lock") < 2 {
        assert!(Instant::now() < deadline, "the log stream was not reopened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        browser.eval(SEQS).await,
        json!([1, 2, 3, 4, 5]),
        "no duplicates after reconnecting"
    );
    let line5 = browser
        .eval(
            "return document.querySelector('#log-1-build .line[data-seq=\"5\"] .text').textContent",
        )
        .await;
    assert_eq!(
        line5,
        json!("warning: unused variable"),
        "OSC sequences are stripped"
    );

    phase_tx.send(2).expect("phase 2");
    browser
        .wait_for(
            "line 6",
            "return document.querySelectorAll('#log-1-build .line').length >= 6;",
        )
        .await;

    // Line 7, end; the step turns success (exit 0) and the next one runs.
    phase_tx.send(3).expect("phase 3");
    browser
        .wait_for(
            "the build step's badge to turn success",
            "const b = document.querySelector('.step[data-stage=\"1\"][data-step=\"build\"] .badge');
             return b && b.dataset.status === 'success' && b.classList.contains('status-success');",
        )
        .await;
    browser
        .wait_for(
            "the end of the log",
            "return document.querySelector('#log-1-build .log-end') !== null;",
        )
        .await;
    assert_eq!(browser.eval(SEQS).await, json!([1, 2, 3, 4, 5, 6, 7]));
    let exit = browser
        .eval("return document.querySelector('.step[data-stage=\"1\"][data-step=\"build\"] .exit-code').textContent")
        .await;
    assert_eq!(exit, json!("exit 0"));
    let duration = browser
        .eval("return document.querySelector('.step[data-stage=\"1\"][data-step=\"build\"] .duration').textContent")
        .await;
    assert_eq!(duration, json!("1m 03s"));
    // The panel followed the running step (the reader has not picked one).
    browser
        .wait_for(
            "the deploy panel to open",
            "return document.querySelector('.log-panel.open').id === 'panel-1-deploy';",
        )
        .await;
    // After `end`, the ended log stream is not reopened.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        *fake.log_connections.lock().expect("lock"),
        2,
        "no reconnect after end"
    );

    // Back to the build step's log by clicking it (the stream is kept: still 7 lines).
    browser
        .client()
        .find(Locator::Css(
            ".step[data-stage=\"1\"][data-step=\"build\"] a.step-link",
        ))
        .await
        .expect("the build step link")
        .click()
        .await
        .expect("click");
    browser
        .wait_for(
            "the build panel to reopen",
            "return document.querySelector('.log-panel.open').id === 'panel-1-build';",
        )
        .await;
    assert_eq!(browser.eval(SEQS).await, json!([1, 2, 3, 4, 5, 6, 7]));

    browser.eval("window.scrollTo(0, 0); return true;").await;
    let shots = Path::new("/tmp");
    browser
        .screenshot(&shots.join("slipway-build-page-desktop.png"))
        .await;
    browser
        .client()
        .set_window_size(390, 844)
        .await
        .expect("phone size");
    tokio::time::sleep(Duration::from_millis(300)).await;
    browser.eval("window.scrollTo(0, 0); return true;").await;
    browser
        .screenshot(&shots.join("slipway-build-page.png"))
        .await;
    browser
        .eval("document.getElementById('panel-1-build').scrollIntoView(); return true;")
        .await;
    browser
        .screenshot(&shots.join("slipway-build-page-phone-log.png"))
        .await;
    let overflow = browser
        .eval("return document.documentElement.scrollWidth - document.documentElement.clientWidth;")
        .await;
    assert_eq!(overflow, json!(0), "no sideways scrolling on a phone");
    browser
        .client()
        .set_window_size(1280, 900)
        .await
        .expect("desktop size");

    // Cancel submits its form.
    browser
        .client()
        .find(Locator::Id("cancel"))
        .await
        .expect("the cancel button")
        .click()
        .await
        .expect("click cancel");
    let deadline = Instant::now() + Duration::from_secs(15);
    while fake.posts.lock().expect("lock").is_empty() {
        assert!(Instant::now() < deadline, "cancel was not posted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        *fake.posts.lock().expect("lock"),
        vec!["/repos/team/app/builds/7/cancel".to_owned()]
    );

    // The redirect reloads the page; the build is killed: cancel goes, promote shows.
    browser
        .wait_for("the reloaded page", "return document.readyState === 'complete' && document.getElementById('build') !== null;")
        .await;
    phase_tx.send(4).expect("phase 4");
    browser
        .wait_for(
            "the final state",
            "const b = document.querySelector('#build-status .badge');
             return b && b.dataset.status === 'killed' && document.getElementById('cancel') === null
                 && !document.getElementById('promote-form').hidden;",
        )
        .await;
    let deploy = browser
        .eval("return document.querySelector('.step[data-stage=\"1\"][data-step=\"deploy\"] .badge').dataset.status")
        .await;
    assert_eq!(deploy, json!("killed"));
    browser.close().await;
}
