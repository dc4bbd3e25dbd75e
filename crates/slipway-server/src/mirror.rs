//! Per-repository bare git mirrors, driven through the git CLI.
//!
//! Owns the directory `root/` of mirrors: repository `<id>` lives at `root/<id>.git`, a bare
//! repository holding the host's branches (`refs/heads/*`), tags (`refs/tags/*`) and any
//! extra refs a build needed (e.g. `refs/pull/7/head`). Main types: [`Mirrors`],
//! [`CommitInfo`], [`Refs`], [`MirrorError`].
//!
//! Invariants:
//! - git runs as a child process with its arguments passed one by one (never a shell),
//!   stdin closed, `GIT_TERMINAL_PROMPT=0`, `LC_ALL=C`, only the `file`, `git`, `http`,
//!   `https` and `ssh` transports allowed (`GIT_ALLOW_PROTOCOL`; `ext::` never runs), ssh in
//!   batch mode unless `GIT_SSH`/`GIT_SSH_COMMAND` is set, and a time limit per command
//!   (git runs in its own process group, and the whole group is killed when it passes).
//! - User-given values that reach git's command line (URL, refs, revisions, paths) are
//!   checked not to start with `-` and not to hold control characters, and the URL comes
//!   after `--`, so none is read as an option.
//! - Fetches of one repository are serialised by a per-repository async mutex; fetches of
//!   different repositories run in parallel. Reads take no lock: git writes objects before
//!   it moves refs, so a read during a fetch sees the old or the new state.
//! - A mirror is created atomically: `git init --bare` into a temporary directory beside it,
//!   then renamed into place, so a crash never leaves a half-initialised `<id>.git`.
//! - The URL is stored nowhere in the mirror (fetches name it on the command line), so a
//!   changed clone URL takes effect on the next fetch; a password or token in the URL is
//!   replaced by `***` in every error message.
//! - Errors quote the git command, the repository URL (or the mirror's path for reads) and
//!   git's stderr, plus a hint when stderr clearly shows an authentication, host-key or
//!   name-resolution problem.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

/// Time limit of one `git fetch` unless [`Mirrors::with_fetch_timeout`] says otherwise.
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(600);
/// Time limit of the local git commands (init, reads).
pub const LOCAL_TIMEOUT: Duration = Duration::from_secs(60);

/// The set of mirrors under one root directory.
#[derive(Debug)]
pub struct Mirrors {
    root: PathBuf,
    fetch_timeout: Duration,
    locks: StdMutex<HashMap<i64, Arc<Mutex<()>>>>,
    resolved: StdMutex<Resolved>,
}

/// Revisions that cannot change meaning (a full object name, with or without `^`/`~`
/// steps) as a mirror last resolved them: making one build asks for its commit five times,
/// and each `git` process costs a millisecond or more. The newest [`Resolved::CAPACITY`]
/// are kept. Only answers that found a commit are kept; a mirror made anew forgets its own.
#[derive(Debug, Default)]
struct Resolved {
    shas: HashMap<(PathBuf, String), String>,
    order: std::collections::VecDeque<(PathBuf, String)>,
}

impl Resolved {
    const CAPACITY: usize = 256;

    fn get(&self, path: &Path, rev: &str) -> Option<String> {
        self.shas.get(&(path.to_owned(), rev.to_owned())).cloned()
    }

    fn insert(&mut self, path: &Path, rev: &str, sha: &str) {
        for rev in [rev, sha] {
            let key = (path.to_owned(), rev.to_owned());
            if self.shas.insert(key.clone(), sha.to_owned()).is_none() {
                self.order.push_back(key);
            }
        }
        while self.order.len() > Self::CAPACITY {
            if let Some(old) = self.order.pop_front() {
                self.shas.remove(&old);
            }
        }
    }

    fn forget(&mut self, path: &Path) {
        self.shas.retain(|(p, _), _| p != path);
        self.order.retain(|(p, _)| p != path);
    }
}

/// A full object name (SHA-1 or SHA-256) followed by nothing but `^`, `~` and digits: a
/// revision that names the same commit for as long as the mirror has it.
fn is_fixed_revision(rev: &str) -> bool {
    let hex = rev.bytes().take_while(u8::is_ascii_hexdigit).count();
    (hex == 40 || hex == 64)
        && rev[hex..]
            .bytes()
            .all(|b| b == b'^' || b == b'~' || b.is_ascii_digit())
}

/// One commit, as [`Mirrors::commit_info`] resolves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitInfo {
    /// Full hex object name.
    pub sha: String,
    /// The whole message (subject and body), without the trailing newline.
    pub message: String,
    pub author_name: String,
    pub author_email: String,
    /// Author date, seconds since the Unix epoch.
    pub timestamp: i64,
}

/// A mirror's branches and tags, as short names (`main`, `feature/x`, `v1.2.0`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Refs {
    /// Sorted by name.
    pub branches: Vec<String>,
    /// Newest version first (`v1.10.0` before `v1.9.0`, `v1.0.0` before `v1.0.0-rc1`).
    pub tags: Vec<String>,
}

/// What went wrong with a mirror, naming the command, the repository and git's words.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("`{command}` failed for {target}: {stderr}{hint}")]
    Git {
        /// The command line, with any password in the URL replaced by `***`.
        command: String,
        /// The repository URL (fetch) or the mirror's path (reads).
        target: String,
        /// git's stderr, trimmed (and its exit status when it printed nothing).
        stderr: String,
        /// Empty, or ` (hint: ...)`.
        hint: String,
    },
    #[error("`{command}` for {target} did not finish within {}s and was killed", timeout.as_secs())]
    Timeout {
        command: String,
        target: String,
        timeout: Duration,
    },
    #[error("could not run `{command}` (is git installed and on PATH?): {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("mirror {}: could not {action}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidArgument {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("repository {repo_id} has no mirror at {} yet; fetch it first", path.display())]
    NotFetched { repo_id: i64, path: PathBuf },
    #[error("unknown revision `{rev}` in the mirror of repository {repo_id} ({})", path.display())]
    UnknownRevision {
        repo_id: i64,
        rev: String,
        path: PathBuf,
    },
    #[error("{path} at {commit} in the mirror of repository {repo_id} is not UTF-8 text")]
    NotUtf8 {
        repo_id: i64,
        commit: String,
        path: String,
    },
    #[error("unexpected output of `{command}` for {target}: {detail}")]
    Output {
        command: String,
        target: String,
        detail: String,
    },
}

/// What one git run produced.
struct Ran {
    status: std::process::ExitStatus,
    stdout: Vec<u8>,
    stderr: String,
}

/// One git invocation: arguments plus what the error messages should say about it.
struct Git<'a> {
    dir: Option<&'a Path>,
    args: Vec<String>,
    /// Shown instead of the arguments (the URL with its password hidden).
    shown: String,
    target: String,
    /// A password to scrub from stderr.
    secret: Option<String>,
    timeout: Duration,
    stdin: Option<Vec<u8>>,
}

impl<'a> Git<'a> {
    fn new(dir: Option<&'a Path>, args: &[&str], target: impl Into<String>) -> Self {
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        Git {
            dir,
            shown: format!("git {}", args.join(" ")),
            args,
            target: target.into(),
            secret: None,
            timeout: LOCAL_TIMEOUT,
            stdin: None,
        }
    }

    async fn run(self) -> Result<Ran, MirrorError> {
        let mut cmd = tokio::process::Command::new("git");
        if let Some(dir) = self.dir {
            cmd.arg("-C").arg(dir);
        }
        cmd.args(&self.args)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GCM_INTERACTIVE", "never")
            .env("GIT_ALLOW_PROTOCOL", "file:git:http:https:ssh")
            .env("LC_ALL", "C")
            .env("LANGUAGE", "C")
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // Its own process group, so that on a timeout the helpers git starts
        // (git-remote-https, ssh, index-pack) are killed with it.
        #[cfg(unix)]
        cmd.process_group(0);
        if std::env::var_os("GIT_SSH_COMMAND").is_none() && std::env::var_os("GIT_SSH").is_none() {
            cmd.env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes");
        }
        let mut child = cmd.spawn().map_err(|source| MirrorError::Spawn {
            command: self.shown.clone(),
            source,
        })?;
        let pid = child.id();
        let stdin = child.stdin.take();
        let input = self.stdin;
        let work = async move {
            if let (Some(mut pipe), Some(input)) = (stdin, input) {
                // git may exit before reading everything (e.g. on a bad argument); its
                // stderr then says why, so a broken pipe here is not the error to report.
                let _ = pipe.write_all(&input).await;
                drop(pipe);
            }
            child.wait_with_output().await
        };
        let output = match tokio::time::timeout(self.timeout, work).await {
            Ok(Ok(output)) => output,
            Ok(Err(source)) => {
                return Err(MirrorError::Spawn {
                    command: self.shown,
                    source,
                });
            }
            Err(_) => {
                if let Some(pid) = pid {
                    kill_group(pid).await;
                }
                return Err(MirrorError::Timeout {
                    command: self.shown,
                    target: self.target,
                    timeout: self.timeout,
                });
            }
        };
        let mut stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        if let Some(secret) = self.secret.as_deref().filter(|s| !s.is_empty()) {
            stderr = stderr.replace(secret, "***");
        }
        Ok(Ran {
            status: output.status,
            stdout: output.stdout,
            stderr,
        })
    }

    /// Runs and turns a non-zero exit into [`MirrorError::Git`].
    async fn ok(self) -> Result<Vec<u8>, MirrorError> {
        let shown = self.shown.clone();
        let target = self.target.clone();
        let ran = self.run().await?;
        if ran.status.success() {
            Ok(ran.stdout)
        } else {
            Err(git_error(shown, target, &ran))
        }
    }
}

/// Kills the process group `pgid` (a timed-out git and its helpers) with `kill(1)`, as
/// the crate has no unsafe code for `kill(2)`. Best effort: the git process itself is also
/// killed when its `Child` is dropped.
async fn kill_group(pgid: u32) {
    #[cfg(unix)]
    {
        let killed = tokio::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{pgid}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
        if let Err(e) = killed {
            tracing::warn!(pgid, error = %e, "could not kill a timed-out git process group");
        }
    }
    #[cfg(not(unix))]
    let _ = pgid;
}

fn git_error(command: String, target: String, ran: &Ran) -> MirrorError {
    let stderr = if ran.stderr.is_empty() {
        format!("(no message; {})", ran.status)
    } else {
        ran.stderr.clone()
    };
    let hint = hint_for(&stderr)
        .map(|h| format!(" (hint: {h})"))
        .unwrap_or_default();
    MirrorError::Git {
        command,
        target,
        stderr,
        hint,
    }
}

/// A hint when git's stderr clearly names a problem the user can fix.
fn hint_for(stderr: &str) -> Option<&'static str> {
    let s = stderr.to_ascii_lowercase();
    if s.contains("host key verification failed") || s.contains("no ed25519 host key is known") {
        Some(
            "the SSH host key of the git host is unknown to this server; add it to the \
             known_hosts of the user running Slipway (e.g. with ssh-keyscan)",
        )
    } else if s.contains("permission denied (publickey")
        || s.contains("could not read username")
        || s.contains("could not read password")
        || s.contains("terminal prompts disabled")
        || s.contains("authentication failed")
        || s.contains("invalid username or password")
        || s.contains("http basic: access denied")
        || s.contains("the requested url returned error: 401")
        || s.contains("the requested url returned error: 403")
    {
        Some(
            "the git host wants credentials: put a token in the clone URL \
             (https://user:TOKEN@host/...) or give the server's user an SSH key with access",
        )
    } else if s.contains("could not resolve host") || s.contains("name or service not known") {
        Some("the host name in the URL does not resolve from this server")
    } else if s.contains("repository not found")
        || s.contains("does not appear to be a git repository")
        || s.contains("the requested url returned error: 404")
    {
        Some(
            "check the clone URL; hosts also answer \"not found\" for a private repository \
             when no credentials are given",
        )
    } else if s.contains("connection refused")
        || s.contains("connection timed out")
        || s.contains("couldn't connect to server")
        || s.contains("failed to connect to")
    {
        Some("the git host is not reachable from this server")
    } else {
        None
    }
}

/// `url` with the password (or token) of its user info replaced by `***`, and the password.
fn redact_url(url: &str) -> (String, Option<String>) {
    let Some(scheme_end) = url.find("://") else {
        return (url.to_owned(), None);
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return (url.to_owned(), None);
    };
    let userinfo = &authority[..at];
    let (user, password) = match userinfo.split_once(':') {
        Some((user, password)) => (user, password),
        // `https://TOKEN@host/` — the user name is the secret.
        None if url.starts_with("http") => ("", userinfo),
        None => return (url.to_owned(), None),
    };
    let shown_userinfo = if user.is_empty() {
        "***".to_owned()
    } else {
        format!("{user}:***")
    };
    (
        format!(
            "{}{}@{}",
            &url[..scheme_end + 3],
            shown_userinfo,
            &rest[at + 1..]
        ),
        Some(password.to_owned()),
    )
}

fn check_arg(what: &'static str, value: &str) -> Result<(), MirrorError> {
    let bad = |reason| {
        Err(MirrorError::InvalidArgument {
            what,
            value: value.to_owned(),
            reason,
        })
    };
    if value.is_empty() {
        bad("empty")
    } else if value.starts_with('-') {
        bad("must not start with `-`")
    } else if value.chars().any(char::is_control) {
        bad("holds a control character")
    } else {
        Ok(())
    }
}

fn check_ref(refname: &str) -> Result<(), MirrorError> {
    check_arg("ref", refname)?;
    let bad = |reason| {
        Err(MirrorError::InvalidArgument {
            what: "ref",
            value: refname.to_owned(),
            reason,
        })
    };
    if !refname.starts_with("refs/") {
        bad("must be a full ref name starting with `refs/`")
    } else if refname.contains([':', ' ', '*', '?', '[', '\\', '^', '~'])
        || refname.contains("..")
        || refname.contains("@{")
        || refname.ends_with('/')
        || refname.ends_with(".lock")
    {
        bad("is not a valid git ref name")
    } else {
        Ok(())
    }
}

fn is_null_sha(sha: &str) -> bool {
    let sha = sha.trim();
    sha.is_empty() || sha.bytes().all(|b| b == b'0')
}

fn lines(stdout: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

fn nul_separated(stdout: &[u8]) -> Vec<String> {
    stdout
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

impl Mirrors {
    /// Mirrors under `root` (created on the first fetch).
    pub fn new(root: impl Into<PathBuf>) -> Mirrors {
        Mirrors {
            root: root.into(),
            fetch_timeout: DEFAULT_FETCH_TIMEOUT,
            locks: StdMutex::new(HashMap::new()),
            resolved: StdMutex::default(),
        }
    }

    /// The time limit of one fetch (default [`DEFAULT_FETCH_TIMEOUT`]).
    pub fn with_fetch_timeout(mut self, timeout: Duration) -> Mirrors {
        self.fetch_timeout = timeout;
        self
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where repository `repo_id`'s mirror lives: `root/<repo_id>.git`.
    pub fn path(&self, repo_id: i64) -> PathBuf {
        self.root.join(format!("{repo_id}.git"))
    }

    fn lock_for(&self, repo_id: i64) -> Arc<Mutex<()>> {
        // A poisoned map is still a valid map: a panic elsewhere cannot leave it half-written.
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.entry(repo_id).or_default().clone()
    }

    /// Brings the mirror of `repo_id` up to date with `url`: creates it on first use, then
    /// fetches all branches and tags (pruning the ones deleted upstream) and each extra ref
    /// in `refs` (full names such as `refs/pull/7/head` or `refs/merge-requests/3/head`,
    /// stored under the same name; ones under `refs/heads/` and `refs/tags/` are already
    /// covered). An extra ref missing upstream fails the fetch. Extra refs fetched once stay
    /// until the mirror is removed.
    ///
    /// `url` may be a local path, `file://`, `http(s)://`, `git://` or ssh (`ssh://` or
    /// `user@host:path`).
    pub async fn fetch(&self, repo_id: i64, url: &str, refs: &[&str]) -> Result<(), MirrorError> {
        check_arg("repository URL", url)?;
        let mut refspecs = vec![
            "+refs/heads/*:refs/heads/*".to_owned(),
            "+refs/tags/*:refs/tags/*".to_owned(),
        ];
        for r in refs {
            check_ref(r)?;
            if r.starts_with("refs/heads/") || r.starts_with("refs/tags/") {
                continue;
            }
            let spec = format!("+{r}:{r}");
            if !refspecs.contains(&spec) {
                refspecs.push(spec);
            }
        }
        // A relative local path would be read relative to the mirror (git runs with -C).
        let url = if !url.contains("://") && Path::new(url).is_relative() && Path::new(url).exists()
        {
            std::path::absolute(url)
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_else(|_| url.to_owned())
        } else {
            url.to_owned()
        };
        let (shown_url, password) = redact_url(&url);

        let lock = self.lock_for(repo_id);
        let _guard = lock.lock().await;
        let path = self.ensure_mirror(repo_id).await?;

        let mut args = vec![
            "fetch".to_owned(),
            "--prune".to_owned(),
            "--no-write-fetch-head".to_owned(),
            "--".to_owned(),
            url,
        ];
        args.extend(refspecs.iter().cloned());
        let mut shown = vec!["git", "fetch", "--prune", "--no-write-fetch-head", "--"];
        shown.push(&shown_url);
        shown.extend(refspecs.iter().map(String::as_str));
        let git = Git {
            dir: Some(&path),
            shown: shown.join(" "),
            args,
            target: shown_url.clone(),
            secret: password,
            timeout: self.fetch_timeout,
            stdin: None,
        };
        git.ok().await.map(|_| ())
    }

    /// Creates `root/<id>.git` when missing. Called with the repository's lock held.
    async fn ensure_mirror(&self, repo_id: i64) -> Result<PathBuf, MirrorError> {
        let path = self.path(repo_id);
        if tokio::fs::try_exists(path.join("HEAD"))
            .await
            .unwrap_or(false)
        {
            return Ok(path);
        }
        let io = |action: &'static str, p: &Path| {
            let p = p.to_owned();
            move |source| MirrorError::Io {
                path: p,
                action,
                source,
            }
        };
        tokio::fs::create_dir_all(&self.root)
            .await
            .map_err(io("create the mirrors directory", &self.root))?;
        let tmp = self.root.join(format!(".{repo_id}.git.init"));
        if tokio::fs::try_exists(&tmp).await.unwrap_or(false) {
            tokio::fs::remove_dir_all(&tmp)
                .await
                .map_err(io("remove a leftover half-created mirror", &tmp))?;
        }
        let tmp_str = tmp.to_string_lossy().into_owned();
        Git::new(
            None,
            &[
                "-c",
                "init.defaultBranch=main",
                "init",
                "--bare",
                "--quiet",
                "--",
                &tmp_str,
            ],
            tmp_str.clone(),
        )
        .ok()
        .await?;
        // A directory without HEAD (from an older crash or by hand) is replaced.
        if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            tokio::fs::remove_dir_all(&path)
                .await
                .map_err(io("remove a broken mirror (no HEAD)", &path))?;
        }
        tokio::fs::rename(&tmp, &path)
            .await
            .map_err(io("move the new mirror into place", &path))?;
        self.resolved().forget(&path);
        Ok(path)
    }

    /// The mirror's path, or [`MirrorError::NotFetched`].
    async fn existing(&self, repo_id: i64) -> Result<PathBuf, MirrorError> {
        let path = self.path(repo_id);
        if tokio::fs::try_exists(path.join("HEAD"))
            .await
            .unwrap_or(false)
        {
            Ok(path)
        } else {
            Err(MirrorError::NotFetched { repo_id, path })
        }
    }

    /// The full sha of the commit `rev` names, or `None` when the mirror does not know it.
    async fn resolve(&self, path: &Path, rev: &str) -> Result<Option<String>, MirrorError> {
        check_arg("revision", rev)?;
        let fixed = is_fixed_revision(rev);
        if fixed && let Some(sha) = self.resolved().get(path, rev) {
            return Ok(Some(sha));
        }
        let spec = format!("{rev}^{{commit}}");
        let target = path.display().to_string();
        let git = Git::new(
            Some(path),
            &[
                "rev-parse",
                "--verify",
                "--quiet",
                "--end-of-options",
                &spec,
            ],
            target.clone(),
        );
        let shown = git.shown.clone();
        let ran = git.run().await?;
        if ran.status.success() {
            let sha = String::from_utf8_lossy(&ran.stdout).trim().to_owned();
            if sha.is_empty() || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(MirrorError::Output {
                    command: shown,
                    target,
                    detail: format!("expected an object name, got {sha:?}"),
                });
            }
            // The answer for a branch is not kept, but the commit it named now is. In a SHA-1
            // repository a 64-digit name is no object name (but could be a branch's).
            let fixed = fixed && rev.bytes().take_while(u8::is_ascii_hexdigit).count() == sha.len();
            self.resolved()
                .insert(path, if fixed { rev } else { &sha }, &sha);
            Ok(Some(sha))
        } else if ran.status.code() == Some(1) || ran.stderr.is_empty() {
            Ok(None)
        } else {
            Err(git_error(shown, target, &ran))
        }
    }

    fn resolved(&self) -> std::sync::MutexGuard<'_, Resolved> {
        self.resolved.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn resolve_known(
        &self,
        repo_id: i64,
        path: &Path,
        rev: &str,
    ) -> Result<String, MirrorError> {
        self.resolve(path, rev)
            .await?
            .ok_or_else(|| MirrorError::UnknownRevision {
                repo_id,
                rev: rev.to_owned(),
                path: path.to_owned(),
            })
    }

    /// The text of `path` (relative to the repository root; a leading `/` or `./` is
    /// ignored) at `commit` (a sha, branch or tag). `None` when no file is there (also when
    /// it is a directory or a submodule); an error when the commit is unknown or the file
    /// is not UTF-8.
    pub async fn read_file(
        &self,
        repo_id: i64,
        commit: &str,
        path: &str,
    ) -> Result<Option<String>, MirrorError> {
        Ok(self
            .read_first_file(repo_id, commit, &[path])
            .await?
            .map(|(_, text)| text))
    }

    /// The first of `paths` that is a file at `commit`, with its text, as by
    /// [`Mirrors::read_file`], asking git once for all of them.
    pub async fn read_first_file<'p>(
        &self,
        repo_id: i64,
        commit: &str,
        paths: &[&'p str],
    ) -> Result<Option<(&'p str, String)>, MirrorError> {
        let mirror = self.existing(repo_id).await?;
        let sha = self.resolve_known(repo_id, &mirror, commit).await?;
        let mut wanted = String::new();
        let mut files = Vec::with_capacity(paths.len());
        for path in paths {
            let mut file = path.trim_start_matches('/');
            while let Some(rest) = file.strip_prefix("./") {
                file = rest.trim_start_matches('/');
            }
            if file.is_empty() || file.contains(['\n', '\r', '\0']) {
                return Err(MirrorError::InvalidArgument {
                    what: "file path",
                    value: (*path).to_owned(),
                    reason: "empty or holds a line break",
                });
            }
            wanted.push_str(&format!("{sha}:{file}\n"));
            files.push(file);
        }
        let target = mirror.display().to_string();
        let mut git = Git::new(Some(&mirror), &["cat-file", "--batch"], target.clone());
        git.stdin = Some(wanted.into_bytes());
        let shown = git.shown.clone();
        let out = git.ok().await?;
        let bad_output = |detail: String| MirrorError::Output {
            command: shown.clone(),
            target: target.clone(),
            detail,
        };
        // One answer a path, in order: `<oid> <type> <size>\n<content>\n`, or
        // `<name> missing\n`.
        let mut rest = &out[..];
        for (path, file) in paths.iter().zip(files) {
            let header_end = rest
                .iter()
                .position(|b| *b == b'\n')
                .ok_or_else(|| bad_output(format!("no answer for {file:?}")))?;
            let header = String::from_utf8_lossy(&rest[..header_end]).into_owned();
            rest = &rest[header_end + 1..];
            let fields: Vec<&str> = header.split(' ').collect();
            let kind = match fields.as_slice() {
                [.., "missing"] | [.., "ambiguous"] => continue,
                [_, kind @ ("blob" | "tree" | "commit"), size] => {
                    let size: usize = size
                        .parse()
                        .map_err(|_| bad_output(format!("bad size in {header:?}")))?;
                    let body = rest
                        .get(..size)
                        .ok_or_else(|| bad_output(format!("short content after {header:?}")))?;
                    rest = rest.get(size + 1..).unwrap_or_default();
                    (*kind == "blob").then_some(body)
                }
                _ => return Err(bad_output(format!("unexpected header {header:?}"))),
            };
            // A directory or a submodule is no file.
            let Some(body) = kind else { continue };
            return String::from_utf8(body.to_vec())
                .map(|text| Some((*path, text)))
                .map_err(|_| MirrorError::NotUtf8 {
                    repo_id,
                    commit: sha.clone(),
                    path: file.to_owned(),
                });
        }
        Ok(None)
    }

    /// The paths changed from `before` to `commit` (`git diff --name-only --no-renames`, so
    /// a rename lists both names).
    ///
    /// When `before` is empty, all zeros (a new branch or tag) or unknown to the mirror (a
    /// force push whose old tip was never fetched), there is nothing to compare with, and
    /// this returns what `commit` itself changed: the diff to its first parent, or for a
    /// root commit every file in it. That can be fewer files than the push really brought
    /// (a new branch with several commits). `None` only when `commit` is a root commit and
    /// `before` was given but unknown — then nothing about the push can be told — and an
    /// error when `commit` is unknown.
    pub async fn changed_files(
        &self,
        repo_id: i64,
        before: &str,
        commit: &str,
    ) -> Result<Option<Vec<String>>, MirrorError> {
        let mirror = self.existing(repo_id).await?;
        let sha = self.resolve_known(repo_id, &mirror, commit).await?;
        let target = mirror.display().to_string();
        let known_before = if is_null_sha(before) {
            None
        } else {
            self.resolve(&mirror, before.trim()).await?
        };
        // Nothing to compare with: what `commit` itself changed.
        let base = match known_before {
            Some(base) => Some(base),
            None => self.resolve(&mirror, &format!("{sha}^1")).await?,
        };
        let out = match base {
            Some(base) => {
                let diff = [
                    "diff",
                    "--name-only",
                    "--no-renames",
                    "-z",
                    &base,
                    &sha,
                    "--",
                ];
                Git::new(Some(&mirror), &diff, target).ok().await?
            }
            // A root commit, but `before` was given and is unknown.
            None if !is_null_sha(before) => return Ok(None),
            None => {
                let tree = ["ls-tree", "-r", "-z", "--name-only", "--full-tree", &sha];
                Git::new(Some(&mirror), &tree, target).ok().await?
            }
        };
        Ok(Some(nul_separated(&out)))
    }

    /// The commit `rev` (a sha, short sha, branch, tag or full ref name) names.
    pub async fn commit_info(&self, repo_id: i64, rev: &str) -> Result<CommitInfo, MirrorError> {
        let mirror = self.existing(repo_id).await?;
        let sha = self.resolve_known(repo_id, &mirror, rev).await?;
        let target = mirror.display().to_string();
        let git = Git::new(
            Some(&mirror),
            &[
                "show",
                "-s",
                "--no-show-signature",
                "--format=%H%x00%an%x00%ae%x00%at%x00%B",
                &sha,
                "--",
            ],
            target.clone(),
        );
        let shown = git.shown.clone();
        let out = git.ok().await?;
        let text = String::from_utf8_lossy(&out);
        let mut parts = text.splitn(5, '\0');
        let mut next = || parts.next().unwrap_or_default().to_owned();
        let (sha, author_name, author_email, timestamp, message) =
            (next(), next(), next(), next(), next());
        let timestamp = timestamp
            .trim()
            .parse::<i64>()
            .map_err(|_| MirrorError::Output {
                command: shown,
                target,
                detail: format!("author date {timestamp:?} is not a number"),
            })?;
        Ok(CommitInfo {
            sha: sha.trim().to_owned(),
            message: message.trim_end_matches('\n').to_owned(),
            author_name,
            author_email,
            timestamp,
        })
    }

    /// The mirror's branches (by name) and tags (newest version first).
    pub async fn refs(&self, repo_id: i64) -> Result<Refs, MirrorError> {
        let mirror = self.existing(repo_id).await?;
        let target = mirror.display().to_string();
        let branches = Git::new(
            Some(&mirror),
            &[
                "for-each-ref",
                "--sort=refname",
                "--format=%(refname:strip=2)",
                "refs/heads/",
            ],
            target.clone(),
        )
        .ok()
        .await?;
        let tags = Git::new(
            Some(&mirror),
            &[
                "-c",
                "versionsort.suffix=-",
                "for-each-ref",
                "--sort=-version:refname",
                "--format=%(refname:strip=2)",
                "refs/tags/",
            ],
            target,
        )
        .ok()
        .await?;
        Ok(Refs {
            branches: lines(&branches),
            tags: lines(&tags),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_full_object_names_and_their_ancestors_are_fixed() {
        let sha1 = "3ad24b6ea691949c5987bc4b1f0e6c1fb8a0c2d1";
        assert!(is_fixed_revision(sha1));
        assert!(is_fixed_revision(&format!("{sha1}^1")));
        assert!(is_fixed_revision(&format!("{sha1}~2^")));
        assert!(is_fixed_revision(&"a".repeat(64)));
        assert!(
            !is_fixed_revision(&sha1[..12]),
            "a short name may become ambiguous"
        );
        assert!(!is_fixed_revision("main"));
        assert!(!is_fixed_revision("refs/heads/main^1"));
        assert!(!is_fixed_revision(&format!("{sha1}:path")));
        assert!(!is_fixed_revision(&format!("{sha1}a")));
    }

    #[test]
    fn resolved_keeps_the_newest_and_forgets_a_mirror() {
        let (a, b) = (Path::new("/m/1.git"), Path::new("/m/2.git"));
        let mut resolved = Resolved::default();
        resolved.insert(a, "x^1", "p");
        resolved.insert(b, "y", "y");
        assert_eq!(resolved.get(a, "x^1").as_deref(), Some("p"));
        assert_eq!(
            resolved.get(a, "p").as_deref(),
            Some("p"),
            "the commit itself too"
        );
        assert_eq!(resolved.get(b, "x^1"), None, "per mirror");
        resolved.forget(a);
        assert_eq!(resolved.get(a, "x^1"), None);
        assert_eq!(resolved.get(b, "y").as_deref(), Some("y"));
        for i in 0..Resolved::CAPACITY {
            resolved.insert(a, &format!("r{i}"), &format!("r{i}"));
        }
        assert_eq!(resolved.get(b, "y"), None, "the oldest went first");
        assert_eq!(resolved.shas.len(), Resolved::CAPACITY);
        assert_eq!(resolved.order.len(), Resolved::CAPACITY);
    }
}
