//! Where steps actually run. The scheduler decides *when* a step runs and for how long; a
//! [`Backend`] knows *how*: a container on a Docker engine ([`docker`]) or a process on this
//! host ([`host`]). One backend value serves one pipeline and owns what it creates for it.

pub(crate) mod docker;
pub(crate) mod host;

use std::collections::BTreeMap;

use slipway_spec::plan::StepPlan;
use tokio_util::sync::CancellationToken;

use crate::error::EngineError;
use crate::log::StepLog;
use crate::native::NativeHost;
use crate::script::script;

/// Runs the steps and services of one pipeline.
///
/// Contract: everything a backend creates is recorded before it can fail or be interrupted
/// at a later point, and [`Backend::teardown`] removes all of it whatever state it is in, so
/// the scheduler only has to call `teardown` once at the end of the pipeline on every path.
///
/// A step can also be started in two halves to hide the start latency: [`Backend::prepare`]
/// while its dependencies still run (everything `start` does, but the step waits at a gate
/// and nothing reaches its log), then [`Backend::release`] when it is due, or
/// [`Backend::discard`] when it turns out not to run.
pub(crate) trait Backend: Send + Sync {
    /// A started step or service.
    type Process: Send;

    /// A step pre-started by [`Backend::prepare`], held at its gate.
    type Prepared: Send;

    /// Whether `step` may be pre-started: it has `commands`, starting it here is slow enough
    /// to be worth hiding, and starting it early cannot change what it sees.
    fn can_prepare(&self, step: &StepPlan) -> bool;

    /// Pre-starts a step that has `commands`: creates and starts whatever `start` would, with
    /// the commands held at a gate. Emits nothing, ever: anything the step prints before
    /// [`Backend::release`] is held back, and dropped if it is discarded. Long preparations
    /// (image pulls) give up when `abort` fires.
    fn prepare(
        &self,
        step: &StepSpec<'_>,
        abort: &CancellationToken,
    ) -> impl Future<Output = Result<Self::Prepared, EngineError>> + Send;

    /// Opens the gate of a prepared step, telling it whether the pipeline has `failed` so
    /// far; from now on its output goes to `log`. On an error the prepared step has been
    /// discarded and the caller can still [`Backend::start`] the step the normal way.
    fn release(
        &self,
        prepared: Self::Prepared,
        failed: bool,
        log: StepLog,
    ) -> impl Future<Output = Result<Self::Process, EngineError>> + Send;

    /// Gets rid of a prepared step that is not going to run (kills and removes it, possibly
    /// in the background; [`Backend::teardown`] waits for that).
    fn discard(&self, prepared: Self::Prepared) -> impl Future<Output = ()> + Send;

    /// Where native plugin steps run, when this backend runs them at all (Docker pipelines
    /// with native plugins on): the engine and the workspace. `None`: plugin images run as
    /// ordinary steps.
    fn native_host(&self) -> Option<NativeHost<'_>> {
        None
    }

    /// Creates what the pipeline shares (Docker: its network and temp volumes).
    fn setup(&self) -> impl Future<Output = Result<(), EngineError>> + Send;

    /// Starts `step` and begins streaming its output into `log`. Long preparations (image
    /// pulls) give up when `abort` fires.
    fn start(
        &self,
        step: &StepSpec<'_>,
        log: StepLog,
        abort: &CancellationToken,
    ) -> impl Future<Output = Result<Self::Process, EngineError>> + Send;

    /// Waits until the process exits and all its output was emitted; returns the exit code.
    /// Cancel-safe: it may be dropped (on a timeout) and called again after [`Backend::kill`].
    fn wait(
        &self,
        process: &mut Self::Process,
    ) -> impl Future<Output = Result<i64, EngineError>> + Send;

    /// Kills the process at once (no grace period). Returns whether it was still running.
    fn kill(&self, process: &mut Self::Process) -> impl Future<Output = bool> + Send;

    /// Frees a finished process (removes its container) before the pipeline ends. May do so
    /// in the background, so it does not delay what comes next; [`Backend::teardown`] waits
    /// for it.
    fn remove(&self, process: Self::Process) -> impl Future<Output = ()> + Send;

    /// Kills and removes everything this backend created, after waiting for removals still
    /// under way. Idempotent, never fails (problems are logged; the build's final sweep by
    /// label catches leftovers). Whether nothing it created can still reach the workspace
    /// (no container is left that mounts it): only then may the workspace directory be
    /// reused for another build.
    fn teardown(&self) -> impl Future<Output = bool> + Send;
}

/// Whether a [`StepSpec`] is a pipeline step or a service: they get distinct container names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Step,
    Service,
}

/// A step ready to hand to a backend: the plan plus what the engine adds at run time.
#[derive(Debug)]
pub(crate) struct StepSpec<'a> {
    pub plan: &'a StepPlan,
    pub role: Role,
    /// Position among the pipeline's steps (or services); keeps container names unique even
    /// when two names sanitize to the same string.
    pub index: usize,
    /// `plan.environment` plus the step's secrets and the build status.
    pub env: BTreeMap<String, String>,
    /// The generated script when the step has `commands`.
    pub script: Option<String>,
    /// Lines for the step's log once it has started (missing secrets).
    pub warnings: Vec<String>,
}

/// The variables that tell a step whether the pipeline has failed so far.
const STATUS_VARS: [&str; 2] = ["DRONE_BUILD_STATUS", "CI_BUILD_STATUS"];

impl<'a> StepSpec<'a> {
    /// Resolves secrets: only those the step names, each into the variable it asked for. A
    /// missing secret becomes an empty variable and a warning for the step's log, the way
    /// Drone behaves, so the step (not the engine) decides whether that is fatal. `failed`:
    /// whether the pipeline has failed so far (see [`StepSpec::set_build_status`]).
    pub(crate) fn prepare(
        plan: &'a StepPlan,
        role: Role,
        index: usize,
        secrets: &BTreeMap<String, String>,
        failed: bool,
    ) -> StepSpec<'a> {
        let mut env = plan.environment.clone();
        let mut warnings = Vec::new();
        for wanted in &plan.secrets {
            let value = match secrets.get(&wanted.secret) {
                Some(value) => value.clone(),
                None => {
                    warnings.push(format!(
                        "warning: secret `{}` is not available to this build; {} is empty",
                        wanted.secret, wanted.env
                    ));
                    String::new()
                }
            };
            env.insert(wanted.env.clone(), value);
        }
        let script = (!plan.commands.is_empty()).then(|| script(&plan.commands));
        let mut spec = StepSpec {
            plan,
            role,
            index,
            env,
            script,
            warnings,
        };
        spec.set_build_status(failed);
        spec
    }

    /// Sets `DRONE_BUILD_STATUS` and `CI_BUILD_STATUS` to `failure` or `success`, as Drone
    /// does when a step starts (the plan can only say `success`).
    pub(crate) fn set_build_status(&mut self, failed: bool) {
        let status = if failed { "failure" } else { "success" };
        for var in STATUS_VARS {
            self.env.insert(var.to_string(), status.to_string());
        }
    }
}

/// A name Docker accepts for containers and volumes (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`), derived
/// from a user-chosen one.
pub(crate) fn sanitize(name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(48)
        .collect();
    if clean.is_empty() {
        "x".to_string()
    } else {
        clean
    }
}
