//! The sender: one HTTP client, the kind-wide API bases, the WeChat Work token cache, and
//! delivery with retries.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use crate::channels::{self, Channel};
use crate::error::{Class, ConfigError, DeliveryError};
use crate::{Kind, Message};

/// How often and how patiently a delivery is retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1).
    pub attempts: u32,
    /// The wait after the first failure; doubled after each next one.
    pub base: Duration,
    /// The longest wait between attempts, unless the service asked for longer.
    pub max: Duration,
    /// The longest `Retry-After` honoured (a service asking for more is waited this long).
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            attempts: 5,
            base: Duration::from_millis(500),
            max: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(300),
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `next` (2, 3, ...) after `error`.
    pub(crate) fn wait(&self, next: u32, error: &DeliveryError) -> Duration {
        let backoff = self
            .base
            .saturating_mul(2u32.saturating_pow(next.saturating_sub(2)))
            .min(self.max);
        match error.class {
            Class::Retryable { after: Some(after) } => after.min(self.max_retry_after),
            _ => backoff,
        }
    }
}

/// How a [`Notifier`] is set up.
#[derive(Debug, Clone)]
pub struct NotifierConfig {
    /// API base per kind (`--notify-api KIND=URL`); a channel's own base wins.
    pub api: BTreeMap<Kind, String>,
    pub retry: RetryPolicy,
    /// The time limit of one request (connect included).
    pub timeout: Duration,
}

impl Default for NotifierConfig {
    fn default() -> NotifierConfig {
        NotifierConfig {
            api: BTreeMap::new(),
            retry: RetryPolicy::default(),
            timeout: Duration::from_secs(15),
        }
    }
}

/// The service accepted the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The HTTP status (none for email).
    pub status: Option<u16>,
    /// The service's answer, shortened, secrets masked.
    pub answer: String,
}

/// One try of a delivery.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// 1 for the first.
    pub number: u32,
    pub latency: Duration,
    pub result: Result<Accepted, DeliveryError>,
}

/// Every attempt of one delivery, and how it ended (the last attempt's result).
#[derive(Debug, Clone)]
pub struct Delivery {
    pub attempts: Vec<Attempt>,
    pub outcome: Result<Accepted, DeliveryError>,
}

impl Delivery {
    pub fn is_accepted(&self) -> bool {
        self.outcome.is_ok()
    }
}

/// A cached WeChat Work access token.
#[derive(Debug, Clone)]
pub(crate) struct CachedToken {
    pub token: String,
    pub until: Instant,
}

/// Sends messages to channels. Cheap to share (`Arc`); one per process is enough.
#[derive(Debug)]
pub struct Notifier {
    pub(crate) http: reqwest::Client,
    api: BTreeMap<Kind, String>,
    retry: RetryPolicy,
    pub(crate) timeout: Duration,
    /// WeChat Work tokens by (API base, corp id, secret fingerprint).
    pub(crate) tokens: Mutex<HashMap<String, CachedToken>>,
}

impl Notifier {
    pub fn new(config: NotifierConfig) -> Result<Notifier, ConfigError> {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("slipway-notify/", env!("CARGO_PKG_VERSION")))
            // A redirect would carry the message (and, for 307/308, a signed body) to a
            // host the channel does not name: a 3xx is reported, not followed.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ConfigError::Client(e.to_string()))?;
        Ok(Notifier {
            http,
            api: config.api,
            retry: config.retry,
            timeout: config.timeout,
            tokens: Mutex::new(HashMap::new()),
        })
    }

    /// The API base for `channel`: its own, else its kind's, else the service's.
    pub(crate) fn base(&self, channel: &Channel, default: &str) -> String {
        channel
            .api_base
            .as_deref()
            .or_else(|| self.api.get(&channel.kind()).map(String::as_str))
            .unwrap_or(default)
            .trim_end_matches('/')
            .to_string()
    }

    /// The base set for `channel` (its own or its kind's), if any: URL-addressed kinds
    /// (Slack, Discord, Teams, webhook) keep their URL's path and replace its origin.
    pub(crate) fn base_override(&self, channel: &Channel) -> Option<String> {
        channel
            .api_base
            .as_deref()
            .or_else(|| self.api.get(&channel.kind()).map(String::as_str))
            .map(|base| base.trim_end_matches('/').to_string())
    }

    /// One attempt (for WeChat Work, a token refresh and the resend it calls for belong to
    /// the attempt). Errors are masked.
    pub async fn send(
        &self,
        channel: &Channel,
        message: &Message,
    ) -> Result<Accepted, DeliveryError> {
        let secrets = channel.secrets();
        channels::send(self, channel, message)
            .await
            .map(|accepted| Accepted {
                status: accepted.status,
                answer: crate::error::mask(&accepted.answer, &secrets),
            })
            .map_err(|error| error.masked(&secrets))
    }

    /// Sends with retries as the [`RetryPolicy`] says; every attempt is in the result.
    pub async fn deliver(&self, channel: &Channel, message: &Message) -> Delivery {
        let mut attempts = Vec::new();
        let total = self.retry.attempts.max(1);
        let mut number = 0;
        loop {
            number += 1;
            let started = Instant::now();
            let result = self.send(channel, message).await;
            let latency = started.elapsed();
            let retry = match &result {
                Err(error) if error.is_retryable() && number < total => {
                    Some(self.retry.wait(number + 1, error))
                }
                _ => None,
            };
            if let Err(error) = &result {
                tracing::debug!(channel = %channel.name, attempt = number, "delivery failed: {error}");
            }
            attempts.push(Attempt {
                number,
                latency,
                result: result.clone(),
            });
            match retry {
                Some(wait) => tokio::time::sleep(wait).await,
                None => {
                    return Delivery {
                        attempts,
                        outcome: result,
                    };
                }
            }
        }
    }
}
