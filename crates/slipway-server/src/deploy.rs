//! The deployer, wired to the server: a stack file and an environment's variables and
//! secrets read and planned by `slipway-deploy`, a numbered revision recorded, the
//! rollout run on the local Docker engine behind this process's edge proxy, every step
//! recorded, and the outcome (with its `deploy.*` notification) written in one transaction.
//!
//! Invariants:
//! - **One rollout a stack at a time**: a second deploy of a stack while one runs is
//!   refused (409), never queued behind it silently.
//! - **Images are pinned** before the revision is recorded: each service's image is pulled
//!   when missing and recorded by digest (or by image id for a local image), so a rollback
//!   runs exactly those bytes without a pull.
//! - **A restart leaves one revision**: at start, routes of every stack's current revision
//!   are put back in the proxy, and a rollout the last process did not finish is reverted
//!   to the current revision (or, for a first deploy, its containers are removed); the
//!   history says so.

mod step;

pub use step::{Started, from_step, progress};

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use slipway_deploy::compose::{self, Mode, ReadOptions};
use slipway_deploy::plan::{Environment, Plan};
use slipway_deploy::rollout::{Asked, Command, Control, Rollout, ServiceSpec};
use slipway_deploy::stack::{Overrides, StackEvent, deploy_stack, service_specs};
use slipway_deploy::target::{DockerTarget, RegistryAuth, Target};
use tokio::sync::OnceCell;

use crate::app::AppState;
use crate::events::ServerEvent;
use crate::store::{DeployNotice, EnvRow, NewRevision, RevisionRow, StackRow, StoreError};

/// Why a deploy could not start.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("{0}")]
    NotFound(String),
    #[error("the stack file has errors:\n{0}")]
    Invalid(String),
    #[error("{0}")]
    Refused(String),
    /// The caller may not deploy this at all (a pull request's pipeline step).
    #[error("{0}")]
    Forbidden(String),
    #[error("stack {0} is being deployed now; wait for it (or `slipway stack abort`)")]
    Busy(String),
    #[error(
        "the deployer needs the edge proxy of `slipway up` (started without --no-proxy): it routes the stacks' traffic"
    )]
    NoProxy,
    #[error("the Docker engine: {0}")]
    Engine(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The deployer's state in the server.
#[derive(Debug)]
pub struct Deployments {
    target: OnceCell<Arc<DockerTarget>>,
    /// Stacks (by id) claimed in this process, with the control of their rollout.
    running: Mutex<HashMap<i64, Option<Control>>>,
    /// Pulls from the built-in registry (`registry_host`) use this.
    registry_host: String,
    registry_auth: RegistryAuth,
}

/// What `POST /api/stacks/{env}/{stack}` asks.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct DeployRequest {
    /// The compose file's text.
    #[serde(default)]
    pub compose: String,
    /// Its name, for error positions (`compose.yaml`).
    #[serde(default)]
    pub file: Option<String>,
    /// A `rancher-compose.yml` beside it.
    #[serde(default)]
    pub rancher: Option<String>,
    /// Service → image reference, replacing the file's.
    #[serde(default)]
    pub images: BTreeMap<String, String>,
    /// Host paths may be mounted (an admin's deploy of a trusted stack).
    #[serde(default)]
    pub allow_bind_mounts: bool,
    /// Pull every tagged image even when present (the redeploy hook: a tag may have moved).
    #[serde(default)]
    pub pull_always: bool,
    /// The build this deploy comes from (an environment rule): its id, repository and
    /// number. Not settable through the API.
    #[serde(skip)]
    pub build: Option<BuildRef>,
    /// The images as referenced, when `images` holds pinned ones (a rollback keeps the
    /// earlier revision's tags for the redeploy hook). Not settable through the API.
    #[serde(skip)]
    pub refs: Option<BTreeMap<String, String>>,
    /// Rollout settings of a pipeline's deploy step, for this rollout only. Not settable
    /// through the API.
    #[serde(skip)]
    pub overrides: Overrides,
}

/// A build a deploy comes from.
#[derive(Debug, Clone)]
pub struct BuildRef {
    pub id: i64,
    pub repo: String,
    pub number: i64,
}

impl Deployments {
    /// `registry_host` is the built-in registry's host (`public_url`'s); `token` an admin
    /// token of the deployer's own.
    pub fn new(registry_host: &str, token: String) -> Deployments {
        Deployments {
            target: OnceCell::new(),
            running: Mutex::new(HashMap::new()),
            registry_host: registry_host.to_owned(),
            registry_auth: RegistryAuth {
                username: "deployer".to_owned(),
                password: token,
                server: Some(registry_host.to_owned()),
            },
        }
    }

    /// The credentials for pulling `image`: the deployer's own for the built-in registry.
    fn auth_for(&self, image: &str) -> Option<&RegistryAuth> {
        image
            .strip_prefix(self.registry_host.as_str())
            .is_some_and(|rest| rest.starts_with('/'))
            .then_some(&self.registry_auth)
    }

    async fn target(&self) -> Result<Arc<DockerTarget>, DeployError> {
        self.target
            .get_or_try_init(|| async {
                DockerTarget::connect()
                    .await
                    .map(Arc::new)
                    .map_err(|e| DeployError::Engine(e.to_string()))
            })
            .await
            .cloned()
    }

    fn release(&self, stack: i64) {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&stack);
    }
}

/// A stack claimed for one rollout (or removal, or recovery); released when dropped, also
/// on an early return or a panic of the task holding it.
#[derive(Debug)]
pub struct Claim {
    state: Arc<AppState>,
    stack: i64,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.state.deploy.release(self.stack);
    }
}

/// Claims `stack`, or `None` when a rollout of it runs.
fn claim(state: &Arc<AppState>, stack: i64) -> Option<Claim> {
    let mut running = state
        .deploy
        .running
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if running.contains_key(&stack) {
        return None;
    }
    // A removal or a recovery holds the stack too, with nothing to steer.
    running.insert(stack, None);
    Some(Claim {
        state: state.clone(),
        stack,
    })
}

impl Claim {
    /// The control the claimed stack's rollout obeys, from now on steerable.
    fn control(&self) -> Control {
        self.state
            .deploy
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(self.stack)
            .or_insert(None)
            .get_or_insert_with(Control::default)
            .clone()
    }
}

/// What has been asked of the rollout of `stack` running now, if one runs.
pub fn rollout_asked(state: &AppState, stack: i64) -> Option<Asked> {
    state
        .deploy
        .running
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&stack)
        .and_then(|c| c.as_ref().map(Control::asked))
}

/// Steers the rollout of `env/stack` running now: pause, resume, promote or abort.
pub async fn steer(
    state: &Arc<AppState>,
    env: &str,
    stack: &str,
    command: Command,
) -> Result<Asked, DeployError> {
    let env_row = state.store.env_by_name(env).await?.ok_or_else(|| {
        DeployError::NotFound(format!("no environment `{env}` (see `slipway env ls`)"))
    })?;
    let stack_row = state
        .store
        .stack(env_row.id, stack)
        .await?
        .ok_or_else(|| DeployError::NotFound(format!("no stack `{env}/{stack}`")))?;
    let control = state
        .deploy
        .running
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&stack_row.id)
        .cloned()
        .flatten();
    let Some(control) = control else {
        return Err(DeployError::Refused(format!(
            "no rollout of {env}/{stack} is running (a revision paused after a failure is left \
             as it is: deploy again, or `slipway stack rollback {env}/{stack}`)"
        )));
    };
    control.send(command);
    tracing::info!("{env}/{stack}: {command:?} asked of its rollout");
    Ok(control.asked())
}

/// An environment's plain variables and opened secrets.
fn environment(
    state: &AppState,
    env: &EnvRow,
    secrets: &[crate::store::EnvSecretRow],
) -> Environment {
    let mut opened = BTreeMap::new();
    for s in secrets {
        match state.secrets.open(
            &s.ciphertext,
            &crate::api::deploy::env_secret_aad(&env.name, &s.name),
        ) {
            Ok(value) => {
                opened.insert(s.name.clone(), value);
            }
            Err(e) => tracing::error!(
                "environment {}: secret {} does not open: {e}",
                env.name,
                s.name
            ),
        }
    }
    Environment {
        name: env.name.clone(),
        domain: env.domain.clone(),
        variables: env.vars.clone(),
        secrets: opened,
    }
}

/// A stack file's text: the compose file (named for error positions) and its Rancher file.
struct StackText<'a> {
    compose: &'a str,
    file: &'a str,
    rancher: Option<&'a str>,
}

/// A stack file read, planned and turned into services for `revision`.
fn specs_of(
    env: &Environment,
    stack: &str,
    revision: &str,
    text: &StackText<'_>,
    images: &BTreeMap<String, String>,
    allow_bind_mounts: bool,
) -> Result<(Vec<ServiceSpec>, Plan), DeployError> {
    let (compose_text, file, rancher) = (text.compose, text.file, text.rancher);
    let opts = ReadOptions {
        vars: env.interpolation_vars(),
        mode: Mode::Strict,
        base_dir: None,
    };
    let mut read = compose::read(compose_text, file, &opts);
    if let Some(text) = rancher {
        let (services, mut problems) = compose::read_rancher(text, "rancher-compose.yml", &opts);
        read.problems.append(&mut problems);
        compose::merge_rancher(&mut read.compose, &services, &mut read.problems);
    }
    if read.has_errors() {
        let lines: Vec<String> = read
            .problems
            .iter()
            .filter(|p| p.is_error())
            .map(ToString::to_string)
            .collect();
        return Err(DeployError::Invalid(mask_secrets(env, &lines.join("\n"))));
    }
    let plan = Plan::of(&read.compose, env);
    let specs = service_specs(
        &read.compose,
        &plan,
        &env.name,
        stack,
        revision,
        images,
        allow_bind_mounts,
    )
    .map_err(|e| DeployError::Refused(mask_secrets(env, &e.to_string())))?;
    Ok((specs, plan))
}

/// `message` with every secret value of the environment replaced by `***`: an error that
/// quotes an interpolated value must not show a secret to whoever reads it.
fn mask_secrets(env: &Environment, message: &str) -> String {
    let mut values: Vec<&str> = env
        .secrets
        .values()
        .map(String::as_str)
        .filter(|v| v.len() >= 3)
        .collect();
    // Longest first, so a secret that holds another is masked whole.
    values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    values
        .into_iter()
        .fold(message.to_owned(), |m, v| m.replace(v, "***"))
}

/// Pulls each service's image when missing and pins it: `image@digest`, or the local
/// image's id.
async fn pin_images(
    deployments: &Deployments,
    target: &DockerTarget,
    specs: &[ServiceSpec],
    pull_always: bool,
) -> Result<BTreeMap<String, String>, DeployError> {
    let mut pinned = BTreeMap::new();
    for spec in specs {
        let image = &spec.image;
        let present = target.resolve_digest(image).await;
        let missing = matches!(
            present,
            Err(slipway_deploy::target::TargetError::NotFound { .. })
        );
        // A pinned digest never changes; a tag may name a new image (the redeploy hook).
        if missing || (pull_always && !image.contains('@')) {
            target
                .pull_image(image, deployments.auth_for(image))
                .await
                .map_err(|e| DeployError::Engine(format!("service {}: {e}", spec.name)))?;
        }
        let digest = target
            .resolve_digest(image)
            .await
            .map_err(|e| DeployError::Engine(format!("service {}: {e}", spec.name)))?;
        let pin = match digest {
            Some(d) => d,
            None => target
                .docker()
                .inspect_image(image)
                .await
                .ok()
                .and_then(|i| i.id)
                .unwrap_or_else(|| image.clone()),
        };
        pinned.insert(spec.name.clone(), pin);
    }
    Ok(pinned)
}

/// Where a stack serves: its first route, through this process's proxy.
fn stack_url(state: &AppState, specs: &[ServiceSpec]) -> String {
    let Some(route) = specs.iter().find_map(|s| s.route.as_ref()) else {
        return String::new();
    };
    let port = state
        .config
        .edge
        .as_ref()
        .and_then(|e| e.http_addr())
        .map(|a| a.port())
        .filter(|p| *p != 80)
        .map(|p| format!(":{p}"))
        .unwrap_or_default();
    format!(
        "http://{}{port}{}",
        route.host,
        route.path.as_deref().unwrap_or("/")
    )
}

fn notice(
    env: &str,
    stack: &str,
    revision: &RevisionRow,
    status: &str,
    url: &str,
    build: Option<&BuildRef>,
) -> DeployNotice {
    DeployNotice {
        environment: env.to_owned(),
        stack: stack.to_owned(),
        revision: revision.number,
        status: status.to_owned(),
        url: url.to_owned(),
        images: revision.images.values().cloned().collect(),
        repo: build.map(|b| b.repo.clone()),
        build_number: build.map(|b| b.number),
    }
}

/// Records a revision's new status, then tells the bus (the stack page's live stream).
async fn set_status(
    state: &AppState,
    revision: &RevisionRow,
    status: &str,
    message: Option<&str>,
    notice: Option<&DeployNotice>,
) -> Result<(), StoreError> {
    state
        .store
        .set_revision_status(revision.id, status, message, notice)
        .await?;
    state.events.publish(ServerEvent::Revision {
        stack_id: revision.stack_id,
        revision_id: revision.id,
        number: revision.number,
        status: status.to_owned(),
        message: message.map(str::to_owned),
    });
    Ok(())
}

/// Where each routed service of a stack's current revision serves, through this process's
/// proxy; empty when nothing serves or the file no longer plans.
pub async fn service_urls(
    state: &AppState,
    env_row: &EnvRow,
    stack: &StackRow,
) -> BTreeMap<String, String> {
    let Ok(secrets) = state.store.env_secrets(env_row.id).await else {
        return BTreeMap::new();
    };
    let env = environment(state, env_row, &secrets);
    match current_specs(state, &env, stack).await {
        Ok(Some(specs)) => specs
            .iter()
            .filter(|s| s.route.is_some())
            .map(|s| (s.name.clone(), stack_url(state, std::slice::from_ref(s))))
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// The specs of a stack's current revision, for putting it back.
async fn current_specs(
    state: &AppState,
    env: &Environment,
    stack: &StackRow,
) -> Result<Option<Vec<ServiceSpec>>, DeployError> {
    let Some(number) = stack.current else {
        return Ok(None);
    };
    let Some(revision) = state.store.revision(stack.id, number).await? else {
        return Ok(None);
    };
    let (specs, _) = specs_of(
        env,
        &stack.name,
        &revision.number.to_string(),
        &StackText {
            compose: &revision.compose,
            file: "compose.yaml",
            rancher: revision.rancher.as_deref(),
        },
        &revision.images,
        true,
    )?;
    Ok(Some(specs))
}

/// Records a new revision of `env/stack` and starts its rollout; the revision as recorded.
pub async fn deploy(
    state: Arc<AppState>,
    env_name: &str,
    stack_name: &str,
    req: DeployRequest,
    cause: String,
) -> Result<RevisionRow, DeployError> {
    let edge = state.config.edge.clone().ok_or(DeployError::NoProxy)?;
    let env_row = state.store.env_by_name(env_name).await?.ok_or_else(|| {
        DeployError::NotFound(format!(
            "no environment `{env_name}` (see `slipway env ls`)"
        ))
    })?;
    let secrets = state.store.env_secrets(env_row.id).await?;
    let env = environment(&state, &env_row, &secrets);
    let file = req
        .file
        .clone()
        .unwrap_or_else(|| "compose.yaml".to_owned());
    let text = StackText {
        compose: &req.compose,
        file: &file,
        rancher: req.rancher.as_deref(),
    };
    // Checked before anything is recorded: a broken file leaves no revision.
    let (specs, _) = specs_of(
        &env,
        stack_name,
        "0",
        &text,
        &req.images,
        req.allow_bind_mounts,
    )?;
    let target = state.deploy.target().await?;
    let images = pin_images(&state.deploy, &target, &specs, req.pull_always).await?;
    let stack = state.store.ensure_stack(env_row.id, stack_name).await?;
    let Some(claimed) = claim(&state, stack.id) else {
        return Err(DeployError::Busy(format!("{env_name}/{stack_name}")));
    };
    let control = claimed.control();
    let recorded = async {
        let previous = current_specs(&state, &env, &stack).await?;
        // The variables are kept by name for secrets, by value otherwise.
        let mut vars = env.variables.clone();
        for name in env.secrets.keys() {
            vars.insert(name.clone(), "(secret)".to_owned());
        }
        let revision = state
            .store
            .new_revision(
                stack.id,
                &NewRevision {
                    compose: req.compose.clone(),
                    rancher: req.rancher.clone(),
                    vars,
                    images: images.clone(),
                    refs: req.refs.clone().unwrap_or_else(|| {
                        specs
                            .iter()
                            .map(|s| (s.name.clone(), s.image.clone()))
                            .collect()
                    }),
                    cause,
                    build_id: req.build.as_ref().map(|b| b.id),
                },
            )
            .await?;
        let (mut specs, _) = specs_of(
            &env,
            stack_name,
            &revision.number.to_string(),
            &text,
            &images,
            req.allow_bind_mounts,
        )?;
        req.overrides.apply(&mut specs);
        Ok::<_, DeployError>((revision, specs, previous))
    }
    .await;
    let (revision, specs, previous) = recorded?;
    let url = stack_url(&state, &specs);
    set_status(
        &state,
        &revision,
        "rolling",
        None,
        Some(&notice(
            env_name,
            stack_name,
            &revision,
            "started",
            &url,
            req.build.as_ref(),
        )),
    )
    .await?;
    state.wake_notifications();
    tracing::info!(
        "deploying {env_name}/{stack_name} revision {} ({} services)",
        revision.number,
        specs.len()
    );
    let task_state = state.clone();
    let (env_name, stack_name) = (env_name.to_owned(), stack_name.to_owned());
    let task_revision = revision.clone();
    let build = req.build.clone();
    tokio::spawn(async move {
        let state = task_state;
        let revision = task_revision;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<StackEvent>();
        let (store, bus) = (state.store.clone(), state.events.clone());
        let (revision_id, stack_id) = (revision.id, revision.stack_id);
        // Steps are written in order by one task, beside the rollout; each is published
        // once stored, for the stack page's live stream.
        let recorder = tokio::spawn(async move {
            let mut seq = 0;
            while let Some(event) = rx.recv().await {
                let detail = serde_json::to_value(&event).unwrap_or_default();
                let kind = detail["event"].as_str().unwrap_or("event").to_owned();
                match store.record_step(revision_id, &kind, &detail).await {
                    Ok(at) => {
                        seq += 1;
                        bus.publish(ServerEvent::RolloutStep {
                            stack_id,
                            revision_id,
                            seq,
                            at,
                            detail,
                        });
                    }
                    Err(e) => tracing::warn!("recording a rollout step: {e}"),
                }
            }
        });
        let result = deploy_stack(
            target.as_ref(),
            edge.proxy(),
            &specs,
            previous.as_deref(),
            &control,
            move |event: &StackEvent| {
                let _ = tx.send(event.clone());
            },
        )
        .await;
        let _ = recorder.await;
        let (status, message) = match result {
            Ok(outcome) => (outcome.status, outcome.message),
            Err(e) => ("failed".to_owned(), Some(e.to_string())),
        };
        let event = match status.as_str() {
            "succeeded" => "succeeded",
            "rolled_back" => "rolled_back",
            "paused" => "failed",
            _ => "failed",
        };
        tracing::info!(
            "{env_name}/{stack_name} revision {}: {status}{}",
            revision.number,
            message
                .as_deref()
                .map(|m| format!(" ({m})"))
                .unwrap_or_default()
        );
        let written = set_status(
            &state,
            &revision,
            &status,
            message.as_deref(),
            Some(&notice(
                &env_name,
                &stack_name,
                &revision,
                event,
                &url,
                build.as_ref(),
            )),
        )
        .await;
        if let Err(e) = written {
            tracing::error!("recording the end of revision {}: {e}", revision.number);
        }
        state.wake_notifications();
        drop(claimed);
    });
    Ok(revision)
}

/// What runs of a stack, by container, for `stack show`.
#[derive(Debug, Clone, Serialize)]
pub struct ContainerView {
    pub name: String,
    pub service: String,
    pub revision: String,
    pub state: String,
    pub health: String,
}

pub async fn containers(
    state: &AppState,
    env: &str,
    stack: &str,
) -> Result<Vec<ContainerView>, DeployError> {
    let target = state.deploy.target().await?;
    let list = target
        .list_containers(&slipway_deploy::target::Selector::stack(env, stack))
        .await
        .map_err(|e| DeployError::Engine(e.to_string()))?;
    Ok(list
        .into_iter()
        .map(|c| {
            let owner = c.owner();
            ContainerView {
                name: c.name.clone(),
                service: owner
                    .as_ref()
                    .map(|o| o.service.clone())
                    .unwrap_or_default(),
                revision: owner.map(|o| o.revision).unwrap_or_default(),
                state: format!("{:?}", c.state).to_lowercase(),
                health: format!("{:?}", c.health).to_lowercase(),
            }
        })
        .collect())
}

/// Removes a stack's containers (drained) and its records.
pub async fn remove(
    state: &Arc<AppState>,
    env: &EnvRow,
    stack: &StackRow,
) -> Result<usize, DeployError> {
    let edge = state.config.edge.clone().ok_or(DeployError::NoProxy)?;
    let Some(_claimed) = claim(state, stack.id) else {
        return Err(DeployError::Busy(format!("{}/{}", env.name, stack.name)));
    };
    async {
        let target = state.deploy.target().await?;
        let views = containers(state, &env.name, &stack.name).await?;
        let services: std::collections::BTreeSet<String> =
            views.into_iter().map(|c| c.service).collect();
        let mut removed = 0;
        for service in services {
            removed += Rollout::new(target.as_ref(), edge.proxy())
                .remove_service(
                    &env.name,
                    &stack.name,
                    &service,
                    std::time::Duration::from_secs(30),
                )
                .await
                .map_err(|e| DeployError::Engine(e.to_string()))?;
        }
        state.store.delete_stack(stack.id).await?;
        Ok(removed)
    }
    .await
}

/// At start: routes of every stack's current revision back in the proxy; a rollout the
/// last process left unfinished reverted. Each stack is claimed while it is looked at, and
/// one that cannot be recovered is logged without stopping the others.
pub async fn recover(state: Arc<AppState>) {
    let Some(edge) = state.config.edge.clone() else {
        return;
    };
    let listed = async {
        let stacks = state.store.stacks(None).await?;
        let unfinished = state.store.unfinished_revisions().await?;
        let envs = state.store.envs().await?;
        Ok::<_, DeployError>((stacks, unfinished, envs))
    }
    .await;
    let (stacks, unfinished, envs) = match listed {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("deployer: reading the stacks at start: {e}");
            return;
        }
    };
    if stacks.is_empty() {
        return;
    }
    let target = match state.deploy.target().await {
        Ok(t) => t,
        Err(e) => {
            tracing::error!("deployer: recovering the stacks at start: {e}");
            return;
        }
    };
    for stack in stacks {
        let Some(env_row) = envs.iter().find(|e| e.id == stack.env_id) else {
            continue;
        };
        let Some(_claimed) = claim(&state, stack.id) else {
            continue;
        };
        let revisions: Vec<&RevisionRow> = unfinished
            .iter()
            .filter(|r| r.stack_id == stack.id)
            .collect();
        if let Err(e) =
            recover_stack(&state, &target, edge.proxy(), env_row, &stack, &revisions).await
        {
            tracing::error!("deployer: recovering {}/{}: {e}", env_row.name, stack.name);
        }
    }
    state.wake_notifications();
}

async fn recover_stack(
    state: &Arc<AppState>,
    target: &DockerTarget,
    proxy: &slipway_proxy::Proxy,
    env_row: &EnvRow,
    stack: &StackRow,
    unfinished: &[&RevisionRow],
) -> Result<(), DeployError> {
    let secrets = state.store.env_secrets(env_row.id).await?;
    let env = environment(state, env_row, &secrets);
    let current = current_specs(state, &env, stack).await?;
    // Only the stack's newest revision can have been rolling when the process stopped;
    // a paused one waits for a person, and an older unfinished one was superseded.
    let newest = unfinished.iter().max_by_key(|r| r.number);
    let cut = newest.filter(|r| {
        matches!(r.status.as_str(), "pending" | "rolling")
            && stack.current.is_none_or(|c| r.number > c)
    });
    let Some(cut) = cut else {
        for spec in current.iter().flatten() {
            match Rollout::new(target, proxy).reconcile(spec).await {
                Ok(n) => tracing::info!(
                    "{}/{} {}: {n} containers routed",
                    env.name,
                    stack.name,
                    spec.name
                ),
                Err(e) => tracing::warn!("{}/{} {}: {e}", env.name, stack.name, spec.name),
            }
        }
        return Ok(());
    };
    // The current revision is put back whole (its rollout replaces whatever runs), or,
    // with none, the stack's containers go.
    let message = match &current {
        Some(specs) => {
            deploy_stack(
                target,
                proxy,
                specs,
                None,
                &Control::default(),
                |_: &StackEvent| {},
            )
            .await
            .map_err(|e| DeployError::Engine(e.to_string()))?;
            format!(
                "the server stopped during this rollout; revision {} was put back",
                stack.current.unwrap_or_default()
            )
        }
        None => {
            remove_containers(state, target, proxy, &env.name, &stack.name).await?;
            "the server stopped during this rollout; its containers were removed".to_owned()
        }
    };
    set_status(
        state,
        cut,
        "rolled_back",
        Some(&message),
        Some(&notice(
            &env.name,
            &stack.name,
            cut,
            "rolled_back",
            "",
            None,
        )),
    )
    .await?;
    tracing::warn!(
        "{}/{} revision {}: {message}",
        env.name,
        stack.name,
        cut.number
    );
    Ok(())
}

async fn remove_containers(
    state: &AppState,
    target: &DockerTarget,
    proxy: &slipway_proxy::Proxy,
    env: &str,
    stack: &str,
) -> Result<(), DeployError> {
    let services: std::collections::BTreeSet<String> = containers(state, env, stack)
        .await?
        .into_iter()
        .map(|c| c.service)
        .collect();
    for service in services {
        Rollout::new(target, proxy)
            .remove_service(env, stack, &service, std::time::Duration::from_secs(10))
            .await
            .map_err(|e| DeployError::Engine(e.to_string()))?;
    }
    Ok(())
}

/// The stack file names looked for in a repository, in order.
pub const STACK_FILES: [&str; 4] = [
    "compose.yaml",
    "compose.yml",
    "docker-compose.yaml",
    "docker-compose.yml",
];

/// Applies the environment rules to every successful build they still owe a look, and
/// to each new one; stops with `shutdown`.
pub async fn apply_rules(state: Arc<AppState>, shutdown: tokio_util::sync::CancellationToken) {
    let mut events = state.events.subscribe();
    loop {
        if let Err(e) = apply_pending_rules(&state).await {
            tracing::warn!("deployer: environment rules: {e}");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(std::time::Duration::from_secs(15)) => {}
            // A registry push is handled as it comes; a finished build wakes the outbox pass.
            open = crate::events::wait_for(&mut events, |event| {
                if let crate::events::ServerEvent::Image { action, repository, tag: Some(tag), digest, .. } = event
                    && action == "push"
                {
                    tokio::spawn(apply_image_rules(state.clone(), repository.clone(), tag.clone(), digest.clone()));
                }
                crate::events::is_finished_build(event)
            }) => {
                if !open {
                    return;
                }
            }
        }
    }
}

/// The `--image-tag` rules a push of `repository:tag` (`digest`) to the built-in registry
/// matches: each deploys its stack's current file with that image, by digest, in place of
/// the services' images of the same repository. A stack being rolled out is tried again
/// for a minute.
async fn apply_image_rules(state: Arc<AppState>, repository: String, tag: String, digest: String) {
    let glob = slipway_notify::rules::glob;
    let read = async {
        Ok::<_, StoreError>((
            state.store.env_rules(None).await?,
            state.store.envs().await?,
        ))
    };
    let (rules, envs) = match read.await {
        Ok(read) => read,
        Err(e) => {
            tracing::warn!("deployer: image rules: {e}");
            return;
        }
    };
    let image = format!("{}/{repository}", state.host);
    for rule in rules.iter().filter(|r| {
        r.image_tag
            .as_deref()
            .is_some_and(|t| glob(t, &tag) && glob(&r.repo, &repository))
    }) {
        let Some(env_row) = envs.iter().find(|e| e.id == rule.env_id) else {
            continue;
        };
        for _ in 0..30 {
            match apply_image_rule(&state, env_row, rule, &image, &tag, &digest).await {
                Err(DeployError::Busy(_)) => {
                    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                }
                Err(e) => {
                    tracing::warn!("image rule {}: {image}:{tag}: {e}", rule.id);
                    break;
                }
                Ok(()) => break,
            }
        }
    }
}

async fn apply_image_rule(
    state: &Arc<AppState>,
    env_row: &EnvRow,
    rule: &crate::store::EnvRuleRow,
    image: &str,
    tag: &str,
    digest: &str,
) -> Result<(), DeployError> {
    let stack = state.store.stack(env_row.id, &rule.stack).await?;
    let base = match &stack {
        Some(stack) => match stack.current {
            Some(n) => state.store.revision(stack.id, n).await?,
            None => None,
        },
        None => None,
    };
    let Some(base) = base else {
        return Err(DeployError::Refused(format!(
            "{}/{} has no revision serving to take the image into (deploy it once first)",
            env_row.name, rule.stack
        )));
    };
    let (mut images, mut refs) = (base.images.clone(), base.refs.clone());
    let services: Vec<String> = base
        .refs
        .iter()
        .filter(|(_, r)| repository_of(r) == image)
        .map(|(s, _)| s.clone())
        .collect();
    if services.is_empty() {
        return Err(DeployError::Refused(format!(
            "no service of {}/{} runs {image}",
            env_row.name, rule.stack
        )));
    }
    for service in services {
        images.insert(service.clone(), format!("{image}@{digest}"));
        refs.insert(service, format!("{image}:{tag}"));
    }
    tracing::info!(
        "image rule: {image}:{tag} deploys {}/{}",
        env_row.name,
        rule.stack
    );
    let request = DeployRequest {
        compose: base.compose.clone(),
        file: None,
        rancher: base.rancher.clone(),
        images,
        allow_bind_mounts: true,
        pull_always: false,
        build: None,
        refs: Some(refs),
        overrides: Overrides::default(),
    };
    deploy(
        state.clone(),
        &env_row.name,
        &rule.stack,
        request,
        format!(
            "image:{}:{tag}",
            image.split_once('/').map_or(image, |(_, r)| r)
        ),
    )
    .await
    .map(drop)
}

async fn apply_pending_rules(state: &Arc<AppState>) -> Result<(), DeployError> {
    let rows = state.store.deploy_outbox(50).await?;
    if rows.is_empty() {
        return Ok(());
    }
    let rules = state.store.env_rules(None).await?;
    for (outbox_id, build_id) in rows {
        match apply_rules_to(state, &rules, build_id).await {
            Ok(Applied::All) => state.store.done_deploy_outbox(outbox_id).await?,
            // A stack was busy or the engine or store failed: looked at again later (the
            // stacks deployed already are skipped then).
            Ok(Applied::Retry) => {}
            Err(e) => tracing::warn!("deployer: build id {build_id}: {e}"),
        }
    }
    Ok(())
}

/// `image` without its tag or digest (`host:port/team/app:v1` → `host:port/team/app`).
fn repository_of(image: &str) -> &str {
    let name = image.split('@').next().unwrap_or(image);
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    match name[last_slash..].rfind(':') {
        Some(i) => &name[..last_slash + i],
        None => name,
    }
}

/// Whether every rule of a build was applied.
enum Applied {
    All,
    Retry,
}

async fn apply_rules_to(
    state: &Arc<AppState>,
    rules: &[crate::store::EnvRuleRow],
    build_id: i64,
) -> Result<Applied, DeployError> {
    let Some(build) = state.store.build(build_id).await? else {
        return Ok(Applied::All);
    };
    // A pull request never deploys.
    if build.event == "pull_request" {
        return Ok(Applied::All);
    }
    let Some(repo) = state.store.repo(build.repo_id).await? else {
        return Ok(Applied::All);
    };
    let mut applied = Applied::All;
    let envs = state.store.envs().await?;
    let glob = slipway_notify::rules::glob;
    for rule in rules.iter().filter(|r| {
        r.image_tag.is_none() && glob(&r.repo, &repo.name) && glob(&r.branch, &build.branch)
    }) {
        let Some(env_row) = envs.iter().find(|e| e.id == rule.env_id) else {
            continue;
        };
        if let Some(stack) = state.store.stack(env_row.id, &rule.stack).await?
            && state.store.stack_has_build(stack.id, build.id).await?
        {
            continue;
        }
        let request = match from_repository(
            state,
            env_row,
            &repo,
            &build.commit,
            Some(&build),
            rule.file.as_deref(),
        )
        .await
        {
            Ok(request) => request,
            Err(e) => {
                tracing::warn!("rule of {}: {e}", env_row.name);
                continue;
            }
        };
        tracing::info!(
            "rule of {}: {} #{} deploys {}/{}",
            env_row.name,
            repo.name,
            build.number,
            env_row.name,
            rule.stack
        );
        let deployed = deploy(
            state.clone(),
            &env_row.name,
            &rule.stack,
            request,
            format!("build:{}#{}", repo.name, build.number),
        )
        .await;
        match deployed {
            Ok(_) => {}
            Err(e @ (DeployError::Busy(_) | DeployError::Engine(_) | DeployError::Store(_))) => {
                tracing::warn!(
                    "rule of {}: {} #{}: {e} (tried again later)",
                    env_row.name,
                    repo.name,
                    build.number
                );
                applied = Applied::Retry;
            }
            // The file itself is wrong: trying again cannot help.
            Err(e) => tracing::warn!(
                "rule of {}: {} #{} was not deployed: {e}",
                env_row.name,
                repo.name,
                build.number
            ),
        }
    }
    Ok(applied)
}

/// A deploy of `repo`'s stack file at `commit` (a sha, branch or tag): `file`, else the
/// first of [`STACK_FILES`], with the `rancher-compose.yml` beside it. With `build`, the
/// images that build pushed replace the services' images of the same repository, pinned
/// by digest. Host paths and external objects only for a trusted repository.
pub async fn from_repository(
    state: &Arc<AppState>,
    env_row: &EnvRow,
    repo: &crate::store::Repo,
    commit: &str,
    build: Option<&crate::store::Build>,
    file: Option<&str>,
) -> Result<DeployRequest, DeployError> {
    let paths: Vec<&str> = match file {
        Some(f) => vec![f],
        None => STACK_FILES.to_vec(),
    };
    let mirror_error =
        |e: crate::mirror::MirrorError| DeployError::Refused(format!("{}: {e}", repo.name));
    // A commit or ref the mirror does not have yet is fetched.
    let found = match state.mirrors.read_first_file(repo.id, commit, &paths).await {
        Ok(found) => found,
        Err(_) => {
            state
                .mirrors
                .fetch(repo.id, &repo.clone_url, &[commit])
                .await
                .map_err(mirror_error)?;
            state
                .mirrors
                .read_first_file(repo.id, commit, &paths)
                .await
                .map_err(mirror_error)?
        }
    };
    let Some((path, compose_text)) = found else {
        return Err(DeployError::NotFound(format!(
            "{} has none of {} at {commit}",
            repo.name,
            paths.join(", ")
        )));
    };
    let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
    let rancher_path = if dir.is_empty() {
        "rancher-compose.yml".to_owned()
    } else {
        format!("{dir}/rancher-compose.yml")
    };
    let rancher = state
        .mirrors
        .read_file(repo.id, commit, &rancher_path)
        .await
        .ok()
        .flatten();
    let mut images = BTreeMap::new();
    if let Some(build) = build {
        let secrets = state.store.env_secrets(env_row.id).await?;
        let env = environment(state, env_row, &secrets);
        let read = compose::read(
            &compose_text,
            path,
            &ReadOptions {
                vars: env.interpolation_vars(),
                ..ReadOptions::default()
            },
        );
        let artifacts = state.store.artifacts(build.id).await?;
        for service in &read.compose.services {
            let Some(image) = &service.image else {
                continue;
            };
            if let Some(a) = artifacts
                .iter()
                .find(|a| repository_of(&a.image) == repository_of(image))
            {
                images.insert(
                    service.name.clone(),
                    format!("{}@{}", repository_of(&a.image), a.digest),
                );
            }
        }
    }
    Ok(DeployRequest {
        compose: compose_text,
        file: Some(path.to_owned()),
        rancher,
        images,
        allow_bind_mounts: repo.trusted,
        pull_always: false,
        build: build.map(|b| BuildRef {
            id: b.id,
            repo: repo.name.clone(),
            number: b.number,
        }),
        refs: None,
        overrides: Overrides::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stack_file_error_never_shows_a_secret_value() {
        let mut env = Environment::named("production");
        env.secrets
            .insert("DB_PASSWORD".into(), "hunter2-long".into());
        env.secrets.insert("DB".into(), "hunter2".into());
        let text = "services:\n  web:\n    image: busybox\n    ports: [\"${DB_PASSWORD}\"]\n";
        let err = specs_of(
            &env,
            "shop",
            "0",
            &StackText {
                compose: text,
                file: "compose.yaml",
                rancher: None,
            },
            &BTreeMap::new(),
            false,
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(err.contains("compose.yaml:4"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        assert_eq!(
            mask_secrets(&env, "port hunter2-long and hunter2"),
            "port *** and ***"
        );
    }
}
