//! Attacks a hostile contributor would try against a running `slipway up`, each refused:
//! a pull request's `type: exec` pipeline (on an untrusted and on a trusted repository)
//! never runs on the host, and a trusted push's runs only on a runner started with
//! `--allow-exec`; a pull request's restart and promotion keep its restrictions (no
//! withheld secrets, no registry token), and its pipeline cannot mount `docker.sock` even
//! on a trusted repository; a captured signed body replayed under a new delivery id
//! builds nothing.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::server::{ADMIN, Delivery, Up, api, deliver, github_push, head, start_up};
use super::{git, slipway, test_image};

const RUNNER_TOKEN: &str = "security-test-runner-token-0123456789";

/// A pull request's head as GitHub sends it (`opened`, or `synchronize` for a new push to
/// it), for `repo`'s PR 1.
pub(super) fn github_pull_request(repo: &str, action: &str, head_sha: &str) -> Vec<u8> {
    let (owner, name) = repo.split_once('/').expect("owner/name");
    serde_json::to_vec(&json!({
        "action": action,
        "number": 1,
        "pull_request": {
            "number": 1, "title": "A harmless change", "html_url": format!("https://github.com/{repo}/pull/1"),
            "user": {"login": "contributor", "avatar_url": ""},
            "head": {"ref": "feature", "sha": head_sha, "repo": {"full_name": format!("contributor/{name}"), "clone_url": format!("https://github.com/contributor/{name}.git")}},
            "base": {"ref": "main", "sha": "0000000000000000000000000000000000000000", "repo": {"full_name": repo}}
        },
        "repository": {"full_name": repo, "name": name, "owner": {"login": owner},
            "html_url": format!("https://github.com/{repo}"), "clone_url": format!("https://github.com/{repo}.git"),
            "default_branch": "main", "private": false},
        "sender": {"login": "contributor"}
    }))
    .expect("JSON")
}

/// Commits `files` on a branch `feature` of `work` and pushes it to the bare repository
/// as `refs/pull/1/head` only (a fork's change): its commit.
pub(super) fn push_pull_request(work: &Path, bare: &str, files: &[(&str, &str)]) -> String {
    git(work, &["checkout", "-q", "-B", "feature"]);
    for (name, content) in files {
        std::fs::write(work.join(name), content).expect("write");
    }
    git(work, &["add", "-A"]);
    git(
        work,
        &[
            "-c",
            "user.name=Contributor",
            "-c",
            "user.email=c@e.invalid",
            "commit",
            "-qm",
            "a harmless change",
        ],
    );
    git(work, &["push", "-qf", bare, "feature:refs/pull/1/head"]);
    let sha = head(work);
    git(work, &["checkout", "-q", "main"]);
    sha
}

fn build(up: &Up, repo: &str, number: i64) -> Value {
    api(up, &["build", "show", repo, &number.to_string()])
}

pub(super) fn wait_done(up: &Up, repo: &str, number: i64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let b = build(up, repo, number);
        if !["pending", "running"].contains(&b["status"].as_str().unwrap_or_default()) {
            return b;
        }
        assert!(
            Instant::now() < deadline,
            "build #{number} never ended: {b}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn build_count(up: &Up, repo: &str) -> usize {
    api(up, &["build", "ls", repo, "--limit", "200"])
        .as_array()
        .map_or(0, Vec::len)
}

fn patch_repo(up: &Up, repo: &str, body: Value) {
    let response = reqwest::blocking::Client::new()
        .patch(format!("{}/api/repos/{repo}", up.url))
        .bearer_auth(ADMIN)
        .json(&body)
        .send()
        .expect("PATCH");
    assert!(response.status().is_success(), "{:?}", response.text());
}

pub(super) fn logs(up: &Up, repo: &str, number: i64, stage: i64) -> String {
    let out = slipway()
        .args(["build", "logs", repo, &number.to_string(), "--stage"])
        .arg(stage.to_string())
        .args(["--server", &up.url, "--token", ADMIN])
        .output()
        .expect("slipway runs");
    super::text(&out).0
}

/// A `slipway runner` process; killed on drop.
struct RunnerProcess(Child);

impl Drop for RunnerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn exec_pipelines_never_run_pull_requests_and_run_trusted_pushes_only_where_allowed() {
    let host = tempfile::tempdir().expect("a host directory");
    let marker = host.path().join("written-by-the-pipeline");
    let pipeline = format!(
        "kind: pipeline\ntype: exec\nname: on-host\nclone:\n  disable: true\nsteps:\n\
         - name: write\n  commands:\n  - touch {}\n  - id\n",
        marker.display()
    );
    let served = super::served_repo(&[(".drone.yml", &pipeline)]);
    let bare = served.clone_url.trim_start_matches("file://").to_owned();
    let work = served.work.path();

    let data = tempfile::tempdir().expect("data dir");
    let up = start_up(data.path(), &["--runner-token", RUNNER_TOKEN]);
    let added = api(
        &up,
        &["repo", "add", "team/exec", "--clone-url", &served.clone_url],
    );
    let secret = added["webhook_secret"].as_str().expect("secret").to_owned();

    // A pull request of an untrusted repository, then of a trusted one.
    let head_sha = push_pull_request(work, &bare, &[("change.txt", "1\n")]);
    let body = github_pull_request("team/exec", "opened", &head_sha);
    let (status, answer) = deliver(
        &up.url,
        &Delivery::signed(&secret, &body, "pr-opened", "pull_request"),
    );
    assert_eq!(status, 201, "{answer}");
    let refused = wait_done(&up, "team/exec", 1);
    assert_eq!(refused["status"], "error", "{refused:#}");
    let error = refused["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("`on-host`")
            && error.contains("type: exec")
            && error.contains("pull request"),
        "{error}"
    );

    patch_repo(&up, "team/exec", json!({"trusted": true}));
    let head_sha = push_pull_request(work, &bare, &[("change.txt", "2\n")]);
    let body = github_pull_request("team/exec", "synchronize", &head_sha);
    let (status, answer) = deliver(
        &up.url,
        &Delivery::signed(&secret, &body, "pr-synchronize", "pull_request"),
    );
    assert_eq!(status, 201, "{answer}");
    let refused = wait_done(&up, "team/exec", 2);
    assert_eq!(refused["status"], "error", "{refused:#}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap_or_default()
            .contains("whatever the repository's trust"),
        "{refused:#}"
    );

    // The same signed body again, under a new delivery id and under none: nothing new.
    for id in ["pr-synchronize-replayed", ""] {
        let (status, answer) = deliver(
            &up.url,
            &Delivery::signed(&secret, &body, id, "pull_request"),
        );
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["duplicate"], true, "{answer}");
        assert_eq!(answer["build"], 2, "{answer}");
    }
    assert_eq!(build_count(&up, "team/exec"), 2);
    assert!(!marker.exists(), "no pull request wrote on the host");

    // A push of the trusted repository: the embedded runner (no --runner-allow-exec) does
    // not get it...
    let main_sha = head(work);
    let push = github_push(
        "team/exec",
        &served.clone_url,
        "0000000000000000000000000000000000000000",
        &main_sha,
        "the exec pipeline",
    );
    let (status, answer) = deliver(&up.url, &Delivery::signed(&secret, &push, "push-1", "push"));
    assert_eq!(status, 201, "{answer}");
    std::thread::sleep(Duration::from_secs(4));
    let waiting = build(&up, "team/exec", 3);
    assert_eq!(waiting["status"], "pending", "{waiting:#}");
    assert!(!marker.exists());

    // ...a runner started with --allow-exec does.
    let work_dir = tempfile::tempdir().expect("work dir");
    let _runner = RunnerProcess(
        slipway()
            .args([
                "runner",
                "--server",
                &up.url,
                "--token",
                RUNNER_TOKEN,
                "--name",
                "exec-runner",
                "--allow-exec",
                "--capacity",
                "1",
            ])
            .arg("--work-dir")
            .arg(work_dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("slipway runner starts"),
    );
    let ran = wait_done(&up, "team/exec", 3);
    assert_eq!(ran["status"], "success", "{ran:#}");
    assert!(
        marker.exists(),
        "the trusted push ran on the allowing runner"
    );
    let runners = reqwest::blocking::Client::new()
        .get(format!("{}/api/runners", up.url))
        .bearer_auth(ADMIN)
        .send()
        .expect("runners")
        .json::<Value>()
        .expect("JSON");
    let exec_runner = runners
        .as_array()
        .and_then(|all| all.iter().find(|r| r["name"] == "exec-runner"))
        .unwrap_or_else(|| panic!("{runners}"));
    assert_eq!(ran["stages"][0]["runner_id"], exec_runner["id"], "{ran:#}");
    assert_eq!(exec_runner["labels"]["slipway.exec"], "allowed");
    assert!(
        runners
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["name"] != "exec-runner")
            .all(|r| r["labels"].get("slipway.exec").is_none()),
        "{runners}"
    );
}

#[test]
fn a_pull_request_keeps_its_restrictions_when_restarted_or_promoted() {
    let image = test_image();
    let pipeline = format!(
        "kind: pipeline\nname: show\nclone:\n  disable: true\nsteps:\n- name: show\n  image: {image}\n  pull: never\n  environment:\n    KEPT:\n      from_secret: deploy_token\n    REGISTRY:\n      from_secret: slipway_registry_password\n  commands:\n  - echo kept=[$KEPT] registry=[$REGISTRY] event=$DRONE_BUILD_EVENT\n---\nkind: pipeline\nname: sock\nclone:\n  disable: true\nvolumes:\n- name: sock\n  host:\n    path: /var/run/docker.sock\nsteps:\n- name: engine\n  image: {image}\n  pull: never\n  volumes:\n  - name: sock\n    path: /var/run/docker.sock\n  commands:\n  - ls -l /var/run/docker.sock\n"
    );
    let served = super::served_repo(&[(".drone.yml", &pipeline)]);
    let bare = served.clone_url.trim_start_matches("file://").to_owned();
    let data = tempfile::tempdir().expect("data dir");
    let up = start_up(data.path(), &[]);
    let added = api(
        &up,
        &[
            "repo",
            "add",
            "team/pr",
            "--clone-url",
            &served.clone_url,
            "--trusted",
        ],
    );
    let secret = added["webhook_secret"].as_str().expect("secret").to_owned();
    let out = slipway()
        .args([
            "secret",
            "add",
            "team/pr",
            "deploy_token",
            "--value",
            "kept-back-value",
        ])
        .args(["--server", &up.url, "--token", ADMIN])
        .output()
        .expect("slipway runs");
    assert!(out.status.success(), "{}", super::text(&out).1);

    let head_sha = push_pull_request(served.work.path(), &bare, &[("change.txt", "x\n")]);
    let body = github_pull_request("team/pr", "opened", &head_sha);
    let (status, answer) = deliver(
        &up.url,
        &Delivery::signed(&secret, &body, "pr-1", "pull_request"),
    );
    assert_eq!(status, 201, "{answer}");
    wait_done(&up, "team/pr", 1);

    let restarted = api(&up, &["build", "restart", "team/pr", "1"]);
    let restarted = restarted["number"].as_i64().expect("a number");
    wait_done(&up, "team/pr", restarted);
    let promoted = api(
        &up,
        &["build", "promote", "team/pr", "1", "--target", "production"],
    );
    let promoted = promoted["number"].as_i64().expect("a number");
    wait_done(&up, "team/pr", promoted);

    for (number, event) in [
        (1, "pull_request"),
        (restarted, "pull_request"),
        (promoted, "promote"),
    ] {
        let b = build(&up, "team/pr", number);
        let show = logs(&up, "team/pr", number, 1);
        assert!(
            show.contains(&format!("kept=[] registry=[] event={event}")),
            "build #{number}: {show}"
        );
        assert!(!show.contains("kept-back-value"), "{show}");
        let sock = &b["stages"][1];
        assert_eq!(sock["name"], "sock", "{b:#}");
        assert_ne!(sock["status"], "success", "build #{number}: {b:#}");
        let text = format!("{sock}{}", logs(&up, "team/pr", number, 2));
        assert!(
            text.contains("trusted") && !text.contains("srw"),
            "build #{number} mounted docker.sock: {text}"
        );
    }
}
