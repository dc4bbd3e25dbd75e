//! The pipeline file as written, in one model for both Drone formats.
//!
//! [`crate::parse`] fills this from the YAML tree; [`crate::compile`] turns it into a
//! [`crate::plan::Plan`] for one build. Positions are kept so later checks (DAG, names) can
//! point at the source.

use crate::plan::{PipelineType, PullPolicy, SecretEnv};
use crate::yaml::{Node, Pos};

/// Every document of a pipeline file, in order.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub format: Format,
    pub documents: Vec<ConfigDocument>,
    /// Legacy `matrix:` axes: each combination becomes its own pipeline at compile time.
    pub matrix: Vec<MatrixAxis>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub enum Format {
    /// Drone 1.x: `kind: pipeline` documents.
    #[default]
    #[serde(rename = "1.x")]
    V1,
    /// Drone 0.8: a top-level `pipeline:` map of named steps.
    #[serde(rename = "legacy")]
    Legacy,
}

#[derive(Debug, Clone)]
pub struct MatrixAxis {
    pub name: String,
    pub values: Vec<String>,
}

#[derive(Debug, Clone)]
pub enum ConfigDocument {
    Pipeline(Box<Pipeline>),
    /// `kind: secret`, `kind: signature`, ...: kept, not run.
    Other {
        kind: String,
        pos: Pos,
        node: Node,
    },
}

impl Config {
    pub fn pipelines(&self) -> impl Iterator<Item = &Pipeline> {
        self.documents.iter().filter_map(|d| match d {
            ConfigDocument::Pipeline(p) => Some(p.as_ref()),
            ConfigDocument::Other { .. } => None,
        })
    }
}

/// A name with the position it was written at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named {
    pub name: String,
    pub pos: Pos,
}

#[derive(Debug, Clone)]
pub struct Pipeline {
    pub pos: Pos,
    pub name: String,
    /// No `name:` was given (`default`, as Drone calls it).
    pub name_implicit: bool,
    pub kind: PipelineType,
    pub platform: Vec<(String, String)>,
    pub node: Vec<(String, String)>,
    /// Absolute workspace path inside containers.
    pub workspace: Option<String>,
    pub clone_disable: bool,
    pub clone_depth: Option<u32>,
    /// Legacy custom `clone:` entries, by name (run natively: only `depth` is honoured).
    pub clone_steps: Vec<String>,
    pub environment: Vec<(String, EnvValue)>,
    pub steps: Vec<Step>,
    pub services: Vec<Step>,
    pub volumes: Vec<Volume>,
    pub trigger: Conditions,
    pub depends_on: Vec<Named>,
    pub timeout_secs: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum EnvValue {
    Plain(String),
    Secret(String),
}

/// A plugin setting: a YAML value (kept as JSON) or a secret reference.
#[derive(Debug, Clone, PartialEq)]
pub enum SettingValue {
    Plain(serde_json::Value),
    Secret(String),
}

#[derive(Debug, Clone)]
pub struct Step {
    pub pos: Pos,
    pub name: String,
    pub image: Option<String>,
    pub commands: Vec<String>,
    pub entrypoint: Option<Vec<String>>,
    pub command: Option<Vec<String>>,
    pub environment: Vec<(String, EnvValue)>,
    pub settings: Vec<(String, SettingValue)>,
    /// Legacy `secrets: [name]` and `{source, target}`.
    pub secrets: Vec<SecretEnv>,
    pub when: Conditions,
    /// `None`: not written (file order applies); `Some`: explicit, possibly empty.
    pub depends_on: Option<Vec<Named>>,
    /// Legacy `group:`: steps of one group run in parallel.
    pub group: Option<String>,
    pub detach: bool,
    pub privileged: bool,
    pub failure_ignore: bool,
    pub volumes: Vec<Mount>,
    pub pull: PullPolicy,
    pub user: Option<String>,
    pub timeout_secs: Option<u64>,
}

/// A step's volume: by pipeline volume name (1.x), or a host bind written inline (legacy
/// `- /host:/container`).
#[derive(Debug, Clone, PartialEq)]
pub struct Mount {
    pub pos: Pos,
    pub name: String,
    pub path: String,
    pub host_path: Option<String>,
}

/// A pipeline-level volume (`volumes:` of a 1.x pipeline).
#[derive(Debug, Clone, PartialEq)]
pub struct Volume {
    pub pos: Pos,
    pub name: String,
    pub kind: VolumeKind,
}

/// What a pipeline volume is backed by.
#[derive(Debug, Clone, PartialEq)]
pub enum VolumeKind {
    /// `temp: {}` (and the Kubernetes kinds, treated alike): created for the build, removed
    /// after it.
    Temp,
    /// `host: {path}`: a directory of the runner's host (trusted builds only). `None` when
    /// the path is missing (an error was reported).
    Host(Option<String>),
    /// `cache: {key}`, a Slipway addition: kept between builds of the same repository.
    /// `key` (after substitution; empty means none) keeps several caches of one name.
    Cache { key: Option<String> },
}

/// One condition: a value matches when it matches an include pattern (or there are none)
/// and no exclude pattern. Exclude wins.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Condition {
    pub include: Vec<String>,
    pub exclude: Vec<String>,
}

impl Condition {
    pub fn is_empty(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty()
    }
}

/// `when:` of a step or `trigger:` of a pipeline.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Conditions {
    pub branch: Condition,
    pub event: Condition,
    pub reference: Condition,
    pub repo: Condition,
    pub status: Condition,
    pub target: Condition,
    pub instance: Condition,
    pub cron: Condition,
    pub action: Condition,
    pub paths: Condition,
    /// Legacy `matrix:` condition: axis name → required value.
    pub matrix: Vec<(String, String)>,
}
