//! The native `plugins/docker` step against the real Docker engine and a real registry
//! (Slipway's own, served in-process on 127.0.0.1, which Docker reaches over plain HTTP
//! because 127.0.0.0/8 is an insecure registry by default).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use slipway_engine::{Event, RegistryCredential, Status, WorkspaceSource};
use slipway_registry::{Registry, RegistryConfig, StaticAuthenticator};
use slipway_spec::plan::{PipelinePlan, SecretEnv, StepPlan};

use crate::support::*;

const ADMIN_TOKEN: &str = "native-plugin-admin-token-0123456789";

/// A registry on its own thread and runtime (so blocking `docker` commands in a test never
/// stall it); stopped when dropped.
struct TestRegistry {
    addr: SocketAddr,
    registry: Registry,
    _dir: tempfile::TempDir,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TestRegistry {
    fn start() -> Result<TestRegistry, Box<dyn std::error::Error + Send + Sync>> {
        let dir = tempfile::tempdir()?;
        let registry = Registry::open(
            RegistryConfig::new(dir.path().join("registry")),
            Arc::new(StaticAuthenticator::new().with_admin(ADMIN_TOKEN)),
        )?;
        let router = registry.router();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::bind("127.0.0.1:0").await else {
                    return;
                };
                let _ = addr_tx.send(listener.local_addr());
                let _ = axum::serve(listener, router)
                    .with_graceful_shutdown(async {
                        let _ = stop.await;
                    })
                    .await;
            });
        });
        let addr = addr_rx.recv_timeout(Duration::from_secs(10))??;
        Ok(TestRegistry {
            addr,
            registry,
            _dir: dir,
            shutdown: Some(shutdown),
        })
    }

    fn host(&self) -> String {
        self.addr.to_string()
    }

    fn admin(&self) -> RegistryCredential {
        RegistryCredential {
            host: self.host(),
            username: "admin".into(),
            password: ADMIN_TOKEN.into(),
        }
    }

    fn tags(&self, repo: &str) -> Vec<String> {
        let name = slipway_registry::name::RepoName::parse(repo);
        let mut tags = name
            .and_then(|name| self.registry.store().tags(&name).ok().flatten())
            .unwrap_or_default();
        tags.sort();
        tags
    }

    fn tag_digest(&self, repo: &str, tag: &str) -> Option<String> {
        let name = slipway_registry::name::RepoName::parse(repo)?;
        let info = self.registry.store().tag(&name, tag).ok().flatten()?;
        Some(info.digest.to_string())
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

pub(crate) type Error = Box<dyn std::error::Error + Send + Sync>;

pub(crate) fn run_cmd(cmd: &mut Command) -> Result<String, Error> {
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

pub(crate) fn git(dir: &Path, args: &[&str]) -> Result<String, Error> {
    run_cmd(
        Command::new("git")
            .arg("-C")
            .arg(dir)
            .args([
                "-c",
                "user.name=Test",
                "-c",
                "user.email=test@example.invalid",
            ])
            .args(args),
    )
}

/// A git repository holding `files`, committed on `develop`; returns the commit id.
pub(crate) fn repo_with(dir: &Path, files: &[(&str, &str)]) -> Result<String, Error> {
    if !dir.join(".git").exists() {
        git(dir, &["init", "-q", "-b", "develop"])?;
    }
    for (path, content) in files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, content)?;
    }
    git(dir, &["add", "-A"])?;
    git(dir, &["commit", "-q", "--allow-empty", "-m", "change"])?;
    git(dir, &["rev-parse", "HEAD"])
}

pub(crate) fn with_git(options: &mut slipway_engine::RunOptions, repo: &Path, commit: &str) {
    options.workspace = WorkspaceSource::Git {
        repo: repo.to_path_buf(),
        commit: commit.to_string(),
        depth: None,
    };
}

pub(crate) fn cloned(mut p: PipelinePlan) -> PipelinePlan {
    p.clone.disable = false;
    p
}

/// A `plugins/docker` step with `settings` as written in a file.
pub(crate) fn docker_step(name: &str, settings: Value) -> StepPlan {
    let mut s = step(name, &[]);
    s.image = "plugins/docker".into();
    if let Value::Object(map) = settings {
        s.settings = map.into_iter().collect();
    }
    s.environment
        .insert("DRONE_COMMIT_SHA".into(), "0123456789abcdef".into());
    s.environment
        .insert("DRONE_REPO_BRANCH".into(), "main".into());
    s
}

/// The artifacts the build reported.
fn artifacts(events: &Collector) -> Vec<(String, Vec<String>, String)> {
    events
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Artifact {
                image,
                tags,
                digest,
                ..
            } => Some((image, tags, digest)),
            _ => None,
        })
        .collect()
}

pub(crate) fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{nanos}", std::process::id())
}

const APP_DOCKERFILE: &str = "FROM slipway-test/busybox:latest\nCOPY out/app /usr/local/bin/app\nCMD [\"/usr/local/bin/app\"]\n";

#[tokio::test]
async fn docker_plugin_builds_and_pushes_to_the_own_registry() -> TestResult {
    let registry = TestRegistry::start()?;
    let repo = tempfile::tempdir()?;
    let commit = repo_with(
        repo.path(),
        &[
            ("Dockerfile", APP_DOCKERFILE),
            ("src/app.sh", "#!/bin/sh\necho hello from the app\n"),
        ],
    )?;
    let work = tempfile::tempdir()?;
    let mut options = options(work.path());
    // Pushes: only trusted builds do.
    options.trusted = true;
    with_git(&mut options, repo.path(), &commit);
    options.own_registry = Some(registry.admin());
    let compile = step(
        "compile",
        &["mkdir -p out", "cp src/app.sh out/app", "chmod +x out/app"],
    );
    let publish = after(
        docker_step(
            "publish",
            json!({"repo": "team/app", "tags": ["develop-14", "latest"], "username": "ignored", "password": "ignored-too"}),
        ),
        &["compile"],
    );
    let p = cloned(pipeline("app", vec![compile, publish]));
    let (report, events) = run(&plan(vec![p]), options).await?;

    let logs = events.logs("publish");
    assert_eq!(report.status, Status::Success, "{report:#?}\n{logs:#?}");
    assert!(logs[0].contains("runs natively"), "{logs:#?}");
    assert!(logs.iter().any(|l| l.starts_with("Step 1/")), "{logs:#?}");
    assert!(
        logs.iter().any(|l| l.contains("own registry")),
        "the own registry's credential is used: {logs:#?}"
    );
    let image = format!("{}/team/app", registry.host());
    let found = artifacts(&events);
    assert_eq!(found.len(), 1, "{found:?}");
    let (pushed, tags, digest) = &found[0];
    assert_eq!(pushed, &image);
    assert_eq!(tags, &vec!["develop-14".to_string(), "latest".to_string()]);
    assert!(digest.starts_with("sha256:"), "{digest}");
    assert_eq!(
        registry.tag_digest("team/app", "develop-14").as_ref(),
        Some(digest)
    );
    assert_eq!(registry.tags("team/app"), vec!["develop-14", "latest"]);
    // One line per layer, not one per chunk.
    let layer_lines = logs.iter().filter(|l| l.starts_with("layer ")).count();
    assert!(
        (4..=8).contains(&layer_lines) && !logs.iter().any(|l| l.contains("Pushing")),
        "{logs:#?}"
    );

    // What a deploy would do: pull the tag from the registry and get the same image.
    let config = tempfile::tempdir()?;
    let docker_cli = |args: &[&str]| {
        run_cmd(
            Command::new("docker")
                .env("DOCKER_CONFIG", config.path())
                .args(args),
        )
    };
    let reference = format!("{image}:develop-14");
    docker_cli(&["rmi", &reference, &format!("{image}:latest")])?;
    docker_cli(&["login", "-u", "admin", "-p", ADMIN_TOKEN, &registry.host()])?;
    docker_cli(&["pull", &reference])?;
    let digests = docker_cli(&[
        "image",
        "inspect",
        "--format",
        "{{json .RepoDigests}}",
        &reference,
    ])?;
    assert!(
        digests.contains(&format!("{image}@{digest}")),
        "pulled {digests}, pushed {digest}"
    );
    let output = docker_cli(&["run", "--rm", &reference])?;
    assert_eq!(output, "hello from the app");
    let _ = docker_cli(&["rmi", &reference]);
    assert_clean(&report.build_id).await?;
    assert_work_root_empty(work.path())
}

#[tokio::test]
async fn docker_plugin_auto_tag_pushes_semver_tags() -> TestResult {
    let registry = TestRegistry::start()?;
    let repo = tempfile::tempdir()?;
    let commit = repo_with(
        repo.path(),
        &[(
            "Dockerfile",
            "FROM slipway-test/busybox:latest\nCOPY Dockerfile /\n",
        )],
    )?;
    let work = tempfile::tempdir()?;
    let mut options = options(work.path());
    // Pushes: only trusted builds do.
    options.trusted = true;
    with_git(&mut options, repo.path(), &commit);
    options.own_registry = Some(registry.admin());
    let mut release = docker_step("release", json!({"repo": "team/semver", "auto_tag": true}));
    release
        .environment
        .insert("DRONE_COMMIT_REF".into(), "refs/tags/v1.2.3".into());
    release
        .environment
        .insert("DRONE_TAG".into(), "v1.2.3".into());
    // A push to a branch that is not the default one builds nothing with auto_tag.
    let mut branch = docker_step("branch", json!({"repo": "team/semver", "auto_tag": true}));
    branch
        .environment
        .insert("DRONE_COMMIT_REF".into(), "refs/heads/feature".into());
    let p = cloned(pipeline("tags", vec![release, branch]));
    let (report, events) = run(&plan(vec![p]), options).await?;

    assert_eq!(
        report.status,
        Status::Success,
        "{report:#?}\n{:#?}",
        events.all_logs()
    );
    assert_eq!(registry.tags("team/semver"), vec!["1", "1.2", "1.2.3"]);
    assert!(
        events.logs("branch").iter().any(|l| l.contains("skipping")),
        "{:#?}",
        events.logs("branch")
    );
    let found = artifacts(&events);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].1, vec!["1", "1.2", "1.2.3"]);
    assert_clean(&report.build_id).await
}

#[tokio::test]
async fn docker_plugin_wrong_password_fails_with_a_clear_masked_message() -> TestResult {
    let registry = TestRegistry::start()?;
    let repo = tempfile::tempdir()?;
    let commit = repo_with(
        repo.path(),
        &[(
            "Dockerfile",
            "FROM slipway-test/busybox:latest\nCOPY Dockerfile /\n",
        )],
    )?;
    let work = tempfile::tempdir()?;
    let mut options = options(work.path());
    // Pushes: only trusted builds do.
    options.trusted = true;
    with_git(&mut options, repo.path(), &commit);
    let password = "wrong-password-3f9a7c";
    options
        .secrets
        .insert("registry_password".into(), password.into());
    let mut publish = docker_step(
        "publish",
        json!({"registry": registry.host(), "repo": format!("{}/team/denied", registry.host()), "username": "admin"}),
    );
    publish.secrets.push(SecretEnv {
        env: "PLUGIN_PASSWORD".into(),
        secret: "registry_password".into(),
    });
    let p = cloned(pipeline("denied", vec![publish]));
    let (report, events) = run(&plan(vec![p]), options).await?;

    let step = step_report(&report, "denied", "publish");
    let logs = events.logs("publish");
    assert_eq!(step.status, Status::Failure, "{report:#?}\n{logs:#?}");
    let error = step.error.clone().unwrap_or_default();
    assert!(
        error.contains(&format!(
            "pushing {}/team/denied:latest to {}",
            registry.host(),
            registry.host()
        )) && error.contains("refused the credentials of `admin`"),
        "{error}"
    );
    assert!(
        logs.iter().any(|l| l.starts_with("error: pushing")),
        "{logs:#?}"
    );
    let everything = format!("{:?}", events.events());
    assert!(
        !everything.contains(password),
        "the password leaked: {everything}"
    );
    assert!(!format!("{report:?}").contains(password));
    assert!(registry.tags("team/denied").is_empty());
    assert_clean(&report.build_id).await
}

#[tokio::test]
async fn docker_plugin_second_build_reuses_the_base_layers() -> TestResult {
    let repo = tempfile::tempdir()?;
    let marker = unique("base");
    let dockerfile = format!(
        "FROM slipway-test/busybox:latest\nRUN echo {marker} > /base.txt\nCOPY app.txt /app.txt\n"
    );
    let first = repo_with(
        repo.path(),
        &[("Dockerfile", &dockerfile), ("app.txt", "one\n")],
    )?;
    let build = |commit: String| {
        let repo = repo.path().to_path_buf();
        async move {
            let work = tempfile::tempdir()?;
            let mut options = options(work.path());
            // Layers stay as cache after trusted builds (an untrusted one's are removed).
            options.trusted = true;
            with_git(&mut options, &repo, &commit);
            let image = docker_step(
                "image",
                json!({"repo": "slipway-test/cache-check", "tags": "cache", "dry_run": true}),
            );
            let (report, events) =
                run(&plan(vec![cloned(pipeline("cache", vec![image]))]), options).await?;
            assert_eq!(
                report.status,
                Status::Success,
                "{report:#?}\n{:#?}",
                events.all_logs()
            );
            assert_clean(&report.build_id).await?;
            Ok::<_, Error>(events.logs("image"))
        }
    };
    let logs = build(first).await?;
    let run_step = logs
        .iter()
        .position(|l| l.contains(&format!("RUN echo {marker}")));
    assert!(run_step.is_some(), "{logs:#?}");
    assert!(
        logs.iter().any(|l| l.contains("dry_run: not pushing")),
        "{logs:#?}"
    );

    let second = repo_with(repo.path(), &[("app.txt", "two\n")])?;
    let logs = build(second).await?;
    let at = logs
        .iter()
        .position(|l| l.contains(&format!("RUN echo {marker}")))
        .ok_or("no RUN step in the second build")?;
    assert!(
        logs[at + 1..]
            .first()
            .is_some_and(|l| l.contains("Using cache")),
        "the base layer is rebuilt: {logs:#?}"
    );
    let copy = logs
        .iter()
        .position(|l| l.contains("COPY app.txt"))
        .ok_or("no COPY step")?;
    assert!(
        !logs[copy + 1].contains("Using cache"),
        "the changed file is copied again: {logs:#?}"
    );
    let _ = Command::new("docker")
        .args(["rmi", "slipway-test/cache-check:cache"])
        .output();
    Ok(())
}

#[tokio::test]
async fn docker_plugin_honours_dockerignore() -> TestResult {
    let repo = tempfile::tempdir()?;
    let commit = repo_with(
        repo.path(),
        &[
            (
                "Dockerfile",
                "FROM slipway-test/busybox:latest\nCOPY . /ctx\nRUN test ! -e /ctx/secret.txt && test ! -e /ctx/logs/debug.log && test -e /ctx/logs/keep.log && test -e /ctx/kept.txt && echo context-ok\n",
            ),
            (
                ".dockerignore",
                "# not for the image\nsecret.txt\nlogs\n!logs/keep.log\nDockerfile\n",
            ),
            ("secret.txt", "do not ship\n"),
            ("kept.txt", "ship\n"),
            ("logs/debug.log", "noise\n"),
            ("logs/keep.log", "keep\n"),
        ],
    )?;
    let work = tempfile::tempdir()?;
    let mut options = options(work.path());
    with_git(&mut options, repo.path(), &commit);
    let image = docker_step("image", json!({"dry_run": true}));
    let (report, events) = run(
        &plan(vec![cloned(pipeline("ignore", vec![image]))]),
        options,
    )
    .await?;
    let logs = events.logs("image");
    assert_eq!(report.status, Status::Success, "{report:#?}\n{logs:#?}");
    assert!(logs.iter().any(|l| l == "context-ok"), "{logs:#?}");
    assert_clean(&report.build_id).await
}

#[tokio::test]
async fn docker_plugin_bad_dockerfile_fails_the_step() -> TestResult {
    let repo = tempfile::tempdir()?;
    let commit = repo_with(
        repo.path(),
        &[(
            "Dockerfile",
            "FROM slipway-test/busybox:latest\nFORM nothing\n",
        )],
    )?;
    let work = tempfile::tempdir()?;
    let mut options = options(work.path());
    with_git(&mut options, repo.path(), &commit);
    let bad = docker_step("bad", json!({"dry_run": true}));
    let missing = docker_step(
        "missing",
        json!({"dry_run": true, "dockerfile": "docker/Dockerfile.prod"}),
    );
    let mut missing = missing;
    missing.run_on.failure = true;
    let p = cloned(pipeline("bad", vec![bad, after(missing, &["bad"])]));
    let (report, events) = run(&plan(vec![p]), options).await?;
    let bad = step_report(&report, "bad", "bad");
    assert_eq!(bad.status, Status::Failure, "{report:#?}");
    let error = bad.error.clone().unwrap_or_default();
    assert!(
        error.starts_with("building the image failed:") && error.contains("FORM"),
        "{error}"
    );
    let missing = step_report(&report, "bad", "missing");
    let error = missing.error.clone().unwrap_or_default();
    assert!(
        error.contains("setting `dockerfile`") && error.contains("docker/Dockerfile.prod"),
        "{error}\n{:#?}",
        events.logs("missing")
    );
    assert_clean(&report.build_id).await
}

#[tokio::test]
async fn docker_plugin_unavailable_plugins_fail_at_once() -> TestResult {
    let work = tempfile::tempdir()?;
    let mut rsync = step("rsync", &[]);
    rsync.image = "drillster/drone-rsync".into();
    rsync.pull = slipway_spec::plan::PullPolicy::Always;
    let started = Instant::now();
    let (report, events) = run(
        &plan(vec![pipeline("sync", vec![rsync])]),
        options(work.path()),
    )
    .await?;
    assert!(started.elapsed() < Duration::from_secs(10));
    let rsync = step_report(&report, "sync", "rsync");
    assert_eq!(rsync.status, Status::Error, "{report:#?}");
    let error = rsync.error.clone().unwrap_or_default();
    assert!(
        error.contains("plugin `drillster/drone-rsync` is not available natively yet"),
        "{error}\n{:#?}",
        events.logs("rsync")
    );
    assert_clean(&report.build_id).await
}

/// The seeds' legacy Harbor + Rancher + WeChat pipeline, its registry pointed at the test
/// registry: the image is built and pushed on a push to `develop`; the Rancher step fails
/// at once with the "not available" message (and the WeChat step, `status: success`,
/// is skipped after it).
#[tokio::test]
async fn docker_plugin_seed_legacy_harbor_rancher_wechat() -> TestResult {
    let seed = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/examples/legacy-harbor-rancher-wechat.drone.yml");
    let Ok(text) = std::fs::read_to_string(&seed) else {
        eprintln!("skipping: {} is not there", seed.display());
        return Ok(());
    };
    let registry = TestRegistry::start()?;
    let text = text.replace("harbor.company.com", &registry.host());
    let repo = tempfile::tempdir()?;
    let commit = repo_with(
        repo.path(),
        &[
            (".drone.yml", &text),
            (
                "Dockerfile",
                "FROM slipway-test/busybox:latest\nCOPY index.html /www/index.html\n",
            ),
            ("index.html", "<h1>test</h1>\n"),
        ],
    )?;
    let ctx = slipway_spec::BuildContext {
        event: slipway_spec::BuildEvent::Push,
        branch: "develop".into(),
        reference: "refs/heads/develop".into(),
        commit: commit.clone(),
        repo: "company/test".into(),
        default_branch: "main".into(),
        build_number: 14,
        ..Default::default()
    };
    let compiled = slipway_spec::compile(&text, &ctx).map_err(|d| format!("{d:?}"))?;
    let mut plan = compiled.plan;
    for pipeline in &mut plan.pipelines {
        for step in &mut pipeline.steps {
            // The test image is local; nothing may be pulled from the internet.
            step.pull = slipway_spec::plan::PullPolicy::IfNotExists;
        }
    }
    let work = tempfile::tempdir()?;
    let mut options = options(work.path());
    // Pushes: only trusted builds do.
    options.trusted = true;
    with_git(&mut options, repo.path(), &commit);
    options.own_registry = Some(registry.admin());
    let started = Instant::now();
    let (report, events) = run(&plan, options).await?;
    let pipeline = &report.pipelines[0].name;

    let build = step_report(&report, pipeline, "build_step");
    assert_eq!(
        build.status,
        Status::Success,
        "{report:#?}\n{:#?}",
        events.logs("build_step")
    );
    assert_eq!(registry.tags("registry/test"), vec!["dev"]);
    let found = artifacts(&events);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, format!("{}/registry/test", registry.host()));
    assert!(
        events
            .logs("build_step")
            .iter()
            .any(|l| l.contains("setting `mirror`") && l.contains("ignored")),
        "{:#?}",
        events.logs("build_step")
    );
    // Native now, but this engine has no server to deploy through.
    let rancher = step_report(&report, pipeline, "rancher");
    assert_eq!(rancher.status, Status::Failure, "{report:#?}");
    assert!(
        rancher
            .error
            .as_deref()
            .is_some_and(|e| e.contains("peloton/drone-rancher needs a Slipway server")),
        "{rancher:#?}"
    );
    let lines = events.logs("rancher");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("`access_key` is not needed")),
        "{lines:#?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("rancher secret key")),
        "{lines:#?}"
    );
    assert!(rancher.duration < Duration::from_secs(5), "{rancher:#?}");
    assert_eq!(
        step_report(&report, pipeline, "report-deploy").status,
        Status::Skipped
    );
    assert_eq!(report.status, Status::Failure);
    assert!(started.elapsed() < Duration::from_secs(120));
    let _ = Command::new("docker")
        .args(["rmi", &format!("{}/registry/test:dev", registry.host())])
        .output();
    assert_clean(&report.build_id).await
}
