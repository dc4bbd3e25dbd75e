//! The deployer's web UI against the real thing: the server in-process with an edge proxy
//! of its own on loopback (as `slipway up` runs one), stacks rolled out on the real Docker
//! engine (image `SLIPWAY_TEST_IMAGE`), the stack page watched in headless Chromium, the
//! rollout's SSE stream read over plain HTTP.
//!
//! - `a_stack_page_follows_a_canary_live_and_steers_it`: the page, opened while a canary
//!   starts, grows its step list live to the 10% step and shows weight 10; Pause shows
//!   "paused by a user", Resume "rolling", Promote ends in "succeeded" — all in the same
//!   document (the buttons post without a reload; the stream brings the changes).
//! - `the_rollout_stream_sends_the_steps_so_far_then_live_ones_and_ends`: the snapshot
//!   (revision, then steps numbered 1..N), live steps after a promote, numbered on, and the
//!   final `status`, after which the stream ends.
//! - `the_history_shows_what_changed_and_a_build_links_its_deploy` (no Docker): revisions
//!   recorded in the store show their image and stack-file changes, and a build's page
//!   links to the revision it triggered; a finished rollout's stream is its snapshot only.

use std::time::{Duration, Instant};

use fantoccini::Locator;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::browser::Browser;
use super::{BareRepo, TestServer, serve};

const ADMIN: &str = "deploy-ui-admin-token-0123456789abcd";

fn test_image() -> String {
    std::env::var("SLIPWAY_TEST_IMAGE").unwrap_or_else(|_| "slipway-test/busybox:latest".into())
}

/// A busybox httpd of two replicas answering `$VERSION`, serving after `delay` seconds;
/// `extra` goes into the service.
fn stack_file(version: &str, delay: u32, extra: &str) -> String {
    format!(
        r#"services:
  web:
    image: {image}
    command: ["sh", "-c", "sleep {delay}; mkdir -p /www && echo \"$$VERSION\" > /www/index.html; trap 'exit 0' TERM; httpd -f -p 8080 -h /www & wait"]
    environment:
      VERSION: {version}
    expose: ["8080"]
    stop_grace_period: 1s
    deploy:
      replicas: 2
{extra}"#,
        image = test_image()
    )
}

/// A canary whose first step holds 10 minutes.
const CANARY: &str =
    "    x-slipway:\n      strategy: canary\n      steps:\n        - {weight: 10, pause: 10m}\n";

/// Removes the containers and networks of a test's environment when it ends.
struct EngineCleanup(String);

impl Drop for EngineCleanup {
    fn drop(&mut self) {
        let label = format!("label=io.slipway.env={}", self.0);
        for (list, rm) in [
            (&["ps", "-aq"][..], &["rm", "-f"][..]),
            (&["network", "ls", "-q"][..], &["network", "rm"][..]),
        ] {
            let ids = std::process::Command::new("docker")
                .args(list)
                .args(["--filter", &label])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            for id in ids.split_whitespace() {
                let _ = std::process::Command::new("docker")
                    .args(rm)
                    .arg(id)
                    .output();
            }
        }
    }
}

/// The server with an edge proxy on a loopback port, and an environment `PREFIX<pid>` of
/// domain `apps.test` whose containers go when the test ends; `None` without Docker.
struct Deployer {
    server: TestServer,
    env: String,
    http: reqwest::Client,
    _cleanup: EngineCleanup,
}

impl Deployer {
    async fn start(prefix: &str, shutdown: &CancellationToken) -> Option<Deployer> {
        let engine = std::process::Command::new("docker").arg("version").output();
        if !engine.is_ok_and(|o| o.status.success()) {
            eprintln!("skipping: no Docker engine");
            return None;
        }
        let env = format!("{prefix}{}", std::process::id());
        let cleanup = EngineCleanup(env.clone());
        let edge = slipway_proxy::Edge::start(
            slipway_proxy::EdgeConfig {
                http: Some("127.0.0.1:0".parse().expect("an address")),
                // Served on the test's runtime, which ends with it.
                workers: 0,
                ..slipway_proxy::EdgeConfig::default()
            },
            shutdown.clone(),
        )
        .await
        .expect("the edge proxy starts");
        let edge = std::sync::Arc::new(edge);
        let server = serve(ADMIN, shutdown, |config| {
            config.edge = Some(edge);
        })
        .await;
        let deployer = Deployer {
            server,
            env,
            http: reqwest::Client::new(),
            _cleanup: cleanup,
        };
        let added = deployer
            .api(
                reqwest::Method::POST,
                "/api/envs",
                json!({"name": deployer.env, "domain": "apps.test"}),
            )
            .await;
        assert_eq!(added["name"], json!(deployer.env), "{added}");
        Some(deployer)
    }

    async fn api(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.server.url))
            .bearer_auth(ADMIN);
        if !body.is_null() {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("the API answers");
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{path}: {status} {body}");
        body
    }

    /// Starts a deploy of `shop` from `text`; its revision number.
    async fn deploy(&self, text: &str) -> i64 {
        let path = format!("/api/stacks/{}/shop", self.env);
        let revision = self
            .api(reqwest::Method::POST, &path, json!({"compose": text}))
            .await;
        revision["number"].as_i64().expect("a revision number")
    }

    async fn revision(&self, number: i64) -> Value {
        let path = format!("/api/stacks/{}/shop/revisions/{number}", self.env);
        self.api(reqwest::Method::GET, &path, Value::Null).await
    }

    /// Waits (60 s at most) until revision `number` has ended; its status.
    async fn ended(&self, number: i64) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let revision = self.revision(number).await;
            let status = revision["status"].as_str().unwrap_or_default().to_owned();
            if ["succeeded", "failed", "rolled_back", "paused"].contains(&status.as_str()) {
                return status;
            }
            assert!(Instant::now() < deadline, "revision {number} is {status}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits (60 s at most) until revision `number` has shifted 10% to the canary.
    async fn at_ten(&self, number: i64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let revision = self.revision(number).await;
            if revision["steps"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| s["kind"] == "traffic_shifted" && s["detail"]["new_weight"] == 10)
            {
                return;
            }
            assert!(Instant::now() < deadline, "no 10% step: {revision}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn steer(&self, command: &str) {
        let path = format!("/api/stacks/{}/shop/rollout/{command}", self.env);
        self.api(reqwest::Method::POST, &path, Value::Null).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stack_page_follows_a_canary_live_and_steers_it() {
    let Some(browser) = Browser::start(1280, 1000).await else {
        return;
    };
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let Some(fx) = Deployer::start("ui", &shutdown).await else {
        return;
    };
    let url = fx.server.url.clone();
    let first = fx.deploy(&stack_file("v1", 0, "")).await;
    assert_eq!(fx.ended(first).await, "succeeded");
    browser.log_in(&url, ADMIN).await;
    let client = browser.client();

    // The canary's containers serve only after 4 s: the page is open before its 10% step.
    let second = fx.deploy(&stack_file("v2", 4, CANARY)).await;
    client
        .goto(&format!("{url}/deploy/{}/shop", fx.env))
        .await
        .expect("the stack page");
    browser
        .eval("window.__sameDocument = 'not reloaded'; return true;")
        .await;
    let at_load = browser
        .eval(
            "return {number: document.getElementById('rollout').dataset.number,
                     events: Array.from(document.querySelectorAll('#rollout-steps li')).map(l => l.dataset.event)};",
        )
        .await;
    assert_eq!(at_load["number"], json!(second.to_string()), "{at_load}");
    let loaded: Vec<&str> = at_load["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        !loaded.contains(&"traffic_shifted"),
        "the 10% step is not there yet: {loaded:?}"
    );
    // Waited for through the API first: the browser's wait is short, a loaded machine's
    // containers may be slow to get healthy.
    fx.at_ten(second).await;
    let shown = browser
        .wait_for(
            "the 10% step, live, and weight 10",
            "const w = document.querySelector('#canary-weight');
             const li = Array.from(document.querySelectorAll('#rollout-steps li'));
             return li.some(l => l.dataset.event === 'traffic_shifted') && !w.hidden
                 && w.querySelector('.weight').textContent === '10'
                 && {steps: li.map(l => [Number(l.dataset.seq), l.dataset.event]),
                     state: document.getElementById('rollout-state').dataset.state};",
        )
        .await;
    let steps = shown["steps"].as_array().expect("steps");
    assert!(steps.len() > loaded.len(), "the list grew: {shown}");
    for (i, step) in steps.iter().enumerate() {
        assert_eq!(step[0], json!(i + 1), "each step once, in order: {shown}");
    }
    assert_eq!(shown["state"], "rolling", "{shown}");
    assert_eq!(
        browser
            .eval("return document.getElementById('rollout-controls').hidden;")
            .await,
        json!(false),
        "the canary controls show while it runs"
    );

    // A button is pressed once the one before it has had its answer (they are disabled
    // meanwhile).
    let page = &browser;
    let click = |id: &'static str| async move {
        page
            .wait_for(
                "the buttons enabled",
                "return Array.from(document.querySelectorAll('form.steer button')).every(b => !b.disabled);",
            )
            .await;
        client
            .find(Locator::Id(id))
            .await
            .unwrap_or_else(|e| panic!("#{id}: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("click #{id}: {e}"));
    };
    click("rollout-pause").await;
    let paused = browser
        .wait_for(
            "the state paused",
            "const s = document.getElementById('rollout-state');
             return s.dataset.state === 'held' && s.textContent;",
        )
        .await;
    assert!(
        paused.as_str().unwrap_or_default().contains("paused"),
        "{paused}"
    );
    let shown = fx
        .api(
            reqwest::Method::GET,
            &format!("/api/stacks/{}/shop", fx.env),
            Value::Null,
        )
        .await;
    assert_eq!(shown["rollout"]["paused"], true, "{shown}");
    browser
        .wait_for(
            "Resume in place of Pause",
            "return document.querySelector('form.steer[data-command=\"pause\"]').hidden
                 && !document.querySelector('form.steer[data-command=\"resume\"]').hidden;",
        )
        .await;
    browser
        .screenshot(std::path::Path::new("/tmp/slipway-stack-paused.png"))
        .await;

    click("rollout-resume").await;
    browser
        .wait_for(
            "the state rolling again",
            "return document.getElementById('rollout-state').dataset.state === 'rolling'
                 && Array.from(document.querySelectorAll('#rollout-steps li')).some(l => l.dataset.event === 'resumed');",
        )
        .await;

    click("rollout-promote").await;
    assert_eq!(fx.ended(second).await, "succeeded");
    let done = browser
        .wait_for(
            "succeeded, live",
            "const r = document.querySelector('tr.revision[data-number=\"' + document.getElementById('rollout').dataset.number + '\"]');
             const s = document.getElementById('rollout-state');
             return r.dataset.status === 'succeeded' && s.dataset.state === 'succeeded'
                 && {text: s.textContent, chip: r.querySelector('.revision-status').textContent,
                     controls: document.getElementById('rollout-controls').hidden,
                     weight: document.querySelector('#canary-weight .weight').textContent,
                     events: Array.from(document.querySelectorAll('#rollout-steps li')).map(l => l.dataset.event)};",
        )
        .await;
    assert_eq!(done["text"], "succeeded", "{done}");
    assert_eq!(done["weight"], "100", "{done}");
    assert_eq!(done["chip"], "succeeded", "{done}");
    assert_eq!(
        done["controls"], true,
        "no controls once it is over: {done}"
    );
    let events: Vec<&str> = done["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    // A promote during a canary step's hold ends the hold: the deployer records no step of
    // its own for it, the traffic shift that follows is the sign.
    for want in ["held", "resumed", "done"] {
        assert!(events.contains(&want), "{want} shown: {events:?}");
    }
    assert_eq!(
        browser.eval("return window.__sameDocument || null;").await,
        json!("not reloaded"),
        "everything came without a reload"
    );
    browser
        .screenshot(std::path::Path::new("/tmp/slipway-stack-done.png"))
        .await;
    browser.close().await;
}

/// The SSE messages of `resp` read until the stream ends (or `deadline`), handed to
/// `each` as they come; `each` may act (steer the rollout) and returns nothing.
async fn read_stream(
    mut resp: reqwest::Response,
    deadline: Instant,
    mut each: impl FnMut(&Value),
) -> (Vec<Value>, bool) {
    let mut messages = Vec::new();
    let mut buffer = String::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = match tokio::time::timeout(left, resp.chunk()).await {
            Err(_) => return (messages, false),
            Ok(chunk) => chunk.expect("the stream reads"),
        };
        let Some(chunk) = chunk else {
            return (messages, true);
        };
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let frame: String = buffer.drain(..end + 2).collect();
            for line in frame.lines() {
                if let Some(data) = line.strip_prefix("data:") {
                    let value: Value = serde_json::from_str(data.trim()).expect("JSON data");
                    each(&value);
                    messages.push(value);
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_rollout_stream_sends_the_steps_so_far_then_live_ones_and_ends() {
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let Some(fx) = Deployer::start("sse", &shutdown).await else {
        return;
    };
    let first = fx.deploy(&stack_file("v1", 0, "")).await;
    assert_eq!(fx.ended(first).await, "succeeded");
    let second = fx.deploy(&stack_file("v2", 0, CANARY)).await;
    fx.at_ten(second).await;
    // The canary holds at 10% now: nothing more is recorded until it is steered.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let recorded = fx.revision(second).await["steps"]
        .as_array()
        .map_or(0, Vec::len);

    let resp = fx
        .http
        .get(format!(
            "{}/api/stacks/{}/shop/events",
            fx.server.url, fx.env
        ))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("GET events");
    assert_eq!(resp.status(), reqwest::StatusCode::OK);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap_or_default()
            .starts_with("text/event-stream")
    );
    // Once the snapshot is in, the rollout is promoted: what follows is live.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut seen = 0;
    let reading = read_stream(resp, Instant::now() + Duration::from_secs(60), move |m| {
        seen += 1;
        if seen == recorded + 1 {
            let _ = tx.send(m.clone());
        }
    });
    let steering = async {
        let last_of_snapshot = rx.recv().await.expect("the snapshot's last step");
        assert_eq!(last_of_snapshot["kind"], "step", "{last_of_snapshot}");
        fx.steer("promote").await;
    };
    let ((messages, ended), ()) = tokio::join!(reading, steering);
    assert!(
        ended,
        "the stream ends after the final status: {messages:#?}"
    );

    assert_eq!(
        messages[0],
        json!({"kind": "revision", "number": second, "status": "rolling", "message": null,
               "rollout": {"paused": false, "promoted": false, "aborted": false}}),
    );
    let steps: Vec<&Value> = messages.iter().filter(|m| m["kind"] == "step").collect();
    for (i, step) in steps.iter().enumerate() {
        assert_eq!(
            step["seq"],
            json!(i + 1),
            "each step once, in order: {messages:#?}"
        );
        assert_eq!(step["detail"]["service"], "web", "{step}");
    }
    let snapshot: Vec<&str> = steps[..recorded]
        .iter()
        .filter_map(|s| s["detail"]["event"].as_str())
        .collect();
    assert_eq!(snapshot.first(), Some(&"started"), "{snapshot:?}");
    assert!(snapshot.contains(&"traffic_shifted"), "{snapshot:?}");
    let live: Vec<&str> = steps[recorded..]
        .iter()
        .filter_map(|s| s["detail"]["event"].as_str())
        .collect();
    assert_eq!(live[..2], ["promoted", "traffic_shifted"], "{live:?}");
    assert!(live.contains(&"done"), "{live:?}");
    assert_eq!(
        steps[recorded + 1]["detail"]["new_weight"],
        Value::Null,
        "all to v2: {live:?}"
    );
    let last = messages.last().expect("messages");
    assert_eq!(
        (&last["kind"], &last["status"], &last["number"]),
        (&json!("status"), &json!("succeeded"), &json!(second)),
        "{messages:#?}"
    );
    // Everything recorded was sent, each once.
    let stored = fx.revision(second).await["steps"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(steps.len(), stored);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_shows_what_changed_and_a_build_links_its_deploy() {
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let server = serve(ADMIN, &shutdown, |_| {}).await;
    let url = server.url.clone();
    let http = reqwest::Client::new();

    // A build, through the API (no runner: it stays pending, which is enough here).
    let repo = BareRepo::with_pipeline(
        "kind: pipeline\nname: default\nsteps:\n- name: a\n  image: busybox\n  commands: [true]\n",
    );
    let added = http
        .post(format!("{url}/api/repos"))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "team/shop", "clone_url": repo.clone_url, "provider": "generic"}))
        .send()
        .await
        .expect("POST /api/repos");
    assert_eq!(added.status(), reqwest::StatusCode::CREATED);
    let build: Value = http
        .post(format!("{url}/api/repos/team/shop/builds"))
        .bearer_auth(ADMIN)
        .json(&json!({"branch": "main"}))
        .send()
        .await
        .expect("POST builds")
        .json()
        .await
        .expect("the build");
    let build_id = build["id"].as_i64().expect("the build's id");

    // Two revisions as the deployer records them: the second from the build, with a new
    // image and one more replica.
    let store = &server.server.state.store;
    let env = store
        .add_env("production", None, &Default::default())
        .await
        .expect("env");
    let stack = store.ensure_stack(env.id, "shop").await.expect("stack");
    let revision = |image: &str, digest: &str, replicas: u32, build: Option<i64>| {
        slipway_server::store::NewRevision {
            compose: format!(
                "services:\n  web:\n    image: {image}\n    deploy:\n      replicas: {replicas}\n  db:\n    image: postgres:16\n"
            ),
            rancher: None,
            vars: Default::default(),
            images: [
                ("web".to_owned(), format!("{image}@{digest}")),
                ("db".to_owned(), "postgres@sha256:d0".to_owned()),
            ]
            .into(),
            refs: [
                ("web".to_owned(), image.to_owned()),
                ("db".to_owned(), "postgres:16".to_owned()),
            ]
            .into(),
            cause: "user:admin".to_owned(),
            build_id: build,
        }
    };
    for (image, digest, replicas, build) in [
        ("team/shop:v1", "sha256:a1", 1, None),
        ("team/shop:v2", "sha256:b2", 3, Some(build_id)),
    ] {
        let r = store
            .new_revision(stack.id, &revision(image, digest, replicas, build))
            .await
            .expect("revision");
        store
            .set_revision_status(r.id, "succeeded", None, None)
            .await
            .expect("succeeded");
    }

    let (cookie, _) = super::web::login(&url, ADMIN).await;
    let (status, _, page) = super::web::get(&url, "/deploy/production/shop", &cookie).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{page}");
    let row = page
        .split("<tr class=\"revision\" id=\"revision-2\"")
        .nth(1)
        .and_then(|rest| rest.split("</tr>").next())
        .expect("revision 2's row");
    assert!(
        row.contains(
            "<div class=\"image-change\" data-service=\"web\"><code>web</code> <code class=\"old\" title=\"team/shop:v1@sha256:a1\">team/shop:v1</code> → <code class=\"new\" title=\"team/shop:v2@sha256:b2\">team/shop:v2</code>"
        ),
        "{row}"
    );
    assert!(
        !row.contains("data-service=\"db\""),
        "db did not change: {row}"
    );
    assert!(row.contains("stack file: +2 −2 lines since #1"), "{row}");
    for line in [
        "<span class=\"del\">-     image: team/shop:v1</span>",
        "<span class=\"add\">+     image: team/shop:v2</span>",
        "<span class=\"del\">-       replicas: 1</span>",
        "<span class=\"add\">+       replicas: 3</span>",
    ] {
        assert!(row.contains(line), "{line} in {row}");
    }
    // Revision 1 succeeded and no longer serves: it can be rolled back to.
    assert!(page.contains("Roll back to #1"), "{page}");
    assert!(page.contains("id=\"make-webhook\""), "{page}");

    let (status, _, page) = super::web::get(&url, "/repos/team/shop/builds/1", &cookie).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{page}");
    assert!(
        page.contains(
            "<a href=\"/deploy/production/shop#revision-2\">production/shop revision #2</a>"
        ),
        "{page}"
    );

    // A rollout that is over: its stream is the snapshot, then it ends.
    let resp = http
        .get(format!("{url}/api/stacks/production/shop/events"))
        .header("Cookie", format!("slipway_session={cookie}"))
        .send()
        .await
        .expect("GET events");
    assert_eq!(resp.status(), reqwest::StatusCode::OK);
    let (messages, ended) =
        read_stream(resp, Instant::now() + Duration::from_secs(10), |_| {}).await;
    assert!(ended, "{messages:?}");
    assert_eq!(
        messages,
        [
            json!({"kind": "revision", "number": 2, "status": "succeeded", "message": null, "rollout": null})
        ]
    );

    // A new redeploy URL, shown once on the page.
    let csrf = super::web::csrf_of(
        &super::web::get(&url, "/deploy/production/shop", &cookie)
            .await
            .2,
    );
    let made = super::web::form_post(
        &url,
        "/deploy/production/shop/webhook",
        &cookie,
        &[("csrf", &csrf)],
    )
    .send()
    .await
    .expect("POST webhook");
    assert_eq!(made.status(), reqwest::StatusCode::OK);
    let page = made.text().await.expect("the page");
    assert!(
        page.contains(&format!(
            "<code id=\"webhook-url\">{url}/hooks/deploy/production/shop/"
        )),
        "{page}"
    );
}
