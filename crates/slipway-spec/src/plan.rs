//! The compiled form of a pipeline file for one build: what the engine runs.
//!
//! A [`Plan`] has every `${...}` substituted, every condition except `status` already
//! evaluated (into `skipped`), every step's environment fully resolved (DRONE_*, CI_*,
//! pipeline and step `environment`, `PLUGIN_*` from `settings`) and every step's
//! `depends_on` made explicit, so the engine never has to know Drone's rules. `status`
//! can only be known while the pipeline runs, so it travels as [`RunOn`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Everything one build would run: one entry per `kind: pipeline` document, in file order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub pipelines: Vec<PipelinePlan>,
}

/// Where a pipeline's steps run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PipelineType {
    /// Steps in containers on a Docker engine (the default).
    Docker,
    /// Steps as processes on the runner's host (`type: exec`).
    Exec,
    /// Any other type (`vm`, `ssh`, `kubernetes`, ...): kept, but no local backend runs it.
    #[serde(untagged)]
    Other(String),
}

impl PipelineType {
    pub fn as_str(&self) -> &str {
        match self {
            PipelineType::Docker => "docker",
            PipelineType::Exec => "exec",
            PipelineType::Other(other) => other,
        }
    }
}

/// One pipeline (stage) of the build.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelinePlan {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: PipelineType,
    /// `trigger` does not match this build.
    pub skipped: bool,
    /// Names of pipelines that must finish first.
    pub depends_on: Vec<String>,
    /// Whether this pipeline runs when a pipeline it depends on failed or succeeded
    /// (`trigger: status`).
    pub run_on: RunOn,
    pub clone: ClonePlan,
    /// Absolute path of the workspace inside containers (`/drone/src` unless `workspace:` says
    /// otherwise). Also the working directory of every step.
    pub workspace: String,
    /// Build-wide time limit in seconds (`timeout:` on the pipeline), if any.
    pub timeout_secs: Option<u64>,
    /// `platform`, `node` and other selectors a runner must satisfy, flattened as `key=value`.
    pub labels: BTreeMap<String, String>,
    pub volumes: Vec<VolumePlan>,
    /// Long-running containers started before the steps, reachable by their name.
    pub services: Vec<StepPlan>,
    pub steps: Vec<StepPlan>,
}

/// How the workspace is filled before the first step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClonePlan {
    pub disable: bool,
    pub depth: Option<u32>,
}

/// A pipeline-level volume a step can mount by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumePlan {
    pub name: String,
    #[serde(flatten)]
    pub source: VolumeSource,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum VolumeSource {
    /// Created for this build and removed after it (`temp: {}`).
    Temp,
    /// A directory of the host (`host: {path: ...}`); only allowed for trusted builds.
    Host { path: String },
    /// A dependency cache kept between builds of the same repository (`cache: {}`, a
    /// Slipway addition). The engine backs it with a Docker named volume of the build's
    /// cache scope (one per repository, another one for pull requests), never a host path,
    /// so untrusted builds may use it. `key` (after substitution) keeps several caches of
    /// one name, e.g. one per branch.
    Cache {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
    },
}

/// A mount of a pipeline volume into one step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMount {
    pub name: String,
    pub path: String,
}

/// When a step (or pipeline) runs, given how the build is going so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunOn {
    pub success: bool,
    pub failure: bool,
}

impl Default for RunOn {
    /// Drone's default: only while everything before succeeded.
    fn default() -> Self {
        RunOn {
            success: true,
            failure: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PullPolicy {
    Always,
    Never,
    #[default]
    IfNotExists,
}

/// A secret the step asked for: `env` is set to the value of secret `secret`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretEnv {
    pub env: String,
    pub secret: String,
}

/// One step or service, fully resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepPlan {
    pub name: String,
    pub image: String,
    /// Shell commands, run in order by a generated `/bin/sh` script with `set -e`.
    pub commands: Vec<String>,
    /// Overrides the image's entrypoint.
    pub entrypoint: Option<Vec<String>>,
    /// Overrides the image's command (ignored when `commands` is not empty).
    pub command: Option<Vec<String>>,
    /// The complete environment, secrets excepted.
    pub environment: BTreeMap<String, String>,
    /// Environment variables filled from secrets at run time.
    pub secrets: Vec<SecretEnv>,
    /// Steps that must be done (finished, or started for detached ones) before this one.
    pub depends_on: Vec<String>,
    /// A `when` condition other than `status` does not match this build.
    pub skipped: bool,
    pub run_on: RunOn,
    pub detach: bool,
    pub privileged: bool,
    /// `failure: ignore`: the step may fail without failing the pipeline.
    pub failure_ignore: bool,
    pub volumes: Vec<VolumeMount>,
    pub pull: PullPolicy,
    pub user: Option<String>,
    /// Step time limit in seconds (`timeout:` on the step), if any.
    pub timeout_secs: Option<u64>,
    /// Plugin `settings` as written (after substitution), for steps the engine runs natively.
    pub settings: BTreeMap<String, serde_json::Value>,
}
