//! Deploying from a pipeline: what the native `slipway/deploy` and `peloton/drone-rancher`
//! steps ask for ([`DeployCall`]), what they hear back while the rollout runs
//! ([`DeployProgress`]), and who answers ([`Deployer`], given in
//! [`crate::RunOptions::deployer`]).
//!
//! The engine only turns a step's settings into a [`DeployCall`]; the deploy itself (the
//! stack file at the build's commit, the images the build pushed, the revision, the
//! rollout, and whether this build may deploy at all) is the server's. The runner
//! implements [`Deployer`] over HTTP to the server that leased the stage; without one
//! (`slipway exec`) a deploy step fails saying so.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};

/// What a deploy step asks the server to do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployCall {
    /// The plugin that asks (`slipway/deploy`, `peloton/drone-rancher`), for messages.
    pub plugin: String,
    /// The environment; for an image update (`service` set) optional when exactly one
    /// environment has the stack.
    #[serde(default)]
    pub environment: Option<String>,
    pub stack: String,
    /// Set: only this service's image changes, in the stack's current revision (compose
    /// file kept); `images` holds its new image. Unset: the stack file of the repository
    /// at the build's commit is deployed.
    #[serde(default)]
    pub service: Option<String>,
    /// Service → image reference, over the file's and the build's pushed images.
    #[serde(default)]
    pub images: BTreeMap<String, String>,
    /// `rolling`, `blue-green` or `canary`, for this rollout only.
    #[serde(default)]
    pub strategy: Option<String>,
    /// Containers replaced at once.
    #[serde(default)]
    pub parallelism: Option<u32>,
    /// Start-first (`true`) or stop-first (`false`).
    #[serde(default)]
    pub start_first: Option<bool>,
    /// Health-gate time limit of each new container, in seconds.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// Follow the rollout to its end (and fail unless it succeeded).
    #[serde(default)]
    pub wait: bool,
    /// Images this stage pushed so far (`host/repo`, digest): the server's record of them
    /// may still be on its way with the stage's events.
    #[serde(default)]
    pub pushed: Vec<PushedImage>,
}

/// An image a step of this build pushed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushedImage {
    /// `host/repo`, without tag.
    pub image: String,
    pub digest: String,
}

/// What the server says while a deploy runs; one JSON object a line on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DeployProgress {
    /// The revision is recorded and its rollout started.
    Started {
        environment: String,
        stack: String,
        revision: i64,
    },
    /// One rollout step, as a line for the log.
    Step { line: String },
    /// The rollout ended: `succeeded`, `rolled_back`, `paused` or `failed`.
    Finished {
        status: String,
        #[serde(default)]
        message: Option<String>,
    },
}

/// The deploy's future: `Err` is why it could not be asked or was refused, for the log.
pub type DeployFuture<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// Who carries out a pipeline's deploy steps (the runner, over HTTP to its server).
pub trait Deployer: Send + Sync + std::fmt::Debug {
    /// Asks for `call`; `progress` gets every [`DeployProgress`] as it arrives. Returns
    /// when the server's answer ends (with `wait`, when the rollout ended).
    fn deploy<'a>(
        &'a self,
        call: DeployCall,
        progress: &'a (dyn Fn(DeployProgress) + Send + Sync),
    ) -> DeployFuture<'a>;
}
