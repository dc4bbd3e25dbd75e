//! What is known about one build before it runs, and the DRONE_* / CI_* variables
//! that follow from it.
//!
//! The same variables serve two purposes: `${...}` substitution in the pipeline file, and
//! the environment of every step. Their names and meanings are Drone's (see the README for
//! the list), with Woodpecker's CI_* names added for files written for it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The event that started a build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BuildEvent {
    #[default]
    Push,
    PullRequest,
    Tag,
    Promote,
    Rollback,
    Cron,
    Custom,
}

impl BuildEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            BuildEvent::Push => "push",
            BuildEvent::PullRequest => "pull_request",
            BuildEvent::Tag => "tag",
            BuildEvent::Promote => "promote",
            BuildEvent::Rollback => "rollback",
            BuildEvent::Cron => "cron",
            BuildEvent::Custom => "custom",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "push" => BuildEvent::Push,
            "pull_request" => BuildEvent::PullRequest,
            "tag" => BuildEvent::Tag,
            "promote" | "deployment" => BuildEvent::Promote,
            "rollback" => BuildEvent::Rollback,
            "cron" => BuildEvent::Cron,
            "custom" => BuildEvent::Custom,
            _ => return None,
        })
    }
}

/// Everything about a build that conditions and variables depend on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BuildContext {
    pub event: BuildEvent,
    /// The branch pushed to (for a pull request: its target branch).
    pub branch: String,
    pub tag: Option<String>,
    /// The full git ref, e.g. `refs/heads/main`, `refs/tags/v1.2.3`, `refs/pull/7/head`.
    pub reference: String,
    pub commit: String,
    pub before: String,
    pub message: String,
    pub author: String,
    pub author_name: String,
    pub author_email: String,
    pub author_avatar: String,
    /// `owner/name`.
    pub repo: String,
    pub repo_link: String,
    pub clone_url: String,
    pub default_branch: String,
    pub private: bool,
    pub build_number: u64,
    pub parent: u64,
    pub build_link: String,
    /// Unix seconds.
    pub created: i64,
    pub started: i64,
    /// `promote`/`rollback` target (`DRONE_DEPLOY_TO`).
    pub target: String,
    pub pull_request: Option<u64>,
    pub pull_request_title: String,
    pub source_branch: String,
    pub target_branch: String,
    pub cron: String,
    /// Webhook action (`opened`, `synchronize`, ...).
    pub action: String,
    /// The server's host name (`instance` condition, `DRONE_SYSTEM_HOST`).
    pub instance: String,
    pub system_proto: String,
    /// Who or what started the build (`DRONE_BUILD_TRIGGER`).
    pub trigger: String,
    /// Files changed by the commit(s); `None` when unknown, which makes `paths` match.
    pub changed_files: Option<Vec<String>>,
    /// Extra variables (`--param K=V`, manual build parameters); they also reach steps.
    pub params: BTreeMap<String, String>,
}

/// The parts of a semantic version tag, as Drone exposes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Semver {
    pub full: String,
    pub short: String,
    pub major: String,
    pub minor: String,
    pub patch: String,
    pub prerelease: String,
    pub build: String,
}

/// Parses `v1.2.3-rc.1+build.5` (the `v` is optional).
pub fn parse_semver(tag: &str) -> Result<Semver, String> {
    let t = tag.strip_prefix('v').unwrap_or(tag);
    let (rest, build) = t.split_once('+').unwrap_or((t, ""));
    let (core, prerelease) = rest.split_once('-').unwrap_or((rest, ""));
    let parts: Vec<&str> = core.split('.').collect();
    let numeric = |s: &&str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
    if parts.len() != 3 || !parts.iter().all(numeric) {
        return Err(format!(
            "`{tag}` is not a semantic version (MAJOR.MINOR.PATCH)"
        ));
    }
    Ok(Semver {
        full: t.to_owned(),
        short: core.to_owned(),
        major: parts[0].to_owned(),
        minor: parts[1].to_owned(),
        patch: parts[2].to_owned(),
        prerelease: prerelease.to_owned(),
        build: build.to_owned(),
    })
}

impl BuildContext {
    /// The variables a build has before any stage runs: used for substitution and as the
    /// base of every step's environment.
    pub fn variables(&self) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        let mut set = |k: &str, v: &str| {
            env.insert(k.to_owned(), v.to_owned());
        };
        let (namespace, name) = self.repo.split_once('/').unwrap_or(("", &self.repo));
        let tag = self.tag.clone().unwrap_or_default();
        let short_sha: String = self.commit.chars().take(8).collect();
        let pr = self.pull_request.map(|n| n.to_string()).unwrap_or_default();
        let event = self.event.as_str();
        set("CI", "true");
        set("DRONE", "true");
        set("SLIPWAY", "true");
        set("DRONE_BRANCH", &self.branch);
        set("DRONE_BUILD_ACTION", &self.action);
        set("DRONE_BUILD_CREATED", &self.created.to_string());
        set("DRONE_BUILD_EVENT", event);
        set("DRONE_BUILD_LINK", &self.build_link);
        set("DRONE_BUILD_NUMBER", &self.build_number.to_string());
        set("DRONE_BUILD_PARENT", &self.parent.to_string());
        set("DRONE_BUILD_STARTED", &self.started.to_string());
        set("DRONE_BUILD_STATUS", "success");
        set("DRONE_BUILD_TRIGGER", &self.trigger);
        set("DRONE_COMMIT", &self.commit);
        set("DRONE_COMMIT_AFTER", &self.commit);
        set("DRONE_COMMIT_AUTHOR", &self.author);
        set("DRONE_COMMIT_AUTHOR_AVATAR", &self.author_avatar);
        set("DRONE_COMMIT_AUTHOR_EMAIL", &self.author_email);
        set("DRONE_COMMIT_AUTHOR_NAME", &self.author_name);
        set("DRONE_COMMIT_BEFORE", &self.before);
        set("DRONE_COMMIT_BRANCH", &self.branch);
        set("DRONE_COMMIT_LINK", &self.repo_link);
        set("DRONE_COMMIT_MESSAGE", &self.message);
        set("DRONE_COMMIT_REF", &self.reference);
        set("DRONE_COMMIT_SHA", &self.commit);
        set("DRONE_DEPLOY_TO", &self.target);
        set("DRONE_GIT_HTTP_URL", &self.clone_url);
        set("DRONE_GIT_SSH_URL", "");
        set("DRONE_PULL_REQUEST", &pr);
        set("DRONE_PULL_REQUEST_TITLE", &self.pull_request_title);
        set("DRONE_REMOTE_URL", &self.clone_url);
        set("DRONE_REPO", &self.repo);
        set("DRONE_REPO_BRANCH", &self.default_branch);
        set("DRONE_REPO_LINK", &self.repo_link);
        set("DRONE_REPO_NAME", name);
        set("DRONE_REPO_NAMESPACE", namespace);
        set("DRONE_REPO_OWNER", namespace);
        set(
            "DRONE_REPO_PRIVATE",
            if self.private { "true" } else { "false" },
        );
        set("DRONE_REPO_SCM", "git");
        set(
            "DRONE_REPO_VISIBILITY",
            if self.private { "private" } else { "public" },
        );
        set("DRONE_SOURCE_BRANCH", &self.source_branch);
        set("DRONE_TARGET_BRANCH", &self.target_branch);
        set("DRONE_SYSTEM_HOST", &self.instance);
        set("DRONE_SYSTEM_HOSTNAME", &self.instance);
        set("DRONE_SYSTEM_PROTO", &self.system_proto);
        set("DRONE_SYSTEM_VERSION", env!("CARGO_PKG_VERSION"));
        set("DRONE_TAG", &tag);
        set("DRONE_CRON", &self.cron);
        if !tag.is_empty() {
            match parse_semver(&tag) {
                Ok(v) => {
                    set("DRONE_SEMVER", &v.full);
                    set("DRONE_SEMVER_SHORT", &v.short);
                    set("DRONE_SEMVER_MAJOR", &v.major);
                    set("DRONE_SEMVER_MINOR", &v.minor);
                    set("DRONE_SEMVER_PATCH", &v.patch);
                    set("DRONE_SEMVER_PRERELEASE", &v.prerelease);
                    set("DRONE_SEMVER_BUILD", &v.build);
                }
                Err(e) => set("DRONE_SEMVER_ERROR", &e),
            }
        }
        // Woodpecker / Drone 0.8 names.
        set("CI_BUILD_CREATED", &self.created.to_string());
        set("CI_BUILD_EVENT", event);
        set("CI_BUILD_LINK", &self.build_link);
        set("CI_BUILD_NUMBER", &self.build_number.to_string());
        set("CI_BUILD_STARTED", &self.started.to_string());
        set("CI_BUILD_STATUS", "success");
        set("CI_COMMIT_AUTHOR", &self.author);
        set("CI_COMMIT_AUTHOR_EMAIL", &self.author_email);
        set("CI_COMMIT_BRANCH", &self.branch);
        set("CI_COMMIT_MESSAGE", &self.message);
        set("CI_COMMIT_REF", &self.reference);
        set("CI_COMMIT_SHA", &self.commit);
        set("CI_COMMIT_SHORT_SHA", &short_sha);
        set("CI_COMMIT_TAG", &tag);
        set("CI_PIPELINE_EVENT", event);
        set("CI_PIPELINE_NUMBER", &self.build_number.to_string());
        set("CI_REMOTE_URL", &self.clone_url);
        set("CI_REPO", &self.repo);
        set("CI_REPO_LINK", &self.repo_link);
        set("CI_REPO_NAME", name);
        set("CI_REPO_OWNER", namespace);
        set(
            "CI_REPO_PRIVATE",
            if self.private { "true" } else { "false" },
        );
        set("CI_REPO_DEFAULT_BRANCH", &self.default_branch);
        for (k, v) in &self.params {
            env.insert(k.clone(), v.clone());
        }
        env
    }
}
