//! `plugins/docker`, natively: build the step's Dockerfile with the runner's Docker engine
//! (the build context streamed as a tar from the workspace), tag the image, push it through
//! the engine, and report what was pushed as an [`Event::Artifact`].
//!
//! Settings, as plugins/docker documents them (`settings:` in 1.x files, inline keys in 0.8
//! files; each also read from `PLUGIN_<KEY>`, where `from_secret` values arrive):
//! - `repo` (required unless `dry_run`): the image name. Without a registry host in it,
//!   it goes below `registry`, or below the server's own registry when `registry` is empty
//!   and the caller configured one ([`crate::RunOptions::own_registry`]), else Docker Hub.
//! - `tags`/`tag` (a list or a comma-separated text; default a `.tags` file in the
//!   workspace, else `latest`); `auto_tag` and `auto_tag_suffix` (see [`super::tags`]).
//! - `dockerfile` (default `Dockerfile`) and `context` (default `.`), both relative to the
//!   workspace, which they may not leave; `target`; `build_args` (`KEY=value` list or
//!   map); `build_args_from_env` (names of the step's variables); `labels`/`custom_labels`;
//!   `auto_label` (default true: `org.opencontainers.image.{created,revision,source,url}`),
//!   `label_schema`; `no_cache`; `pull_image` (pull base images even when present; the
//!   native default is false, so local base images and the layer cache keep working
//!   offline); `cache_from` (pulled first; one that cannot be pulled is skipped with a log
//!   line).
//! - `registry`, `username`, `password` (also `DOCKER_REGISTRY`, `DOCKER_USERNAME`,
//!   `DOCKER_PASSWORD`), `email`. The own registry is always reached with the caller's
//!   credential.
//! - `dry_run`: build and tag, do not push.
//! - `insecure`, `mirror` and the other settings of the plugin's own Docker daemon
//!   (`storage_driver`, `bip`, `mtu`, `custom_dns`, ...) cannot apply to the runner's
//!   engine: each is named in the log as ignored.
//!
//! Untrusted builds ([`crate::RunOptions::trusted`] false: pull requests, and every build of
//! a repository not marked trusted) build the same way, but the image is tagged only with a
//! build-scoped name (`slipway-untrusted/<build id>:<pipeline>-<step>`, never `repo`), is
//! never pushed, and is removed when the build ends (see [`crate::cleanup`]): a pull request
//! cannot replace an image a trusted build runs or publishes. Nor does it pull an image the
//! engine has (`pull_image` is ignored, a present `cache_from` image is not re-pulled),
//! since a pull replaces the local image for every build. Nor does it pass a proxy build
//! argument (`HTTP_PROXY` and the others Docker predefines): Docker leaves them out of the
//! layer cache's key, so a layer fetched through the pull request's proxy would be a cache
//! hit for a trusted build of the same Dockerfile. `repo` and `cache_from` may not name
//! `slipway-untrusted/` in any build.
//!
//! Output: the build's own output line by line; pulls and pushes one line a layer.

use std::collections::{BTreeMap, HashMap};
use std::time::{SystemTime, UNIX_EPOCH};

use bollard::auth::DockerCredentials;
use bollard::models::{BuildInfo, PushImageInfo};
use bollard::query_parameters::{
    BuildImageOptionsBuilder, CreateImageOptionsBuilder, PushImageOptionsBuilder,
    TagImageOptionsBuilder,
};
use futures_util::StreamExt;

use super::context::{self, ContextSpec, OUTSIDE_DOCKERFILE};
use super::dockerignore::IgnoreRules;
use super::settings::Settings;
use super::tags::{auto_tags, has_registry_host, valid_tag};
use super::{NativeHost, NativeLog, PluginError, workspace_path};
use crate::backend::StepSpec;
use crate::backend::docker::split_reference;
use crate::beneath::{BeneathError, Root};
use crate::cleanup;
use crate::event::Event;
use crate::log::{LineSplitter, StepLog};
use crate::options::RegistryCredential;

/// Settings of the plugin's own Docker daemon, meaningless for the runner's engine.
const DAEMON_SETTINGS: &[&str] = &[
    "mirror",
    "storage_driver",
    "storage_path",
    "bip",
    "mtu",
    "custom_dns",
    "custom_dns_search",
    "ipv6",
    "experimental",
    "debug",
    "daemon_off",
];

/// Docker Hub, as credentials name it.
const HUB_AUTH_ADDRESS: &str = "https://index.docker.io/v1/";

/// Runs a `plugins/docker` step. `Err` is the failure's message, masked.
pub(crate) async fn run(
    host: NativeHost<'_>,
    spec: &StepSpec<'_>,
    log: &StepLog,
    own_registry: Option<&RegistryCredential>,
) -> Result<(), String> {
    let settings = Settings::new(&spec.plan.settings, &spec.env);
    let password = settings.text_or_env("password", "DOCKER_PASSWORD");
    let log = NativeLog::new(
        log.clone(),
        &password.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    log.line(
        "plugins/docker runs natively: no plugin container and no Docker-in-Docker; \
         building and pushing with this runner's Docker engine",
    );
    match build_and_push(host, spec, settings, &log, own_registry).await {
        Ok(()) => Ok(()),
        Err(e) => Err(log.mask(&e.to_string())),
    }
}

/// Where the image goes and with which account.
#[derive(Debug)]
struct Target {
    /// The full repository (`127.0.0.1:5000/team/app`), when there is one.
    repo: Option<String>,
    /// The registry host the repository lives on (`docker.io` for Docker Hub).
    registry: String,
    credentials: Option<DockerCredentials>,
}

async fn build_and_push(
    host: NativeHost<'_>,
    spec: &StepSpec<'_>,
    settings: Settings<'_>,
    log: &NativeLog,
    own_registry: Option<&RegistryCredential>,
) -> Result<(), PluginError> {
    let env = &spec.env;
    for setting in DAEMON_SETTINGS {
        if settings.has(setting) {
            log.line(&format!(
                "setting `{setting}` configures the plugin's own Docker daemon; a native build \
                 uses the runner's engine, so it is ignored (set it in the engine's daemon.json)"
            ));
        }
    }
    if settings.flag("insecure")? == Some(true) {
        log.line(
            "setting `insecure` is ignored natively: the runner's Docker engine decides which \
             registries it reaches over plain HTTP (its `insecure-registries`; 127.0.0.0/8 is \
             always allowed)",
        );
    }
    let dry_run = settings.flag("dry_run")?.unwrap_or(false);
    // Every read of the workspace goes through this descriptor of its root.
    let root = Root::open(host.workspace)
        .map_err(|e| PluginError::Context(format!("opening the workspace: {e}")))?;

    // Tags first: `auto_tag` may decide there is nothing to build.
    let tags = match settings.flag("auto_tag")?.unwrap_or(false) {
        true => {
            let reference = build_ref(env);
            let default_branch = env.get("DRONE_REPO_BRANCH").map_or("", String::as_str);
            let suffix = settings.text(&["auto_tag_suffix"]).unwrap_or_default();
            match auto_tags(&reference, default_branch, &suffix)
                .map_err(|reason| PluginError::setting("auto_tag", reason))?
            {
                Some(tags) => tags,
                None => {
                    log.line(&format!(
                        "auto_tag: skipping the image build for {reference} (only tags and the \
                         default branch `{default_branch}` are built)"
                    ));
                    return Ok(());
                }
            }
        }
        false => explicit_tags(&root, &settings)?,
    };
    for tag in &tags {
        if !valid_tag(tag) {
            return Err(PluginError::setting(
                "tags",
                format!(
                    "`{tag}` is not a valid image tag (letters, digits, `_`, `.` and `-`, not \
                     starting with `.` or `-`, at most 128 characters)"
                ),
            ));
        }
    }
    let target = target(&settings, own_registry, dry_run)?;
    if let Some(repo) = target.repo.as_deref().filter(|r| super::reserved_image(r)) {
        return Err(PluginError::setting("repo", reserved(repo)));
    }

    // The build context and the Dockerfile, inside the workspace: resolved beneath it, links
    // that leave it refused (see `crate::beneath`).
    let context_setting = settings.text(&["context"]).unwrap_or_else(|| ".".into());
    let context_rel = workspace_path(host, "context", &context_setting)?;
    let dockerfile_setting = settings
        .text(&["dockerfile"])
        .unwrap_or_else(|| "Dockerfile".into());
    let dockerfile_rel = workspace_path(host, "dockerfile", &dockerfile_setting)?;
    let context = match root.open_dir(&context_rel) {
        Ok(found) => found,
        Err(BeneathError::NotFound { .. } | BeneathError::WrongType { .. }) => {
            return Err(PluginError::setting(
                "context",
                format!(
                    "`{context_setting}` is not a directory of the workspace (paths are \
                     relative to {})",
                    host.container_workspace
                ),
            ));
        }
        Err(e) => return Err(PluginError::setting("context", e.to_string())),
    };
    let dockerfile = match root.open_file(&dockerfile_rel) {
        Ok(found) => found,
        Err(BeneathError::NotFound { .. }) => {
            return Err(PluginError::setting(
                "dockerfile",
                format!(
                    "`{dockerfile_setting}` does not exist in the workspace (paths are relative \
                     to {}; the default is `Dockerfile`)",
                    host.container_workspace
                ),
            ));
        }
        Err(e) => return Err(PluginError::setting("dockerfile", e.to_string())),
    };
    // Where the links led: the Dockerfile is named in the archive by its real path, as
    // `docker build` names it after resolving links.
    let context_rel = context.resolved;
    let in_context = if context_rel.is_empty() {
        Some(dockerfile.resolved.clone())
    } else {
        dockerfile
            .resolved
            .strip_prefix(&format!("{context_rel}/"))
            .map(str::to_string)
    };
    let ignore_rel = if context_rel.is_empty() {
        ".dockerignore".to_string()
    } else {
        format!("{context_rel}/.dockerignore")
    };
    let rules = match root.open_file(&ignore_rel) {
        Ok(found) => {
            let mut text = String::new();
            let mut file = found.file;
            std::io::Read::read_to_string(&mut file, &mut text).map_err(|e| {
                PluginError::Context(format!("reading {}: {e}", shown(host, &ignore_rel)))
            })?;
            IgnoreRules::parse(&text)
        }
        Err(e) if e.is_not_found() => IgnoreRules::default(),
        Err(e) => {
            return Err(PluginError::Context(format!(
                "reading {}: {e}",
                shown(host, &ignore_rel)
            )));
        }
    };
    if !rules.is_empty() {
        log.line(&format!(
            "build context {}: leaving out what .dockerignore excludes",
            shown(host, &context_rel)
        ));
    }
    let context_spec = ContextSpec {
        dir: context.file,
        shown: shown(host, &context_rel),
        rules,
        always: [in_context.clone(), Some(".dockerignore".to_string())]
            .into_iter()
            .flatten()
            .collect(),
        outside_dockerfile: in_context.is_none().then_some(dockerfile.file),
    };
    let dockerfile_in_archive = in_context.unwrap_or_else(|| OUTSIDE_DOCKERFILE.to_string());

    // Build arguments and labels.
    let mut build_args: HashMap<String, String> = HashMap::new();
    for name in settings.list(&["build_args_from_env"]).unwrap_or_default() {
        if let Some(value) = env.get(&name) {
            build_args.insert(name, value.clone());
        }
    }
    for (key, value) in settings.pairs("build_args")? {
        build_args.insert(key, value);
    }
    for proxy in ["http_proxy", "https_proxy", "no_proxy"] {
        let upper = proxy.to_ascii_uppercase();
        let value = env.get(proxy).or_else(|| env.get(&upper));
        if let Some(value) = value.filter(|v| !v.is_empty())
            && !build_args.contains_key(proxy)
            && !build_args.contains_key(&upper)
        {
            build_args.insert(proxy.to_string(), value.clone());
            build_args.insert(upper, value.clone());
        }
    }
    if !host.trusted {
        drop_proxy_args(&mut build_args, env, log);
    }
    let mut labels: HashMap<String, String> = HashMap::new();
    if settings.flag("auto_label")?.unwrap_or(true) {
        // Each label is a step of its own in the classic builder (a container commit), so
        // labels without a value are left out rather than set empty.
        let prefix = "org.opencontainers.image";
        labels.insert(format!("{prefix}.created"), rfc3339(SystemTime::now()));
        for (label, var) in [
            ("revision", "DRONE_COMMIT_SHA"),
            ("source", "DRONE_REMOTE_URL"),
            ("url", "DRONE_REPO_LINK"),
        ] {
            if let Some(value) = env.get(var).filter(|v| !v.is_empty()) {
                labels.insert(format!("{prefix}.{label}"), value.clone());
            }
        }
        for item in settings.list(&["label_schema"]).unwrap_or_default() {
            if let Some((key, value)) = item.split_once('=') {
                labels.insert(format!("{prefix}.{key}"), value.to_string());
            }
        }
    }
    for key in ["custom_labels", "labels"] {
        for (label, value) in settings.pairs(key)? {
            labels.insert(label, value);
        }
    }
    let cache_from = settings.list(&["cache_from"]).unwrap_or_default();
    if let Some(image) = cache_from.iter().find(|i| super::reserved_image(i)) {
        return Err(PluginError::setting("cache_from", reserved(image)));
    }
    if !host.trusted {
        // What the build's cleanup looks for: the image is removed when the build ends,
        // also if it fails or is cancelled before it is tagged.
        labels.extend(cleanup::labels(host.build_id, host.pipeline));
        labels.insert(cleanup::LABEL_STEP.to_string(), spec.plan.name.clone());
    }
    let no_cache = settings.flag("no_cache")?.unwrap_or(false);
    let mut pull = settings.flag("pull_image")?.unwrap_or(false);
    if pull && !host.trusted {
        log.line(
            "setting `pull_image` is ignored in an untrusted build: pulling would replace base \
             images on this engine for trusted builds too; missing ones are still pulled",
        );
        pull = false;
    }

    match (&target.credentials, own_registry) {
        _ if !host.trusted => {}
        (Some(_), Some(own)) if same_host(&own.host, &target.registry) => log.line(&format!(
            "registry {}: Slipway's own registry, with this build's token",
            target.registry
        )),
        (Some(credentials), _) => log.line(&format!(
            "registry {}: credentials of `{}`",
            target.registry,
            credentials.username.as_deref().unwrap_or("")
        )),
        (None, _) if dry_run => {}
        (None, _) => log.line(&format!(
            "registry {}: no `username`/`password` given, pushing without credentials",
            target.registry
        )),
    }

    for image in &cache_from {
        // An untrusted build pulls only what is missing (see `pull_image`).
        if !host.trusted && host.docker.inspect_image(image).await.is_ok() {
            log.line(&format!(
                "cache_from image {image} is on this engine: not re-pulled in an untrusted build"
            ));
            continue;
        }
        pull_cache_image(host, image, &target, log).await;
    }

    let image_id = build(
        host,
        BuildRequest {
            context: context_spec,
            dockerfile: &dockerfile_in_archive,
            target: settings.text(&["target"]),
            build_args,
            labels,
            cache_from,
            no_cache,
            pull,
        },
        &target,
        log,
    )
    .await?;

    if !host.trusted {
        return keep_in_build(host, spec, &image_id, &target, &tags, dry_run, log).await;
    }
    let Some(repo) = &target.repo else {
        log.line(&format!(
            "dry_run: built {image_id}; no `repo`, so nothing is tagged"
        ));
        return Ok(());
    };
    for tag in &tags {
        let options = TagImageOptionsBuilder::new().repo(repo).tag(tag).build();
        host.docker
            .tag_image(&image_id, Some(options))
            .await
            .map_err(|e| PluginError::docker(format!("tagging the image as {repo}:{tag}"), e))?;
        log.line(&format!("tagged {repo}:{tag}"));
    }
    if dry_run {
        log.line("dry_run: not pushing");
        return Ok(());
    }

    let layers = match host.docker.inspect_image(&image_id).await {
        Ok(inspect) => {
            let mut layers = inspect.root_fs.and_then(|fs| fs.layers).unwrap_or_default();
            layers.dedup();
            layers
        }
        Err(e) => {
            return Err(PluginError::docker(
                format!("inspecting image {image_id}"),
                e,
            ));
        }
    };
    let mut pushed: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for tag in &tags {
        let digest = push(host, repo, tag, layers.len(), &target, log).await?;
        pushed.entry(digest).or_default().push(tag.clone());
    }
    let step_log = log.step_log();
    for (digest, tags) in pushed {
        step_log.emit(Event::Artifact {
            pipeline: step_log.pipeline().to_string(),
            step: step_log.step().to_string(),
            image: repo.clone(),
            tags,
            digest,
        });
    }
    Ok(())
}

/// Why a name in the reserved namespace is refused.
fn reserved(image: &str) -> String {
    format!(
        "`{image}` is in `{}`, the namespace reserved for the images of untrusted builds \
         (removed when their stage ends); choose another name",
        cleanup::UNTRUSTED_IMAGES.trim_end_matches('/')
    )
}

/// The build arguments Docker predefines: it passes them to `RUN` without declaring, and
/// leaves them out of the layer cache's key (moby's `builtinAllowedBuildArgs`).
const PROXY_ARGS: [&str; 10] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// An untrusted build passes no proxy build argument (from `build_args` or the step's
/// environment): one is no part of the cache key, so a `RUN` fetching through a proxy the
/// pull request chose would leave a layer that a trusted build of the same Dockerfile
/// takes from the cache as its own.
fn drop_proxy_args(
    build_args: &mut HashMap<String, String>,
    env: &BTreeMap<String, String>,
    log: &NativeLog,
) {
    let asked: Vec<&str> = PROXY_ARGS
        .into_iter()
        .filter(|name| {
            build_args.remove(*name).is_some() || env.get(*name).is_some_and(|v| !v.is_empty())
        })
        .collect();
    if !asked.is_empty() {
        log.line(&format!(
            "build arguments {} not passed in an untrusted build: Docker keeps proxy settings \
             out of its layer cache's key, so a layer built through this build's proxy could be \
             reused by trusted builds; set the proxy on the runner's Docker engine instead, or \
             mark the repository trusted",
            asked.join(", ")
        ));
    }
}

/// The end of an untrusted build's step: its image gets a build-scoped name only (so the
/// cleanup finds it by name as well as by label), and nothing is pushed.
async fn keep_in_build(
    host: NativeHost<'_>,
    spec: &StepSpec<'_>,
    image_id: &str,
    target: &Target,
    tags: &[String],
    dry_run: bool,
    log: &NativeLog,
) -> Result<(), PluginError> {
    let repo = format!("{}{}", cleanup::UNTRUSTED_IMAGES, host.build_id);
    let tag = format!("{}-{}", host.pipeline_index, spec.index);
    let options = TagImageOptionsBuilder::new().repo(&repo).tag(&tag).build();
    host.docker
        .tag_image(image_id, Some(options))
        .await
        .map_err(|e| PluginError::docker(format!("tagging the image as {repo}:{tag}"), e))?;
    let wanted = match &target.repo {
        Some(name) => format!(
            "not as {}",
            tags.iter()
                .map(|t| format!("{name}:{t}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => "no `repo` was given".to_string(),
    };
    log.line(&format!(
        "untrusted build: built {image_id}, tagged {repo}:{tag} only ({wanted}): images of \
         pull requests and of repositories not marked trusted never take a name other builds \
         use, and are removed when the stage ends"
    ));
    if !dry_run {
        log.line(
            "not pushing: this build is untrusted (a pull request, or a repository not marked \
             trusted), and untrusted builds never push; pull requests never push, mark the \
             repository trusted for its branch and tag builds to push",
        );
    }
    Ok(())
}

/// The ref of this build for `auto_tag`: `DRONE_COMMIT_REF`, else made from the tag or
/// branch.
fn build_ref(env: &BTreeMap<String, String>) -> String {
    let var = |name: &str| env.get(name).map_or("", String::as_str);
    if !var("DRONE_COMMIT_REF").is_empty() {
        return var("DRONE_COMMIT_REF").to_string();
    }
    if !var("DRONE_TAG").is_empty() {
        return format!("refs/tags/{}", var("DRONE_TAG"));
    }
    let branch = [var("DRONE_BRANCH"), var("DRONE_COMMIT_BRANCH")]
        .into_iter()
        .find(|b| !b.is_empty())
        .unwrap_or("");
    format!("refs/heads/{branch}")
}

/// `tags`/`tag`, else the workspace's `.tags` file (comma-separated), else `latest`.
fn explicit_tags(root: &Root, settings: &Settings<'_>) -> Result<Vec<String>, PluginError> {
    if let Some(tags) = settings.list(&["tags", "tag"]) {
        if tags.is_empty() {
            return Err(PluginError::setting("tags", "is empty"));
        }
        return Ok(tags);
    }
    let text = root.open_file(".tags").and_then(|found| {
        let mut text = String::new();
        let mut file = found.file;
        std::io::Read::read_to_string(&mut file, &mut text)
            .map(|_| text)
            .map_err(|error| BeneathError::Io {
                path: ".tags".to_string(),
                error,
            })
    });
    match text {
        Ok(text) => {
            let tags: Vec<String> = text
                .split([',', '\n'])
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
                .collect();
            if tags.is_empty() {
                Ok(vec!["latest".to_string()])
            } else {
                Ok(tags)
            }
        }
        Err(e) if e.is_not_found() => Ok(vec!["latest".to_string()]),
        Err(e) => Err(PluginError::Context(format!(
            "reading the workspace's .tags file (the default of `tags`): {e}"
        ))),
    }
}

/// `registry` as a host: scheme, path and trailing `/` removed; Docker Hub's names as
/// `docker.io`.
fn registry_host(registry: &str) -> String {
    let host = registry
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = host.split('/').next().unwrap_or(host);
    match host {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".to_string()
        }
        other => other.to_string(),
    }
}

fn same_host(a: &str, b: &str) -> bool {
    registry_host(a).eq_ignore_ascii_case(&registry_host(b))
}

/// Resolves `repo`, `registry` and the credentials (see the module docs).
fn target(
    settings: &Settings<'_>,
    own: Option<&RegistryCredential>,
    dry_run: bool,
) -> Result<Target, PluginError> {
    let registry = settings
        .text_or_env("registry", "DOCKER_REGISTRY")
        .map(|r| registry_host(&r))
        .filter(|r| !r.is_empty());
    let repo = match settings.text(&["repo"]) {
        Some(repo) => Some(repo),
        None if dry_run => None,
        None => {
            return Err(PluginError::setting(
                "repo",
                "is required to push: the image name, e.g. `registry.example.com/team/app` \
                 (or `team/app` for this server's registry)",
            ));
        }
    };
    let (repo, registry) = match repo {
        Some(repo) if has_registry_host(&repo) => {
            let host = repo.split('/').next().unwrap_or("").to_string();
            (Some(repo), registry_host(&host))
        }
        Some(repo) => match (&registry, own) {
            (Some(hub), _) if hub == "docker.io" => (Some(repo), hub.clone()),
            (Some(registry), _) => (Some(format!("{registry}/{repo}")), registry.clone()),
            (None, Some(own)) => (
                Some(format!("{}/{repo}", registry_host(&own.host))),
                registry_host(&own.host),
            ),
            (None, None) => (Some(repo), "docker.io".to_string()),
        },
        None => (None, registry.unwrap_or_else(|| "docker.io".to_string())),
    };
    if let Some(repo) = &repo {
        let path = if has_registry_host(repo) {
            repo.split_once('/').map_or("", |(_, rest)| rest)
        } else {
            repo.as_str()
        };
        if path.contains([':', '@']) {
            return Err(PluginError::setting(
                "repo",
                format!("`{repo}` must not carry a tag or digest; put tags under `tags`"),
            ));
        }
        if path.chars().any(|c| c.is_ascii_uppercase()) || path.is_empty() {
            return Err(PluginError::setting(
                "repo",
                format!(
                    "`{repo}` is not a valid repository name (lower case letters, digits, `.`, `_`, `-` and `/`)"
                ),
            ));
        }
    }
    let server_address = if registry == "docker.io" {
        HUB_AUTH_ADDRESS.to_string()
    } else {
        registry.clone()
    };
    let credentials = match own.filter(|own| same_host(&own.host, &registry)) {
        Some(own) => Some(DockerCredentials {
            username: Some(own.username.clone()),
            password: Some(own.password.clone()),
            serveraddress: Some(server_address),
            ..Default::default()
        }),
        None => {
            let username = settings.text_or_env("username", "DOCKER_USERNAME");
            let password = settings.text_or_env("password", "DOCKER_PASSWORD");
            match (username, password) {
                (None, None) => None,
                (username, password) => Some(DockerCredentials {
                    username,
                    password,
                    email: settings.text_or_env("email", "DOCKER_EMAIL"),
                    serveraddress: Some(server_address),
                    ..Default::default()
                }),
            }
        }
    };
    Ok(Target {
        repo,
        registry,
        credentials,
    })
}

/// How a path of the workspace is shown to the user.
fn shown(host: NativeHost<'_>, relative: &str) -> String {
    if relative.is_empty() {
        host.container_workspace.to_string()
    } else {
        format!("{}/{relative}", host.container_workspace)
    }
}

/// Credentials for `image` if it lives on the target's registry.
fn credentials_for(image: &str, target: &Target) -> Option<DockerCredentials> {
    let host = if has_registry_host(image) {
        registry_host(image.split('/').next().unwrap_or(""))
    } else {
        "docker.io".to_string()
    };
    target
        .credentials
        .clone()
        .filter(|_| same_host(&host, &target.registry))
}

/// Pulls a `cache_from` image; failing is not fatal (it may not exist yet).
async fn pull_cache_image(host: NativeHost<'_>, image: &str, target: &Target, log: &NativeLog) {
    log.line(&format!("pulling cache_from image {image}"));
    let (repository, tag) = split_reference(image);
    let options = CreateImageOptionsBuilder::new()
        .from_image(repository)
        .tag(tag)
        .build();
    let mut progress =
        host.docker
            .create_image(Some(options), None, credentials_for(image, target));
    let mut layers = 0;
    while let Some(item) = progress.next().await {
        match item {
            Ok(info) => {
                if matches!(
                    info.status.as_deref(),
                    Some("Pull complete" | "Already exists")
                ) {
                    layers += 1;
                }
            }
            Err(e) => {
                log.line(&format!(
                    "could not pull cache_from image {image}, building without it: {e}"
                ));
                return;
            }
        }
    }
    log.line(&format!(
        "pulled cache_from image {image} ({layers} layers)"
    ));
}

struct BuildRequest<'a> {
    context: ContextSpec,
    dockerfile: &'a str,
    target: Option<String>,
    build_args: HashMap<String, String>,
    labels: HashMap<String, String>,
    cache_from: Vec<String>,
    no_cache: bool,
    pull: bool,
}

/// Builds the image, streaming its output into the log; returns the image id.
async fn build(
    host: NativeHost<'_>,
    request: BuildRequest<'_>,
    target: &Target,
    log: &NativeLog,
) -> Result<String, PluginError> {
    let mut options = BuildImageOptionsBuilder::new()
        .dockerfile(request.dockerfile)
        .rm(true)
        // Intermediate containers go even when a step fails: nothing is left behind.
        .forcerm(true)
        .nocache(request.no_cache);
    if request.pull {
        options = options.pull("1");
    }
    if let Some(stage) = &request.target {
        options = options.target(stage);
    }
    if !request.cache_from.is_empty() {
        options = options.cachefrom(&request.cache_from);
    }
    if !request.build_args.is_empty() {
        options = options.buildargs(&request.build_args);
    }
    if !request.labels.is_empty() {
        options = options.labels(&request.labels);
    }
    // Credentials for base images on the target registry.
    let registry_config = target.credentials.clone().map(|credentials| {
        let address = credentials
            .serveraddress
            .clone()
            .unwrap_or_else(|| target.registry.clone());
        HashMap::from([(address, credentials)])
    });
    let (chunks, walk) = context::stream(request.context);
    let mut output = host.docker.build_image(
        options.build(),
        registry_config,
        Some(bollard::body_try_stream(chunks)),
    );
    let mut lines = LineSplitter::new();
    let mut image_id = None;
    let mut failure = None;
    while let Some(item) = output.next().await {
        match item {
            Ok(BuildInfo {
                stream,
                aux,
                status,
                id,
                ..
            }) => {
                if let Some(text) = stream {
                    for line in lines.push(text.as_bytes()) {
                        log.line(&line);
                    }
                }
                if let Some(status) = status {
                    pull_progress(log, id.as_deref(), &status);
                }
                if let Some(found) = aux.and_then(|aux| aux.id) {
                    image_id = Some(found);
                }
            }
            // A failing instruction ends the stream with its message; a Dockerfile the
            // engine cannot parse is refused with 400 before anything runs.
            Err(
                bollard::errors::Error::DockerStreamError { error }
                | bollard::errors::Error::DockerResponseServerError {
                    status_code: 400,
                    message: error,
                },
            ) => {
                failure = Some(PluginError::Build(error.trim().to_string()));
                break;
            }
            Err(error) => {
                failure = Some(PluginError::docker("building the image", error));
                break;
            }
        }
    }
    if let Some(line) = lines.finish() {
        log.line(&line);
    }
    drop(output);
    let walked = walk.await;
    if let Some(failure) = failure {
        // A broken context explains a broken request better than the request's error.
        if let (PluginError::Docker { .. }, Ok(Err(e))) = (&failure, &walked) {
            return Err(PluginError::Context(format!(
                "sending the build context: {e}"
            )));
        }
        return Err(failure);
    }
    match walked {
        Ok(Ok(stats)) => log.line(&format!(
            "build context: {} entries, {} bytes of files",
            stats.entries, stats.bytes
        )),
        Ok(Err(e)) => {
            return Err(PluginError::Context(format!(
                "sending the build context: {e}"
            )));
        }
        Err(e) => {
            return Err(PluginError::Context(format!(
                "sending the build context: {e}"
            )));
        }
    }
    image_id.ok_or_else(|| PluginError::Build("the engine reported no image id".to_string()))
}

/// One line per layer of a base-image pull inside the build, and the pull's own messages.
fn pull_progress(log: &NativeLog, id: Option<&str>, status: &str) {
    match (id, status) {
        (Some(id), "Pull complete" | "Already exists") => {
            log.line(&format!("layer {id}: {}", status.to_ascii_lowercase()))
        }
        (Some(_), _) => {}
        (None, status) => log.line(status),
    }
}

/// Pushes `repo:tag`, one line per layer; returns the manifest digest the engine reported.
async fn push(
    host: NativeHost<'_>,
    repo: &str,
    tag: &str,
    layers: usize,
    target: &Target,
    log: &NativeLog,
) -> Result<String, PluginError> {
    log.line(&format!("pushing {repo}:{tag}"));
    let options = PushImageOptionsBuilder::new().tag(tag).build();
    let mut progress = host
        .docker
        .push_image(repo, Some(options), target.credentials.clone());
    let mut done = 0usize;
    let mut digest = None;
    while let Some(item) = progress.next().await {
        match item {
            Ok(PushImageInfo {
                status: Some(status),
                ..
            }) => {
                if let Some(found) = reported_digest(&status) {
                    digest = Some(found);
                    continue;
                }
                let outcome = match status.as_str() {
                    "Preparing" | "Waiting" | "Pushing" => continue,
                    _ if status.starts_with("The push refers to") => continue,
                    "Pushed" => "pushed".to_string(),
                    "Layer already exists" => "already in the registry".to_string(),
                    mounted if mounted.starts_with("Mounted from") => mounted.to_ascii_lowercase(),
                    other => {
                        log.line(other);
                        continue;
                    }
                };
                done += 1;
                log.line(&format!("layer {done}/{}: {outcome}", layers.max(done)));
            }
            Ok(_) => {}
            Err(bollard::errors::Error::DockerStreamError { error }) => {
                return Err(push_error(repo, tag, target, error.trim()));
            }
            Err(error) => {
                return Err(PluginError::docker(format!("pushing {repo}:{tag}"), error));
            }
        }
    }
    let digest = digest.ok_or_else(|| PluginError::Push {
        image: format!("{repo}:{tag}"),
        registry: target.registry.clone(),
        message: "the engine did not report the pushed manifest's digest".to_string(),
        hint: String::new(),
    })?;
    log.line(&format!("pushed {repo}:{tag} ({digest})"));
    Ok(digest)
}

/// `TAG: digest: sha256:... size: N`, the engine's last push message.
fn reported_digest(status: &str) -> Option<String> {
    let (_, rest) = status.split_once(": digest: ")?;
    let digest = rest.split_whitespace().next()?;
    digest.contains(':').then(|| digest.to_string())
}

fn push_error(repo: &str, tag: &str, target: &Target, message: &str) -> PluginError {
    let lower = message.to_ascii_lowercase();
    let hint = if lower.contains("unauthorized")
        || lower.contains("authentication required")
        || lower.contains("denied")
        || lower.contains("401")
    {
        match &target.credentials {
            Some(credentials) => format!(
                "; the registry refused the credentials of `{}`: check `username` and \
                 `password` (or the secrets they come from) for {}",
                credentials.username.as_deref().unwrap_or(""),
                target.registry
            ),
            None => format!(
                "; {} wants credentials: set `username` and `password` (from secrets)",
                target.registry
            ),
        }
    } else if lower.contains("server gave http response to https client") {
        format!(
            "; the runner's Docker engine speaks HTTPS to {0}: add {0} to its \
             `insecure-registries` (daemon.json), which `insecure: true` cannot do natively",
            target.registry
        )
    } else {
        String::new()
    };
    PluginError::Push {
        image: format!("{repo}:{tag}"),
        registry: target.registry.clone(),
        message: message.to_string(),
        hint,
    }
}

/// `2024-05-01T12:00:00Z`.
fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time.max(UNIX_EPOCH)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_from_push_status() {
        assert_eq!(
            reported_digest("dev: digest: sha256:abc123 size: 528").as_deref(),
            Some("sha256:abc123")
        );
        assert_eq!(reported_digest("Pushed"), None);
    }

    #[test]
    fn registry_hosts() {
        assert_eq!(
            registry_host("https://registry.company.com/"),
            "registry.company.com"
        );
        assert_eq!(registry_host("https://index.docker.io/v1/"), "docker.io");
        assert_eq!(registry_host("127.0.0.1:5000"), "127.0.0.1:5000");
    }

    #[test]
    fn dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + std::time::Duration::from_secs(1_709_251_199);
        assert_eq!(rfc3339(t), "2024-02-29T23:59:59Z");
    }

    fn resolve(
        plan: serde_json::Value,
        own: Option<&RegistryCredential>,
    ) -> Result<Target, PluginError> {
        let plan: BTreeMap<String, serde_json::Value> = match plan {
            serde_json::Value::Object(map) => map.into_iter().collect(),
            _ => BTreeMap::new(),
        };
        let env = BTreeMap::new();
        target(&Settings::new(&plan, &env), own, false)
    }

    #[test]
    fn targets() -> Result<(), PluginError> {
        let own = RegistryCredential {
            host: "ci.example.com".into(),
            username: "build".into(),
            password: "token".into(),
        };
        let t = resolve(serde_json::json!({"repo": "team/app"}), Some(&own))?;
        assert_eq!(t.repo.as_deref(), Some("ci.example.com/team/app"));
        assert_eq!(
            t.credentials.and_then(|c| c.password).as_deref(),
            Some("token")
        );
        let t = resolve(
            serde_json::json!({"repo": "ci.example.com/team/app", "username": "u", "password": "p"}),
            Some(&own),
        )?;
        assert_eq!(
            t.credentials.and_then(|c| c.username).as_deref(),
            Some("build")
        );
        let t = resolve(
            serde_json::json!({"repo": "app", "registry": "https://harbor.io", "username": "u", "password": "p"}),
            Some(&own),
        )?;
        assert_eq!(t.repo.as_deref(), Some("harbor.io/app"));
        assert_eq!(t.credentials.and_then(|c| c.username).as_deref(), Some("u"));
        let t = resolve(serde_json::json!({"repo": "octocat/app"}), None)?;
        assert_eq!(
            (t.repo.as_deref(), t.registry.as_str()),
            (Some("octocat/app"), "docker.io")
        );
        assert!(resolve(serde_json::json!({"repo": "app:latest"}), None).is_err());
        assert!(resolve(serde_json::json!({"repo": "Team/App"}), None).is_err());
        assert!(resolve(serde_json::json!({}), None).is_err());
        Ok(())
    }
}
