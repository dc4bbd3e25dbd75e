//! The collector against a real Docker engine (skipped, with a message, without one):
//! partials and multi-line records stored once and in order, across an aborted collector
//! and a `docker restart`; opting in and out; a container removed while the collector
//! was down reported as a loss.

use std::sync::Arc;
use std::time::Duration;

use slipway_logs::ServiceKey;
use slipway_logs::collect::{Collector, CollectorOptions, Selection, StatusHandle};
use slipway_logs::store::{Query, Store, StoreOptions};
use tokio_util::sync::CancellationToken;

use crate::support::{Containers, docker, unique};

fn query(key: &ServiceKey) -> Query {
    Query {
        env: Some(key.env.clone()),
        stack: Some(key.stack.clone()),
        service: Some(key.service.clone()),
        ..Query::default()
    }
}

fn lines(store: &Store, key: &ServiceKey) -> Vec<String> {
    store
        .query(&query(key))
        .expect("query")
        .into_iter()
        .map(|(_, p)| p.record.line)
        .collect()
}

fn start(
    store: Arc<Store>,
    docker: bollard::Docker,
) -> (tokio::task::JoinHandle<()>, CancellationToken, StatusHandle) {
    let c = Collector::with_options(
        docker,
        store,
        Selection::default(),
        CollectorOptions {
            relist_every: Duration::from_millis(500),
            ..CollectorOptions::default()
        },
    );
    let status = c.status();
    let token = CancellationToken::new();
    let t = token.clone();
    (tokio::spawn(c.run(t)), token, status)
}

async fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let until = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(
            tokio::time::Instant::now() < until,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until nothing but `store` holds it (the aborted collector's tasks are gone).
async fn release(store: Arc<Store>) {
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while Arc::strong_count(&store) > 1 {
        assert!(
            tokio::time::Instant::now() < until,
            "the aborted collector still holds the store"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const N: usize = 300;

fn short(s: &str) -> String {
    if s.len() > 60 {
        format!("{}…({} bytes)", &s[..60], s.len())
    } else {
        s.to_owned()
    }
}

/// `got == want`, reported briefly: the lengths and the first difference.
fn assert_same(got: &[String], want: &[String]) {
    if got == want {
        return;
    }
    let i = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    panic!(
        "{} records, {} expected; first difference at {i}: {:?} vs {:?}; around: {:?}",
        got.len(),
        want.len(),
        got.get(i).map(|s| short(s)),
        want.get(i).map(|s| short(s)),
        got[i.saturating_sub(2)..(i + 3).min(got.len())]
            .iter()
            .map(|s| short(s))
            .collect::<Vec<_>>()
    );
}

fn expected() -> Vec<String> {
    let mut out = Vec::new();
    for i in 1..=N {
        out.push(format!("{i} line"));
        if i % 50 == 0 {
            out.push(format!(
                "{i} long {}\n  continuation of {i}",
                "x".repeat(20000)
            ));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_across_an_aborted_collector_and_a_docker_restart() {
    let Some(docker) = docker().await else { return };
    let stack = unique("once");
    let key = ServiceKey::new("test", &stack, "app");
    let script = format!(
        "i=0; while [ $i -lt {N} ]; do i=$((i+1)); echo \"$i line\"; \
         if [ $((i % 50)) = 0 ]; then printf '%s ' \"$i long\"; head -c 20000 /dev/zero | tr '\\0' x; echo; echo \"  continuation of $i\"; fi; \
         if [ $((i % 100)) = 0 ]; then sleep 1; fi; done; exec sleep 1000"
    );
    let mut cs = Containers::new();
    let id = cs.run(
        &[
            ("io.slipway.env", "test"),
            ("io.slipway.stack", &stack),
            ("io.slipway.service", "app"),
            ("io.slipway.revision", "r1"),
            ("io.slipway.replica", "1"),
            ("io.slipway.logs.multiline", r"^\d"),
            ("io.slipway.logs.multiline-timeout", "2s"),
        ],
        &[],
        &script,
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(Store::open(dir.path(), StoreOptions::default()).expect("open"));
    let (task, _token, _) = start(store.clone(), docker.clone());
    // Mid-stream: some stored, not all.
    wait_for("the first records", 30, || !lines(&store, &key).is_empty()).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    task.abort();
    let _ = task.await;
    let got = lines(&store, &key);
    assert!(
        got.len() < expected().len(),
        "the collector was to be aborted mid-stream"
    );
    release(store).await;

    let store = Arc::new(Store::open(dir.path(), StoreOptions::default()).expect("reopen"));
    let (task, token, status) = start(store.clone(), docker.clone());
    let want = expected();
    wait_for("every record", 60, || {
        lines(&store, &key).len() >= want.len()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_same(&lines(&store, &key), &want);
    let recs = store.query(&query(&key)).expect("query");
    assert!(recs.iter().all(|(_, p)| p.record.revision.as_deref() == Some("r1") && p.record.replica == Some(1)));

    // A restart runs the script again: its output is stored after, once.
    cs.docker(&["restart", "-t", "1", &id]);
    let twice: Vec<String> = want.iter().chain(want.iter()).cloned().collect();
    wait_for("the records after the restart", 60, || {
        lines(&store, &key).len() >= twice.len()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_same(&lines(&store, &key), &twice);
    let st = status.get();
    let c = st
        .containers
        .iter()
        .find(|c| c.id == id)
        .expect("the container in the status");
    assert_eq!(c.service, key);
    assert!(c.lines >= want.len() as u64);
    token.cancel();
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("clean shutdown")
        .expect("join");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opting_in_and_out() {
    let Some(docker) = docker().await else { return };
    let stack = unique("opt");
    let mut cs = Containers::new();
    let script = "echo hello; exec sleep 1000";
    let ours = |svc: &'static str| {
        vec![
            ("io.slipway.env", "test"),
            ("io.slipway.stack", stack.as_str()),
            ("io.slipway.service", svc),
            ("io.slipway.revision", "r1"),
        ]
    };
    let mut off = ours("off");
    off.push(("slipway.logs", "false"));
    cs.run(&off, &[], script);
    cs.run(&ours("ignored"), &["LOGSPOUT=ignore"], script);
    let opted = cs.run(
        &[
            ("slipway.logs", "true"),
            ("com.docker.compose.project", &stack),
            ("com.docker.compose.service", "opted"),
        ],
        &[],
        script,
    );
    cs.run(&ours("on"), &[], script);
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(Store::open(dir.path(), StoreOptions::default()).expect("open"));
    let (task, token, _) = start(store.clone(), docker);
    let opted_key = ServiceKey::new("-", &stack, "opted");
    let on = ServiceKey::new("test", &stack, "on");
    wait_for("the opted-in container", 30, || {
        lines(&store, &opted_key) == ["hello"] && lines(&store, &on) == ["hello"]
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(lines(&store, &ServiceKey::new("test", &stack, "off")).is_empty());
    assert!(lines(&store, &ServiceKey::new("test", &stack, "ignored")).is_empty());
    use slipway_logs::LogSource;
    assert_eq!(
        store.container(&opted_key, &opted[..12]).map(|c| c.id),
        Some(opted.clone())
    );
    token.cancel();
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("clean shutdown")
        .expect("join");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_containers_are_drained_and_removed_ones_reported_lost() {
    let Some(docker) = docker().await else { return };
    let stack = unique("gone");
    let mut cs = Containers::new();
    let labels = |svc: &'static str| {
        vec![
            ("io.slipway.env", "test"),
            ("io.slipway.stack", stack.as_str()),
            ("io.slipway.service", svc),
            ("io.slipway.revision", "r1"),
        ]
    };
    let gone = cs.run(&labels("gone"), &[], "echo first; exec sleep 1000");
    let stopped = cs.run(
        &labels("stopped"),
        &[],
        "echo one; read x; echo two; exec sleep 1000",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let gone_key = ServiceKey::new("test", &stack, "gone");
    let stopped_key = ServiceKey::new("test", &stack, "stopped");
    {
        let store = Arc::new(Store::open(dir.path(), StoreOptions::default()).expect("open"));
        let (task, token, _) = start(store.clone(), docker.clone());
        wait_for("both containers' first lines", 30, || {
            lines(&store, &gone_key) == ["first"] && lines(&store, &stopped_key) == ["one"]
        })
        .await;
        token.cancel();
        tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .expect("clean shutdown")
            .expect("join");
        release(store).await;
    }
    // While the collector is down: one removed, one writes more and stops.
    cs.docker(&["rm", "-f", &gone]);
    cs.docker_stdin(&["attach", &stopped], "go\n");
    cs.docker(&["stop", "-t", "1", &stopped]);
    let store = Arc::new(Store::open(dir.path(), StoreOptions::default()).expect("reopen"));
    let (task, token, status) = start(store.clone(), docker);
    wait_for("the stopped container's remaining line", 30, || {
        lines(&store, &stopped_key) == ["one", "two"]
    })
    .await;
    wait_for("the loss", 10, || {
        status
            .get()
            .losses
            .iter()
            .any(|l| l.container == gone && l.service == gone_key)
    })
    .await;
    token.cancel();
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("clean shutdown")
        .expect("join");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_is_stored_once_and_in_order() {
    let Some(docker) = docker().await else { return };
    const LINES: usize = 200_000;
    let stack = unique("burst");
    let key = ServiceKey::new("test", &stack, "burst");
    let mut cs = Containers::new();
    cs.run(
        &[
            ("io.slipway.env", "test"),
            ("io.slipway.stack", &stack),
            ("io.slipway.service", "burst"),
            ("io.slipway.revision", "r1"),
        ],
        &[],
        &format!("seq 1 {LINES}; exec sleep 1000"),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(Store::open(dir.path(), StoreOptions::default()).expect("open"));
    let started = std::time::Instant::now();
    let (task, token, status) = start(store.clone(), docker);
    use slipway_logs::LogSource;
    let count = || {
        status
            .get()
            .containers
            .iter()
            .filter(|c| c.service == key)
            .map(|c| c.lines)
            .sum::<u64>()
    };
    wait_for("the burst", 120, || count() >= LINES as u64).await;
    eprintln!("{LINES} lines collected in {:?}", started.elapsed());
    let got = lines(&store, &key);
    assert_eq!(got.len(), LINES);
    assert!(
        got.iter()
            .enumerate()
            .all(|(i, l)| *l == (i + 1).to_string()),
        "in order, once"
    );
    assert_eq!(store.read(&key, 0, 10).expect("read").records.len(), 10);
    token.cancel();
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("clean shutdown")
        .expect("join");
}
