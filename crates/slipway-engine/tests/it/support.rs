//! Plan builders, a collecting event sink and the leftover check shared by the tests.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use bollard::Docker;
use slipway_engine::{
    BuildReport, Event, EventSink, RunOptions, StepReport, WorkspaceSource, cleanup,
};
use slipway_spec::plan::{
    ClonePlan, PipelinePlan, PipelineType, Plan, PullPolicy, RunOn, StepPlan,
};
use tokio_util::sync::CancellationToken;

pub type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

pub fn image() -> String {
    std::env::var("SLIPWAY_TEST_IMAGE").unwrap_or_else(|_| "slipway-test/busybox:latest".into())
}

pub fn step(name: &str, commands: &[&str]) -> StepPlan {
    StepPlan {
        name: name.to_string(),
        image: image(),
        commands: commands.iter().map(|c| c.to_string()).collect(),
        entrypoint: None,
        command: None,
        environment: BTreeMap::new(),
        secrets: Vec::new(),
        depends_on: Vec::new(),
        skipped: false,
        run_on: RunOn::default(),
        detach: false,
        privileged: false,
        failure_ignore: false,
        volumes: Vec::new(),
        // The test image is local and no registry is reachable.
        pull: PullPolicy::Never,
        user: None,
        timeout_secs: None,
        settings: BTreeMap::new(),
    }
}

pub fn after(mut step: StepPlan, deps: &[&str]) -> StepPlan {
    step.depends_on = deps.iter().map(|d| d.to_string()).collect();
    step
}

pub fn pipeline(name: &str, steps: Vec<StepPlan>) -> PipelinePlan {
    PipelinePlan {
        name: name.to_string(),
        kind: PipelineType::Docker,
        skipped: false,
        depends_on: Vec::new(),
        run_on: RunOn::default(),
        clone: ClonePlan {
            disable: true,
            depth: None,
        },
        workspace: "/drone/src".to_string(),
        timeout_secs: None,
        labels: BTreeMap::new(),
        volumes: Vec::new(),
        services: Vec::new(),
        steps,
    }
}

pub fn exec_pipeline(name: &str, steps: Vec<StepPlan>) -> PipelinePlan {
    PipelinePlan {
        kind: PipelineType::Exec,
        ..pipeline(name, steps)
    }
}

pub fn options(work_root: &Path) -> RunOptions {
    RunOptions {
        workspace: WorkspaceSource::Empty,
        secrets: BTreeMap::new(),
        trusted: false,
        cancel: CancellationToken::new(),
        work_root: work_root.to_path_buf(),
        default_step_timeout: None,
        build_timeout: None,
        native_plugins: true,
        notify_api: Default::default(),
        own_registry: None,
        cache_scope: None,
        deployer: None,
    }
}

/// Records every event with the moment it arrived.
#[derive(Debug, Default)]
pub struct Collector {
    events: Mutex<Vec<(Instant, Event)>>,
}

impl EventSink for Collector {
    fn event(&self, event: Event) {
        self.lock().push((Instant::now(), event));
    }
}

impl Collector {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Instant, Event)>> {
        self.events.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn events(&self) -> Vec<Event> {
        self.lock().iter().map(|(_, e)| e.clone()).collect()
    }

    /// Log lines of one step (or service), in order.
    pub fn logs(&self, step_name: &str) -> Vec<String> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Log { step, line, .. } if step == step_name => Some(line),
                _ => None,
            })
            .collect()
    }

    pub fn all_logs(&self) -> Vec<String> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Log { line, .. } => Some(line),
                _ => None,
            })
            .collect()
    }

    /// Position in the event sequence of the first event matching `f`.
    pub fn position(&self, f: impl Fn(&Event) -> bool) -> Option<usize> {
        self.events().iter().position(f)
    }
}

pub async fn run(
    plan: &Plan,
    options: RunOptions,
) -> Result<(BuildReport, Arc<Collector>), slipway_engine::EngineError> {
    let sink = Arc::new(Collector::default());
    let report = slipway_engine::run(plan, options, sink.clone()).await?;
    Ok((report, sink))
}

pub fn plan(pipelines: Vec<PipelinePlan>) -> Plan {
    Plan { pipelines }
}

pub fn step_report<'a>(report: &'a BuildReport, pipeline: &str, step: &str) -> &'a StepReport {
    let pipeline = report
        .pipelines
        .iter()
        .find(|p| p.name == pipeline)
        .unwrap_or_else(|| panic!("no pipeline {pipeline} in {report:#?}"));
    pipeline
        .steps
        .iter()
        .find(|s| s.name == step)
        .unwrap_or_else(|| panic!("no step {step} in {pipeline:#?}"))
}

pub async fn docker() -> Result<Docker, bollard::errors::Error> {
    Docker::connect_with_local_defaults()?
        .negotiate_version()
        .await
}

/// Test 10: nothing labelled with this build id may remain on the Docker engine (images
/// included: an untrusted build's).
pub async fn assert_clean(build_id: &str) -> TestResult {
    let docker = docker().await?;
    let label = format!("{}={build_id}", cleanup::LABEL_BUILD);
    let left = cleanup::labelled(&docker, &label).await?;
    assert!(
        left.is_empty(),
        "build {build_id} left containers {:?}, networks {:?}, volumes {:?}, images {:?}",
        left.containers.iter().map(|c| &c.names).collect::<Vec<_>>(),
        left.networks.iter().map(|n| &n.name).collect::<Vec<_>>(),
        left.volumes.iter().map(|v| &v.name).collect::<Vec<_>>(),
        left.images
            .iter()
            .map(|i| (&i.id, &i.repo_tags))
            .collect::<Vec<_>>(),
    );
    Ok(())
}

/// Also checks that the work root holds nothing any more (workspaces removed) but the
/// engine's spare directories, every one of them empty.
pub fn assert_work_root_empty(work_root: &Path) -> TestResult {
    let mut left = Vec::new();
    for entry in std::fs::read_dir(work_root)? {
        let entry = entry?;
        if entry.file_name() != ".slipway-spare" {
            left.push(entry.path());
            continue;
        }
        for spare in std::fs::read_dir(entry.path())? {
            let spare = spare?.path();
            if std::fs::read_dir(&spare)?.next().is_some() {
                left.push(spare);
            }
        }
    }
    assert!(left.is_empty(), "work root still holds {left:?}");
    Ok(())
}

/// A cache scope no other test (or earlier run) uses.
pub fn unique_scope(tag: &str) -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!(
        "test-{tag}-{}-{nanos}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Removes every cache volume of the given scopes when dropped, so a failing test leaves
/// none behind either (the engine itself never removes them).
pub struct CacheScopes(pub Vec<String>);

impl CacheScopes {
    /// The cache volumes of these scopes that exist now.
    pub fn volumes(&self) -> Vec<String> {
        let mut names = Vec::new();
        for scope in &self.0 {
            let out = std::process::Command::new("docker")
                .args(["volume", "ls", "-q", "--filter"])
                .arg(format!(
                    "label={}={scope}",
                    slipway_engine::cache::LABEL_CACHE
                ))
                .output()
                .expect("docker runs");
            names.extend(
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .map(str::to_owned),
            );
        }
        names
    }
}

impl Drop for CacheScopes {
    fn drop(&mut self) {
        let volumes = self.volumes();
        if !volumes.is_empty() {
            let _ = std::process::Command::new("docker")
                .args(["volume", "rm", "-f"])
                .args(&volumes)
                .output();
        }
    }
}
