//! Deploys asked for by a pipeline's native deploy step (`slipway/deploy`,
//! `peloton/drone-rancher`, see `slipway_engine::deployer`), through the runner protocol's
//! `POST /api/runner/stages/{id}/deploy`.
//!
//! Invariants:
//! - **Deny by default.** Only a trusted build deploys: the push, tag or manual build of a
//!   trusted repository. A pull request's build (whatever the repository's trust) and any
//!   build of an untrusted repository are refused here, whatever the runner says, with a
//!   warning in the server's log; nothing is recorded or rolled out.
//! - The revision records the build ([`BuildRef`]), so the build links to it and the
//!   environment rules do not deploy that build again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use slipway_deploy::stack::{Overrides, StrategyName, step_line};
use slipway_engine::deployer::{DeployCall, DeployProgress};

use super::{BuildRef, DeployError, DeployRequest, from_repository, repository_of};
use crate::app::AppState;
use crate::builds::Trust;
use crate::store::{EnvRow, RevisionRow, Stage};

/// A deploy started for `stage`'s build: its environment, stack and revision.
#[derive(Debug)]
pub struct Started {
    pub environment: String,
    pub stack: String,
    pub revision: RevisionRow,
}

/// Checks that `stage`'s build may deploy, turns `call` into a deploy and starts it.
pub async fn from_step(
    state: &Arc<AppState>,
    stage: &Stage,
    call: DeployCall,
) -> Result<Started, DeployError> {
    let build = state
        .store
        .build(stage.build_id)
        .await?
        .ok_or_else(|| DeployError::NotFound(format!("build {} is gone", stage.build_id)))?;
    let repo =
        state.store.repo(build.repo_id).await?.ok_or_else(|| {
            DeployError::NotFound(format!("repository {} is gone", build.repo_id))
        })?;
    let title = format!("{}#{}", repo.name, build.number);
    let refusal = match Trust::of_build(&repo, &build) {
        Trust::Trusted => None,
        Trust::PullRequest => Some(format!(
            "{title} is a pull request's build, and pull requests never deploy (their change is not in the repository yet)"
        )),
        Trust::UntrustedRepository => Some(format!(
            "{title}: repository {} is not trusted, and only trusted repositories' builds deploy (an admin marks it trusted)",
            repo.name
        )),
    };
    if let Some(why) = refusal {
        tracing::warn!("{} step of {title} refused: {why}", call.plugin);
        return Err(DeployError::Forbidden(why));
    }
    let strategy = match call.strategy.as_deref() {
        Some(text) => Some(StrategyName::parse(text).ok_or_else(|| {
            DeployError::Refused(format!(
                "strategy `{text}` is not rolling, blue-green or canary"
            ))
        })?),
        None => None,
    };
    let overrides = Overrides {
        strategy,
        parallelism: call.parallelism,
        start_first: call.start_first,
        health_timeout_secs: call.timeout_secs,
        services: call.service.iter().cloned().collect(),
    };
    let build_ref = BuildRef {
        id: build.id,
        repo: repo.name.clone(),
        number: build.number,
    };
    let (env_row, mut request) = match &call.service {
        Some(service) => image_update(state, &call, service).await?,
        None => {
            let Some(env_name) = &call.environment else {
                return Err(DeployError::Refused(
                    "the step names no environment".to_owned(),
                ));
            };
            let env_row = state.store.env_by_name(env_name).await?.ok_or_else(|| {
                DeployError::NotFound(format!(
                    "no environment `{env_name}` (see `slipway env ls`)"
                ))
            })?;
            let mut request =
                from_repository(state, &env_row, &repo, &build.commit, Some(&build), None).await?;
            // This stage's own pushes may not be recorded yet (its events travel apart);
            // they are the newest images of their repositories.
            let secrets = state.store.env_secrets(env_row.id).await?;
            let env = super::environment(state, &env_row, &secrets);
            map_pushed(&mut request, &env, &call.pushed);
            (env_row, request)
        }
    };
    request.images.extend(call.images.clone());
    request.build = Some(build_ref);
    request.overrides = overrides;
    tracing::info!(
        "{} step of {title} deploys {}/{}",
        call.plugin,
        env_row.name,
        call.stack
    );
    let revision = super::deploy(
        state.clone(),
        &env_row.name,
        &call.stack,
        request,
        format!("build:{title}"),
    )
    .await?;
    Ok(Started {
        environment: env_row.name,
        stack: call.stack,
        revision,
    })
}

/// Each pushed image in place of the services' images of its repository.
fn map_pushed(
    request: &mut DeployRequest,
    env: &slipway_deploy::plan::Environment,
    pushed: &[slipway_engine::deployer::PushedImage],
) {
    if pushed.is_empty() {
        return;
    }
    let read = slipway_deploy::compose::read(
        &request.compose,
        request.file.as_deref().unwrap_or("compose.yaml"),
        &slipway_deploy::compose::ReadOptions {
            vars: env.interpolation_vars(),
            ..slipway_deploy::compose::ReadOptions::default()
        },
    );
    for service in &read.compose.services {
        let Some(image) = &service.image else {
            continue;
        };
        if let Some(p) = pushed
            .iter()
            .rev()
            .find(|p| repository_of(&p.image) == repository_of(image))
        {
            request.images.insert(
                service.name.clone(),
                format!("{}@{}", repository_of(&p.image), p.digest),
            );
        }
    }
}

/// `peloton/drone-rancher`: the stack's current revision again, `service`'s image
/// replaced, in the one environment that has the stack (or the one the step names).
async fn image_update(
    state: &Arc<AppState>,
    call: &DeployCall,
    service: &str,
) -> Result<(EnvRow, DeployRequest), DeployError> {
    let mut having = Vec::new();
    for env in state.store.envs().await? {
        if let Some(stack) = state.store.stack(env.id, &call.stack).await? {
            having.push((env, stack));
        }
    }
    let names = || {
        having
            .iter()
            .map(|(e, _)| e.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let chosen = match &call.environment {
        Some(name) => match having.iter().position(|(e, _)| &e.name == name) {
            Some(i) => i,
            None if having.is_empty() => {
                return Err(DeployError::NotFound(format!(
                    "no environment has a stack `{}` (deploy it once first)",
                    call.stack
                )));
            }
            None => {
                return Err(DeployError::NotFound(format!(
                    "environment `{name}` has no stack `{}`; the environments that do: {}",
                    call.stack,
                    names()
                )));
            }
        },
        None => match having.len() {
            0 => {
                return Err(DeployError::NotFound(format!(
                    "no environment has a stack `{}` (deploy it once first)",
                    call.stack
                )));
            }
            1 => 0,
            _ => {
                return Err(DeployError::Refused(format!(
                    "several environments have a stack `{}` ({}): set the step's `environment` (or promote the build to one)",
                    call.stack,
                    names()
                )));
            }
        },
    };
    let (env_row, stack) = having.swap_remove(chosen);
    let base = match stack.current {
        Some(n) => state.store.revision(stack.id, n).await?,
        None => None,
    };
    let Some(base) = base else {
        return Err(DeployError::Refused(format!(
            "{}/{} has no revision serving to update (deploy it once first)",
            env_row.name, stack.name
        )));
    };
    if !base.refs.contains_key(service) && !base.images.contains_key(service) {
        return Err(DeployError::NotFound(format!(
            "{}/{} has no service `{service}` (its services: {})",
            env_row.name,
            stack.name,
            base.refs.keys().cloned().collect::<Vec<_>>().join(", ")
        )));
    }
    let mut refs: BTreeMap<String, String> = base.refs.clone();
    if let Some(image) = call.images.get(service) {
        refs.insert(service.to_owned(), image.clone());
    }
    let request = DeployRequest {
        compose: base.compose.clone(),
        file: None,
        rancher: base.rancher.clone(),
        images: base.images.clone(),
        allow_bind_mounts: true,
        // The tag was just pushed: what the engine has under it may be the old image.
        pull_always: true,
        build: None,
        refs: Some(refs),
        overrides: Overrides::default(),
    };
    Ok((env_row, request))
}

/// What the step hears: the revision started, then (with `wait`) each rollout step as it
/// is recorded and the end.
pub fn progress(
    state: Arc<AppState>,
    started: Started,
    wait: bool,
) -> impl Stream<Item = DeployProgress> + Send {
    enum Phase {
        Start,
        Follow(usize),
        End,
    }
    let first = DeployProgress::Started {
        environment: started.environment.clone(),
        stack: started.stack.clone(),
        revision: started.revision.number,
    };
    let revision = started.revision;
    futures_util::stream::unfold(
        (Phase::Start, Some(first), Vec::<DeployProgress>::new()),
        move |(phase, first, mut queued)| {
            let state = state.clone();
            let revision = revision.clone();
            async move {
                if let Some(first) = first {
                    let next = if wait { Phase::Follow(0) } else { Phase::End };
                    return Some((first, (next, None, queued)));
                }
                if !queued.is_empty() {
                    let item = queued.remove(0);
                    return Some((item, (phase, None, queued)));
                }
                let Phase::Follow(mut seen) = phase else {
                    return None;
                };
                loop {
                    // The status before the steps: an ended rollout's steps were all
                    // recorded before its end was.
                    let current = state
                        .store
                        .revision(revision.stack_id, revision.number)
                        .await;
                    let steps = state.store.rollout_steps(revision.id).await;
                    let (steps, current) = match (steps, current) {
                        (Ok(steps), Ok(Some(current))) => (steps, current),
                        (Err(e), _) | (_, Err(e)) => {
                            let item = DeployProgress::Finished {
                                status: "failed".to_owned(),
                                message: Some(format!("reading the rollout: {e}")),
                            };
                            return Some((item, (Phase::End, None, queued)));
                        }
                        (Ok(_), Ok(None)) => {
                            let item = DeployProgress::Finished {
                                status: "failed".to_owned(),
                                message: Some("the revision was removed".to_owned()),
                            };
                            return Some((item, (Phase::End, None, queued)));
                        }
                    };
                    queued.extend(steps.iter().skip(seen).map(|step| DeployProgress::Step {
                        line: step_line(&step.detail),
                    }));
                    seen = steps.len();
                    let ended = matches!(
                        current.status.as_str(),
                        "succeeded" | "failed" | "rolled_back" | "paused"
                    );
                    if ended {
                        queued.push(DeployProgress::Finished {
                            status: current.status.clone(),
                            message: current.message.clone(),
                        });
                    }
                    if !queued.is_empty() {
                        let item = queued.remove(0);
                        let next = if ended {
                            Phase::End
                        } else {
                            Phase::Follow(seen)
                        };
                        return Some((item, (next, None, queued)));
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        },
    )
}
