//! The build page, live, against the real thing: the real server (in-process, SQLite in a
//! temporary data dir, served on loopback) and the real runner (in-process, same protocol as
//! `slipway runner`) running a step in the real Docker engine, watched in headless Chromium.
//!
//! It proves that, after logging in through the login form and opening the build page while
//! the build runs: the running step's log lines appear on the page as the container prints
//! them, without a reload, in order, each `seq` once; an ANSI-red line is a red span; pressing
//! `#cancel` kills the build: the page ends showing the build and the step `killed` and no
//! cancel button, the API says `killed`, and the step's container was stopped within a few
//! seconds of the click (the step would have printed for 20 s). Skips only when chromedriver
//! is not installed; Docker is required (image `SLIPWAY_TEST_IMAGE`, default
//! `slipway-test/busybox:latest`).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use fantoccini::Locator;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::browser::Browser;
use super::{BareRepo, TestServer, serve};

const ADMIN: &str = "live-ui-admin-token-0123456789abcdef";
const REPO: &str = "team/live";
/// The running step's log lines: `[seq, text]` pairs as shown.
const LINES: &str = "return Array.from(document.querySelectorAll('.log[data-stage=\"1\"][data-step=\"count\"] .line'))
    .map(l => [Number(l.dataset.seq), l.querySelector('.text').textContent]);";

fn test_image() -> String {
    std::env::var("SLIPWAY_TEST_IMAGE").unwrap_or_else(|_| "slipway-test/busybox:latest".into())
}

fn now_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    i64::try_from(since.as_millis()).expect("ms fit i64")
}

/// Ids of this process's running containers of step `count`.
fn running_step_containers() -> Vec<String> {
    let owner = slipway_engine::cleanup::current_owner();
    let out = Command::new("docker")
        .args(["ps", "-q", "--filter"])
        .arg(format!(
            "label={}={owner}",
            slipway_engine::cleanup::LABEL_OWNER
        ))
        .arg("--filter")
        .arg(format!(
            "label={}=count",
            slipway_engine::cleanup::LABEL_STEP
        ))
        .output()
        .expect("docker ps runs");
    assert!(out.status.success(), "docker ps failed");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// `[seq, text]` pairs from the page.
fn lines_of(value: &Value) -> Vec<(u64, String)> {
    value
        .as_array()
        .expect("an array of lines")
        .iter()
        .map(|pair| {
            (
                pair[0].as_u64().expect("a numeric seq"),
                pair[1].as_str().expect("line text").to_owned(),
            )
        })
        .collect()
}

/// Asserts that the seqs shown are consecutive (so in order and none twice) and that the
/// `line N` lines are `line 1`, `line 2`, ... in order; gives how many `line N` there are.
fn check_order(lines: &[(u64, String)]) -> usize {
    for pair in lines.windows(2) {
        assert_eq!(
            pair[1].0,
            pair[0].0 + 1,
            "seqs shown in order, each once: {lines:?}"
        );
    }
    let numbered: Vec<&str> = lines
        .iter()
        .filter_map(|(_, text)| text.strip_prefix("line "))
        .collect();
    for (i, n) in numbered.iter().enumerate() {
        assert_eq!(*n, (i + 1).to_string(), "`line N` in order: {lines:?}");
    }
    numbered.len()
}

async fn get_build(http: &reqwest::Client, url: &str) -> Value {
    http.get(format!("{url}/api/repos/{REPO}/builds/1"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("GET the build")
        .error_for_status()
        .expect("the build exists")
        .json()
        .await
        .expect("the build as JSON")
}

fn count_step(build: &Value) -> &Value {
    build["stages"][0]["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .find(|s| s["name"] == "count")
        .expect("the step `count`")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn live_build_page_streams_a_docker_step_and_cancels_it() {
    let Some(browser) = Browser::start(1280, 900).await else {
        return;
    };
    let docker = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .expect("the docker CLI (required by this test)");
    assert!(
        docker.status.success(),
        "Docker is required: {}",
        String::from_utf8_lossy(&docker.stderr)
    );

    // A repository whose one step prints a red line, then 100 numbered lines over 20 s.
    let image = test_image();
    let pipeline = format!(
        "kind: pipeline\nname: default\nsteps:\n- name: count\n  image: {image}\n  commands:\n  \
         - printf '\\033[31mred\\033[0m\\n'\n  \
         - for i in $(seq 1 100); do echo \"line $i\"; sleep 0.2; done\n"
    );
    let repo = BareRepo::with_pipeline(&pipeline);
    let clone_url = repo.clone_url.clone();

    // The server on loopback, and a runner speaking to it.
    let shutdown = CancellationToken::new();
    let TestServer { url, server, data } = serve(ADMIN, &shutdown, |config| {
        config.durable_logs = false;
    })
    .await;
    let runner = slipway_runner::RunnerConfig {
        server: url.clone(),
        token: server.state.runner_token.clone(),
        name: "live-ui-runner".into(),
        labels: BTreeMap::new(),
        capacity: 1,
        work_root: data.path().join("workspaces"),
        poll_timeout: Duration::from_secs(5),
        notify_api: Default::default(),
        allow_exec: false,
    };
    let runner_shutdown = shutdown.clone();
    let runner_task = tokio::spawn(slipway_runner::run(runner, runner_shutdown));

    // The repository and a build, through the REST API.
    let http = reqwest::Client::new();
    let added = http
        .post(format!("{url}/api/repos"))
        .bearer_auth(ADMIN)
        .json(
            &json!({"name": REPO, "clone_url": clone_url, "provider": "generic",
                      "config_path": ".drone.yml"}),
        )
        .send()
        .await
        .expect("POST /api/repos");
    assert_eq!(added.status(), reqwest::StatusCode::CREATED, "repo added");
    let started = http
        .post(format!("{url}/api/repos/{REPO}/builds"))
        .bearer_auth(ADMIN)
        .json(&json!({"branch": "main"}))
        .send()
        .await
        .expect("POST builds");
    assert_eq!(started.status(), reqwest::StatusCode::CREATED, "build run");
    let build: Value = started.json().await.expect("the build as JSON");
    assert_eq!(build["number"], 1, "{build}");

    // Log in through the form.
    browser.log_in(&url, ADMIN).await;
    let client = browser.client();

    // The build page, opened while the build is pending or running.
    client
        .goto(&format!("{url}/repos/{REPO}/builds/1"))
        .await
        .expect("build page");
    browser
        .eval("window.__sameDocument = 'not reloaded'; return true;")
        .await;
    browser
        .wait_for(
            "the first lines of `count`",
            "return Array.from(document.querySelectorAll('.log[data-stage=\"1\"][data-step=\"count\"] .line .text'))
                 .filter(t => t.textContent.startsWith('line ')).length >= 3;",
        )
        .await;
    let first = lines_of(&browser.eval(LINES).await);
    let first_numbered = check_order(&first);
    assert!(
        first_numbered < 60,
        "only the start of the log is shown yet: {first:?}"
    );
    let running = browser
        .eval(
            "return {build: document.querySelector('#build-status .badge').dataset.status,
                     step: document.querySelector('.step[data-stage=\"1\"][data-step=\"count\"] .badge').dataset.status,
                     panel: document.querySelector('.log-panel.open') && document.querySelector('.log-panel.open').id,
                     cancel: document.getElementById('cancel') !== null};",
        )
        .await;
    assert_eq!(
        running,
        json!({"build": "running", "step": "running", "panel": "panel-1-count", "cancel": true}),
        "the page shows the step running, its panel open"
    );
    assert!(
        !running_step_containers().is_empty(),
        "the step's container runs"
    );

    // More lines come, live: same document, the earlier lines unchanged, all in order.
    let want = first_numbered + 10;
    browser
        .wait_for(
            "ten more lines, live",
            &format!(
                "return document.querySelectorAll('.log[data-stage=\"1\"][data-step=\"count\"] .line').length >= {};",
                first.len() + 10
            ),
        )
        .await;
    let later = lines_of(&browser.eval(LINES).await);
    let later_numbered = check_order(&later);
    assert!(later_numbered >= want, "{later:?}");
    assert_eq!(
        &later[..first.len()],
        &first[..],
        "lines shown are kept as they were"
    );
    assert_eq!(
        browser.eval("return window.__sameDocument || null;").await,
        json!("not reloaded"),
        "the lines came without a reload"
    );

    // The red line is a red span, without the escape codes.
    let red = browser
        .eval(
            "const s = document.querySelector('.log[data-stage=\"1\"][data-step=\"count\"] .line .text .ansi-fg-red');
             return s && {text: s.textContent, line: s.closest('.text').textContent,
                          color: getComputedStyle(s).color};",
        )
        .await;
    assert_eq!(red["text"], json!("red"), "{red}");
    assert_eq!(red["line"], json!("red"), "{red}");
    let color = red["color"].as_str().expect("a colour");
    let rgb: Vec<u32> = color
        .trim_start_matches("rgb(")
        .trim_end_matches(')')
        .split(',')
        .map(|c| c.trim().parse().expect("an rgb component"))
        .collect();
    assert!(rgb[0] > 180 && rgb[1] < 140 && rgb[2] < 140, "red: {color}");

    browser
        .screenshot(Path::new("/tmp/slipway-live-build.png"))
        .await;

    // Cancel.
    let clicked = now_ms();
    let click_instant = Instant::now();
    client
        .find(Locator::Id("cancel"))
        .await
        .expect("the cancel button")
        .click()
        .await
        .expect("press cancel");
    browser
        .wait_for(
            "the page to show the build killed",
            "const b = document.querySelector('#build-status .badge');
             const s = document.querySelector('.step[data-stage=\"1\"][data-step=\"count\"] .badge');
             return document.readyState === 'complete' && b && b.dataset.status === 'killed'
                 && s && s.dataset.status === 'killed' && document.getElementById('cancel') === null;",
        )
        .await;
    let shown = click_instant.elapsed();

    // The API agrees, and the build ended soon after the click.
    let deadline = Instant::now() + Duration::from_secs(15);
    let build = loop {
        let build = get_build(&http, &url).await;
        if build["finished"].is_i64() {
            break build;
        }
        assert!(
            Instant::now() < deadline,
            "the build did not finish: {build}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(build["status"], "killed", "{build:#}");
    assert_eq!(count_step(&build)["status"], "killed", "{build:#}");
    let finished = build["finished"].as_i64().expect("finished ms");
    assert!(
        finished - clicked < 10_000,
        "the build finished {} ms after the click",
        finished - clicked
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !running_step_containers().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the step's container still runs 10 s after the build was killed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stopped = click_instant.elapsed();
    assert!(
        stopped < Duration::from_secs(10),
        "container stopped {stopped:?} after the click"
    );

    // The stored log stops short of line 100; the page (reloaded by the form) shows it once.
    let raw = http
        .get(format!("{url}/api/repos/{REPO}/builds/1/logs/1/count"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("GET the raw log")
        .error_for_status()
        .expect("the raw log exists")
        .text()
        .await
        .expect("the raw log");
    let stored = raw.lines().filter(|l| l.starts_with("line ")).count();
    assert!(
        (later_numbered..100).contains(&stored),
        "stored {stored} numbered lines: {raw}"
    );
    let last = lines_of(&browser.eval(LINES).await);
    let last_numbered = check_order(&last);
    assert!(last_numbered >= later_numbered, "{last:?}");
    browser.eval("window.scrollTo(0, 0); return true;").await;
    browser
        .screenshot(Path::new("/tmp/slipway-live-build-killed.png"))
        .await;
    eprintln!(
        "live_ui: {first_numbered} then {later_numbered} lines live; killed shown {shown:?} and \
         container gone {stopped:?} after the click; build finished {} ms after it; {stored} \
         lines stored",
        finished - clicked
    );

    browser.close().await;
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), runner_task).await;
}
