//! Compose and stack files read into owned types, every problem with its file, line and
//! column.
//!
//! [`read`] takes a compose file's text (compose-spec, the `version: "2"`/`"3.x"` files,
//! and format 1 with services at the top level) and gives a [`Compose`] with
//! [`Problem`]s; [`read_rancher`] reads a Rancher 1.x `rancher-compose.yml` and
//! [`merge_rancher`] folds it into the services (`scale` → replicas, `upgrade_strategy` →
//! update config, `health_check` → an HTTP or TCP [`Probe`]). [`load`] does the same from
//! paths, reading `env_file`s relative to the stack file's directory (the only IO here).
//!
//! Rules:
//! - Values are interpolated as Compose does (`$VAR`, `${VAR}`, `${VAR:-d}`, `${VAR-d}`,
//!   `${VAR:?err}`, `${VAR?err}`, `${VAR:+x}`, `${VAR+x}`, `$$`), by the proxy's
//!   [`slipway_proxy::compose::interpolate`], from the variables given; keys are not.
//!   In [`Mode::Strict`] a missing required variable is an error at the `${` that names
//!   it; in [`Mode::Lint`] it is a warning and reads as the variable's name in lower case
//!   (so `grafana.${DOMAIN?…}` is still a host), since lint has no environment.
//! - `build:` is refused: images come from pipelines. With `image:` beside it, it is a
//!   warning (the image is deployed); alone, an error.
//! - Unknown keys and keys Slipway does not support are warnings that say what is
//!   ignored; malformed values are errors. Anchors and `<<` merge keys are resolved by
//!   `slipway-yaml`; `x-` fields are kept as JSON; `x-slipway` is read ([`XSlipway`]).
//! - Bind mounts are flagged ([`ServiceVolume::is_bind`]) so a caller can refuse them for
//!   untrusted stacks.
//!
//! Nothing here panics on any input.

mod rancher;
mod read;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Serialize, Serializer};
pub use slipway_yaml::Pos;

pub use rancher::{
    RancherHealthCheck, RancherService, RancherUpgrade, merge_rancher, read_rancher,
};
pub(crate) use read::NOT_HTTP_PORTS;
pub use read::read;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// One problem of a stack file: `FILE:LINE:COL: error|warning: message` when displayed,
/// as `slipway lint` prints pipeline problems.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub file: String,
    pub line: usize,
    pub col: usize,
    pub severity: Severity,
    pub message: String,
}

impl Problem {
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    pub fn pos(&self) -> Pos {
        Pos {
            line: self.line,
            col: self.col,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file, self.line, self.col, self.severity, self.message
        )
    }
}

/// Sorts by file, position, then severity, so output reads top to bottom.
pub fn sort(problems: &mut [Problem]) {
    problems.sort_by(|a, b| {
        (&a.file, a.line, a.col, a.severity, &a.message)
            .cmp(&(&b.file, b.line, b.col, b.severity, &b.message))
    });
}

/// How missing required variables count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// `slipway stack lint`: no environment; a missing `${X?msg}` is a warning.
    #[default]
    Lint,
    /// Planning or deploying with an environment's variables: it is an error.
    Strict,
}

/// What [`read`] needs besides the text.
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    pub vars: BTreeMap<String, String>,
    pub mode: Mode,
    /// The stack file's directory, for `env_file`; `None`: env files are not read (a
    /// warning says so).
    pub base_dir: Option<PathBuf>,
}

/// A stack file as read: what it says, and what is wrong with it.
#[derive(Debug, Clone)]
pub struct Read {
    pub compose: Compose,
    pub problems: Vec<Problem>,
}

impl Read {
    pub fn has_errors(&self) -> bool {
        self.problems.iter().any(Problem::is_error)
    }
}

/// A stack file's IO failed.
#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Reads a stack file and its Rancher file (`rancher`, else a `rancher-compose.yml`
/// beside `path` when there is one), `env_file`s relative to its directory.
pub fn load(path: &Path, rancher: Option<&Path>, opts: &ReadOptions) -> Result<Read, ComposeError> {
    let read_text = |p: &Path| {
        std::fs::read_to_string(p).map_err(|source| ComposeError::Io {
            path: p.display().to_string(),
            source,
        })
    };
    let text = read_text(path)?;
    let mut opts = opts.clone();
    if opts.base_dir.is_none() {
        opts.base_dir = Some(
            path.parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from(".")),
        );
    }
    let mut r = read(&text, &path.display().to_string(), &opts);
    let rancher_path = match rancher {
        Some(p) => Some(p.to_path_buf()),
        None => rancher_beside(path),
    };
    if let Some(rp) = rancher_path {
        let rtext = read_text(&rp)?;
        let (services, mut problems) = read_rancher(&rtext, &rp.display().to_string(), &opts);
        r.problems.append(&mut problems);
        merge_rancher(&mut r.compose, &services, &mut r.problems);
    }
    sort(&mut r.problems);
    Ok(r)
}

/// `rancher-compose.yml` (or `.yaml`) in the directory of `path`, when it exists.
pub fn rancher_beside(path: &Path) -> Option<PathBuf> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    ["rancher-compose.yml", "rancher-compose.yaml"]
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file() && p.as_path() != path)
}

/// A whole compose file.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Compose {
    pub file: String,
    /// `version:` as written (obsolete; kept for reports).
    pub version: Option<String>,
    /// Format 1: services at the top level, no `services:`.
    pub format_1: bool,
    /// In file order.
    pub services: Vec<Service>,
    pub networks: Vec<Network>,
    pub volumes: Vec<Volume>,
    pub secrets: Vec<SecretDef>,
    pub configs: Vec<SecretDef>,
    /// Top-level `x-` fields, as JSON (after merge keys).
    pub extensions: BTreeMap<String, serde_json::Value>,
    /// Every distinct `${…}` expression used in a value, as written.
    pub interpolations: Vec<String>,
}

impl Compose {
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }
}

/// `command`/`entrypoint`, and a health check's `test`: a shell string or an exec list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Command {
    Shell(String),
    Exec(Vec<String>),
}

/// One environment variable of a service, before secrets are taken into account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EnvVar {
    pub name: String,
    /// `None`: written without a value and not in the variables (Compose leaves it unset).
    pub value: Option<String>,
    /// Variables the value was interpolated from (or the one it was taken from when it
    /// was written without a value): the plan hides values that come from secrets.
    pub from_vars: Vec<String>,
}

/// A range of ports, `80` or `8000-8002`; displayed (and serialized) as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub start: u16,
    pub end: u16,
}

impl PortRange {
    pub fn single(p: u16) -> Self {
        PortRange { start: p, end: p }
    }

    pub fn len(&self) -> usize {
        usize::from(self.end - self.start) + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn ports(&self) -> impl Iterator<Item = u16> {
        self.start..=self.end
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

impl Serialize for PortRange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One `ports:` entry (short `[HOST_IP:][PUBLISHED:]TARGET[/PROTOCOL]` or long form).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Port {
    pub target: PortRange,
    /// `None`: not published on the host (an ephemeral port, or Swarm's none).
    pub published: Option<PortRange>,
    pub protocol: String,
    pub host_ip: Option<String>,
    /// Long form `mode` (`ingress`, `host`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// The entry as written (short form), or a short form of the long one.
    pub raw: String,
}

/// Kinds of service volumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeKind {
    Volume,
    Bind,
    Tmpfs,
    Npipe,
    Image,
    Cluster,
}

/// One service `volumes:` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceVolume {
    #[serde(rename = "type")]
    pub kind: VolumeKind,
    /// A named volume, a host path (bind), or `None` (anonymous volume, tmpfs).
    pub source: Option<String>,
    pub target: String,
    pub read_only: bool,
    /// Any other mode of the short form (`z`, `rw,nocopy`, …) or long-form options.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub options: Option<String>,
}

impl ServiceVolume {
    /// A host path mounted into the container: refuse for untrusted stacks.
    pub fn is_bind(&self) -> bool {
        self.kind == VolumeKind::Bind
    }
}

/// A top-level volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Volume {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub driver_opts: BTreeMap<String, String>,
    pub external: bool,
    /// `name:`: the engine's name when it differs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine_name: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// A top-level network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Network {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub driver_opts: BTreeMap<String, String>,
    pub external: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine_name: Option<String>,
    pub attachable: bool,
    pub internal: bool,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// A service's membership of a network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceNetwork {
    pub name: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv4_address: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    #[default]
    ServiceStarted,
    ServiceHealthy,
    ServiceCompletedSuccessfully,
}

impl Condition {
    pub fn as_str(&self) -> &'static str {
        match self {
            Condition::ServiceStarted => "service_started",
            Condition::ServiceHealthy => "service_healthy",
            Condition::ServiceCompletedSuccessfully => "service_completed_successfully",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Dependency {
    pub service: String,
    pub condition: Condition,
    /// Long form `required` (default true).
    pub required: bool,
}

/// A compose `healthcheck`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Healthcheck {
    /// `None` with `disable`, or `["NONE"]`.
    pub test: Option<HealthTest>,
    #[serde(serialize_with = "opt_duration")]
    pub interval: Option<Duration>,
    #[serde(serialize_with = "opt_duration")]
    pub timeout: Option<Duration>,
    pub retries: Option<u32>,
    #[serde(serialize_with = "opt_duration")]
    pub start_period: Option<Duration>,
    #[serde(serialize_with = "opt_duration")]
    pub start_interval: Option<Duration>,
    pub disable: bool,
}

/// A health check's `test`: `CMD` (exec) or `CMD-SHELL` (a string run by `/bin/sh -c`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "command", rename_all = "kebab-case")]
pub enum HealthTest {
    Cmd(Vec<String>),
    CmdShell(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Order {
    StartFirst,
    StopFirst,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureAction {
    Rollback,
    Pause,
    Continue,
}

/// `deploy.update_config` / `deploy.rollback_config`: only what the file sets.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct UpdateConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<u32>,
    #[serde(
        serialize_with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub delay: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order: Option<Order>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_action: Option<FailureAction>,
    #[serde(
        serialize_with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub monitor: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_failure_ratio: Option<f64>,
}

/// `cpus` and `memory` (bytes) of `deploy.resources.limits|reservations`.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct ResourceSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pids: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct Resources {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limits: Option<ResourceSpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reservations: Option<ResourceSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct RestartPolicy {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    #[serde(
        serialize_with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub delay: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    #[serde(
        serialize_with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub window: Option<Duration>,
}

/// A service's `deploy:`.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct Deploy {
    /// `replicated` or `global`.
    pub mode: Option<String>,
    pub replicas: Option<u32>,
    pub labels: BTreeMap<String, String>,
    pub update_config: Option<UpdateConfig>,
    pub rollback_config: Option<UpdateConfig>,
    pub resources: Option<Resources>,
    pub restart_policy: Option<RestartPolicy>,
    /// Kept as written, for Swarm.
    pub placement: Option<serde_json::Value>,
    pub endpoint_mode: Option<String>,
}

/// A service's reference to a secret or config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileRef {
    pub source: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
}

/// A top-level secret or config: exactly one of `file`, `environment`, `content`,
/// `external`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct SecretDef {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// Configs only: inline `content` (not printed by plans).
    #[serde(skip)]
    pub content: Option<String>,
    pub external: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine_name: Option<String>,
}

/// A legacy `links:` entry, `SERVICE[:ALIAS]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Link {
    pub service: String,
    pub alias: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    #[default]
    Rolling,
    BlueGreen,
    Canary,
}

/// One canary step: send `weight` percent of requests to the new revision, then wait.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CanaryStep {
    pub weight: u32,
    #[serde(serialize_with = "opt_duration")]
    pub pause: Option<Duration>,
}

/// `x-slipway.route`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct XRoute {
    pub host: Option<String>,
    pub path: Option<String>,
    pub port: Option<u16>,
    /// `true`: `tls: acme`; `false`: `tls: none`; `None`: not said (acme).
    pub tls: Option<bool>,
}

/// A service's `x-slipway:`, Slipway's own settings for a rollout:
///
/// ```yaml
/// x-slipway:
///   strategy: canary          # rolling (default) | blue-green | canary
///   steps:                    # canary only: traffic weights in percent, each held `pause`
///     - {weight: 10, pause: 2m}
///     - {weight: 50, pause: 5m}
///   bake: 10m                 # after full traffic, watch this long before "done"
///   max_error_rate: 0.05      # 5xx ratio of the new revision that reverts the rollout
///   route: {host: app.example.com, path: /, port: 8080, tls: acme}   # or tls: none
///   keep_old: 1h              # keep the old revision's containers stopped this long
///   logs: {multiline: '^\S', multiline_timeout: 1s, json: true}   # see [`XLogs`]
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct XSlipway {
    pub strategy: Option<Strategy>,
    pub steps: Vec<CanaryStep>,
    #[serde(serialize_with = "opt_duration")]
    pub bake: Option<Duration>,
    pub max_error_rate: Option<f64>,
    pub route: Option<XRoute>,
    #[serde(serialize_with = "opt_duration")]
    pub keep_old: Option<Duration>,
    pub logs: Option<XLogs>,
}

/// `x-slipway.logs`: how the collector reads the service's output. The deployer writes it
/// on the containers as labels (`io.slipway.logs.*`), which is all the collector reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct XLogs {
    /// A regular expression that starts a record: lines that do not match it (a stack
    /// trace's) are joined to the record before them.
    pub multiline: Option<String>,
    /// How long a joined record waits for more lines before it is stored.
    #[serde(serialize_with = "opt_duration")]
    pub multiline_timeout: Option<Duration>,
    /// Parse JSON-object lines into fields.
    pub json: bool,
}

/// An HTTP or TCP probe, from Rancher's `health_check`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Probe {
    /// `GET /health HTTP/1.0` → method `GET`, path `/health`; `None`: TCP.
    pub http: Option<HttpProbe>,
    pub port: u16,
    #[serde(serialize_with = "duration")]
    pub interval: Duration,
    #[serde(serialize_with = "duration")]
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    #[serde(serialize_with = "opt_duration")]
    pub initializing_timeout: Option<Duration>,
    /// Rancher's `strategy` (`recreate`, `none`, `recreateOnQuorum`): what to do with an
    /// unhealthy container.
    pub strategy: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HttpProbe {
    pub method: String,
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// One service.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Service {
    pub name: String,
    #[serde(skip)]
    pub pos: Pos,
    pub image: Option<String>,
    /// The build context, kept for reports; `build:` is refused.
    pub build: Option<String>,
    pub command: Option<Command>,
    pub entrypoint: Option<Command>,
    /// `env_file`s first, then `environment`, in order; a later one wins.
    pub environment: Vec<EnvVar>,
    pub env_files: Vec<String>,
    pub ports: Vec<Port>,
    pub expose: Vec<PortRange>,
    pub labels: BTreeMap<String, String>,
    pub volumes: Vec<ServiceVolume>,
    /// As written; empty: the stack's default network.
    pub networks: Vec<ServiceNetwork>,
    pub depends_on: Vec<Dependency>,
    /// `depends_on` was written in the long (map) form.
    pub depends_on_long: bool,
    pub links: Vec<Link>,
    pub healthcheck: Option<Healthcheck>,
    pub restart: Option<String>,
    #[serde(serialize_with = "opt_duration")]
    pub stop_grace_period: Option<Duration>,
    pub stop_signal: Option<String>,
    pub user: Option<String>,
    pub working_dir: Option<String>,
    pub deploy: Deploy,
    pub secrets: Vec<FileRef>,
    pub configs: Vec<FileRef>,
    pub profiles: Vec<String>,
    pub extensions: BTreeMap<String, serde_json::Value>,
    pub slipway: Option<XSlipway>,
    /// From Rancher's `health_check`.
    pub probe: Option<Probe>,
    pub container_name: Option<String>,
}

/// A Go duration (`1h2m3s`, `500ms`, `1.5s`, `0`), as Compose reads them.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    if t.is_empty() {
        return Err("an empty duration (write e.g. `10s`, `1m30s`, `500ms`)".to_owned());
    }
    let bad = || format!("`{t}` is not a duration (write e.g. `10s`, `1m30s`, `500ms`)");
    let mut rest = t;
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(bad());
        }
        let n: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => {
                return Err(format!("`{t}` has no unit (write e.g. `{t}s` for seconds)"));
            }
            _ => return Err(bad()),
        };
        total += n * scale;
    }
    if !total.is_finite() || total > 1e12 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(total))
}

/// A duration as Go prints it: `1m30s`, `500ms`, `2h0m0s` → `2h`.
pub fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".to_owned();
    }
    let ms = d.as_millis();
    if ms < 1000 {
        if d.subsec_nanos().is_multiple_of(1_000_000) {
            return format!("{ms}ms");
        }
        return format!("{}us", d.as_micros());
    }
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
    let frac = d.subsec_millis();
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || frac > 0 {
        if frac > 0 {
            let f = format!("{s}.{frac:03}");
            out.push_str(f.trim_end_matches('0'));
            out.push('s');
        } else {
            out.push_str(&format!("{s}s"));
        }
    }
    out
}

fn duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*d))
}

pub(crate) fn opt_duration<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(&format_duration(*d)),
        None => s.serialize_none(),
    }
}

pub(crate) use opt_duration as serialize_opt_duration;
