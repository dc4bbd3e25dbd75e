//! Routes into a real rsyslogd over RELP and TCP: every line arrives, across rsyslogd's
//! SIGKILL and restart and the worker's own abort.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use slipway_logs::route::{RouteHandle, RouteUri, spawn_route};
use slipway_logs::{LogSource, ServiceKey, Stream};
use tokio::sync::watch;

use crate::route_support::{MemSource, Rsyslog, have_rsyslog, meta, record, wait_for};

const N: usize = 20_000;
const T0: i64 = 1_796_682_946_000_000_000;

/// N numbered records over three services and four containers; every 97th has three
/// lines, every 1013th is above 16 KiB. Returns the source and how many lines each has.
fn numbered() -> (Arc<MemSource>, BTreeMap<usize, usize>) {
    let src = MemSource::new();
    let containers = [
        (
            ServiceKey::new("prod", "shop", "web"),
            meta("aaa111", "shop-web-1", &[]),
        ),
        (
            ServiceKey::new("prod", "shop", "web"),
            meta("aaa222", "shop-web-2", &[]),
        ),
        (
            ServiceKey::new("prod", "shop", "worker"),
            meta("bbb111", "shop-worker-1", &[]),
        ),
        (
            ServiceKey::new("staging", "blog", "app"),
            meta("ccc111", "blog-app-1", &[]),
        ),
    ];
    for (_, m) in &containers {
        src.add_container(m.clone());
    }
    let mut parts = BTreeMap::new();
    for i in 0..N {
        let (key, m) = &containers[i % containers.len()];
        let stream = if i % 5 == 0 {
            Stream::Stderr
        } else {
            Stream::Stdout
        };
        let line = if i % 97 == 0 {
            parts.insert(i, 3);
            format!("rec {i:05} part 0 \"q\" $HOME\nrec {i:05} part 1 [x]\nrec {i:05} part 2 \\end")
        } else if i % 1013 == 0 {
            parts.insert(i, 1);
            format!("rec {i:05} part 0 {}", "x".repeat(20_000))
        } else {
            parts.insert(i, 1);
            format!("rec {i:05} part 0 tab\there $PATH")
        };
        src.push(key, record(m, T0 + i as i64 * 1000, stream, &line));
    }
    (src, parts)
}

/// Per (record, part): how many times it arrived.
fn tally(lines: &[String]) -> BTreeMap<(usize, usize), usize> {
    let mut seen = BTreeMap::new();
    for l in lines {
        let mut w = l.trim_start().split(' ');
        if let (Some("rec"), Some(n), Some("part"), Some(p)) =
            (w.next(), w.next(), w.next(), w.next())
            && let (Ok(n), Ok(p)) = (n.parse::<usize>(), p.parse::<usize>())
        {
            *seen.entry((n, p)).or_insert(0) += 1;
        }
    }
    seen
}

/// Asserts no line is missing; returns how many arrived more than once.
fn check(what: &str, expected: &BTreeMap<usize, usize>, lines: &[String]) -> usize {
    let seen = tally(lines);
    let mut missing = Vec::new();
    let mut dups = 0;
    for (n, parts) in expected {
        for p in 0..*parts {
            match seen.get(&(*n, p)).copied().unwrap_or(0) {
                0 => missing.push((*n, p)),
                1 => {}
                k => dups += k - 1,
            }
        }
    }
    assert!(
        missing.is_empty(),
        "{what}: {} lines missing, first {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    eprintln!("{what}: every line arrived; {dups} duplicates");
    dups
}

/// A worker for `uri` over `src`, its cursors in `cursors`, stopped by `stop`.
fn spawn(
    uri: RouteUri,
    src: &Arc<MemSource>,
    cursors: &Path,
    stop: watch::Receiver<bool>,
) -> RouteHandle {
    spawn_route(
        uri,
        src.clone() as Arc<dyn LogSource>,
        cursors,
        "node1",
        stop,
    )
    .expect("spawn")
}

/// [`spawn`] of the URI `uri`, with the sender that stops it.
fn route_over(
    uri: &str,
    src: &Arc<MemSource>,
    cursors: &Path,
) -> (RouteHandle, watch::Sender<bool>) {
    let (tx, rx) = watch::channel(false);
    let uri = RouteUri::parse(uri).expect("uri");
    (spawn(uri, src, cursors, rx), tx)
}

fn caught_up(h: &RouteHandle) -> bool {
    let s = h.status();
    !s.lag.is_empty() && s.lag.iter().all(|l| l.bytes == 0)
}

/// The escaped line, for checking that rsyslog kept `"`, `$`, `\`, tabs and newlines.
fn has_exact(lines: &[String], want: &str) -> bool {
    lines.iter().any(|l| l.trim_start() == want)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relp_into_rsyslog_every_line_once() {
    if !have_rsyslog("relp_into_rsyslog_every_line_once") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let rs = Rsyslog::start(dir.path(), true);
    let (src, expected) = numbered();
    let (h, tx) = route_over(
        &format!("relp://127.0.0.1:{}?window=64", rs.port),
        &src,
        &dir.path().join("cursors"),
    );
    wait_for("every record acked", Duration::from_secs(180), || {
        caught_up(&h)
    })
    .await;
    let s = h.status();
    assert_eq!(s.delivered, N as u64, "{s:?}");
    assert_eq!(s.rejected, 0);
    assert!(s.connected);
    let lines = rs.lines();
    assert_eq!(
        check("relp", &expected, &lines),
        0,
        "RELP with rsyslogd up: no duplicate"
    );
    assert!(
        has_exact(&lines, "rec 00001 part 0 tab\there $PATH"),
        "tabs and $ kept"
    );
    assert!(has_exact(&lines, "rec 00097 part 1 [x]"));
    assert!(has_exact(&lines, "rec 00194 part 2 \\end"));
    tx.send(true).expect("shutdown");
    tokio::time::timeout(Duration::from_secs(10), h.join())
        .await
        .expect("graceful close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relp_survives_rsyslog_sigkill_and_restart() {
    if !have_rsyslog("relp_survives_rsyslog_sigkill_and_restart") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rs = Rsyslog::start(dir.path(), true);
    let (src, expected) = numbered();
    let (h, _tx) = route_over(
        &format!("relp://127.0.0.1:{}", rs.port),
        &src,
        &dir.path().join("cursors"),
    );
    wait_for("a part delivered", Duration::from_secs(60), || {
        rs.lines().len() > 4000
    })
    .await;
    rs.kill();
    tokio::time::sleep(Duration::from_millis(700)).await;
    wait_for(
        "the route to see the receiver down",
        Duration::from_secs(30),
        || h.status().last_error.is_some(),
    )
    .await;
    eprintln!("while down: {:?}", h.status().last_error);
    rs.restart();
    wait_for("every record acked", Duration::from_secs(180), || {
        caught_up(&h)
    })
    .await;
    let dups = check("relp across SIGKILL", &expected, &rs.lines());
    eprintln!(
        "relp across rsyslogd SIGKILL: {dups} duplicates (unacked frames rsyslogd had written)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relp_worker_aborted_and_restarted_over_its_cursors() {
    if !have_rsyslog("relp_worker_aborted_and_restarted_over_its_cursors") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let rs = Rsyslog::start(dir.path(), true);
    let (src, expected) = numbered();
    let cursors = dir.path().join("cursors");
    let uri = RouteUri::parse(&format!("relp://127.0.0.1:{}", rs.port)).expect("uri");
    let (_tx, rx) = watch::channel(false);
    let h = spawn(uri.clone(), &src, &cursors, rx.clone());
    wait_for("a part delivered", Duration::from_secs(60), || {
        rs.lines().len() > 5000
    })
    .await;
    h.abort();
    let first = h.status().delivered;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let h = spawn(uri, &src, &cursors, rx);
    wait_for("every record acked", Duration::from_secs(180), || {
        caught_up(&h)
    })
    .await;
    let second = h.status().delivered;
    assert!(
        second < N as u64,
        "the second worker resumed from the cursor ({first} + {second})"
    );
    let dups = check("relp across worker abort", &expected, &rs.lines());
    eprintln!(
        "worker aborted after {first} delivered, the next delivered {second}: {dups} duplicates"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syslog_tcp_into_rsyslog_at_least_once() {
    if !have_rsyslog("syslog_tcp_into_rsyslog_at_least_once") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let rs = Rsyslog::start(dir.path(), false);
    let (src, expected) = numbered();
    let (h, _tx) = route_over(
        &format!("syslog+tcp://127.0.0.1:{}", rs.port),
        &src,
        &dir.path().join("cursors"),
    );
    wait_for("every record written", Duration::from_secs(180), || {
        caught_up(&h)
    })
    .await;
    let total: usize = expected.values().sum();
    wait_for(
        "rsyslogd to write everything",
        Duration::from_secs(60),
        || tally(&rs.lines()).len() >= total,
    )
    .await;
    let dups = check("syslog+tcp", &expected, &rs.lines());
    eprintln!("syslog+tcp (octet counting): {dups} duplicates");
}
