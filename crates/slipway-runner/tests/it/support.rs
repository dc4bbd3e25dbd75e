//! Plans from YAML, leases, and a runner started against a fake server.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use slipway_runner::protocol::{Lease, WorkspaceSpec};
use slipway_runner::{RunnerConfig, RunnerError};
use slipway_spec::{BuildContext, Plan};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::fake::TOKEN;

pub fn image() -> String {
    std::env::var("SLIPWAY_TEST_IMAGE").unwrap_or_else(|_| "slipway-test/busybox:latest".into())
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "slipway_runner=debug,info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A one-pipeline plan with these steps (name, commands), compiled from YAML like a real
/// build's. The clone is disabled unless `clone`.
pub fn plan(steps: &[(&str, &[&str])], clone: bool) -> Plan {
    let mut yaml = String::from("kind: pipeline\ntype: docker\nname: default\n");
    if !clone {
        yaml.push_str("clone:\n  disable: true\n");
    }
    yaml.push_str("steps:\n");
    for (name, commands) in steps {
        yaml.push_str(&format!(
            "  - name: {name}\n    image: {}\n    pull: never\n    commands:\n",
            image()
        ));
        for command in *commands {
            let quoted = serde_json::to_string(command).expect("quote a command");
            yaml.push_str(&format!("      - {quoted}\n"));
        }
    }
    let ctx = BuildContext {
        repo: "acme/app".into(),
        branch: "main".into(),
        reference: "refs/heads/main".into(),
        build_number: 1,
        ..BuildContext::default()
    };
    let compiled = match slipway_spec::compile(&yaml, &ctx) {
        Ok(compiled) => compiled,
        Err(diagnostics) => panic!("{yaml}\n{diagnostics:#?}"),
    };
    assert_eq!(compiled.plan.pipelines.len(), 1, "{yaml}");
    compiled.plan
}

pub fn lease(plan: Plan, workspace: WorkspaceSpec) -> Lease {
    Lease {
        stage_id: 42,
        attempt: 1,
        title: "acme/app#1 default".into(),
        plan,
        workspace,
        secrets: BTreeMap::new(),
        trusted: false,
        step_timeout_secs: None,
        stage_timeout_secs: Some(300),
        native_plugins: true,
        registry: None,
        cache_scope: None,
    }
}

#[derive(Debug)]
pub struct Runner {
    pub shutdown: CancellationToken,
    pub handle: JoinHandle<Result<(), RunnerError>>,
    _work: tempfile::TempDir,
}

pub fn config(addr: SocketAddr, work_root: &Path) -> RunnerConfig {
    RunnerConfig {
        server: format!("http://{addr}"),
        token: TOKEN.into(),
        name: "test-runner".into(),
        labels: BTreeMap::from([("zone".to_string(), "test".to_string())]),
        capacity: 1,
        work_root: work_root.to_path_buf(),
        poll_timeout: Duration::from_secs(1),
        notify_api: Default::default(),
        allow_exec: false,
    }
}

pub fn start_runner(addr: SocketAddr) -> Runner {
    start_runner_with(addr, |_| {})
}

/// [`start_runner`] with its configuration changed by `tweak`.
pub fn start_runner_with(addr: SocketAddr, tweak: impl FnOnce(&mut RunnerConfig)) -> Runner {
    init_tracing();
    let work = tempfile::tempdir().expect("work root");
    let shutdown = CancellationToken::new();
    let mut config = config(addr, work.path());
    tweak(&mut config);
    let handle = tokio::spawn(slipway_runner::run(config, shutdown.clone()));
    Runner {
        shutdown,
        handle,
        _work: work,
    }
}

impl Runner {
    /// Shuts the runner down and returns what `run` returned.
    pub async fn stop(self) -> Result<(), RunnerError> {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(60), self.handle)
            .await
            .expect("the runner stops after shutdown")
            .expect("the runner task does not panic")
    }
}
