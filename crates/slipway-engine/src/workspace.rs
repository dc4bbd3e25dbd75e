//! The workspace of a pipeline: a fresh host directory, filled with the git CLI, mounted at
//! the plan's workspace path in every container (and the cwd of host steps).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use crate::backend::sanitize;
use crate::error::EngineError;
use crate::log::StepLog;

/// Creates `<build_dir>/<index>-<name>`, writable by everyone: steps may run as any user
/// (`user:` or the image's), and all of them must be able to write to their workspace.
/// `build_dir` is the build's directory in `work_root` (see [`create_build_dir`]).
pub(crate) async fn create(
    work_root: &Path,
    build_dir: &Path,
    index: usize,
    name: &str,
) -> Result<PathBuf, EngineError> {
    let dir = build_dir.join(format!("{index}-{}", sanitize(name)));
    let spares = work_root.join(SPARES);
    let target = dir.clone();
    blocking(move || make_dir(&target, 0o777, &spares))
        .await
        .map_err(|e| EngineError::io(format!("creating workspace {}", dir.display()), e))?;
    Ok(dir)
}

/// Creates a build's own directory `dir` in `work_root` (the parent of its workspaces).
pub(crate) async fn create_build_dir(work_root: &Path, dir: &Path) -> Result<(), EngineError> {
    let spares = work_root.join(SPARES);
    let target = dir.to_owned();
    blocking(move || make_dir(&target, 0o755, &spares))
        .await
        .map_err(|e| EngineError::io(format!("creating {}", dir.display()), e))
}

/// Removes a build directory or a workspace of `work_root` and everything in it, logging
/// (not failing) when it cannot. The emptied directory itself is kept as a spare, for the
/// next [`create`] or [`create_build_dir`]: only for a directory nothing of the build can
/// still reach (see [`crate::backend::Backend::teardown`]).
pub(crate) async fn remove(work_root: &Path, dir: &Path) {
    let spares = work_root.join(SPARES);
    let target = dir.to_owned();
    report_removal(dir, blocking(move || retire(&target, &spares)).await);
}

/// Removes a directory tree that may still be reachable (a container that could not be
/// removed mounts it): it never becomes a spare.
pub(crate) async fn remove_for_good(dir: &Path) {
    let target = dir.to_owned();
    report_removal(
        dir,
        blocking(move || std::fs::remove_dir_all(&target)).await,
    );
}

fn report_removal(dir: &Path, removed: std::io::Result<()>) {
    match removed {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!("removing {}: {e}", dir.display()),
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

/// Where emptied directories wait to be reused, in the work root. Making a directory
/// allocates an inode, and ext4 looks past every recently freed inode to find one: a runner
/// going through hundreds of short stages a second spent more CPU in `mkdir` than in any
/// other work of its own. Renaming a spare into place allocates nothing.
const SPARES: &str = ".slipway-spare";

/// Creates `dir` (and missing parents) with `mode`: a spare renamed into place when there
/// is one, else a new directory. A spare must be a directory (not a symlink) of the pool's
/// owner (a step may have given its workspace to another user) and empty; one that is not
/// is removed.
fn make_dir(dir: &Path, mode: u32, spares: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let mode = || std::fs::Permissions::from_mode(mode);
    if let Ok(owner) = std::fs::symlink_metadata(spares).map(|m| m.uid())
        && let Ok(entries) = std::fs::read_dir(spares)
    {
        for entry in entries.flatten() {
            // `DirEntry::metadata` does not follow a symlink.
            if !entry
                .metadata()
                .is_ok_and(|m| m.is_dir() && m.uid() == owner)
            {
                continue;
            }
            // Another build may take the same spare first: then this rename fails.
            if std::fs::rename(entry.path(), dir).is_err() {
                continue;
            }
            let empty = std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_none());
            if empty && std::fs::set_permissions(dir, mode()).is_ok() {
                return Ok(());
            }
            std::fs::remove_dir_all(dir)?;
            break;
        }
    }
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, mode())
}

/// Empties `dir`, then moves it among the `spares` (or removes it when it cannot be moved).
fn retire(dir: &Path, spares: &Path) -> std::io::Result<()> {
    let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        // A symlink is removed, never followed; an entry that went meanwhile is fine.
        let removed = match path.symlink_metadata() {
            Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(&path),
            Ok(_) => std::fs::remove_file(&path),
            Err(e) => Err(e),
        };
        match removed {
            Err(e) if !gone(&e) => return Err(e),
            _ => {}
        }
    }
    static NEXT: AtomicU64 = AtomicU64::new(0);
    // Unique among this process's spares; a leftover of another process with the same
    // name is an empty directory too, and replacing it only loses that spare.
    let spare = spares.join(format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    if std::fs::create_dir_all(spares).is_ok() && std::fs::rename(dir, &spare).is_ok() {
        return Ok(());
    }
    std::fs::remove_dir(dir)
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
///
/// Either way, a commit that is still missing afterwards (one reachable only from a ref that
/// a clone does not copy: a pull request's `refs/pull/N/head`, GitLab's
/// `refs/merge-requests/N/head`) is fetched as well, see [`fetch_missing`].
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
            let target = fetch_missing(spec.commit, &dir_s, log, abort, true)
                .await
                .map_err(fail)?;
            git(&git_in(&["checkout", "-q", target]), log, abort)
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
                // The commit by id was refused already: only the every-ref fetch is left.
                let target = fetch_missing(spec.commit, &dir_s, log, abort, false)
                    .await
                    .map_err(fail)?;
                git(&git_in(&["checkout", "-q", target]), log, abort)
                    .await
                    .map_err(fail)?;
            }
        }
    }
    Ok(())
}

/// Makes sure `commit` (an id or a ref name) can be checked out in the repository `dir`,
/// whose `origin` is the source; returns what to check out.
///
/// `git clone` copies only branches and tags, so over a URL (`file://` included) a commit
/// reachable only from another ref, such as a pull request's `refs/pull/7/head`, is not in
/// the clone (a clone of a plain local path copies every object, so there it is). When
/// `git cat-file` does not find it:
/// 1. if `by_id`, `git fetch origin <commit>`, then check out `FETCH_HEAD`: servers speaking
///    git protocol v2 (git 2.26+ by default, GitHub, Gitea/Forgejo, GitLab) serve any
///    commit that is reachable from one of their refs, and a ref name works too;
/// 2. if that is refused (or `by_id` is false because the caller tried it already), every
///    ref of the remote (`+refs/*:refs/slipway/*`, kept apart from the local branches),
///    then check out `commit`.
///
/// The runner protocol names the ref a commit comes from, but [`crate::RunOptions`] has no
/// place for it, so the commit is fetched by id instead of by ref; the effect is the same.
async fn fetch_missing<'a>(
    commit: &'a str,
    dir: &str,
    log: &StepLog,
    abort: &CancellationToken,
    by_id: bool,
) -> Result<&'a str, String> {
    if has_commit(dir, commit).await {
        return Ok(commit);
    }
    let git_in = |args: &[&str]| -> Vec<String> {
        ["-C", dir]
            .iter()
            .chain(args)
            .map(|s| s.to_string())
            .collect()
    };
    if by_id {
        log.line(&format!(
            "{commit} is not on a branch or tag of the repository; fetching it by id"
        ));
        let fetched = git(
            &git_in(&["fetch", "-q", "--no-tags", "origin", commit]),
            log,
            abort,
        )
        .await;
        match fetched {
            Ok(()) => return Ok("FETCH_HEAD"),
            Err(e) if abort.is_cancelled() => return Err(e),
            Err(_) => {}
        }
    }
    log.line("fetching every ref of the remote to find the commit");
    git(
        &git_in(&[
            "fetch",
            "-q",
            "--no-tags",
            "origin",
            "+refs/*:refs/slipway/*",
        ]),
        log,
        abort,
    )
    .await?;
    Ok(commit)
}

/// Whether `commit` names a commit in the repository `dir` (no output, nothing logged).
async fn has_commit(dir: &str, commit: &str) -> bool {
    let status = Command::new("git")
        .args(["-C", dir, "cat-file", "-e", &format!("{commit}^{{commit}}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .status()
        .await;
    status.is_ok_and(|s| s.success())
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
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::event::Event;
    use crate::mask::Masker;

    fn run_git(dir: &Path, args: &[&str]) -> String {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.name=T", "-c", "user.email=t@example.invalid"])
            .args(args)
            .output()
            .expect("git runs");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A repository whose `main` has one commit, and a second commit (returned) that only
    /// `refs/pull/1/head` reaches, as on GitHub.
    fn repo_with_pull_request(dir: &Path) -> String {
        run_git(dir, &["init", "-q", "-b", "main"]);
        std::fs::write(dir.join("main.txt"), "main\n").expect("write");
        run_git(dir, &["add", "."]);
        run_git(dir, &["commit", "-q", "-m", "main"]);
        run_git(dir, &["checkout", "-q", "-b", "topic"]);
        std::fs::write(dir.join("pr.txt"), "pr\n").expect("write");
        run_git(dir, &["add", "."]);
        run_git(dir, &["commit", "-q", "-m", "pr"]);
        let pr = run_git(dir, &["rev-parse", "HEAD"]);
        run_git(dir, &["update-ref", "refs/pull/1/head", &pr]);
        run_git(dir, &["checkout", "-q", "main"]);
        run_git(dir, &["branch", "-q", "-D", "topic"]);
        pr
    }

    async fn clone_into(repo: &Path, commit: &str, depth: Option<u32>) -> (PathBuf, Vec<String>) {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink_lines = lines.clone();
        let sink = Arc::new(move |e: Event| {
            if let Event::Log { line, .. } = e {
                sink_lines.lock().expect("lock").push(line);
            }
        });
        let log = StepLog::new(
            "p",
            "clone",
            sink,
            Arc::new(Masker::new(Vec::<String>::new())),
        );
        let dir = tempfile::tempdir().expect("tempdir").keep();
        let url = PathBuf::from(format!("file://{}", repo.display()));
        let spec = CloneSpec {
            repo: &url,
            commit,
            depth,
        };
        let result = clone(&spec, &dir, &log, &CancellationToken::new()).await;
        let lines = lines.lock().expect("lock").clone();
        assert!(result.is_ok(), "{result:?}\n{lines:#?}");
        (dir, lines)
    }

    #[tokio::test]
    async fn checks_out_a_commit_only_a_pull_request_ref_reaches() {
        let repo = tempfile::tempdir().expect("tempdir");
        let pr = repo_with_pull_request(repo.path());
        for depth in [None, Some(1)] {
            let (dir, lines) = clone_into(repo.path(), &pr, depth).await;
            assert_eq!(run_git(&dir, &["rev-parse", "HEAD"]), pr, "{lines:#?}");
            assert!(dir.join("pr.txt").exists(), "{depth:?}");
            if depth.is_none() {
                // The clone alone does not have it: the extra fetch ran.
                assert!(
                    lines.iter().any(|l| l.contains("fetching it by id")),
                    "{lines:#?}"
                );
            }
            remove_for_good(&dir).await;
        }
    }

    #[tokio::test]
    async fn a_removed_workspace_is_emptied_and_reused_without_a_new_directory() {
        use std::os::unix::fs::MetadataExt;
        let root = tempfile::tempdir().expect("tempdir");
        let build_dir = root.path().join("slipway-0123456789abcdef");
        create_build_dir(root.path(), &build_dir)
            .await
            .expect("build dir");
        let first = create(root.path(), &build_dir, 0, "a b")
            .await
            .expect("workspace");
        assert_eq!(first, build_dir.join("0-a-b"));
        let mode = |p: &Path| std::fs::metadata(p).expect("metadata").mode() & 0o777;
        assert_eq!(mode(&first), 0o777);
        std::fs::create_dir_all(first.join("deep/er")).expect("mkdir");
        std::fs::write(first.join("deep/er/file"), "x").expect("write");
        std::os::unix::fs::symlink(root.path(), first.join("link")).expect("symlink");
        let inode = std::fs::metadata(&first).expect("metadata").ino();
        remove(root.path(), &first).await;
        assert!(!first.exists());
        // The symlink was removed, not followed: the work root is still there.
        assert!(build_dir.exists());

        let second = create(root.path(), &build_dir, 1, "b")
            .await
            .expect("workspace");
        assert_eq!(std::fs::metadata(&second).expect("metadata").ino(), inode);
        assert_eq!(std::fs::read_dir(&second).expect("read").count(), 0);
        assert_eq!(mode(&second), 0o777);
        remove(root.path(), &second).await;
        remove(root.path(), &build_dir).await;
        // A spare workspace became the next build directory, with a build directory's mode.
        let next = root.path().join("slipway-fedcba9876543210");
        create_build_dir(root.path(), &next)
            .await
            .expect("build dir");
        assert_eq!(mode(&next), 0o755);
        let spares: Vec<_> = std::fs::read_dir(root.path().join(SPARES))
            .expect("spares")
            .collect();
        assert_eq!(spares.len(), 1, "one of the two spares is in use");
    }

    #[tokio::test]
    async fn only_empty_directories_of_the_pools_owner_are_reused() {
        use std::os::unix::fs::MetadataExt;
        let root = tempfile::tempdir().expect("tempdir");
        let spares = root.path().join(SPARES);
        std::fs::create_dir_all(&spares).expect("mkdir");
        // A symlink to a directory elsewhere, and a "spare" someone left files in.
        let elsewhere = root.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).expect("mkdir");
        std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o700))
            .expect("chmod");
        std::os::unix::fs::symlink(&elsewhere, spares.join("link")).expect("symlink");
        std::fs::create_dir(spares.join("full")).expect("mkdir");
        std::fs::write(spares.join("full/left.txt"), "x").expect("write");

        let build_dir = root.path().join("slipway-00000000000000aa");
        create_build_dir(root.path(), &build_dir)
            .await
            .expect("build dir");
        let workspace = create(root.path(), &build_dir, 0, "w")
            .await
            .expect("workspace");
        let meta = |p: &Path| std::fs::symlink_metadata(p).expect("metadata");
        assert!(meta(&build_dir).is_dir() && meta(&workspace).is_dir());
        assert_eq!(std::fs::read_dir(&workspace).expect("read").count(), 0);
        assert_eq!(std::fs::read_dir(&build_dir).expect("read").count(), 1);
        assert_eq!(
            meta(&elsewhere).mode() & 0o777,
            0o700,
            "the link was not followed"
        );
        assert!(
            meta(&spares.join("link")).is_symlink(),
            "a symlink is no spare"
        );

        // Removed for good: it does not become a spare.
        let before = std::fs::read_dir(&spares).expect("spares").count();
        remove_for_good(&workspace).await;
        assert!(!workspace.exists());
        assert_eq!(std::fs::read_dir(&spares).expect("spares").count(), before);
    }

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
