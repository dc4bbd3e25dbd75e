//! The host backend (`type: exec` pipelines): each step is a `/bin/sh -c <script>` process on
//! this machine, in the workspace directory, in a process group of its own so that killing
//! it also kills whatever it started.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use slipway_spec::plan::StepPlan;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Backend, StepSpec};
use crate::error::EngineError;
use crate::log::{LogStream, StepLog};

/// How long output readers may outlive the step's shell: a background process that inherited
/// stdout could otherwise keep the step "running" forever. The group is killed first, so this
/// only matters for processes that left the group.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub(crate) struct HostBackend {
    workspace: PathBuf,
    /// Process groups of started steps not yet reaped, for teardown.
    groups: Mutex<Vec<i32>>,
}

#[derive(Debug)]
pub(crate) struct HostProcess {
    child: Child,
    group: i32,
    output: Option<JoinHandle<()>>,
}

impl Drop for HostProcess {
    /// Only matters when the engine's future is dropped mid-step: `kill_on_drop` would kill
    /// the shell alone, leaving its children running. Killing is synchronous, so it is fine
    /// here.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            kill_group(self.group);
        }
    }
}

impl HostBackend {
    pub(crate) fn new(workspace: &Path) -> Self {
        HostBackend {
            workspace: workspace.to_path_buf(),
            groups: Mutex::default(),
        }
    }

    fn groups(&self) -> std::sync::MutexGuard<'_, Vec<i32>> {
        self.groups.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn forget(&self, group: i32) {
        self.groups().retain(|g| *g != group);
    }
}

impl Backend for HostBackend {
    type Process = HostProcess;
    /// A process starts in a few milliseconds: nothing to hide, nothing to prepare.
    type Prepared = std::convert::Infallible;

    fn can_prepare(&self, _step: &StepPlan) -> bool {
        false
    }

    async fn prepare(
        &self,
        step: &StepSpec<'_>,
        _abort: &CancellationToken,
    ) -> Result<Self::Prepared, EngineError> {
        Err(EngineError::refused(
            &step.plan.name,
            "exec pipelines do not pre-start steps",
        ))
    }

    async fn release(
        &self,
        prepared: Self::Prepared,
        _failed: bool,
        _log: StepLog,
    ) -> Result<HostProcess, EngineError> {
        match prepared {}
    }

    async fn discard(&self, prepared: Self::Prepared) {
        match prepared {}
    }

    async fn setup(&self) -> Result<(), EngineError> {
        Ok(())
    }

    async fn start(
        &self,
        step: &StepSpec<'_>,
        log: StepLog,
        _abort: &CancellationToken,
    ) -> Result<HostProcess, EngineError> {
        let plan = step.plan;
        let Some(script) = &step.script else {
            return Err(EngineError::refused(
                &plan.name,
                "has no `commands`; an exec pipeline runs commands on the host and cannot run \
                 an image's entrypoint",
            ));
        };
        if !plan.volumes.is_empty() {
            log.line("warning: volumes are ignored in exec pipelines");
        }
        let workspace = self.workspace.to_string_lossy().into_owned();
        let mut command = Command::new("/bin/sh");
        command
            .arg("-c")
            .arg(script)
            .current_dir(&self.workspace)
            // Only the step's environment: the runner's own variables (tokens, ...) must not
            // leak into builds. PATH and HOME are the exceptions a shell needs to work.
            .env_clear();
        for name in ["PATH", "HOME"] {
            if let Some(value) = std::env::var_os(name) {
                command.env(name, value);
            }
        }
        command.envs(&step.env);
        // The plan names the container path (`/drone/src`); here the workspace is a host dir.
        command
            .env("DRONE_WORKSPACE", &workspace)
            .env("CI_WORKSPACE", &workspace);
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(|e| {
            EngineError::io(format!("starting /bin/sh for step `{}`", plan.name), e)
        })?;
        let group = child
            .id()
            .and_then(|pid| i32::try_from(pid).ok())
            .ok_or_else(|| {
                EngineError::io(
                    format!("starting step `{}`", plan.name),
                    std::io::Error::other("the shell exited before it could be tracked"),
                )
            })?;
        self.groups().push(group);
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let output = tokio::spawn(async move {
            tokio::join!(
                read_into(stdout, log.stream()),
                read_into(stderr, log.stream())
            );
        });
        Ok(HostProcess {
            child,
            group,
            output: Some(output),
        })
    }

    async fn wait(&self, process: &mut HostProcess) -> Result<i64, EngineError> {
        let status = process
            .child
            .wait()
            .await
            .map_err(|e| EngineError::io("waiting for a step's shell", e))?;
        // Like a container's end: whatever the step left running in its group goes too.
        kill_group(process.group);
        self.forget(process.group);
        if let Some(output) = process.output.as_mut()
            && tokio::time::timeout(DRAIN_LIMIT, &mut *output)
                .await
                .is_err()
        {
            output.abort();
        }
        process.output = None;
        // Shell convention for a death by signal: 128 + signal number.
        Ok(status
            .code()
            .map(i64::from)
            .or_else(|| status.signal().map(|s| 128 + i64::from(s)))
            .unwrap_or(-1))
    }

    async fn kill(&self, process: &mut HostProcess) -> bool {
        let running = matches!(process.child.try_wait(), Ok(None));
        if running {
            kill_group(process.group);
        }
        running
    }

    async fn remove(&self, mut process: HostProcess) {
        if matches!(process.child.try_wait(), Ok(None)) {
            kill_group(process.group);
            let _ = process.child.wait().await;
        }
        self.forget(process.group);
        if let Some(output) = process.output.take() {
            output.abort();
        }
    }

    /// A host step could leave a process behind that escaped its group, but it could reach
    /// any directory of the runner's user anyway: host steps are not isolated from each
    /// other, so their workspace is always reusable.
    async fn teardown(&self) -> bool {
        let groups = std::mem::take(&mut *self.groups());
        for group in groups {
            kill_group(group);
        }
        true
    }
}

async fn read_into(pipe: Option<impl AsyncRead + Unpin>, mut stream: LogStream) {
    let Some(mut pipe) = pipe else { return };
    let mut buf = vec![0u8; 8192];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => stream.push(&buf[..n]),
        }
    }
    stream.finish();
}

/// SIGKILL to every process of the group led by `group`.
#[allow(unsafe_code)]
fn kill_group(group: i32) {
    // kill(-1) would signal every process we may signal, kill(0) our own group: never.
    if group <= 1 {
        return;
    }
    // SAFETY: kill(2) takes plain integers and touches no memory of ours; a negative pid
    // addresses a process group. The worst outcome of a wrong id is ESRCH or EPERM.
    let rc = unsafe { libc::kill(-group, libc::SIGKILL) };
    if rc != 0 {
        let error = std::io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::ESRCH) {
            tracing::warn!("killing process group {group}: {error}");
        }
    }
}
