//! The workspace of a pipeline: a fresh host directory, filled with the git CLI, mounted at
//! the plan's workspace path in every container (and the cwd of host steps).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use crate::backend::sanitize;
use crate::error::EngineError;
use crate::log::StepLog;

/// Creates `<build_dir>/<index>-<name>`, writable by everyone: steps may run as any user
/// (`user:` or the image's), and all of them must be able to write to their workspace.
pub(crate) async fn create(
    build_dir: &Path,
    index: usize,
    name: &str,
) -> Result<PathBuf, EngineError> {
    let dir = build_dir.join(format!("{index}-{}", sanitize(name)));
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| EngineError::io(format!("creating workspace {}", dir.display()), e))?;
    tokio::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
        .await
        .map_err(|e| EngineError::io(format!("opening up workspace {}", dir.display()), e))?;
    Ok(dir)
}

/// Removes a directory tree, logging (not failing) when it cannot.
pub(crate) async fn remove(dir: &Path) {
    match tokio::fs::remove_dir_all(dir).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!("removing {}: {e}", dir.display()),
    }
}

/// What to clone: the caller's source plus the effective depth.
#[derive(Debug)]
pub(crate) struct CloneSpec<'a> {
    pub repo: &'a Path,
    pub commit: &'a str,
    pub depth: Option<u32>,
}

/// Fills `dir` with `repo` checked out at `commit`, logging each git command.
///
/// Without a depth: `git clone --no-checkout` then `git checkout <commit>`, which works for
/// any commit or ref reachable from the repository's branches. With a depth: `git init` and
/// `git fetch --depth N origin <commit>` (local paths become `file://` URLs there, because
/// git ignores depth for plain local paths); if the server refuses to serve a commit by id,
/// it falls back to a full fetch.
pub(crate) async fn clone(
    spec: &CloneSpec<'_>,
    dir: &Path,
    log: &StepLog,
    abort: &CancellationToken,
) -> Result<(), EngineError> {
    let raw = spec.repo.to_string_lossy().into_owned();
    let is_url = looks_like_url(&raw);
    let source = if is_url {
        raw.clone()
    } else {
        // Absolute, because later git commands run inside `dir`.
        std::path::absolute(spec.repo)
            .map_err(|e| EngineError::io(format!("resolving {raw}"), e))?
            .to_string_lossy()
            .into_owned()
    };
    let fail = |stderr: String| EngineError::Clone {
        repo: redact(&raw),
        commit: spec.commit.to_string(),
        stderr,
    };
    let dir_s = dir.to_string_lossy().into_owned();
    let git_in = |args: &[&str]| -> Vec<String> {
        ["-C", dir_s.as_str()]
            .iter()
            .chain(args)
            .map(|s| s.to_string())
            .collect()
    };

    match spec.depth {
        None => {
            let mut args = vec!["clone", "-q", "--no-checkout"];
            if !is_url {
                // Hardlinked objects would let a step that writes to .git corrupt the
                // source repository.
                args.push("--no-hardlinks");
            }
            let mut args: Vec<String> = args.into_iter().map(String::from).collect();
            args.extend([source.clone(), dir_s.clone()]);
            git(&args, log, abort).await.map_err(fail)?;
            git(&git_in(&["checkout", "-q", spec.commit]), log, abort)
                .await
                .map_err(fail)?;
        }
        Some(depth) => {
            let remote = if is_url {
                source.clone()
            } else {
                format!("file://{source}")
            };
            git(&git_in(&["init", "-q"]), log, abort)
                .await
                .map_err(fail)?;
            git(&git_in(&["remote", "add", "origin", &remote]), log, abort)
                .await
                .map_err(fail)?;
            let depth = format!("--depth={depth}");
            let shallow = git(
                &git_in(&["fetch", "-q", "--no-tags", &depth, "origin", spec.commit]),
                log,
                abort,
            )
            .await;
            if shallow.is_ok() {
                git(&git_in(&["checkout", "-q", "FETCH_HEAD"]), log, abort)
                    .await
                    .map_err(fail)?;
            } else {
                if abort.is_cancelled() {
                    return shallow.map_err(fail);
                }
                log.line("the remote did not serve the commit by id; fetching all branches");
                git(&git_in(&["fetch", "-q", "origin"]), log, abort)
                    .await
                    .map_err(fail)?;
                git(&git_in(&["checkout", "-q", spec.commit]), log, abort)
                    .await
                    .map_err(fail)?;
            }
        }
    }
    Ok(())
}

/// Runs git, logging the command and its output; `Err` carries stderr.
async fn git(args: &[String], log: &StepLog, abort: &CancellationToken) -> Result<(), String> {
    let shown: Vec<String> = args.iter().map(|a| redact(a)).collect();
    log.line(&format!("+ git {}", shown.join(" ")));
    let mut command = Command::new("git");
    command
        .args(args)
        // Never wait for a password on a terminal nobody watches.
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::select! {
        output = command.output() => output,
        () = abort.cancelled() => return Err("interrupted".to_string()),
    };
    let output =
        output.map_err(|e| format!("cannot run git (is it installed and on PATH?): {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    log.text(&stdout);
    log.text(&stderr);
    if output.status.success() {
        Ok(())
    } else {
        Err(stderr.trim().to_string())
    }
}

fn looks_like_url(repo: &str) -> bool {
    if repo.contains("://") {
        return true;
    }
    // scp-like `user@host:path` (but not a local path that happens to contain ':').
    match (repo.find('@'), repo.find(':'), repo.find('/')) {
        (Some(at), Some(colon), slash) => at < colon && slash.is_none_or(|s| colon < s),
        _ => false,
    }
}

/// Hides the `user:password@` part of a URL in anything we print.
fn redact(text: &str) -> String {
    let Some(scheme_end) = text.find("://") else {
        return text.to_string();
    };
    let rest = &text[scheme_end + 3..];
    let host_end = rest.find('/').unwrap_or(rest.len());
    match rest[..host_end].rfind('@') {
        Some(at) => format!("{}***@{}", &text[..scheme_end + 3], &rest[at + 1..]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_urls() {
        assert!(looks_like_url("https://example.com/r.git"));
        assert!(looks_like_url("git@example.com:team/r.git"));
        assert!(!looks_like_url("/srv/repos/r"));
        assert!(!looks_like_url("./dir:with:colons"));
    }

    #[test]
    fn redacts_credentials() {
        assert_eq!(
            redact("https://user:tok@example.com/r.git"),
            "https://***@example.com/r.git"
        );
        assert_eq!(redact("https://example.com/a@b"), "https://example.com/a@b");
        assert_eq!(redact("/local/path"), "/local/path");
    }
}
