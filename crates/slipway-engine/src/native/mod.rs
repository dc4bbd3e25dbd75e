//! Native plugins: well-known Drone plugin images the engine runs itself, with the
//! runner's Docker engine, instead of as a plugin container.
//!
//! Owns which steps are native ([`native_plugin`]), which known plugin images are not
//! native yet ([`unavailable_plugin`]), and running a native step ([`run`]). The native
//! plugins: `plugins/docker` ([`docker`]): build the workspace's Dockerfile, tag, push,
//! report the pushed image as an [`Event::Artifact`](crate::Event::Artifact); and the
//! notification plugins `clem109/drone-wechat`, `lizheming/drone-wechat`, `plugins/slack`,
//! `plugins/webhook`, `appleboy/drone-telegram`, `appleboy/drone-discord`,
//! `drone-plugins/drone-email` (and `drillster/drone-email`) and
//! `lddsb/drone-dingtalk-message` ([`notify`]), sent with `slipway-notify`; and the deploy
//! plugins `slipway/deploy` and `peloton/drone-rancher` ([`deploy`]), asked of the server
//! through [`crate::RunOptions::deployer`].
//!
//! Invariants:
//! - A step is native only when native plugins are on ([`crate::RunOptions::native_plugins`]),
//!   its pipeline is a Docker pipeline, it has no `commands` (with `commands` it is an
//!   ordinary step that happens to use the plugin's image) and its image is a native
//!   plugin's, whatever the tag or Docker Hub prefix (`plugins/docker`,
//!   `plugins/docker:20`, `docker.io/plugins/docker`).
//! - A native step creates no container, network or volume; what a trusted build's step
//!   leaves in the engine is the image it built (tagged as its `repo`), which later builds
//!   reuse as layer cache.
//! - An untrusted build's step (see [`crate::RunOptions::trusted`]) never names an image
//!   another build could use: its image carries the build's ownership labels, is tagged
//!   only `slipway-untrusted/<build id>:<pipeline>-<step>` (whatever `repo` and `tags` say),
//!   is never pushed (a log line says why) and is removed with the build's other resources
//!   (see [`crate::cleanup`]). No build may name that namespace (`repo`, `cache_from`, step
//!   and service images are refused).
//! - Its first log line says it runs natively; every line it writes goes through the
//!   build's masker and also masks the step's own `password` setting, which may be
//!   written in clear in a legacy file.
//! - It honours the step's time limit and the build's cancellation like any step: the
//!   work is dropped, which closes the requests to the engine, which stops the build or
//!   push.

pub(crate) mod context;
pub(crate) mod deploy;
pub(crate) mod docker;
pub(crate) mod dockerignore;
pub(crate) mod notify;
pub(crate) mod settings;
pub(crate) mod tags;
pub(crate) mod tpl;

use std::path::Path;

use bollard::Docker;
use slipway_spec::plan::StepPlan;

use crate::backend::StepSpec;
use crate::deployer::PushedImage;
use crate::log::StepLog;
use crate::mask::Masker;
use crate::options::RunOptions;

/// A plugin the engine runs itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NativePlugin {
    /// `plugins/docker`: build and push an image.
    Docker,
    /// A notification plugin; `image` is its name for the log.
    Notify {
        plugin: notify::NotifyPlugin,
        image: &'static str,
    },
    /// `slipway/deploy` or `peloton/drone-rancher`: a deploy through the server.
    Deploy(deploy::DeployPlugin),
}

/// The plugin `name` (an [`image_name`]) is, if it is native.
fn plugin_named(name: &str) -> Option<NativePlugin> {
    use notify::NotifyPlugin;
    let notify = |plugin, image| Some(NativePlugin::Notify { plugin, image });
    match name {
        "plugins/docker" => Some(NativePlugin::Docker),
        "slipway/deploy" => Some(NativePlugin::Deploy(deploy::DeployPlugin::Slipway)),
        "peloton/drone-rancher" => Some(NativePlugin::Deploy(deploy::DeployPlugin::Rancher)),
        "clem109/drone-wechat" => notify(NotifyPlugin::WeChat, "clem109/drone-wechat"),
        "lizheming/drone-wechat" => notify(NotifyPlugin::WeChat, "lizheming/drone-wechat"),
        "plugins/slack" => notify(NotifyPlugin::Slack, "plugins/slack"),
        "plugins/webhook" => notify(NotifyPlugin::Webhook, "plugins/webhook"),
        "appleboy/drone-telegram" => notify(NotifyPlugin::Telegram, "appleboy/drone-telegram"),
        "appleboy/drone-discord" => notify(NotifyPlugin::Discord, "appleboy/drone-discord"),
        "drone-plugins/drone-email" => notify(NotifyPlugin::Email, "drone-plugins/drone-email"),
        "drillster/drone-email" => notify(NotifyPlugin::Email, "drillster/drone-email"),
        "lddsb/drone-dingtalk-message" => {
            notify(NotifyPlugin::DingTalk, "lddsb/drone-dingtalk-message")
        }
        _ => None,
    }
}

/// Plugin images that are known but not native yet: exact names, then name prefixes.
const KNOWN_PLUGINS: &[&str] = &[
    "clem109/drone-wechat",
    "lizheming/drone-wechat",
    "drillster/drone-rsync",
    "drillster/drone-volume-cache",
    "meltwater/drone-cache",
    "homoluctus/drone-slack",
    "drone-plugins/drone-email",
    "lddsb/drone-dingtalk-message",
];
const KNOWN_PLUGIN_PREFIXES: &[&str] = &["plugins/", "appleboy/drone-"];

/// The repository part of an image reference without Docker Hub's implicit prefixes, tag
/// or digest: `docker.io/plugins/docker:latest` -> `plugins/docker`.
pub(crate) fn image_name(image: &str) -> &str {
    let image = image.split('@').next().unwrap_or(image);
    let name_start = image.rfind('/').map_or(0, |i| i + 1);
    let image = match image[name_start..].find(':') {
        Some(i) => &image[..name_start + i],
        None => image,
    };
    let image = ["docker.io/", "index.docker.io/", "registry-1.docker.io/"]
        .iter()
        .find_map(|prefix| image.strip_prefix(prefix))
        .unwrap_or(image);
    image.strip_prefix("library/").unwrap_or(image)
}

/// Whether `image` is in the namespace reserved for untrusted builds' images
/// ([`crate::cleanup::UNTRUSTED_IMAGES`]), however it is spelled.
pub(crate) fn reserved_image(image: &str) -> bool {
    image_name(image.trim())
        .to_ascii_lowercase()
        .starts_with(crate::cleanup::UNTRUSTED_IMAGES)
}

/// The native plugin `step` is, if it is one (see the module invariants; the caller checks
/// that native plugins are on and the pipeline is a Docker one).
pub(crate) fn native_plugin(step: &StepPlan) -> Option<NativePlugin> {
    if !step.commands.is_empty() {
        return None;
    }
    plugin_named(image_name(&step.image))
}

/// Whether `image` is a known plugin that is not native yet: its name for the message.
pub(crate) fn unavailable_plugin(image: &str) -> Option<&str> {
    let name = image_name(image);
    let known =
        KNOWN_PLUGINS.contains(&name) || KNOWN_PLUGIN_PREFIXES.iter().any(|p| name.starts_with(p));
    (known && plugin_named(name).is_none()).then_some(name)
}

/// What a native step needs from the pipeline it runs in.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NativeHost<'a> {
    pub docker: &'a Docker,
    /// [`crate::RunOptions::trusted`]: an untrusted build's images get build-scoped names
    /// only and are never pushed.
    pub trusted: bool,
    /// For the labels and names of an untrusted build's images.
    pub build_id: &'a str,
    pub pipeline_index: usize,
    pub pipeline: &'a str,
    /// The pipeline's workspace on this host.
    pub workspace: &'a Path,
    /// The same directory as steps see it (`/drone/src`), for absolute paths in settings.
    pub container_workspace: &'a str,
}

/// Resolves a path setting against the workspace, lexically: its `/`-separated path
/// relative to the workspace (`""` for the workspace itself). Absolute paths inside the
/// container workspace are accepted; leaving the workspace (`..`, another absolute path) is
/// an error naming the setting. Links are resolved when the path is opened, beneath the
/// workspace's [`Root`](crate::beneath::Root).
pub(crate) fn workspace_path(
    host: NativeHost<'_>,
    setting: &str,
    value: &str,
) -> Result<String, PluginError> {
    let outside = || {
        PluginError::setting(
            setting,
            format!(
                "`{value}` is outside the workspace {}",
                host.container_workspace
            ),
        )
    };
    let relative = match value.strip_prefix(host.container_workspace) {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
        _ if value.starts_with('/') => return Err(outside()),
        _ => value,
    };
    let mut parts: Vec<&str> = Vec::new();
    for part in relative.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(outside());
                }
            }
            other => parts.push(other),
        }
    }
    Ok(parts.join("/"))
}

/// Why a native step failed. Messages name the setting, file or registry at fault and
/// never hold a credential in clear (they are masked again on their way out anyway).
#[derive(Debug, thiserror::Error)]
pub(crate) enum PluginError {
    #[error("setting `{setting}`: {reason}")]
    Setting { setting: String, reason: String },

    #[error("{0}")]
    Context(String),

    #[error("building the image failed: {0}")]
    Build(String),

    #[error("pushing {image} to {registry} failed: {message}{hint}")]
    Push {
        image: String,
        registry: String,
        message: String,
        hint: String,
    },

    #[error("Docker engine error while {action}: {error}")]
    Docker {
        action: String,
        error: bollard::errors::Error,
    },
}

impl PluginError {
    pub(crate) fn setting(setting: &str, reason: impl Into<String>) -> PluginError {
        PluginError::Setting {
            setting: setting.to_string(),
            reason: reason.into(),
        }
    }

    pub(crate) fn docker(action: impl Into<String>, error: bollard::errors::Error) -> PluginError {
        PluginError::Docker {
            action: action.into(),
            error,
        }
    }
}

/// A native step's log: the step's log plus masking of the step's own credentials.
#[derive(Debug, Clone)]
pub(crate) struct NativeLog {
    log: StepLog,
    mask: Masker,
}

impl NativeLog {
    pub(crate) fn new(log: StepLog, credentials: &[&str]) -> NativeLog {
        NativeLog {
            log,
            mask: Masker::new(credentials),
        }
    }

    pub(crate) fn line(&self, line: &str) {
        self.log.line(&self.mask.mask(line));
    }

    pub(crate) fn mask(&self, text: &str) -> String {
        self.mask.mask_text(text)
    }

    pub(crate) fn step_log(&self) -> &StepLog {
        &self.log
    }
}

/// Runs a native step to its end. `Err` is a step failure, with the message for its log
/// and report. `pushed`: the images this build's steps pushed so far.
pub(crate) async fn run(
    plugin: NativePlugin,
    host: NativeHost<'_>,
    spec: &StepSpec<'_>,
    log: &StepLog,
    options: &RunOptions,
    pushed: Vec<PushedImage>,
) -> Result<(), String> {
    match plugin {
        NativePlugin::Docker => docker::run(host, spec, log, options.own_registry.as_ref()).await,
        NativePlugin::Notify { plugin, image } => {
            notify::run(plugin, image, host, spec, log, &options.notify_api).await
        }
        NativePlugin::Deploy(plugin) => {
            deploy::run(plugin, spec, log, options.deployer.as_deref(), pushed).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names() {
        assert_eq!(image_name("plugins/docker"), "plugins/docker");
        assert_eq!(image_name("plugins/docker:latest"), "plugins/docker");
        assert_eq!(
            image_name("docker.io/plugins/docker:20.10"),
            "plugins/docker"
        );
        assert_eq!(image_name("plugins/docker@sha256:abc"), "plugins/docker");
        assert_eq!(
            image_name("127.0.0.1:5000/plugins/docker"),
            "127.0.0.1:5000/plugins/docker"
        );
        assert_eq!(image_name("docker.io/library/alpine:3"), "alpine");
    }

    #[test]
    fn known_plugins() {
        assert_eq!(unavailable_plugin("peloton/drone-rancher"), None);
        assert_eq!(unavailable_plugin("slipway/deploy"), None);
        assert_eq!(
            unavailable_plugin("homoluctus/drone-slack:latest"),
            Some("homoluctus/drone-slack")
        );
        assert_eq!(unavailable_plugin("plugins/s3"), Some("plugins/s3"));
        assert_eq!(
            unavailable_plugin("drillster/drone-rsync"),
            Some("drillster/drone-rsync")
        );
        assert_eq!(
            unavailable_plugin("appleboy/drone-ssh"),
            Some("appleboy/drone-ssh")
        );
        assert_eq!(unavailable_plugin("plugins/docker"), None);
        assert_eq!(unavailable_plugin("clem109/drone-wechat"), None);
        assert_eq!(unavailable_plugin("plugins/webhook:1"), None);
        assert_eq!(unavailable_plugin("lizheming/drone-wechat"), None);
        assert_eq!(unavailable_plugin("drone-plugins/drone-email:latest"), None);
        assert_eq!(unavailable_plugin("drillster/drone-email"), None);
        assert_eq!(unavailable_plugin("lddsb/drone-dingtalk-message"), None);
        assert_eq!(unavailable_plugin("golang:1.22"), None);
    }
}
