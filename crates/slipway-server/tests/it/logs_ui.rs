//! The service logs page against the real thing: the server in-process with its collector
//! on the real Docker engine, a container that opts in (`slipway.logs=true`) printing a
//! numbered tick every 400 ms, and the page's live tail in headless Chromium.
//!
//! It proves that each new tick shows on the page within a second of the engine's own
//! timestamp for it (read with `docker logs --timestamps`), without a reload; that Pause
//! holds new records (counted, not shown) and Resume shows them in order; that a search
//! shows only matching records with the match highlighted; and that the API's NDJSON
//! answer has the same records.

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fantoccini::Locator;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::browser::Browser;
use super::serve;

const ADMIN: &str = "logs-ui-admin-token-0123456789abcdef";

fn test_image() -> String {
    std::env::var("SLIPWAY_TEST_IMAGE").unwrap_or_else(|_| "slipway-test/busybox:latest".into())
}

/// The container, removed when the test ends.
struct Ticker(String);

impl Drop for Ticker {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
    }
}

/// Unix nanoseconds of each tick the engine stored: `tick N` → its timestamp.
fn engine_times(container: &str) -> Vec<(u64, i128)> {
    let out = Command::new("docker")
        .args(["logs", "--timestamps", container])
        .output()
        .expect("docker logs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (ts, text) = l.split_once(' ')?;
            let n = text.strip_prefix("tick ")?.parse().ok()?;
            let t = humantime::parse_rfc3339(ts).ok()?;
            let ns = t.duration_since(UNIX_EPOCH).ok()?.as_nanos();
            Some((n, i128::try_from(ns).ok()?))
        })
        .collect()
}

fn now_ns() -> i128 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    i128::try_from(d.as_nanos()).expect("fits")
}

/// The records' texts on the page, as a JavaScript expression.
const TICKS_EXPR: &str =
    "Array.from(document.querySelectorAll('#service-log .record .text')).map(t => t.textContent)";

fn numbers(v: &Value) -> Vec<u64> {
    v.as_array()
        .expect("an array")
        .iter()
        .filter_map(|t| t.as_str()?.strip_prefix("tick ")?.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_tail_shows_new_records_within_a_second_pauses_and_searches() {
    let Some(browser) = Browser::start(1280, 900).await else {
        return;
    };
    if !Command::new("docker")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        eprintln!("skipping: no Docker engine");
        return;
    }
    let ticks = format!("return {TICKS_EXPR};");
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let server = serve(ADMIN, &shutdown, |c| c.service_logs.collect = true).await;
    let url = server.url.clone();
    let name = format!("slipway-logs-ui-{}", std::process::id());
    let run = Command::new("docker")
        .args(["run", "-d", "--name", &name, "--label", "slipway.logs=true"])
        .arg(test_image())
        .args([
            "sh",
            "-c",
            "i=0; while true; do i=$((i+1)); echo \"tick $i\"; sleep 0.4; done",
        ])
        .output()
        .expect("docker run");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let _ticker = Ticker(name.clone());

    browser.log_in(&url, ADMIN).await;
    let client = browser.client();
    let page = format!("{url}/logs/-/-?service={name}");
    client.goto(&page).await.expect("the logs page");
    browser
        .eval("window.__sameDocument = 'not reloaded'; return true;")
        .await;
    browser
        .wait_for(
            "the first ticks on the page",
            &format!("return {TICKS_EXPR}.length > 2;"),
        )
        .await;

    // Each new tick: on the page within a second of the engine's timestamp.
    let mut seen_at: Vec<(u64, i128)> = Vec::new();
    let mut last = numbers(&browser.eval(&ticks).await)
        .last()
        .copied()
        .unwrap_or(0);
    let watch_until = now_ns() + 4_000_000_000;
    while now_ns() < watch_until {
        let shown = numbers(&browser.eval(&ticks).await);
        let t = now_ns();
        for n in shown.iter().filter(|n| **n > last) {
            seen_at.push((*n, t));
        }
        last = shown.last().copied().unwrap_or(last);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let engine = engine_times(&name);
    assert!(seen_at.len() >= 6, "new ticks shown live: {seen_at:?}");
    for (n, shown) in &seen_at {
        let (_, stored) = engine
            .iter()
            .find(|(e, _)| e == n)
            .unwrap_or_else(|| panic!("tick {n} is in the engine's log"));
        let delay_ms = (shown - stored) / 1_000_000;
        assert!(
            delay_ms < 1000,
            "tick {n} showed {delay_ms} ms after the engine had it"
        );
    }
    let in_order = numbers(&browser.eval(&ticks).await);
    assert!(
        in_order.windows(2).all(|w| w[1] == w[0] + 1),
        "each tick once, in order: {in_order:?}"
    );

    // Pause holds new records; Resume shows them, in order.
    client
        .find(Locator::Id("logs-pause"))
        .await
        .expect("the pause button")
        .click()
        .await
        .expect("click");
    let paused = numbers(&browser.eval(&ticks).await);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let still = numbers(&browser.eval(&ticks).await);
    assert_eq!(paused, still, "nothing is added while paused");
    let held = browser
        .eval("return Number(document.querySelector('#logs-held .count').textContent);")
        .await;
    assert!(
        held.as_f64().unwrap_or(0.0) >= 2.0,
        "held records are counted: {held}"
    );
    client
        .find(Locator::Id("logs-pause"))
        .await
        .expect("the resume button")
        .click()
        .await
        .expect("click");
    let resumed = numbers(&browser.eval(&ticks).await);
    assert!(resumed.len() > still.len(), "{resumed:?}");
    assert!(resumed.windows(2).all(|w| w[1] == w[0] + 1), "{resumed:?}");
    assert_eq!(
        browser.eval("return window.__sameDocument;").await,
        Value::from("not reloaded")
    );

    // A search: only ticks 1x, each with its match marked.
    client
        .goto(&format!("{page}&since=1h&grep=tick%201%5B0-9%5D%24"))
        .await
        .expect("the search");
    let found = browser
        .wait_for(
            "the search's records",
            &format!("const t = {TICKS_EXPR}; return t.length >= 10 ? t : null;"),
        )
        .await;
    let found = numbers(&found);
    assert_eq!(
        &found[..10],
        &(10..20).collect::<Vec<u64>>()[..],
        "{found:?}"
    );
    let marks = browser
        .eval("return Array.from(document.querySelectorAll('#service-log mark')).map(m => m.textContent).slice(0, 3);")
        .await;
    assert_eq!(marks, serde_json::json!(["tick 10", "tick 11", "tick 12"]));

    // The API's NDJSON answer: the same records, with their service and stream.
    let body = reqwest::Client::new()
        .get(format!(
            "{url}/api/logs/-/-?service={name}&since=1h&grep=tick%2010%24"
        ))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("GET /api/logs")
        .text()
        .await
        .expect("body");
    let records: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON record"))
        .collect();
    assert_eq!(records.len(), 1, "{body}");
    assert_eq!(records[0]["line"], "tick 10");
    assert_eq!(records[0]["service"], name.as_str());
    assert_eq!(records[0]["stream"], "stdout");
    browser.close().await;
}
