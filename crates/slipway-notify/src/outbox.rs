//! Deliveries from a persisted outbox: one worker per channel takes what is due, respects
//! the service's documented rate limit by waiting (never by dropping) and merges what
//! piled up meanwhile into one digest message, sends one attempt at a time, and records
//! every attempt before it looks at the next one.
//!
//! The store is the caller's ([`Outbox`]: the server keeps it in its database), so a
//! delivery survives a restart: a pending row is sent by the next process, once; only an
//! attempt the service accepted in the instant before the process died, unrecorded, can
//! go again (WeChat Work's duplicate check and Discord's `wait=true` absorb even that).
//!
//! Invariants:
//! - **One failing channel never delays another**: each channel has its own task; a slow
//!   or failing service only holds its own queue.
//! - **Backoff is stored, not slept**: a retry is a row due later (`next_at`), so a restart
//!   keeps its schedule, and newer rows are not held behind it. What is due goes oldest
//!   first.
//! - **Rate limits queue**: while a channel's window has room, deliveries go one by one;
//!   when it is full the worker waits for a slot, and everything that is due then goes as
//!   one [`digest`] message (at most [`DIGEST_MAX`] rows), recorded on each merged row.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::channels::Channel;
use crate::notifier::{Notifier, RetryPolicy};
use crate::{Kind, Message, Status};

/// What an [`Outbox`] call failed with (the store's own error, as text).
pub type OutboxError = Box<dyn std::error::Error + Send + Sync>;

/// A delivery waiting to be sent.
#[derive(Debug, Clone)]
pub struct Pending {
    pub id: i64,
    /// Attempts made so far.
    pub attempts: u32,
    pub message: Message,
}

/// What happens to a delivery after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Delivered,
    /// Due again at this unix millisecond.
    RetryAt(i64),
    /// Given up: a final refusal, or the last attempt failed.
    Failed,
}

/// One attempt, as recorded on every delivery it carried.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    /// 1 for the first attempt.
    pub number: u32,
    /// Unix milliseconds when it was sent.
    pub at: i64,
    pub latency: Duration,
    /// The HTTP status, when there was an answer.
    pub status: Option<u16>,
    /// The service's answer (masked), or the error.
    pub answer: String,
    pub ok: bool,
    pub next: Next,
    /// How many deliveries this attempt carried (more than one: a digest).
    pub merged: usize,
}

/// Where deliveries wait. Implemented by the server over its database.
pub trait Outbox: Send + Sync + 'static {
    /// Pending deliveries of `channel` due at `now` (unix ms), oldest first, at most `limit`.
    fn due(
        &self,
        channel: i64,
        now: i64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Pending>, OutboxError>> + Send;

    /// The earliest `next_at` of the channel's pending deliveries.
    fn next_due(
        &self,
        channel: i64,
    ) -> impl Future<Output = Result<Option<i64>, OutboxError>> + Send;

    /// Records `attempt` on each of `ids` and moves them on as `attempt.next` says.
    fn record(
        &self,
        ids: &[i64],
        attempt: &AttemptRecord,
    ) -> impl Future<Output = Result<(), OutboxError>> + Send;
}

/// A service's documented posting limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub max: usize,
    pub per: Duration,
}

/// The limits the services document for one robot, webhook or chat.
pub fn rate_limit(kind: Kind) -> Option<RateLimit> {
    let per_minute = |max| {
        Some(RateLimit {
            max,
            per: Duration::from_secs(60),
        })
    };
    match kind {
        // WeChat Work group robots and DingTalk custom robots: 20 messages a minute (DingTalk
        // mutes a robot for 10 minutes past that).
        Kind::WeChatWorkRobot | Kind::DingTalk => per_minute(20),
        // Feishu custom bots: 100 a minute (and 5 a second).
        Kind::Feishu => per_minute(100),
        // Telegram: 20 messages a minute to one group.
        Kind::Telegram => per_minute(20),
        // Discord webhooks: 30 a minute per channel.
        Kind::Discord => per_minute(30),
        // Slack incoming webhooks: one a second.
        Kind::Slack => Some(RateLimit {
            max: 1,
            per: Duration::from_secs(1),
        }),
        // WeChat Work apps: 30 a minute to one member.
        Kind::WeChatWork => per_minute(30),
        Kind::Teams | Kind::Webhook | Kind::Email => None,
    }
}

/// Messages merged into one: a title counting them, each one's title and text in turn,
/// the worst status, and the newest link.
pub fn digest(messages: &[Message]) -> Message {
    if let [one] = messages {
        return one.clone();
    }
    let rank = |s: Option<Status>| match s {
        Some(Status::Error | Status::Failure) => 3,
        Some(Status::Killed) => 2,
        Some(Status::Running) => 1,
        Some(Status::Success) | None => 0,
    };
    let status = messages
        .iter()
        .map(|m| m.status)
        .max_by_key(|s| rank(*s))
        .flatten();
    let text = messages
        .iter()
        .map(|m| {
            let body = m.plain_body();
            if body.trim().is_empty() {
                format!("- {}", m.title)
            } else {
                format!("- {}\n  {}", m.title, body.trim().replace('\n', "\n  "))
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    Message {
        title: format!(
            "{} notifications (latest: {})",
            messages.len(),
            messages.last().map_or("", |m| m.title.as_str())
        ),
        status,
        text,
        fields: Vec::new(),
        link: messages.iter().rev().find_map(|m| m.link.clone()),
        data: None,
    }
}

/// How many rows one digest may carry (a message must stay within the services' sizes).
pub const DIGEST_MAX: usize = 20;
/// A worker with nothing due looks again this often even if nobody woke it.
const IDLE_POLL: Duration = Duration::from_secs(30);

struct Worker {
    wake: Arc<Notify>,
    stop: Arc<Stop>,
    task: tokio::task::JoinHandle<()>,
}

/// Tells a worker to stop: looked at before every attempt, and wakes any wait.
#[derive(Default)]
struct Stop {
    asked: std::sync::atomic::AtomicBool,
    notify: Notify,
}

impl Stop {
    fn ask(&self) {
        self.asked.store(true, std::sync::atomic::Ordering::SeqCst);
        self.notify.notify_one();
    }

    fn asked(&self) -> bool {
        self.asked.load(std::sync::atomic::Ordering::SeqCst)
    }

    async fn notified(&self) {
        if !self.asked() {
            self.notify.notified().await;
        }
    }
}

/// The running workers, one per channel id.
pub struct Dispatcher<O: Outbox> {
    notifier: Arc<Notifier>,
    outbox: Arc<O>,
    retry: RetryPolicy,
    workers: Mutex<HashMap<i64, Worker>>,
}

impl<O: Outbox> std::fmt::Debug for Dispatcher<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let count = self.workers.lock().map(|w| w.len()).unwrap_or(0);
        f.debug_struct("Dispatcher")
            .field("workers", &count)
            .finish()
    }
}

impl<O: Outbox> Dispatcher<O> {
    pub fn new(notifier: Arc<Notifier>, outbox: Arc<O>, retry: RetryPolicy) -> Dispatcher<O> {
        Dispatcher {
            notifier,
            outbox,
            retry,
            workers: Mutex::new(HashMap::new()),
        }
    }

    fn workers(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Worker>> {
        self.workers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the worker of channel `id` (replacing one running for it), with its
    /// service's documented [`rate_limit`]. Must be called within a Tokio runtime.
    pub fn start(&self, id: i64, channel: Channel) {
        let limit = rate_limit(channel.kind());
        self.start_limited(id, channel, limit);
    }

    /// [`Dispatcher::start`] with another limit (a service with a stricter plan; tests).
    pub fn start_limited(&self, id: i64, channel: Channel, limit: Option<RateLimit>) {
        let wake = Arc::new(Notify::new());
        let stop = Arc::new(Stop::default());
        let task = tokio::spawn(run_worker(
            id,
            channel,
            limit,
            self.notifier.clone(),
            self.outbox.clone(),
            self.retry,
            wake.clone(),
            stop.clone(),
        ));
        if let Some(old) = self.workers().insert(id, Worker { wake, stop, task }) {
            old.stop.ask();
        }
    }

    /// Stops the worker of channel `id` after its current attempt.
    pub fn stop(&self, id: i64) {
        if let Some(worker) = self.workers().remove(&id) {
            worker.stop.ask();
        }
    }

    /// Tells channel `id`'s worker that something may be due.
    pub fn wake(&self, id: i64) {
        if let Some(worker) = self.workers().get(&id) {
            worker.wake.notify_one();
        }
    }

    /// Stops every worker and waits for their current attempts to be recorded.
    pub async fn shutdown(&self) {
        let workers: Vec<Worker> = self.workers().drain().map(|(_, w)| w).collect();
        for worker in &workers {
            worker.stop.ask();
        }
        for worker in workers {
            let _ = worker.task.await;
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Waits `wait` or until woken; false when told to stop.
async fn pause(wait: Duration, wake: &Notify, stop: &Stop) -> bool {
    tokio::select! {
        _ = stop.notified() => false,
        _ = wake.notified() => true,
        _ = tokio::time::sleep(wait) => true,
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_worker<O: Outbox>(
    id: i64,
    channel: Channel,
    limit: Option<RateLimit>,
    notifier: Arc<Notifier>,
    outbox: Arc<O>,
    retry: RetryPolicy,
    wake: Arc<Notify>,
    stop: Arc<Stop>,
) {
    let mut sent: VecDeque<Instant> = VecDeque::new();
    // Set after waiting for a full window: what is due then goes as one digest.
    let mut waited = false;
    loop {
        if stop.asked() {
            return;
        }
        let due = match outbox
            .due(id, now_ms(), if limit.is_some() { DIGEST_MAX } else { 1 })
            .await
        {
            Ok(due) => due,
            Err(e) => {
                tracing::warn!(channel = %channel.name, "notifications: reading the outbox: {e}");
                if !pause(Duration::from_secs(1), &wake, &stop).await {
                    return;
                }
                continue;
            }
        };
        if due.is_empty() {
            let wait = match outbox.next_due(id).await {
                Ok(Some(at)) => {
                    Duration::from_millis(u64::try_from(at - now_ms()).unwrap_or(0)).min(IDLE_POLL)
                }
                Ok(None) => IDLE_POLL,
                Err(e) => {
                    tracing::warn!(channel = %channel.name, "notifications: reading the outbox: {e}");
                    Duration::from_secs(1)
                }
            };
            if !pause(wait, &wake, &stop).await {
                return;
            }
            continue;
        }
        if let Some(limit) = limit {
            while sent.front().is_some_and(|at| at.elapsed() >= limit.per) {
                sent.pop_front();
            }
            if sent.len() >= limit.max
                && let Some(oldest) = sent.front()
            {
                // A full window: wait for its oldest send to leave it; what arrives
                // meanwhile joins the digest.
                let wait = limit.per.saturating_sub(oldest.elapsed());
                tracing::info!(
                    channel = %channel.name,
                    "notifications: {} waiting for the {}-a-{}s limit ({} ms)",
                    due.len(),
                    limit.max,
                    limit.per.as_secs(),
                    wait.as_millis()
                );
                tokio::select! {
                    _ = stop.notified() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
                waited = true;
                continue;
            }
        }
        let mut due = due;
        if waited {
            // One attempt number for all: only rows at the same attempt are merged.
            let attempts = due[0].attempts;
            due.retain(|p| p.attempts == attempts);
        } else {
            due.truncate(1);
        }
        waited = false;
        let messages: Vec<Message> = due.iter().map(|p| p.message.clone()).collect();
        let message = digest(&messages);
        let ids: Vec<i64> = due.iter().map(|p| p.id).collect();
        let number = due.iter().map(|p| p.attempts).max().unwrap_or(0) + 1;
        let at = now_ms();
        let started = Instant::now();
        let result = notifier.send(&channel, &message).await;
        let latency = started.elapsed();
        sent.push_back(Instant::now());
        let record = match &result {
            Ok(accepted) => AttemptRecord {
                number,
                at,
                latency,
                status: accepted.status,
                answer: accepted.answer.clone(),
                ok: true,
                next: Next::Delivered,
                merged: ids.len(),
            },
            Err(error) => {
                let next = if error.is_retryable() && number < retry.attempts.max(1) {
                    Next::RetryAt(now_ms() + millis(retry.wait(number + 1, error)))
                } else {
                    Next::Failed
                };
                tracing::warn!(channel = %channel.name, attempt = number, "notification not delivered: {error}");
                AttemptRecord {
                    number,
                    at,
                    latency,
                    status: error.status,
                    answer: error.to_string(),
                    ok: false,
                    next,
                    merged: ids.len(),
                }
            }
        };
        // Recorded before anything else is looked at: a row stays pending until its
        // attempt is written, so a failed write is retried rather than forgotten.
        let mut backoff = Duration::from_millis(200);
        while let Err(e) = outbox.record(&ids, &record).await {
            tracing::warn!(channel = %channel.name, "notifications: recording an attempt: {e}");
            tokio::select! {
                _ = stop.notified() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_digest_counts_its_messages_and_keeps_the_worst_status() {
        let a = Message::new("build #1 passed", "ok").status(Status::Success);
        let b = Message::new("build #2 failed", "boom")
            .status(Status::Failure)
            .link("http://ci/2", "Open");
        let c = Message::new("build #3 passed", "").status(Status::Success);
        let d = digest(&[a.clone(), b, c]);
        assert_eq!(d.title, "3 notifications (latest: build #3 passed)");
        assert_eq!(d.status, Some(Status::Failure));
        assert!(d.text.contains("- build #2 failed\n  boom"), "{}", d.text);
        assert_eq!(d.link.map(|l| l.url).as_deref(), Some("http://ci/2"));
        assert_eq!(digest(std::slice::from_ref(&a)), a);
    }

    #[test]
    fn robots_are_limited_and_plain_webhooks_are_not() {
        assert_eq!(rate_limit(Kind::WeChatWorkRobot).map(|l| l.max), Some(20));
        assert_eq!(rate_limit(Kind::Webhook), None);
    }
}
