//! The dispatcher over an in-memory outbox: rate limits queue and digest instead of
//! dropping, backoff is stored on the row, and one failing channel does not hold another.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use slipway_notify::outbox::{
    AttemptRecord, Dispatcher, Next, Outbox, OutboxError, Pending, RateLimit,
};
use slipway_notify::{
    Channel, ChannelConfig, Message, RetryPolicy, WeChatRobot, WeChatRobotFormat,
};

use crate::support::*;

#[derive(Debug, Clone)]
struct Row {
    channel: i64,
    pending: Pending,
    next_at: i64,
    state: Option<Next>,
    attempts: Vec<AttemptRecord>,
}

/// The outbox as a list of rows.
#[derive(Debug, Default)]
struct Memory {
    rows: Mutex<BTreeMap<i64, Row>>,
}

impl Memory {
    fn push(&self, id: i64, channel: i64, title: &str) {
        self.rows.lock().expect("lock").insert(
            id,
            Row {
                channel,
                pending: Pending {
                    id,
                    attempts: 0,
                    message: Message::new(title, format!("text of {title}")),
                },
                next_at: 0,
                state: None,
                attempts: Vec::new(),
            },
        );
    }

    fn rows(&self) -> Vec<Row> {
        self.rows.lock().expect("lock").values().cloned().collect()
    }
}

impl Outbox for Memory {
    async fn due(&self, channel: i64, now: i64, limit: usize) -> Result<Vec<Pending>, OutboxError> {
        Ok(self
            .rows
            .lock()
            .expect("lock")
            .values()
            .filter(|r| r.channel == channel && r.state.is_none() && r.next_at <= now)
            .take(limit)
            .map(|r| r.pending.clone())
            .collect())
    }

    async fn next_due(&self, channel: i64) -> Result<Option<i64>, OutboxError> {
        Ok(self
            .rows
            .lock()
            .expect("lock")
            .values()
            .filter(|r| r.channel == channel && r.state.is_none())
            .map(|r| r.next_at)
            .min())
    }

    async fn record(&self, ids: &[i64], attempt: &AttemptRecord) -> Result<(), OutboxError> {
        let mut rows = self.rows.lock().expect("lock");
        for id in ids {
            let row = rows.get_mut(id).expect("row");
            row.attempts.push(attempt.clone());
            row.pending.attempts += 1;
            match attempt.next {
                Next::RetryAt(at) => row.next_at = at,
                other => row.state = Some(other),
            }
        }
        Ok(())
    }
}

fn robot(name: &str) -> Channel {
    Channel::new(
        name,
        ChannelConfig::WeChatWorkRobot(WeChatRobot {
            key: "robot-key".into(),
            format: WeChatRobotFormat::Markdown,
            mentioned: Vec::new(),
            mentioned_mobiles: Vec::new(),
        }),
    )
}

async fn wait_until(what: &str, timeout: Duration, check: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_full_rate_window_queues_and_sends_what_piled_up_as_one_digest() {
    let stand_in =
        StandIn::start(|_| Reply::json(200, json!({"errcode": 0, "errmsg": "ok"}))).await;
    let memory = Arc::new(Memory::default());
    let dispatcher = Dispatcher::new(Arc::new(notifier()), memory.clone(), RetryPolicy::default());
    for id in 1..=6 {
        memory.push(id, 1, &format!("build #{id} failed"));
    }
    // Two a second: the first two go alone, the other four wait and go as one.
    let limit = RateLimit {
        max: 2,
        per: Duration::from_secs(1),
    };
    let started = Instant::now();
    dispatcher.start_limited(1, robot("robot").with_api_base(stand_in.url()), Some(limit));
    wait_until("every row delivered", Duration::from_secs(10), || {
        memory
            .rows()
            .iter()
            .all(|r| r.state == Some(Next::Delivered))
    })
    .await;
    let posts = stand_in.requests_to("/cgi-bin/webhook/send");
    assert_eq!(posts.len(), 3, "two alone and one digest");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "the window was waited for"
    );
    let digest = posts[2].json()["markdown"]["content"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(digest.contains("4 notifications"), "{digest}");
    for n in 3..=6 {
        assert!(digest.contains(&format!("build #{n} failed")), "{digest}");
    }
    // Each merged row records the one attempt that carried it.
    for row in memory.rows().iter().filter(|r| r.pending.id >= 3) {
        assert_eq!(row.attempts.len(), 1);
        assert_eq!(row.attempts[0].merged, 4);
    }
    dispatcher.shutdown().await;
}

#[tokio::test]
async fn a_failing_channel_backs_off_on_its_row_and_does_not_hold_another() {
    let failing =
        StandIn::start(|_| Reply::json(503, json!({"errcode": -1, "errmsg": "system busy"}))).await;
    let working = StandIn::start(|_| Reply::json(200, json!({"errcode": 0, "errmsg": "ok"}))).await;
    let memory = Arc::new(Memory::default());
    let retry = RetryPolicy {
        attempts: 3,
        base: Duration::from_millis(200),
        max: Duration::from_secs(1),
        max_retry_after: Duration::from_secs(1),
    };
    let dispatcher = Dispatcher::new(Arc::new(notifier()), memory.clone(), retry);
    memory.push(1, 1, "to the failing one");
    for id in 2..=11 {
        memory.push(id, 2, &format!("to the working one {id}"));
    }
    dispatcher.start_limited(1, robot("failing").with_api_base(failing.url()), None);
    dispatcher.start_limited(2, robot("working").with_api_base(working.url()), None);
    wait_until("the working channel's rows", Duration::from_secs(5), || {
        memory
            .rows()
            .iter()
            .filter(|r| r.channel == 2)
            .all(|r| r.state == Some(Next::Delivered))
    })
    .await;
    assert_eq!(working.requests().len(), 10);
    wait_until("the failing row given up", Duration::from_secs(5), || {
        memory.rows()[0].state == Some(Next::Failed)
    })
    .await;
    let failed = &memory.rows()[0];
    assert_eq!(failed.attempts.len(), 3, "{failed:#?}");
    assert!(
        failed
            .attempts
            .iter()
            .all(|a| !a.ok && a.status == Some(503))
    );
    assert_eq!(failing.requests().len(), 3);
    dispatcher.shutdown().await;
}
