//! The in-process event bus: state changes of builds, stages and steps, the registry's
//! pushes and deletes, and the deployer's rollout steps and revision statuses, published
//! by the code that makes them and consumed by whoever listens (live UI, commit statuses,
//! deploy triggers, notifications). Log
//! lines travel separately ([`crate::logstore::LogStore::subscribe`]) so a chatty step
//! cannot crowd state changes out of the channel.

use serde::Serialize;
use slipway_engine::Status;
use tokio::sync::broadcast;

/// One state change.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ServerEvent {
    Build {
        build_id: i64,
        repo_id: i64,
        number: i64,
        status: Status,
        finished: Option<i64>,
    },
    Stage {
        build_id: i64,
        stage: i64,
        status: Status,
        attempt: i64,
    },
    Step {
        build_id: i64,
        stage: i64,
        step: String,
        status: Status,
        exit_code: Option<i64>,
        started: Option<i64>,
        finished: Option<i64>,
    },
    /// The registry stored or deleted a manifest (`image.pushed` / `image.deleted`).
    Image {
        /// `push` or `delete`.
        action: String,
        repository: String,
        tag: Option<String>,
        digest: String,
        actor: String,
    },
    /// The deployer recorded a step of a revision's rollout (`seq`: its place in the
    /// revision's steps, from 1, so a stream that also read them from the store skips
    /// the ones it sent).
    RolloutStep {
        stack_id: i64,
        revision_id: i64,
        seq: u64,
        at: i64,
        detail: serde_json::Value,
    },
    /// A revision's status changed (`rolling`, `paused`, `succeeded`, …).
    Revision {
        stack_id: i64,
        revision_id: i64,
        number: i64,
        status: String,
        message: Option<String>,
    },
}

impl ServerEvent {
    /// The build it is about; `None` for registry and deployer events.
    pub fn build_id(&self) -> Option<i64> {
        match self {
            ServerEvent::Build { build_id, .. }
            | ServerEvent::Stage { build_id, .. }
            | ServerEvent::Step { build_id, .. } => Some(*build_id),
            ServerEvent::Image { .. }
            | ServerEvent::RolloutStep { .. }
            | ServerEvent::Revision { .. } => None,
        }
    }
}

/// Cheap to clone; publishing with nobody listening is fine.
#[derive(Debug, Clone)]
pub struct EventBus {
    sender: broadcast::Sender<ServerEvent>,
}

impl Default for EventBus {
    fn default() -> Self {
        let (sender, _) = broadcast::channel(4096);
        EventBus { sender }
    }
}

impl EventBus {
    pub fn publish(&self, event: ServerEvent) {
        let _ = self.sender.send(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<ServerEvent> {
        self.sender.subscribe()
    }
}

/// A build that has finished: what the notifications' fan-out and the deploy rules wake for.
pub fn is_finished_build(event: &ServerEvent) -> bool {
    matches!(
        event,
        ServerEvent::Build {
            finished: Some(_),
            ..
        }
    )
}

/// Waits, skipping the events `wake` says nothing about, for one it wakes for; a lagged
/// receiver wakes too (what was missed may have been one). `false` once the bus is closed.
/// Cancel-safe, for `select!`.
pub async fn wait_for(
    events: &mut broadcast::Receiver<ServerEvent>,
    mut wake: impl FnMut(&ServerEvent) -> bool,
) -> bool {
    loop {
        match events.recv().await {
            Ok(event) if wake(&event) => return true,
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(_)) => return true,
            Err(broadcast::error::RecvError::Closed) => return false,
        }
    }
}
