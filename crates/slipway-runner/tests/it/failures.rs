//! The server failing: 5xx answers, lost acknowledgements, connections dropped for seconds.
//! Nothing may be lost or duplicated, and a resent batch must be the same bytes.

use std::collections::HashSet;
use std::time::Duration;

use axum::http::StatusCode;
use slipway_engine::Status;
use slipway_runner::protocol::WorkspaceSpec;

use crate::fake::{self, Script, summary};
use crate::proxy::Proxy;
use crate::support::{lease, plan, start_runner};

/// The lines a step of `bursts` of `seq` commands separated by short sleeps prints.
fn burst_commands(bursts: u64, size: u64) -> (Vec<String>, Vec<String>) {
    let mut commands = Vec::new();
    let mut expected = Vec::new();
    for b in 0..bursts {
        if b > 0 {
            commands.push("sleep 0.3".to_string());
            expected.push("+ sleep 0.3".to_string());
        }
        let (from, to) = (b * size + 1, (b + 1) * size);
        commands.push(format!("seq {from} {to}"));
        expected.push(format!("+ seq {from} {to}"));
        expected.extend((from..=to).map(|i| i.to_string()));
    }
    (commands, expected)
}

#[tokio::test]
async fn server_errors_and_lost_acks_lose_and_duplicate_nothing() {
    let (fake, addr) = fake::start(Script {
        // The second batch fails three times; the third is taken but its ack is lost twice.
        fail_events: HashSet::from([1, 2, 3]),
        fail_after_processing: HashSet::from([5, 6]),
        ..Script::default()
    })
    .await;
    let (commands, expected) = burst_commands(4, 300);
    let commands: Vec<&str> = commands.iter().map(String::as_str).collect();
    fake.push_lease(lease(
        plan(&[("burst", &commands)], false),
        WorkspaceSpec::Empty,
    ));
    let runner = start_runner(addr);
    let done = fake.wait_done(Duration::from_secs(120)).await;
    runner.stop().await.expect("the runner stops cleanly");

    assert_eq!(done.status, Status::Success);
    let record = fake.record();
    assert!(record.problems.is_empty(), "{}", summary(&record));
    let statuses: Vec<u16> = record.requests.iter().map(|r| r.status.as_u16()).collect();
    assert!(statuses.len() >= 8, "{statuses:?}");
    assert_eq!(&statuses[..8], [200, 500, 500, 500, 200, 500, 500, 200]);
    // Resends are byte for byte the batch that failed.
    assert_eq!(record.requests[1].body, record.requests[4].body);
    assert_eq!(record.requests[5].body, record.requests[7].body);
    assert_ne!(record.requests[0].body, record.requests[1].body);
    // The lost acks made the server see lines twice; it kept them once.
    assert!(
        record.duplicates.get("burst").copied().unwrap_or(0) > 0,
        "{}",
        summary(&record)
    );
    drop(record);
    assert!(
        fake.lines("burst") == expected,
        "lines differ: {:?}",
        fake.lines("burst")
    );
}

#[tokio::test]
async fn an_outage_of_seconds_loses_and_duplicates_nothing() {
    let (fake, upstream) = fake::start(Script {
        heartbeat_secs: 1,
        ..Script::default()
    })
    .await;
    let proxy = Proxy::start(upstream).await;
    let count = 300;
    fake.push_lease(lease(
        plan(
            &[(
                "ticker",
                &[&format!(
                    "i=1; while [ $i -le {count} ]; do echo tick $i; i=$((i+1)); sleep 0.01; done"
                )],
            )],
            false,
        ),
        WorkspaceSpec::Empty,
    ));
    let runner = start_runner(proxy.addr);
    fake.wait_for("the first ticks", Duration::from_secs(60), |r| {
        r.logs.get("ticker").is_some_and(|l| l.len() > 10)
    })
    .await;
    // The server goes away (connections cut, new ones refused) and comes back.
    proxy.set_down(true);
    let during = fake.record().requests.len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        fake.record().requests.len(),
        during,
        "nothing gets through while down"
    );
    proxy.set_down(false);
    let done = fake.wait_done(Duration::from_secs(120)).await;
    runner.stop().await.expect("the runner stops cleanly");

    assert_eq!(done.status, Status::Success);
    let record = fake.record();
    assert!(record.problems.is_empty(), "{}", summary(&record));
    assert!(record.requests.iter().all(|r| r.status == StatusCode::OK));
    drop(record);
    let mut expected = vec![format!(
        "+ i=1; while [ $i -le {count} ]; do echo tick $i; i=$((i+1)); sleep 0.01; done"
    )];
    expected.extend((1..=count).map(|i| format!("tick {i}")));
    assert!(
        fake.lines("ticker") == expected,
        "lines differ: {:?}",
        fake.lines("ticker")
    );
}
