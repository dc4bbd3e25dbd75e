//! Notifications, wired to the server: the store's channels as [`slipway_notify`]
//! channels, the fan-out of the outbox (a finished build → its events → each channel's
//! rule → a rendered delivery), and the dispatcher's workers over the store's deliveries.
//! The protocols, rules, templates, rate limits and retries are `slipway-notify`'s; this
//! module only moves rows.
//!
//! Invariants:
//! - A finished build's outbox row is written with its status ([`Store::finish_build`]),
//!   and a deployment's with its state change ([`Store::notify_deploy`]), so a crash
//!   between the two loses nothing; the fan-out inserts the deliveries and
//!   deletes the row in one transaction, each delivery once by its key.
//! - One delivery per (build, channel): a channel that wants both `build.failure` and
//!   `build.broken` is told once, with the more specific event.
//! - Credentials are opened only to build the channel that sends; they are sealed with the
//!   channel's name as associated data, so a sealed value cannot be moved to another one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use slipway_notify::outbox::{AttemptRecord, Dispatcher, Next, Outbox, OutboxError, Pending};
use slipway_notify::rules::{Event, Rule, parse_events};
use slipway_notify::settings::{Settings, SettingsError};
use slipway_notify::template::{self, Context};
use slipway_notify::{Channel, Kind, Message, Notifier, NotifierConfig, RetryPolicy};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::app::AppState;
use crate::store::{
    Build, ChannelRow, DeployNotice, NewAttempt, NewDelivery, Repo, Store, StoreError,
};

/// A fan-out with nothing to wake it still looks at the outbox this often.
const FAN_OUT_POLL: Duration = Duration::from_secs(15);

/// The server's notifications: the sender and the per-channel workers.
#[derive(Debug)]
pub struct Notifications {
    pub notifier: Arc<Notifier>,
    dispatcher: Dispatcher<StoreOutbox>,
    fan_out: Notify,
}

/// The store as the dispatcher's outbox.
#[derive(Debug)]
struct StoreOutbox {
    store: Arc<Store>,
}

impl Outbox for StoreOutbox {
    async fn due(&self, channel: i64, now: i64, limit: usize) -> Result<Vec<Pending>, OutboxError> {
        let rows = self
            .store
            .due_deliveries(channel, now, i64::try_from(limit).unwrap_or(i64::MAX))
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| Pending {
                id: row.id,
                attempts: u32::try_from(row.attempts).unwrap_or(u32::MAX),
                // Written by the fan-out from a `Message`; a row that does not parse still
                // says its title.
                message: serde_json::from_str(&row.message)
                    .unwrap_or_else(|_| Message::new(row.title.clone(), String::new())),
            })
            .collect())
    }

    async fn next_due(&self, channel: i64) -> Result<Option<i64>, OutboxError> {
        Ok(self.store.next_due(channel).await?)
    }

    async fn record(&self, ids: &[i64], attempt: &AttemptRecord) -> Result<(), OutboxError> {
        let (status, next_at) = match attempt.next {
            Next::Delivered => ("delivered", attempt.at),
            Next::Failed => ("failed", attempt.at),
            Next::RetryAt(at) => ("pending", at),
        };
        let record = NewAttempt {
            number: i64::from(attempt.number),
            at: attempt.at,
            latency_ms: crate::app::millis(attempt.latency),
            http_status: attempt.status.map(i64::from),
            ok: attempt.ok,
            answer: attempt.answer.clone(),
            merged: i64::try_from(attempt.merged).unwrap_or(i64::MAX),
            status,
            next_at,
        };
        Ok(self.store.record_attempt(ids, &record).await?)
    }
}

/// Why a channel could not be read or built.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error(transparent)]
    Kind(#[from] slipway_notify::ConfigError),
    #[error(
        "channel `{0}`: its stored credentials do not open (was secret.key replaced?); add the channel again"
    )]
    Sealed(String),
    #[error("channel `{name}`: {message}")]
    Stored { name: String, message: String },
}

/// The associated data a channel's credentials are sealed with.
pub fn secrets_aad(channel: &str) -> String {
    format!("notify-channel:{channel}")
}

impl Notifications {
    pub fn new(
        store: Arc<Store>,
        api: BTreeMap<Kind, String>,
    ) -> Result<Notifications, slipway_notify::ConfigError> {
        let retry = RetryPolicy::default();
        let notifier = Arc::new(Notifier::new(NotifierConfig {
            api,
            retry,
            ..NotifierConfig::default()
        })?);
        Ok(Notifications {
            dispatcher: Dispatcher::new(notifier.clone(), Arc::new(StoreOutbox { store }), retry),
            notifier,
            fan_out: Notify::new(),
        })
    }

    /// Starts a worker for a channel just added (or read at start).
    pub fn start_channel(&self, id: i64, channel: Channel) {
        self.dispatcher.start(id, channel);
        self.dispatcher.wake(id);
    }

    pub fn stop_channel(&self, id: i64) {
        self.dispatcher.stop(id);
    }
}

/// The channel a stored row describes, credentials opened.
pub fn open_channel(state: &AppState, row: &ChannelRow) -> Result<Channel, ChannelError> {
    let kind: Kind = row.kind.parse()?;
    let secrets: BTreeMap<String, String> = if row.secrets.is_empty() {
        BTreeMap::new()
    } else {
        let text = state
            .secrets
            .open(&row.secrets, &secrets_aad(&row.name))
            .map_err(|_| ChannelError::Sealed(row.name.clone()))?;
        serde_json::from_str(&text).map_err(|e| ChannelError::Stored {
            name: row.name.clone(),
            message: format!("its credentials are not a JSON object: {e}"),
        })?
    };
    let settings = Settings {
        plain: row.settings.clone(),
        secrets,
    };
    let mut channel = settings.channel(&row.name, kind)?;
    channel.api_base = row.api_base.clone();
    Ok(channel)
}

/// The rule a stored row describes.
pub fn rule_of(row: &ChannelRow) -> Rule {
    Rule {
        repo: row.repo.clone(),
        branch: row.branch.clone(),
        environment: row.environment.clone(),
        // Checked when the channel was added; an unknown stored name matches nothing new.
        events: parse_events(&row.events).unwrap_or_default(),
    }
}

/// What a template sees of a build.
pub fn build_context(state: &AppState, build: &Build, repo: &Repo) -> Context {
    let vars = crate::builds::context_of(build).variables();
    let mut context = Context::from_drone_env(&vars);
    context.build.status = build.status.as_str().to_owned();
    context.build.number = u64::try_from(build.number).unwrap_or(0);
    // Templates get Drone's unix seconds; the store keeps milliseconds.
    context.build.created = build.created / 1000;
    context.build.started = build.started.map_or(0, |ms| ms / 1000);
    context.build.finished = build.finished.map_or(0, |ms| ms / 1000);
    if context.build.link.is_empty() {
        context.build.link = format!(
            "{}/{}/{}",
            state.config.public_url.trim_end_matches('/'),
            repo.name,
            build.number
        );
    }
    if context.repo.full_name.is_empty() {
        context.repo.full_name = repo.name.clone();
    }
    context
}

/// The message for `context` as `row`'s template says (or the default), and the template's
/// error if it did not render.
pub fn render(row: &ChannelRow, context: &Context, event: Event) -> (Message, Option<String>) {
    let (mut message, error) = template::render_or_default(row.template.as_deref(), context);
    // The status says success or failure; the title says when that changed the branch.
    match event {
        Event::BuildFixed => message.title.push_str(" (fixed)"),
        Event::BuildBroken => message.title.push_str(" (broken)"),
        _ => {}
    }
    let mut data = serde_json::to_value(context).unwrap_or_default();
    if let Some(object) = data.as_object_mut() {
        object.insert("event".into(), event.as_str().into());
    }
    message.data = Some(data);
    (message, error.map(|e| e.to_string()))
}

/// Starts every stored channel's worker and the fan-out; both stop with `shutdown`.
pub async fn spawn(state: Arc<AppState>, shutdown: CancellationToken) {
    match state.store.channels().await {
        Ok(rows) => {
            for row in rows {
                match open_channel(&state, &row) {
                    Ok(channel) => state.notify.start_channel(row.id, channel),
                    Err(e) => tracing::error!("notifications: {e}"),
                }
            }
        }
        Err(e) => tracing::error!("notifications: reading the channels: {e}"),
    }
    tokio::spawn(fan_out_loop(state.clone(), shutdown.clone()));
    tokio::spawn(async move {
        shutdown.cancelled().await;
        state.notify.dispatcher.shutdown().await;
    });
}

async fn fan_out_loop(state: Arc<AppState>, shutdown: CancellationToken) {
    let mut events = state.events.subscribe();
    loop {
        if let Err(e) = fan_out_pending(&state).await {
            tracing::warn!("notifications: the outbox: {e}");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = state.notify.fan_out.notified() => {}
            _ = tokio::time::sleep(FAN_OUT_POLL) => {}
            open = crate::events::wait_for(&mut events, crate::events::is_finished_build) => {
                if !open {
                    return;
                }
            }
        }
    }
}

/// Turns every outbox row into deliveries.
async fn fan_out_pending(state: &AppState) -> Result<(), StoreError> {
    loop {
        let rows = state.store.notify_outbox(100).await?;
        if rows.is_empty() {
            return Ok(());
        }
        let channels = state.store.channels().await?;
        for row in rows {
            let deliveries = match (&row.deploy, row.build_id) {
                _ if channels.is_empty() => Vec::new(),
                (Some(notice), _) => {
                    let (context, event) = deploy_context(state, notice).await?;
                    match event {
                        Some(event) => deliveries_of(&channels, row.id, &context, &[event]),
                        None => Vec::new(),
                    }
                }
                (None, Some(build_id)) => {
                    build_deliveries(state, &channels, row.id, build_id).await?
                }
                (None, None) => Vec::new(),
            };
            for channel in state.store.fan_out(row.id, &deliveries).await? {
                state.notify.dispatcher.wake(channel);
            }
        }
    }
}

async fn build_deliveries(
    state: &AppState,
    channels: &[ChannelRow],
    outbox_id: i64,
    build_id: i64,
) -> Result<Vec<NewDelivery>, StoreError> {
    let Some(build) = state.store.build(build_id).await? else {
        return Ok(Vec::new());
    };
    let Some(repo) = state.store.repo(build.repo_id).await? else {
        return Ok(Vec::new());
    };
    let previous = if build.event == "pull_request" {
        None
    } else {
        state
            .store
            .previous_outcome(repo.id, &build.branch, build.number)
            .await?
    };
    // The specific change (fixed, broken) before the plain status.
    let mut events = Event::for_build(build.status.as_str(), previous.as_deref());
    events.reverse();
    let context = build_context(state, &build, &repo);
    Ok(deliveries_of(channels, outbox_id, &context, &events))
}

/// What a template sees of a deployment: the deploy, and the build that triggered it.
async fn deploy_context(
    state: &AppState,
    notice: &DeployNotice,
) -> Result<(Context, Option<Event>), StoreError> {
    let mut context = Context::default();
    if let Some(name) = &notice.repo
        && let Some(repo) = state.store.repo_by_name(name).await?
    {
        match notice.build_number {
            Some(number) => match state.store.build_by_number(repo.id, number).await? {
                Some(build) => context = build_context(state, &build, &repo),
                None => context.repo.full_name = repo.name.clone(),
            },
            None => context.repo.full_name = repo.name.clone(),
        }
    }
    if context.repo.full_name.is_empty() {
        context.repo.full_name = format!("{}/{}", notice.environment, notice.stack);
    }
    let (owner, name) = context
        .repo
        .full_name
        .split_once('/')
        .map(|(o, n)| (o.to_owned(), n.to_owned()))
        .unwrap_or_default();
    context.repo.owner = owner;
    context.repo.name = name;
    context.deploy = Some(template::Deploy {
        environment: notice.environment.clone(),
        stack: notice.stack.clone(),
        revision: notice.revision.to_string(),
        status: notice.status.clone(),
        url: notice.url.clone(),
        images: notice.images.clone(),
    });
    Ok((context, Event::for_deploy(&notice.status)))
}

/// One delivery per channel whose rule wants one of `events` (the first it wants).
fn deliveries_of(
    channels: &[ChannelRow],
    outbox_id: i64,
    context: &Context,
    events: &[Event],
) -> Vec<NewDelivery> {
    let mut deliveries = Vec::new();
    for row in channels {
        let rule = rule_of(row);
        let Some(event) = events.iter().copied().find(|e| rule.matches(*e, context)) else {
            continue;
        };
        let (message, template_error) = render(row, context, event);
        if let Some(error) = &template_error {
            tracing::warn!(
                "notifications: channel {}: the template did not render, the default message is sent: {error}",
                row.name
            );
        }
        deliveries.push(NewDelivery {
            channel_id: row.id,
            dedup_key: format!("outbox:{outbox_id}:channel:{}", row.id),
            event: event.as_str().to_owned(),
            repo: context.repo.full_name.clone(),
            build_number: (context.build.number > 0)
                .then(|| i64::try_from(context.build.number).unwrap_or(i64::MAX)),
            title: message.title.clone(),
            message: serde_json::to_string(&message).unwrap_or_default(),
            template_error,
        });
    }
    deliveries
}

impl AppState {
    /// Wakes the fan-out: a channel was added, or a deployment told its event.
    pub fn wake_notifications(&self) {
        self.notify.fan_out.notify_one();
    }
}
