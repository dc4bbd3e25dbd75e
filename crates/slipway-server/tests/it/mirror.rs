//! Bare mirrors against real git repositories made in temporary directories.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use slipway_server::mirror::{MirrorError, Mirrors};

/// Runs git in `dir` with a fixed identity and dates; returns trimmed stdout.
fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=Ada Lovelace",
            "-c",
            "user.email=ada@example.com",
        ])
        .args([
            "-c",
            "init.defaultBranch=main",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .env("GIT_AUTHOR_DATE", "2024-05-01T12:00:00Z")
        .env("GIT_COMMITTER_DATE", "2024-05-01T12:00:00Z")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn write(dir: &Path, file: &str, text: &str) {
    let path = dir.join(file);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, text).expect("write");
}

fn commit(dir: &Path, message: &str) -> String {
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", message]);
    git(dir, &["rev-parse", "HEAD"])
}

/// An upstream repository: `main` with two commits, a `feature/x` branch, tags v1.2.0,
/// v1.10.0, v1.10.0-rc1 (annotated) and v1.9.0. Returns (first, second) shas of main.
fn upstream(dir: &Path) -> (String, String) {
    git(dir, &["init", "-q"]);
    write(dir, ".drone.yml", "kind: pipeline\nsteps: []\n");
    write(dir, "src/a.txt", "a\n");
    write(dir, "old.txt", "old\n");
    let first = commit(dir, "first");
    git(dir, &["tag", "v1.2.0"]);
    git(dir, &["tag", "v1.9.0"]);
    write(dir, "src/a.txt", "a2\n");
    write(dir, "docs/readme.md", "hi\n");
    git(dir, &["mv", "old.txt", "new.txt"]);
    let second = commit(dir, "second: change a\n\nwith a body line");
    git(dir, &["tag", "-a", "-m", "rc", "v1.10.0-rc1"]);
    git(dir, &["tag", "v1.10.0"]);
    git(dir, &["branch", "feature/x", &first]);
    (first, second)
}

fn setup() -> (
    tempfile::TempDir,
    std::path::PathBuf,
    Mirrors,
    String,
    String,
) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let up = tmp.path().join("upstream");
    std::fs::create_dir_all(&up).expect("mkdir");
    let (first, second) = upstream(&up);
    let mirrors = Mirrors::new(tmp.path().join("mirrors"));
    (tmp, up, mirrors, first, second)
}

#[tokio::test]
async fn mirror_fetch_and_read_at_commit() {
    let (_tmp, up, mirrors, first, second) = setup();
    mirrors
        .fetch(1, up.to_str().expect("utf-8 path"), &[])
        .await
        .expect("first fetch");
    assert!(mirrors.path(1).ends_with("1.git"));
    assert!(mirrors.path(1).join("HEAD").is_file());

    let at_first = mirrors
        .read_file(1, &first, "src/a.txt")
        .await
        .expect("read");
    assert_eq!(at_first.as_deref(), Some("a\n"));
    let at_main = mirrors
        .read_file(1, "main", "/src/a.txt")
        .await
        .expect("read");
    assert_eq!(at_main.as_deref(), Some("a2\n"));
    let at_tag = mirrors
        .read_file(1, "v1.2.0", "./.drone.yml")
        .await
        .expect("read");
    assert_eq!(at_tag.as_deref(), Some("kind: pipeline\nsteps: []\n"));
    let short = &second[..10];
    let by_short = mirrors
        .read_file(1, short, "docs/readme.md")
        .await
        .expect("read");
    assert_eq!(by_short.as_deref(), Some("hi\n"));

    // Upstream moves on; a second fetch (into the existing mirror) sees it and prunes.
    write(&up, ".drone.yml", "kind: pipeline\nname: v2\n");
    let third = commit(&up, "third");
    git(&up, &["branch", "-D", "feature/x"]);
    git(&up, &["tag", "-d", "v1.9.0"]);
    mirrors
        .fetch(1, &format!("file://{}", up.display()), &[])
        .await
        .expect("second fetch");
    let text = mirrors
        .read_file(1, &third, ".drone.yml")
        .await
        .expect("read");
    assert_eq!(text.as_deref(), Some("kind: pipeline\nname: v2\n"));
    let refs = mirrors.refs(1).await.expect("refs");
    assert_eq!(refs.branches, vec!["main"]);
    assert!(!refs.tags.contains(&"v1.9.0".to_owned()), "{:?}", refs.tags);
}

#[tokio::test]
async fn mirror_missing_file_and_unknown_commit() {
    let (_tmp, up, mirrors, first, _second) = setup();
    mirrors
        .fetch(2, up.to_str().expect("utf-8"), &[])
        .await
        .expect("fetch");
    assert_eq!(
        mirrors
            .read_file(2, &first, ".slipway.yml")
            .await
            .expect("read"),
        None
    );
    assert_eq!(
        mirrors
            .read_file(2, &first, "docs/readme.md")
            .await
            .expect("read"),
        None,
        "added only in the second commit"
    );
    assert_eq!(
        mirrors.read_file(2, &first, "src").await.expect("read"),
        None,
        "a directory"
    );

    let unknown = "0123456789abcdef0123456789abcdef01234567";
    let err = mirrors
        .read_file(2, unknown, ".drone.yml")
        .await
        .expect_err("unknown commit");
    assert!(
        matches!(err, MirrorError::UnknownRevision { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains(unknown), "{err}");

    let err = mirrors
        .read_file(3, &first, ".drone.yml")
        .await
        .expect_err("never fetched");
    assert!(
        matches!(err, MirrorError::NotFetched { repo_id: 3, .. }),
        "{err:?}"
    );

    let err = mirrors
        .read_file(2, "--output=/tmp/x", ".drone.yml")
        .await
        .expect_err("option-like revision");
    assert!(
        matches!(err, MirrorError::InvalidArgument { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn mirror_changed_files() {
    let (_tmp, up, mirrors, first, second) = setup();
    mirrors
        .fetch(4, up.to_str().expect("utf-8"), &[])
        .await
        .expect("fetch");
    let expected = vec!["docs/readme.md", "new.txt", "old.txt", "src/a.txt"];

    let changed = mirrors
        .changed_files(4, &first, &second)
        .await
        .expect("diff")
        .expect("both known");
    assert_eq!(changed, expected, "renames list both names");

    // No usable `before`: the first-parent diff of the commit.
    for before in ["", "0000000000000000000000000000000000000000"] {
        let changed = mirrors
            .changed_files(4, before, &second)
            .await
            .expect("diff")
            .expect("has a parent");
        assert_eq!(changed, expected, "before {before:?}");
    }
    let unknown = "1111111111111111111111111111111111111111";
    let changed = mirrors
        .changed_files(4, unknown, &second)
        .await
        .expect("diff")
        .expect("has a parent");
    assert_eq!(changed, expected);

    // A root commit with no `before`: every file in it.
    let root = mirrors
        .changed_files(4, "", &first)
        .await
        .expect("diff")
        .expect("root commit");
    assert_eq!(root, vec![".drone.yml", "old.txt", "src/a.txt"]);
    // A root commit and an unknown `before`: nothing can be told.
    assert_eq!(
        mirrors
            .changed_files(4, unknown, &first)
            .await
            .expect("diff"),
        None
    );

    let err = mirrors
        .changed_files(4, &first, unknown)
        .await
        .expect_err("unknown commit");
    assert!(
        matches!(err, MirrorError::UnknownRevision { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn mirror_refs_and_commit_info() {
    let (_tmp, up, mirrors, first, second) = setup();
    mirrors
        .fetch(5, up.to_str().expect("utf-8"), &[])
        .await
        .expect("fetch");
    let refs = mirrors.refs(5).await.expect("refs");
    assert_eq!(refs.branches, vec!["feature/x", "main"]);
    assert_eq!(
        refs.tags,
        vec!["v1.10.0", "v1.10.0-rc1", "v1.9.0", "v1.2.0"]
    );

    let info = mirrors.commit_info(5, "main").await.expect("branch");
    assert_eq!(info.sha, second);
    assert_eq!(info.message, "second: change a\n\nwith a body line");
    assert_eq!(info.author_name, "Ada Lovelace");
    assert_eq!(info.author_email, "ada@example.com");
    assert_eq!(info.timestamp, 1_714_564_800, "2024-05-01T12:00:00Z");

    // An annotated tag peels to its commit; a branch with a slash; a short sha; a full ref.
    assert_eq!(
        mirrors
            .commit_info(5, "v1.10.0-rc1")
            .await
            .expect("tag")
            .sha,
        second
    );
    assert_eq!(
        mirrors
            .commit_info(5, "feature/x")
            .await
            .expect("branch")
            .sha,
        first
    );
    assert_eq!(
        mirrors
            .commit_info(5, &first[..8])
            .await
            .expect("short")
            .sha,
        first
    );
    let by_ref = mirrors
        .commit_info(5, "refs/tags/v1.2.0")
        .await
        .expect("ref");
    assert_eq!(by_ref.sha, first);
    assert_eq!(by_ref.message, "first");

    let err = mirrors.commit_info(5, "nope").await.expect_err("unknown");
    assert!(
        matches!(err, MirrorError::UnknownRevision { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn mirror_pull_request_ref() {
    let (_tmp, up, mirrors, _first, second) = setup();
    // A commit reachable only from refs/pull/1/head, as GitHub keeps a fork's PR head.
    git(&up, &["checkout", "-q", "-b", "pr"]);
    write(&up, "pr.txt", "from a fork\n");
    let pr = commit(&up, "pr change");
    git(&up, &["update-ref", "refs/pull/1/head", &pr]);
    git(&up, &["checkout", "-q", "main"]);
    git(&up, &["branch", "-D", "pr"]);
    let url = up.to_str().expect("utf-8");

    mirrors.fetch(6, url, &[]).await.expect("plain fetch");
    let err = mirrors
        .read_file(6, &pr, "pr.txt")
        .await
        .expect_err("not fetched without the extra ref");
    assert!(
        matches!(err, MirrorError::UnknownRevision { .. }),
        "{err:?}"
    );

    mirrors
        .fetch(6, url, &["refs/pull/1/head", "refs/heads/main"])
        .await
        .expect("fetch with the PR ref");
    let text = mirrors.read_file(6, &pr, "pr.txt").await.expect("read");
    assert_eq!(text.as_deref(), Some("from a fork\n"));
    let changed = mirrors
        .changed_files(6, &second, &pr)
        .await
        .expect("diff")
        .expect("both known");
    assert_eq!(changed, vec!["pr.txt"]);
    // The PR ref is no branch.
    assert_eq!(
        mirrors.refs(6).await.expect("refs").branches,
        vec!["feature/x", "main"]
    );

    // A later fetch without it keeps it (only heads and tags are pruned).
    mirrors.fetch(6, url, &[]).await.expect("plain fetch again");
    assert!(
        mirrors
            .read_file(6, &pr, "pr.txt")
            .await
            .expect("read")
            .is_some()
    );

    // An extra ref upstream does not have fails, naming it.
    let err = mirrors
        .fetch(6, url, &["refs/pull/2/head"])
        .await
        .expect_err("missing ref");
    assert!(err.to_string().contains("refs/pull/2/head"), "{err}");
    // Refs that are not full ref names are refused before git runs.
    for bad in [
        "pull/1/head",
        "refs/pull/1/head:refs/heads/main",
        "--upload-pack=x",
    ] {
        let err = mirrors.fetch(6, url, &[bad]).await.expect_err("bad ref");
        assert!(
            matches!(err, MirrorError::InvalidArgument { .. }),
            "{bad}: {err:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_concurrent_fetches_of_one_repo() {
    let (_tmp, up, mirrors, _first, second) = setup();
    let mirrors = Arc::new(mirrors);
    let url = up.to_str().expect("utf-8").to_owned();
    let mut tasks = Vec::new();
    for i in 0..6 {
        let mirrors = Arc::clone(&mirrors);
        let url = url.clone();
        // Repository 7 six times at once, plus others in parallel.
        let id = if i % 3 == 2 { 100 + i } else { 7 };
        tasks.push(tokio::spawn(
            async move { mirrors.fetch(id, &url, &[]).await },
        ));
    }
    for task in tasks {
        task.await.expect("task").expect("every fetch succeeds");
    }
    assert_eq!(
        mirrors.commit_info(7, "main").await.expect("info").sha,
        second
    );
    assert_eq!(
        mirrors.commit_info(102, "main").await.expect("info").sha,
        second
    );
    // No temporary init directory is left behind.
    let names: Vec<String> = std::fs::read_dir(mirrors.root())
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
}

#[tokio::test]
async fn mirror_bad_url_names_the_url() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mirrors = Mirrors::new(tmp.path().join("mirrors"));
    let missing = tmp.path().join("no-such-repo");
    let url = missing.to_str().expect("utf-8");
    let err = mirrors
        .fetch(8, url, &[])
        .await
        .expect_err("no repository there");
    let text = err.to_string();
    assert!(matches!(err, MirrorError::Git { .. }), "{err:?}");
    assert!(text.contains(url), "{text}");
    assert!(text.contains("git fetch"), "{text}");
    assert!(
        text.contains("does not appear to be a git repository"),
        "{text}"
    );
    assert!(text.contains("hint:"), "{text}");

    // A password in the URL is never shown; a refused connection on loopback gives a hint.
    let url = "http://user:s3cr3t-t0ken@127.0.0.1:1/repo.git";
    let err = mirrors
        .fetch(9, url, &[])
        .await
        .expect_err("nothing listens on port 1");
    let text = err.to_string();
    assert!(!text.contains("s3cr3t-t0ken"), "{text}");
    assert!(
        text.contains("http://user:***@127.0.0.1:1/repo.git"),
        "{text}"
    );

    // An `ext::` URL would run a command; git is told not to allow it.
    let marker = tmp.path().join("pwned");
    let url = format!("ext::sh -c touch% {}", marker.display());
    let err = mirrors
        .fetch(10, &url, &[])
        .await
        .expect_err("ext transport refused");
    assert!(!marker.exists(), "the ext transport ran: {err}");
}

/// Processes whose command line mentions `needle` (read from /proc).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(needle) {
                found.push(cmdline);
            }
        }
    }
    found
}

#[tokio::test]
async fn mirror_fetch_time_limit_kills_git() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mirrors =
        Mirrors::new(tmp.path().join("mirrors")).with_fetch_timeout(Duration::from_secs(1));
    // A listener that never accepts: the kernel completes the handshake, then nothing answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let port = silent.local_addr().expect("addr").port();
    let url = format!("http://127.0.0.1:{port}/hang.git");
    let started = Instant::now();
    let err = mirrors.fetch(11, &url, &[]).await.expect_err("times out");
    assert!(matches!(err, MirrorError::Timeout { .. }), "{err:?}");
    assert!(err.to_string().contains(&url), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    // git and its git-remote-http helper are gone.
    let needle = format!("127.0.0.1:{port}");
    let mut left = processes_mentioning(&needle);
    for _ in 0..50 {
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = processes_mentioning(&needle);
    }
    assert!(left.is_empty(), "still running: {left:?}");
    drop(silent);
}

#[tokio::test]
async fn mirror_reads_the_first_of_several_paths_in_one_go() {
    let (_tmp, up, mirrors, first, _second) = setup();
    mirrors
        .fetch(1, up.to_str().expect("utf-8 path"), &[])
        .await
        .expect("fetch");
    // `src` is a directory and `nope.yml` is missing: neither is a file.
    let found = mirrors
        .read_first_file(
            1,
            "main",
            &["src", "nope.yml", "./docs/readme.md", "src/a.txt"],
        )
        .await
        .expect("read");
    assert_eq!(found, Some(("./docs/readme.md", "hi\n".to_owned())));
    let at_first = mirrors
        .read_first_file(1, &first, &["docs/readme.md", "src/a.txt"])
        .await
        .expect("read");
    assert_eq!(
        at_first,
        Some(("src/a.txt", "a\n".to_owned())),
        "readme came later"
    );
    let none = mirrors
        .read_first_file(1, "main", &["nope.yml", "src"])
        .await
        .expect("read");
    assert_eq!(none, None);
    let unknown = mirrors
        .read_first_file(1, &"f".repeat(40), &["src/a.txt"])
        .await
        .expect_err("an unknown commit is an error, not a missing file");
    assert!(unknown.to_string().contains(&"f".repeat(40)), "{unknown}");
}
