//! End-to-end tests of the `slipway` binary: the real CLI against the real Docker engine.

mod cli;
mod cluster;
mod deploy;
mod exec;
mod notify;
mod pipeline_deploy;
mod proxy;
mod security;
mod server;
mod service_logs;
mod stack;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn slipway() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_slipway"));
    cmd.env("NO_COLOR", "1");
    cmd
}

pub fn test_image() -> String {
    std::env::var("SLIPWAY_TEST_IMAGE").unwrap_or_else(|_| "slipway-test/busybox:latest".into())
}

pub fn shared_dir(sub: &str) -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared")
        .join(sub);
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "skipping: {} not found (../shared is not beside this checkout)",
            dir.display()
        );
        None
    }
}

pub fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A git repository holding `files`, committed, in a fresh temp dir.
pub fn git_repo(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for (name, content) in files {
        let path = dir.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(path, content).expect("write");
    }
    git(dir.path(), &["init", "-q", "-b", "main"]);
    git(dir.path(), &["add", "-A"]);
    git(
        dir.path(),
        &[
            "-c",
            "user.name=T",
            "-c",
            "user.email=t@example.invalid",
            "commit",
            "-q",
            "-m",
            "test commit",
        ],
    );
    dir
}

/// A git repository of `files` and a bare clone of it, which Slipway is given as a
/// `file://` clone URL (as a git host would serve it).
#[derive(Debug)]
pub struct ServedRepo {
    pub work: tempfile::TempDir,
    _bare: tempfile::TempDir,
    pub clone_url: String,
}

pub fn served_repo(files: &[(&str, &str)]) -> ServedRepo {
    let work = git_repo(files);
    let bare = tempfile::tempdir().expect("temp dir");
    let bare_path = bare.path().join("app.git");
    let status = Command::new("git")
        .args(["clone", "-q", "--bare"])
        .arg(work.path())
        .arg(&bare_path)
        .status()
        .expect("git clone --bare");
    assert!(status.success(), "git clone --bare failed");
    ServedRepo {
        clone_url: format!("file://{}", bare_path.display()),
        work,
        _bare: bare,
    }
}

pub fn git(dir: &Path, args: &[&str]) {
    let status = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .status()
        .expect("git runs");
    assert!(status.success(), "git {args:?} failed");
}
