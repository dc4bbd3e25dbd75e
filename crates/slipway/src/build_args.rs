//! The flags that describe a build (`--event`, `--branch`, ...), shared by `plan` and
//! `exec`, and finding the pipeline file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::Args;
use slipway_spec::{BuildContext, BuildEvent};

#[derive(Debug, Clone, Args)]
pub struct BuildArgs {
    /// The event to plan for.
    #[arg(long, default_value = "push", value_parser = ["push", "pull_request", "tag", "promote", "rollback", "cron", "custom"])]
    pub event: String,
    /// Branch (default: the current git branch).
    #[arg(long)]
    pub branch: Option<String>,
    /// Tag (implies refs/tags/TAG as the ref).
    #[arg(long)]
    pub tag: Option<String>,
    /// Full git ref.
    #[arg(long = "ref")]
    pub reference: Option<String>,
    /// Commit SHA (default: HEAD of the current repository).
    #[arg(long)]
    pub commit: Option<String>,
    /// Deploy target for promote/rollback (DRONE_DEPLOY_TO).
    #[arg(long)]
    pub target: Option<String>,
    /// Repository as owner/name (default: from the directory name).
    #[arg(long)]
    pub repo: Option<String>,
    /// Build number.
    #[arg(long, default_value_t = 1)]
    pub build_number: u64,
    /// Extra variable for substitution and step environments, KEY=VALUE; repeatable.
    #[arg(long = "param", value_name = "KEY=VALUE")]
    pub params: Vec<String>,
}

impl BuildArgs {
    /// The build context: flags first, then what the local git repository says.
    pub fn context(&self, repo_dir: &Path) -> Result<BuildContext> {
        let event = BuildEvent::parse(&self.event)
            .with_context(|| format!("unknown event `{}`", self.event))?;
        let git = GitInfo::read(repo_dir, self.commit.as_deref());
        let mut params = BTreeMap::new();
        for p in &self.params {
            let Some((k, v)) = p.split_once('=') else {
                bail!("--param `{p}` must be KEY=VALUE");
            };
            params.insert(k.to_owned(), v.to_owned());
        }
        let default_branch = git
            .default_branch
            .clone()
            .unwrap_or_else(|| "main".to_owned());
        let branch = match (&self.branch, &self.tag) {
            (Some(b), _) => b.clone(),
            (None, Some(_)) => String::new(),
            (None, None) => git.branch.clone().unwrap_or_else(|| default_branch.clone()),
        };
        let repo = self.repo.clone().unwrap_or_else(|| {
            let dir = repo_dir
                .canonicalize()
                .unwrap_or_else(|_| repo_dir.to_path_buf());
            let name = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "repo".to_owned());
            format!("local/{name}")
        });
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let host = hostname();
        Ok(BuildContext {
            event,
            branch: branch.clone(),
            tag: self.tag.clone(),
            reference: self.reference.clone().unwrap_or_default(),
            commit: self
                .commit
                .clone()
                .or(git.commit.clone())
                .unwrap_or_default(),
            message: git.message.clone().unwrap_or_default(),
            author: git.author_name.clone().unwrap_or_default(),
            author_name: git.author_name.clone().unwrap_or_default(),
            author_email: git.author_email.clone().unwrap_or_default(),
            repo,
            default_branch,
            build_number: self.build_number,
            created: now,
            started: now,
            target: self.target.clone().unwrap_or_default(),
            source_branch: branch.clone(),
            target_branch: branch,
            instance: host.clone(),
            system_proto: "http".to_owned(),
            trigger: "@local".to_owned(),
            params,
            ..BuildContext::default()
        })
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned())
}

/// What `git` says about the repository, each part optional: a directory that is not a
/// repository still plans, with empty commit fields.
#[derive(Debug, Default)]
pub struct GitInfo {
    pub commit: Option<String>,
    pub branch: Option<String>,
    pub default_branch: Option<String>,
    pub message: Option<String>,
    pub author_name: Option<String>,
    pub author_email: Option<String>,
}

impl GitInfo {
    pub fn read(dir: &Path, commit: Option<&str>) -> GitInfo {
        let rev = commit.unwrap_or("HEAD");
        let git = |args: &[&str]| -> Option<String> {
            let out = Command::new("git")
                .arg("-C")
                .arg(dir)
                .args(args)
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
                .filter(|s| !s.is_empty())
        };
        GitInfo {
            commit: git(&["rev-parse", "--verify", &format!("{rev}^{{commit}}")]),
            branch: git(&["symbolic-ref", "--short", "-q", "HEAD"]),
            default_branch: git(&["symbolic-ref", "--short", "-q", "refs/remotes/origin/HEAD"])
                .map(|b| b.trim_start_matches("origin/").to_owned()),
            message: git(&["log", "-1", "--format=%B", rev]),
            author_name: git(&["log", "-1", "--format=%an", rev]),
            author_email: git(&["log", "-1", "--format=%ae", rev]),
        }
    }
}

/// The pipeline file: the one given, else `.slipway.yml`, else `.drone.yml`.
pub fn find_pipeline_file(given: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = given {
        return Ok(path.to_path_buf());
    }
    for candidate in [".slipway.yml", ".drone.yml", ".drone.yaml"] {
        let path = PathBuf::from(candidate);
        if path.is_file() {
            return Ok(path);
        }
    }
    bail!(
        "no pipeline file: looked for .slipway.yml and .drone.yml in {}\n  hint: pass the file as an argument, e.g. `slipway lint path/to/.drone.yml`",
        std::env::current_dir()
            .map(|d| d.display().to_string())
            .unwrap_or_else(|_| ".".to_owned())
    )
}

/// Reads the file with a message that names it.
pub fn read_pipeline_file(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// The directory whose git repository the build is of: the pipeline file's.
pub fn repo_dir_of(file: &Path) -> PathBuf {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}
