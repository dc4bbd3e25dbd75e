//! Webhook delivery of registry events.
//!
//! [`Notifier::spawn`] takes a receiver from [`crate::Registry::subscribe`] and a list of
//! [`NotifyEndpoint`]s and runs one background task per endpoint. Each task POSTs the
//! events it receives, batched when several are already waiting (at most
//! [`MAX_BATCH`]), as distribution's notification envelope (`{"events":[...]}`, see
//! [`RegistryEvent::envelope`]) with `Content-Type:
//! application/vnd.docker.distribution.events.v1+json`.
//!
//! A connection error, a timeout or a non-2xx answer is retried with exponential backoff
//! (from [`NotifyEndpoint::backoff`], doubling, capped at [`NotifyEndpoint::max_backoff`])
//! up to [`NotifyEndpoint::max_attempts`] attempts; then the batch is dropped. Every failure
//! is logged with `tracing` (URL, status or error). Delivery never blocks the registry:
//! events travel on the broadcast channel, and an endpoint too slow to keep up loses the
//! oldest events, which is logged as a warning with how many were dropped.

use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};
use tokio::task::JoinHandle;

use crate::events::{ENVELOPE_MEDIA_TYPE, RegistryEvent};

/// Most events POSTed in one envelope.
pub const MAX_BATCH: usize = 32;

/// A webhook events are delivered to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyEndpoint {
    /// Where envelopes are POSTed (`http://…` or, if the HTTP client has TLS, `https://…`).
    pub url: String,
    /// Extra request headers (e.g. `Authorization`); `Content-Type` is always the
    /// envelope's media type.
    pub headers: Vec<(String, String)>,
    /// Timeout of one attempt (connect, send and response).
    pub timeout: Duration,
    /// Attempts per batch, the first included (at least 1).
    pub max_attempts: u32,
    /// Delay before the first retry; doubled after each further failure.
    pub backoff: Duration,
    /// Longest delay between two attempts.
    pub max_backoff: Duration,
}

impl NotifyEndpoint {
    /// Defaults: no extra headers, 5 s timeout, 5 attempts, backoff from 1 s capped at 30 s.
    pub fn new(url: impl Into<String>) -> NotifyEndpoint {
        NotifyEndpoint {
            url: url.into(),
            headers: Vec::new(),
            timeout: Duration::from_secs(5),
            max_attempts: 5,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
        }
    }

    /// Adds a request header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// The running delivery tasks. Dropping it (or [`Notifier::abort`]) stops delivery; the
/// tasks also end by themselves when the registry (its event channel) is dropped.
#[derive(Debug)]
#[must_use = "dropping the Notifier stops webhook delivery"]
pub struct Notifier {
    tasks: Vec<JoinHandle<()>>,
}

impl Notifier {
    /// Starts delivering `events` to every endpoint, on the current Tokio runtime (panics
    /// outside one, like `tokio::spawn`). `source_url` is the registry's address
    /// (`http://host:port`), used in the envelope's target URLs and `source`. An endpoint
    /// whose client cannot be built is logged and skipped.
    pub fn spawn(
        events: broadcast::Receiver<RegistryEvent>,
        endpoints: Vec<NotifyEndpoint>,
        source_url: impl Into<String>,
    ) -> Notifier {
        let source_url = source_url.into().trim_end_matches('/').to_string();
        let mut tasks = Vec::with_capacity(endpoints.len());
        for endpoint in endpoints {
            let headers = header_map(&endpoint);
            let client = match reqwest::Client::builder()
                .timeout(endpoint.timeout)
                .default_headers(headers)
                .build()
            {
                Ok(client) => client,
                Err(error) => {
                    tracing::error!(url = %endpoint.url, %error, "cannot create the webhook client; events will not be delivered to it");
                    continue;
                }
            };
            let worker = Worker {
                events: events.resubscribe(),
                endpoint,
                client,
                source_url: source_url.clone(),
            };
            tasks.push(tokio::spawn(worker.run()));
        }
        Notifier { tasks }
    }

    /// Stops delivery (events in flight are lost).
    pub fn abort(&self) {
        for task in &self.tasks {
            task.abort();
        }
    }

    /// Whether every delivery task has ended (the registry was dropped, or aborted).
    pub fn is_finished(&self) -> bool {
        self.tasks.iter().all(JoinHandle::is_finished)
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        self.abort();
    }
}

/// The endpoint's headers plus the envelope content type; invalid ones are logged and
/// skipped.
fn header_map(endpoint: &NotifyEndpoint) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in &endpoint.headers {
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            (Ok(name), Ok(value)) => {
                map.append(name, value);
            }
            _ => {
                tracing::warn!(url = %endpoint.url, header = %name, "invalid webhook header, skipped")
            }
        }
    }
    map.insert(CONTENT_TYPE, HeaderValue::from_static(ENVELOPE_MEDIA_TYPE));
    map
}

struct Worker {
    events: broadcast::Receiver<RegistryEvent>,
    endpoint: NotifyEndpoint,
    client: reqwest::Client,
    source_url: String,
}

impl Worker {
    async fn run(mut self) {
        loop {
            let first = match self.events.recv().await {
                Ok(event) => event,
                Err(RecvError::Lagged(dropped)) => {
                    self.lagged(dropped);
                    continue;
                }
                Err(RecvError::Closed) => return,
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match self.events.try_recv() {
                    Ok(event) => batch.push(event),
                    Err(TryRecvError::Lagged(dropped)) => self.lagged(dropped),
                    Err(TryRecvError::Empty | TryRecvError::Closed) => break,
                }
            }
            self.deliver(&batch).await;
        }
    }

    fn lagged(&self, dropped: u64) {
        tracing::warn!(
            url = %self.endpoint.url,
            dropped,
            "webhook delivery fell behind; registry events were dropped"
        );
    }

    /// POSTs one envelope, retrying; failures are logged, never returned.
    async fn deliver(&self, batch: &[RegistryEvent]) {
        let body = match serde_json::to_vec(&RegistryEvent::envelope(batch, &self.source_url)) {
            Ok(body) => body,
            Err(error) => {
                tracing::error!(url = %self.endpoint.url, %error, "cannot serialise the event envelope");
                return;
            }
        };
        let attempts = self.endpoint.max_attempts.max(1);
        let mut delay = self.endpoint.backoff;
        for attempt in 1..=attempts {
            let result = self
                .client
                .post(&self.endpoint.url)
                .body(body.clone())
                .send()
                .await;
            match result {
                Ok(response) if response.status().is_success() => {
                    tracing::debug!(url = %self.endpoint.url, events = batch.len(), attempt, "webhook delivered");
                    return;
                }
                Ok(response) => tracing::warn!(
                    url = %self.endpoint.url,
                    status = %response.status(),
                    attempt,
                    attempts,
                    "webhook delivery failed"
                ),
                Err(error) => tracing::warn!(
                    url = %self.endpoint.url,
                    %error,
                    attempt,
                    attempts,
                    "webhook delivery failed"
                ),
            }
            if attempt < attempts {
                tokio::time::sleep(delay).await;
                delay = delay.saturating_mul(2).min(self.endpoint.max_backoff);
            }
        }
        tracing::error!(
            url = %self.endpoint.url,
            events = batch.len(),
            attempts,
            "giving up on webhook delivery; events dropped"
        );
    }
}
