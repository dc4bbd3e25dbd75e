//! What the caller decides about a build: where the source comes from, which secrets exist,
//! how much trust and time it gets, and how to stop it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How one build is run. The plan says *what* runs; this says *with what*.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Where the content of the workspace (`/drone/src`) comes from.
    pub workspace: WorkspaceSource,
    /// Secret name -> value. A step only receives the secrets its `StepPlan::secrets` names;
    /// every value is masked in every log line of the build.
    pub secrets: BTreeMap<String, String>,
    /// Host volumes and privileged containers are refused unless this is true.
    pub trusted: bool,
    /// Cancelling it kills everything running, skips the rest and returns status `Killed`.
    pub cancel: CancellationToken,
    /// A directory where per-build workspaces are created (and removed afterwards).
    pub work_root: PathBuf,
    /// Time limit for steps that have no `timeout_secs` of their own.
    pub default_step_timeout: Option<Duration>,
    /// Time limit for the whole build, on top of each pipeline's `timeout_secs`.
    pub build_timeout: Option<Duration>,
}

/// Where the workspace's content comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkspaceSource {
    /// `git clone` of `repo` (a local path, or a URL stored as a path: `https://…`,
    /// `ssh://…`, `git@host:…`), then checkout of `commit` (a commit id or a ref name).
    /// `depth` limits history; when `None`, the pipeline's `clone.depth` applies.
    Git {
        repo: PathBuf,
        commit: String,
        depth: Option<u32>,
    },
    /// An empty workspace (no clone pseudo-step).
    Empty,
}
