//! `slipway server` with external `slipway runner` processes, end to end against the real
//! Docker engine: what the "done when" asks of the queue and the runners.
//!
//! - Two runners with different labels (`pool=a`, `pool=b`) each get only the stages whose
//!   `node:` asks for their label, and every stage succeeds.
//! - SIGKILL of the runner holding a running stage: the lease expires, the stage goes to
//!   the other runner as attempt 2, the build succeeds, attempt 1's log stays downloadable,
//!   attempt 2's log is complete, and the dead runner's Docker resources are removed.
//! - SIGKILL of the server mid-step and a restart on the same port and data dir: the
//!   runner (still alive) reconnects, and the build ends `success` with every log line
//!   exactly once, in order.
//!
//! Every process is killed on drop (also when a test panics), every wait has a deadline,
//! and all traffic goes to 127.0.0.1.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::exec::owned_by;
use super::server::{ADMIN, Delivery, deliver, github_push, head};
use super::{slipway, test_image};

const RUNNER_TOKEN: &str = "test-runner-token-0123456789abcdef";

/// A child process, killed (SIGKILL) and reaped on drop.
struct Proc {
    what: String,
    child: Child,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, then wait, so the pid is gone (not a zombie) when this returns.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn assert_alive(&mut self) {
        let state = self.child.try_wait().expect("try_wait");
        assert!(state.is_none(), "{} exited: {state:?}", self.what);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A running `slipway server`.
struct Server {
    proc: Proc,
    url: String,
}

/// Starts `slipway server` on `listen` with `data_dir`; waits for its JSON start-up line.
fn start_server(data_dir: &Path, listen: &str, lease: &str) -> Server {
    let mut child = slipway()
        .args(["server", "--listen", listen, "--json", "--lease", lease])
        .args(["--admin-token", ADMIN, "--runner-token", RUNNER_TOKEN])
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("slipway server starts");
    let stdout = child.stdout.take().expect("stdout");
    let proc = Proc {
        what: "slipway server".into(),
        child,
    };
    // Read in a thread so a server that never prints cannot hang the test; the thread
    // keeps draining stdout until the server exits.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let _ = tx.send(lines.next());
        for _ in lines {}
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("slipway server prints its start-up line within 30 s")
        .expect("slipway server printed a line before exiting")
        .expect("reading slipway server's stdout");
    let facts: Value = serde_json::from_str(&line).expect("slipway server --json prints JSON");
    assert_eq!(facts["runner_token"], RUNNER_TOKEN, "{facts}");
    let url = facts["url"].as_str().expect("url").to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    Server { proc, url }
}

/// Starts `slipway runner NAME` with `labels` (KEY=VALUE), capacity 1, work dir `work`.
fn start_runner(url: &str, name: &str, labels: &[&str], work: &Path) -> Proc {
    let mut cmd = slipway();
    cmd.args(["runner", "--server", url, "--token", RUNNER_TOKEN])
        .args(["--name", name, "--capacity", "1"])
        .arg("--work-dir")
        .arg(work);
    for label in labels {
        cmd.args(["--label", label]);
    }
    let child = cmd
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("slipway runner starts");
    Proc {
        what: format!("runner {name}"),
        child,
    }
}

/// `slipway ARGS --server URL --token ADMIN --json`, parsed.
fn cli(url: &str, args: &[&str]) -> Value {
    let out = slipway()
        .args(args)
        .args(["--server", url, "--token", ADMIN, "--json"])
        .output()
        .expect("slipway runs");
    let (stdout, stderr) = super::text(&out);
    assert!(out.status.success(), "slipway {args:?} failed: {stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("JSON from {args:?}: {e}: {stdout}"))
}

/// `GET url+path` with the admin token: (status, body).
fn get(url: &str, path: &str) -> (u16, String) {
    let resp = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("HTTP client")
        .get(format!("{url}{path}"))
        .bearer_auth(ADMIN)
        .send()
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = resp.status().as_u16();
    (status, resp.text().expect("response body"))
}

/// Calls `f` every 200 ms until it gives a value; panics after `timeout`.
fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The registered runners' ids by name, once all of `names` are registered.
fn runner_ids(url: &str, names: &[&str]) -> Vec<i64> {
    wait_for("the runners to register", Duration::from_secs(30), || {
        let (status, body) = get(url, "/api/runners");
        assert_eq!(status, 200, "{body}");
        let runners: Value = serde_json::from_str(&body).expect("runners JSON");
        names
            .iter()
            .map(|name| {
                runners
                    .as_array()?
                    .iter()
                    .find(|r| r["name"] == *name)
                    .and_then(|r| r["id"].as_i64())
            })
            .collect()
    })
}

fn show(url: &str, repo: &str, number: i64) -> Value {
    cli(url, &["build", "show", repo, &number.to_string()])
}

fn wait_for_build(url: &str, repo: &str, number: i64, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let build = show(url, repo, number);
        if !["pending", "running"].contains(&build["status"].as_str().unwrap_or_default()) {
            return build;
        }
        assert!(
            Instant::now() < deadline,
            "build #{number} did not finish: {build:#}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The raw log of a step (`attempt` `None`: the stage's current one).
fn log(url: &str, repo: &str, build: i64, stage: i64, step: &str, attempt: Option<i64>) -> String {
    let mut path = format!("/api/repos/{repo}/builds/{build}/logs/{stage}/{step}");
    if let Some(a) = attempt {
        path.push_str(&format!("?attempt={a}"));
    }
    let (status, body) = get(url, &path);
    assert_eq!(status, 200, "GET {path}: {body}");
    body
}

/// The numbers of the `line N` lines of a log, in order.
fn numbered(log: &str) -> Vec<u32> {
    log.lines()
        .filter_map(|l| l.strip_prefix("line "))
        .map(|n| n.trim().parse().expect("a line number"))
        .collect()
}

type Repo = super::ServedRepo;

/// A served repository holding `.drone.yml`.
fn bare_repo(pipeline: &str) -> Repo {
    super::served_repo(&[(".drone.yml", pipeline)])
}

/// A step printing `line 1` … `line N`, one every `pause` seconds.
fn counting_step(name: &str, n: u32, pause: &str) -> String {
    format!(
        "- name: {name}\n  image: {image}\n  commands:\n  - for i in $$(seq 1 {n}); do echo line $i; sleep {pause}; done\n",
        image = test_image()
    )
}

#[test]
fn cluster_runners_get_only_stages_matching_their_labels() {
    let image = test_image();
    let mut pipeline = String::new();
    for (name, pool) in [
        ("a-one", "a"),
        ("b-one", "b"),
        ("a-two", "a"),
        ("b-two", "b"),
    ] {
        pipeline.push_str(&format!(
            "---\nkind: pipeline\ntype: docker\nname: {name}\nnode:\n  pool: {pool}\nsteps:\n- name: hello\n  image: {image}\n  commands:\n  - echo stage {name} wants pool {pool}\n"
        ));
    }
    let repo = bare_repo(&pipeline);
    let sha = head(repo.work.path());
    let data = tempfile::tempdir().expect("data dir");
    let work_a = tempfile::tempdir().expect("runner a work dir");
    let work_b = tempfile::tempdir().expect("runner b work dir");

    let server = start_server(data.path(), "127.0.0.1:0", "3s");
    let _a = start_runner(&server.url, "runner-a", &["pool=a"], work_a.path());
    let _b = start_runner(&server.url, "runner-b", &["pool=b"], work_b.path());
    let ids = runner_ids(&server.url, &["runner-a", "runner-b"]);
    let (id_a, id_b) = (ids[0], ids[1]);

    let added = cli(
        &server.url,
        &[
            "repo",
            "add",
            "team/pools",
            "--clone-url",
            &repo.clone_url,
            "--provider",
            "github",
        ],
    );
    let secret = added["webhook_secret"].as_str().expect("webhook_secret");
    let zero = "0000000000000000000000000000000000000000";
    let body = github_push("team/pools", &repo.clone_url, zero, &sha, "four stages");
    let delivery = Delivery::signed(secret, &body, "cluster-labels-1", "push");
    let (code, answer) = deliver(&server.url, &delivery);
    assert_eq!(code, 201, "{answer}");
    let number = answer["build"].as_i64().expect("build number");

    let build = wait_for_build(&server.url, "team/pools", number, Duration::from_secs(90));
    assert_eq!(build["status"], "success", "{build:#}");
    let stages = build["stages"].as_array().expect("stages");
    assert_eq!(stages.len(), 4, "{build:#}");
    for stage in stages {
        let name = stage["name"].as_str().expect("stage name");
        let (pool, want) = if name.starts_with("a-") {
            ("a", id_a)
        } else {
            ("b", id_b)
        };
        assert_eq!(stage["labels"]["pool"], pool, "{stage:#}");
        assert_eq!(stage["status"], "success", "{stage:#}");
        assert_eq!(stage["attempt"], 1, "{stage:#}");
        assert_eq!(
            stage["runner_id"].as_i64(),
            Some(want),
            "stage {name} (pool {pool}) ran on the wrong runner (a = {id_a}, b = {id_b})"
        );
        let stage_number = stage["number"].as_i64().expect("stage number");
        let text = log(
            &server.url,
            "team/pools",
            number,
            stage_number,
            "hello",
            None,
        );
        assert!(
            text.lines()
                .any(|l| l == format!("stage {name} wants pool {pool}")),
            "log of {name}: {text}"
        );
    }
}

#[test]
fn cluster_killed_runner_stage_moves_to_the_other_runner() {
    let pipeline = format!(
        "kind: pipeline\ntype: docker\nname: long\nsteps:\n{}",
        counting_step("count", 40, "0.2")
    );
    let repo = bare_repo(&pipeline);
    let data = tempfile::tempdir().expect("data dir");
    let work_1 = tempfile::tempdir().expect("runner 1 work dir");
    let work_2 = tempfile::tempdir().expect("runner 2 work dir");

    let server = start_server(data.path(), "127.0.0.1:0", "3s");
    let mut runners = [
        start_runner(&server.url, "runner-1", &["pool=x"], work_1.path()),
        start_runner(&server.url, "runner-2", &["pool=y"], work_2.path()),
    ];
    let ids = runner_ids(&server.url, &["runner-1", "runner-2"]);

    cli(
        &server.url,
        &["repo", "add", "team/long", "--clone-url", &repo.clone_url],
    );
    let build = cli(
        &server.url,
        &["build", "run", "team/long", "--branch", "main"],
    );
    let number = build["number"].as_i64().expect("build number");

    // Wait until the step is running and some of its lines are stored.
    let holder = wait_for("the step to print", Duration::from_secs(60), || {
        let build = show(&server.url, "team/long", number);
        let stage = &build["stages"][0];
        assert!(
            ["pending", "running"].contains(&stage["status"].as_str().unwrap_or_default()),
            "the stage ended before the kill: {build:#}"
        );
        let runner = stage["runner_id"].as_i64()?;
        let lines = numbered(&log(&server.url, "team/long", number, 1, "count", Some(1)));
        (lines.len() >= 3).then_some(runner)
    });
    let dead = ids
        .iter()
        .position(|id| *id == holder)
        .expect("the stage is held by one of the two runners");
    let survivor = 1 - dead;
    let dead_pid = runners[dead].pid();
    assert!(
        !owned_by(dead_pid).is_empty(),
        "the running step has a container"
    );
    runners[dead].kill();

    let build = wait_for_build(&server.url, "team/long", number, Duration::from_secs(90));
    assert_eq!(build["status"], "success", "{build:#}");
    let stage = &build["stages"][0];
    assert_eq!(stage["attempt"], 2, "{stage:#}");
    assert_eq!(
        stage["runner_id"].as_i64(),
        Some(ids[survivor]),
        "attempt 2 ran on the surviving runner"
    );
    runners[survivor].assert_alive();

    // Attempt 1's log is kept: the lines printed before the kill, in order, nothing more.
    let first = numbered(&log(&server.url, "team/long", number, 1, "count", Some(1)));
    assert!(first.len() >= 3, "attempt 1 log: {first:?}");
    assert!(
        first.len() < 40,
        "attempt 1 cannot have finished: {first:?}"
    );
    assert_eq!(
        first,
        (1..=u32::try_from(first.len()).expect("len")).collect::<Vec<_>>()
    );
    // Attempt 2's log is complete, and it is the default.
    let second = log(&server.url, "team/long", number, 1, "count", Some(2));
    assert_eq!(numbered(&second), (1..=40).collect::<Vec<_>>(), "{second}");
    assert_eq!(
        log(&server.url, "team/long", number, 1, "count", None),
        second
    );

    // The survivor's engine removed what the dead runner left in Docker.
    let left = owned_by(dead_pid);
    assert!(
        left.is_empty(),
        "the dead runner's resources are still there: {left:?}"
    );
}

#[test]
fn cluster_server_restart_mid_build_loses_no_log_line() {
    let pipeline = format!(
        "kind: pipeline\ntype: docker\nname: count\nsteps:\n{}",
        counting_step("count", 60, "0.1")
    );
    let repo = bare_repo(&pipeline);
    let data = tempfile::tempdir().expect("data dir");
    let work = tempfile::tempdir().expect("runner work dir");

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port")
        .local_addr()
        .expect("address")
        .port();
    let listen = format!("127.0.0.1:{port}");
    // A lease long enough to outlast the outage plus the runner's retry backoff: this test
    // is about reconnecting, not about expiry.
    let mut server = start_server(data.path(), &listen, "10s");
    let url = server.url.clone();
    let mut runner = start_runner(&url, "runner-only", &[], work.path());
    let ids = runner_ids(&url, &["runner-only"]);

    cli(
        &url,
        &["repo", "add", "team/count", "--clone-url", &repo.clone_url],
    );
    let build = cli(&url, &["build", "run", "team/count", "--branch", "main"]);
    let number = build["number"].as_i64().expect("build number");

    let before = wait_for("the step to print", Duration::from_secs(60), || {
        let lines = numbered(&log(&url, "team/count", number, 1, "count", Some(1)));
        (lines.len() >= 5).then_some(lines.len())
    });
    server.proc.kill();
    std::thread::sleep(Duration::from_secs(2));
    runner.assert_alive();
    let restarted = start_server(data.path(), &listen, "10s");
    assert_eq!(restarted.url, url);

    let build = wait_for_build(&url, "team/count", number, Duration::from_secs(90));
    assert_eq!(build["status"], "success", "{build:#}");
    let stage = &build["stages"][0];
    assert_eq!(stage["attempt"], 1, "no second attempt: {stage:#}");
    assert_eq!(stage["runner_id"].as_i64(), Some(ids[0]));
    let steps: Vec<(&str, &str)> = stage["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap_or_default(),
                s["status"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(steps, [("clone", "success"), ("count", "success")]);
    let text = log(&url, "team/count", number, 1, "count", None);
    let lines = numbered(&text);
    assert!(
        before < 60,
        "the server was killed mid-step ({before} lines in)"
    );
    assert_eq!(lines, (1..=60).collect::<Vec<_>>(), "{text}");
    runner.assert_alive();
}

/// `--auto-cancel`: a newer push to a branch cancels the builds of it still waiting (no
/// runner here, so every build waits).
#[test]
fn cluster_auto_cancel_supersedes_pending_pushes_of_a_branch() {
    let data = tempfile::tempdir().expect("data dir");
    let server = start_server(data.path(), "127.0.0.1:0", "30s");
    let pipeline = format!(
        "kind: pipeline\nname: default\nsteps:\n- name: a\n  image: {}\n  commands: [true]\n",
        test_image()
    );
    let repo = bare_repo(&pipeline);
    let added = cli(
        &server.url,
        &[
            "repo",
            "add",
            "team/busy",
            "--clone-url",
            &repo.clone_url,
            "--auto-cancel",
        ],
    );
    let secret = added["webhook_secret"].as_str().expect("secret").to_owned();
    let sha = head(repo.work.path());
    let zero = "0000000000000000000000000000000000000000";
    for (i, id) in ["push-1", "push-2"].iter().enumerate() {
        let body = github_push(
            "team/busy",
            &repo.clone_url,
            zero,
            &sha,
            &format!("push {i}"),
        );
        let d = Delivery::signed(&secret, &body, id, "push");
        let (status, answer) = deliver(&server.url, &d);
        assert_eq!(status, 201, "{answer}");
    }
    let first = cli(&server.url, &["build", "show", "team/busy", "1"]);
    let second = cli(&server.url, &["build", "show", "team/busy", "2"]);
    assert_eq!(first["status"], "killed", "{first:#}");
    assert_eq!(first["stages"][0]["status"], "killed");
    assert_eq!(second["status"], "pending", "{second:#}");
    // A manual run is not a push: it supersedes nothing.
    cli(
        &server.url,
        &["build", "run", "team/busy", "--branch", "main"],
    );
    assert_eq!(
        cli(&server.url, &["build", "show", "team/busy", "2"])["status"],
        "pending"
    );
}

/// `--max-running 1`: two independent stages of one repository never run at once, even with
/// two idle runners.
#[test]
fn cluster_max_running_keeps_a_repository_to_its_limit() {
    let data = tempfile::tempdir().expect("data dir");
    let server = start_server(data.path(), "127.0.0.1:0", "30s");
    let work = tempfile::tempdir().expect("work dir");
    let _a = start_runner(&server.url, "runner-a", &[], &work.path().join("a"));
    let _b = start_runner(&server.url, "runner-b", &[], &work.path().join("b"));
    let image = test_image();
    let pipeline = ["one", "two"]
        .iter()
        .map(|name| {
            format!(
                "kind: pipeline\nname: {name}\nclone:\n  disable: true\nsteps:\n- name: s\n  image: {image}\n  commands: [sleep 1]\n"
            )
        })
        .collect::<Vec<_>>()
        .join("---\n");
    let repo = bare_repo(&pipeline);
    cli(
        &server.url,
        &[
            "repo",
            "add",
            "team/limited",
            "--clone-url",
            &repo.clone_url,
            "--max-running",
            "1",
        ],
    );
    cli(
        &server.url,
        &["build", "run", "team/limited", "--branch", "main"],
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    let build = loop {
        let build = cli(&server.url, &["build", "show", "team/limited", "1"]);
        if !["pending", "running"].contains(&build["status"].as_str().unwrap_or_default()) {
            break build;
        }
        assert!(Instant::now() < deadline, "build never finished: {build:#}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(build["status"], "success", "{build:#}");
    let mut spans: Vec<(i64, i64)> = build["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .map(|s| {
            (
                s["started"].as_i64().expect("started"),
                s["finished"].as_i64().expect("finished"),
            )
        })
        .collect();
    spans.sort();
    assert_eq!(spans.len(), 2);
    assert!(spans[1].0 >= spans[0].1, "stages overlapped: {spans:?}");
}
