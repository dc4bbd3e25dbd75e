//! What the caller decides about a build: where the source comes from, which secrets exist,
//! how much trust and time it gets, whether well-known plugins run natively and with which
//! credential they reach the server's own registry, and how to stop it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::deployer::Deployer;

/// How one build is run. The plan says *what* runs; this says *with what*.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Where the content of the workspace (`/drone/src`) comes from.
    pub workspace: WorkspaceSource,
    /// Secret name -> value. A step only receives the secrets its `StepPlan::secrets` names;
    /// every value is masked in every log line of the build.
    pub secrets: BTreeMap<String, String>,
    /// Host volumes and privileged containers are refused unless this is true; when false,
    /// native `plugins/docker` images get build-scoped names only, are never pushed and are
    /// removed when the build ends. The server gives `repository.trusted && !pull_request`.
    pub trusted: bool,
    /// Cancelling it kills everything running, skips the rest and returns status `Killed`.
    pub cancel: CancellationToken,
    /// A directory where per-build workspaces are created (and removed afterwards).
    pub work_root: PathBuf,
    /// Time limit for steps that have no `timeout_secs` of their own.
    pub default_step_timeout: Option<Duration>,
    /// Time limit for the whole build, on top of each pipeline's `timeout_secs`.
    pub build_timeout: Option<Duration>,
    /// Run well-known plugin steps (`plugins/docker`, the notification plugins) natively, with no plugin container,
    /// and fail known plugins that are not native yet at once when their image is not on
    /// the engine (instead of a pull that could hang offline). `true` is the default
    /// callers should use; `false` runs every plugin image as an ordinary container.
    pub native_plugins: bool,
    /// The server's own registry: a native `plugins/docker` step without `registry` (and
    /// an unqualified `repo`), or with this `host`, pushes there with this credential
    /// (a short-lived token), whatever `username`/`password` it names. Its password is
    /// masked like a secret.
    pub own_registry: Option<RegistryCredential>,
    /// Which dependency caches (`cache: {}` volumes) this build reads and writes: builds
    /// with the same scope share them, builds with another never see them. The server
    /// gives `repo-<id>` to branch and tag builds and `repo-<id>-pr` to pull requests (so an
    /// untrusted change cannot fill the caches trusted builds read); `slipway exec` gives
    /// `local-<hash of the checkout's path>`. `None`: cache volumes are temp volumes (empty,
    /// removed after the build), with a warning in the log of each step mounting one.
    pub cache_scope: Option<String>,
    /// API bases for native notification steps, per kind (`--notify-api KIND=URL`): a
    /// WeChat Work proxy, a self-hosted Feishu/Lark, or a test's stand-in. Kinds not named
    /// reach the service's own API.
    pub notify_api: BTreeMap<slipway_notify::Kind, String>,
    /// Carries out native deploy steps (`slipway/deploy`, `peloton/drone-rancher`): the
    /// runner's connection to its server. `None` (`slipway exec`): such steps fail saying
    /// they need a server.
    pub deployer: Option<Arc<dyn Deployer>>,
}

/// A registry and the account to push to it with.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryCredential {
    /// `host[:port]`, as in image references (`127.0.0.1:5000`, `registry.example.com`).
    pub host: String,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for RegistryCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryCredential")
            .field("host", &self.host)
            .field("username", &self.username)
            .field("password", &"******")
            .finish()
    }
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
