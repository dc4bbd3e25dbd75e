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
use crate::script::script;

/// Runs the steps and services of one pipeline.
///
/// Contract: everything a backend creates is recorded before it can fail or be interrupted
/// at a later point, and [`Backend::teardown`] removes all of it whatever state it is in, so
/// the scheduler only has to call `teardown` once at the end of the pipeline on every path.
pub(crate) trait Backend: Send + Sync {
    /// A started step or service.
    type Process: Send;

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

    /// Frees a finished process (removes its container) before the pipeline ends.
    fn remove(&self, process: Self::Process) -> impl Future<Output = ()> + Send;

    /// Kills and removes everything this backend created. Idempotent, never fails (problems
    /// are logged; the build's final sweep by label catches leftovers).
    fn teardown(&self) -> impl Future<Output = ()> + Send;
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
    /// `plan.environment` plus the step's secrets.
    pub env: BTreeMap<String, String>,
    /// The generated script when the step has `commands`.
    pub script: Option<String>,
}

impl<'a> StepSpec<'a> {
    /// Resolves secrets: only those the step names, each into the variable it asked for. A
    /// missing secret becomes an empty variable and a warning in the step's log, the way
    /// Drone behaves, so the step (not the engine) decides whether that is fatal.
    pub(crate) fn prepare(
        plan: &'a StepPlan,
        role: Role,
        index: usize,
        secrets: &BTreeMap<String, String>,
        log: &StepLog,
    ) -> StepSpec<'a> {
        let mut env = plan.environment.clone();
        for wanted in &plan.secrets {
            let value = match secrets.get(&wanted.secret) {
                Some(value) => value.clone(),
                None => {
                    log.line(&format!(
                        "warning: secret `{}` is not available to this build; {} is empty",
                        wanted.secret, wanted.env
                    ));
                    String::new()
                }
            };
            env.insert(wanted.env.clone(), value);
        }
        let script = (!plan.commands.is_empty()).then(|| script(&plan.commands));
        StepSpec {
            plan,
            role,
            index,
            env,
            script,
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
