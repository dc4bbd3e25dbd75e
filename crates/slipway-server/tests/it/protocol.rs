//! The runner protocol against the real server (in-process, SQLite in a temporary data
//! dir, on loopback), with this test as the runner: a stage's last events may come with
//! its `/done`. They are applied as a batch would be and the stage ends in the same
//! request; a resent `/done` changes nothing; a `/done` from a runner not holding the
//! lease, or one whose lines leave a gap, writes nothing at all; a `/done` asking for more
//! work is answered with the next stage's lease when one waits.

use serde_json::{Value, json};

use super::runner_harness::RunnerHarness;

const ADMIN: &str = "protocol-admin-token-0123456789abcdef";
const REPO: &str = "team/proto";

/// [`RunnerHarness`] and the calls of these tests.
struct Harness(RunnerHarness);

impl std::ops::Deref for Harness {
    type Target = RunnerHarness;

    fn deref(&self) -> &RunnerHarness {
        &self.0
    }
}

impl Harness {
    /// A server with one (trusted) repository whose pipeline has the steps `a` and `b`
    /// (exec, no clone; nothing runs them but this test, which registers its runners as
    /// allowing exec).
    async fn start() -> Harness {
        Harness::with_pipeline(
            "kind: pipeline\ntype: exec\nname: default\nclone:\n  disable: true\nsteps:\n\
             - name: a\n  commands: [\"true\"]\n- name: b\n  commands: [\"true\"]\n",
        )
        .await
    }

    /// The same with `pipeline` as the repository's `.drone.yml`.
    async fn with_pipeline(pipeline: &str) -> Harness {
        Harness(RunnerHarness::start(ADMIN, REPO, pipeline, |_| {}).await)
    }

    /// A batch of `events` of attempt 1 by `runner` for `stage`.
    async fn events(&self, runner: i64, stage: i64, events: &[Value]) -> (u16, Value) {
        self.runner_post(
            &format!("/stages/{stage}/events"),
            &json!({"runner_id": runner, "attempt": 1, "events": events}),
        )
        .await
    }

    /// Registers a runner that allows exec: its id.
    async fn register(&self, name: &str) -> i64 {
        self.register_with(name, true).await.0
    }

    /// Runs a build of `main` and leases its stage to `runner`: (build number, stage id).
    async fn build_and_lease(&self, runner: i64) -> (i64, i64) {
        let build = self.run(json!({"branch": "main"})).await;
        let lease = self.poll(runner).await;
        assert_eq!(lease["attempt"], 1, "{lease}");
        (
            build["number"].as_i64().expect("a number"),
            lease["stage_id"].as_i64().expect("a stage id"),
        )
    }

    async fn build(&self, number: i64) -> Value {
        let (status, build) = self
            .admin_get(&format!("/api/repos/{REPO}/builds/{number}"))
            .await;
        assert_eq!(status, 200, "{build}");
        build
    }

    async fn log(&self, number: i64, step: &str) -> String {
        let response = self
            .http
            .get(format!(
                "{}/api/repos/{REPO}/builds/{number}/logs/1/{step}",
                self.url
            ))
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("GET the log");
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return String::new();
        }
        assert!(response.status().is_success(), "{}", response.status());
        response.text().await.expect("the log")
    }
}

fn line(text: &str) -> Value {
    json!({"time": 1_700_000_000_000_i64, "line": text})
}

fn started(step: &str, time: i64) -> Value {
    json!({"type": "step_started", "step": step, "time": time})
}

fn log(step: &str, first_seq: u64, lines: &[&str]) -> Value {
    let lines: Vec<Value> = lines.iter().map(|l| line(l)).collect();
    json!({"type": "log", "step": step, "first_seq": first_seq, "lines": lines})
}

fn finished(step: &str, status: &str, exit_code: i64, time: i64) -> Value {
    json!({"type": "step_finished", "step": step, "status": status, "exit_code": exit_code,
           "time": time, "error": null})
}

/// The body of a `/done` of attempt 1 by `runner`, ending with `status`, carrying `events`.
fn done_body(runner: i64, status: &str, events: &[Value]) -> Value {
    json!({"runner_id": runner, "attempt": 1, "status": status, "error": null,
           "events": events})
}

fn step<'a>(build: &'a Value, name: &str) -> &'a Value {
    build["stages"][0]["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("step `{name}` in {build}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_events_come_with_done_and_a_resent_done_changes_nothing() {
    let h = Harness::start().await;
    let runner = h.register("proto-runner").await;
    let (number, stage) = h.build_and_lease(runner).await;

    // `a` starts in a batch of its own; the rest comes with the end.
    let (status, ack) = h
        .events(runner, stage, &[started("a", 1_700_000_000_100)])
        .await;
    assert_eq!((status, &ack["cancel"]), (200, &json!(false)), "{ack}");
    let done = done_body(
        runner,
        "failure",
        &[
            log("a", 0, &["+ true", "a said"]),
            finished("a", "success", 0, 1_700_000_000_200),
            started("b", 1_700_000_000_300),
            log("b", 0, &["b failed"]),
            finished("b", "failure", 3, 1_700_000_000_400),
        ],
    );
    let (status, body) = h.runner_post(&format!("/stages/{stage}/done"), &done).await;
    assert_eq!(status, 204, "{body}");

    let ended = h.build(number).await;
    assert_eq!(ended["status"], "failure", "{ended}");
    assert_eq!(ended["stages"][0]["status"], "failure", "{ended}");
    let (a, b) = (step(&ended, "a"), step(&ended, "b"));
    assert_eq!(
        (&a["status"], &a["exit_code"], &a["started"], &a["finished"]),
        (
            &json!("success"),
            &json!(0),
            &json!(1_700_000_000_100_i64),
            &json!(1_700_000_000_200_i64)
        ),
        "{a}"
    );
    // Started and finished within one report: both times stored.
    assert_eq!(
        (&b["status"], &b["exit_code"], &b["started"], &b["finished"]),
        (
            &json!("failure"),
            &json!(3),
            &json!(1_700_000_000_300_i64),
            &json!(1_700_000_000_400_i64)
        ),
        "{b}"
    );
    assert_eq!(h.log(number, "a").await, "+ true\na said\n");
    assert_eq!(h.log(number, "b").await, "b failed\n");

    // The acknowledgement was lost: the same /done again is answered the same and changes
    // nothing.
    let (status, body) = h.runner_post(&format!("/stages/{stage}/done"), &done).await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(h.build(number).await, ended);
    assert_eq!(h.log(number, "a").await, "+ true\na said\n");
    assert_eq!(h.log(number, "b").await, "b failed\n");
}

/// The log files of a build's stage 1 (attempt 1), by step file name.
fn log_files(h: &Harness, build: &Value) -> Vec<String> {
    let dir = h
        .data
        .path()
        .join("data")
        .join("logs")
        .join(build["id"].as_i64().expect("a build id").to_string());
    let prefix = format!("{}.1.", build["stages"][0]["id"]);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_steps_log_is_stored_with_its_end_and_a_log_in_parts_stays_a_file() {
    let h = Harness::start().await;
    let runner = h.register("proto-runner").await;
    let (number, stage) = h.build_and_lease(runner).await;

    // `a` prints in a batch of its own, so its log is a file from then on.
    let (status, ack) = h
        .events(
            runner,
            stage,
            &[
                started("a", 1_700_000_000_100),
                log("a", 0, &["a 0", "a 1"]),
            ],
        )
        .await;
    assert_eq!(status, 200, "{ack}");
    // `a`'s rest, and all of `b` (two parts, a `\r` and a stray `\n` in its lines), come
    // with the end.
    let done = done_body(
        runner,
        "success",
        &[
            log("a", 2, &["a 2"]),
            finished("a", "success", 0, 1_700_000_000_200),
            started("b", 1_700_000_000_300),
            log("b", 0, &["b 0\r", "b\n1"]),
            log("b", 2, &[""]),
            finished("b", "success", 0, 1_700_000_000_400),
        ],
    );
    let (status, body) = h.runner_post(&format!("/stages/{stage}/done"), &done).await;
    assert_eq!(status, 204, "{body}");

    let ended = h.build(number).await;
    assert_eq!(ended["status"], "success", "{ended}");
    assert_eq!(h.log(number, "a").await, "a 0\na 1\na 2\n");
    assert_eq!(h.log(number, "b").await, "b 0\r\nb 1\n\n");
    // Only `a` has a file: `b`'s log was stored with the end.
    let a_file = format!("{}.1.a.log", ended["stages"][0]["id"]);
    assert_eq!(log_files(&h, &ended), [a_file]);

    // The live stream of the ended step gives the stored lines, numbered, then its end.
    let stream = h
        .http
        .get(format!(
            "{}/api/repos/{REPO}/builds/{number}/logs/1/b/stream",
            h.url
        ))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("GET the stream")
        .text()
        .await
        .expect("the stream");
    let messages: Vec<Value> = stream
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str(d.trim()).ok())
        .collect();
    assert_eq!(
        messages.first(),
        Some(&json!({"kind": "lines", "seq": 0, "lines": ["b 0\r", "b 1", ""]})),
        "{stream}"
    );

    // A resent end changes nothing, and stores no second copy anywhere.
    let (status, body) = h.runner_post(&format!("/stages/{stage}/done"), &done).await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(h.log(number, "b").await, "b 0\r\nb 1\n\n");
    assert_eq!(log_files(&h, &ended).len(), 1);

    // A line holding NUL (which PostgreSQL's text cannot) keeps a short log in a file.
    let (number, stage) = h.build_and_lease(runner).await;
    let done = done_body(
        runner,
        "success",
        &[
            started("a", 1_700_000_000_100),
            log("a", 0, &["nul \u{0} here"]),
            finished("a", "success", 0, 1_700_000_000_200),
        ],
    );
    let (status, body) = h.runner_post(&format!("/stages/{stage}/done"), &done).await;
    assert_eq!(status, 204, "{body}");
    let ended = h.build(number).await;
    assert_eq!(h.log(number, "a").await, "nul \u{0} here\n");
    let a_file = format!("{}.1.a.log", ended["stages"][0]["id"]);
    assert_eq!(log_files(&h, &ended), [a_file]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_done_not_from_the_lease_holder_or_with_a_gap_writes_nothing() {
    let h = Harness::start().await;
    let holder = h.register("holder").await;
    let other = h.register("other").await;
    let (number, stage) = h.build_and_lease(holder).await;
    let before = h.build(number).await;
    assert_eq!(before["stages"][0]["status"], "running", "{before}");

    let done = |runner: i64, first_seq: u64| {
        done_body(
            runner,
            "success",
            &[
                started("a", 1_700_000_000_100),
                log("a", first_seq, &["x"]),
                finished("a", "success", 0, 1_700_000_000_200),
            ],
        )
    };
    // Another runner, and a wrong attempt: the lease is not theirs.
    let (status, body) = h
        .runner_post(&format!("/stages/{stage}/done"), &done(other, 0))
        .await;
    assert_eq!(
        (status, &body["code"]),
        (409, &json!("lease_lost")),
        "{body}"
    );
    let mut wrong_attempt = done(holder, 0);
    wrong_attempt["attempt"] = json!(2);
    let (status, body) = h
        .runner_post(&format!("/stages/{stage}/done"), &wrong_attempt)
        .await;
    assert_eq!(
        (status, &body["code"]),
        (409, &json!("lease_lost")),
        "{body}"
    );
    // The holder, but its lines start at 5 where the server has none.
    let (status, body) = h
        .runner_post(&format!("/stages/{stage}/done"), &done(holder, 5))
        .await;
    assert_eq!((status, &body["code"]), (409, &json!("log_gap")), "{body}");

    assert_eq!(h.build(number).await, before, "nothing was written");
    assert_eq!(h.log(number, "a").await, "");

    // The holder's own, whole report still ends the stage; asking for more, it gets the
    // stage of a build that is waiting, as a poll would.
    let waiting = h.run(json!({"branch": "main"})).await;
    let mut last = done(holder, 0);
    last["next"] = json!(true);
    let (status, next) = h.runner_post(&format!("/stages/{stage}/done"), &last).await;
    assert_eq!(status, 200, "the next lease: {next}");
    assert_eq!(next["attempt"], 1, "{next}");
    assert_ne!(next["stage_id"], json!(stage), "{next}");
    let waiting = h.build(waiting["number"].as_i64().expect("a number")).await;
    assert_eq!(
        (&waiting["stages"][0]["status"], &waiting["stages"][0]["id"]),
        (&json!("running"), &next["stage_id"]),
        "{waiting}"
    );
    // Nothing else waits: the next end is answered 204 however it asks.
    let mut second = done(holder, 0);
    second["next"] = json!(true);
    let next_stage = next["stage_id"].as_i64().expect("a stage id");
    let (status, body) = h
        .runner_post(&format!("/stages/{next_stage}/done"), &second)
        .await;
    assert_eq!(status, 204, "{body}");
    let ended = h.build(number).await;
    assert_eq!(ended["stages"][0]["status"], "success", "{ended}");
    assert_eq!(step(&ended, "a")["status"], "success", "{ended}");
    // `b` was never reported: closed as skipped with the stage.
    assert_eq!(step(&ended, "b")["status"], "skipped", "{ended}");
    assert_eq!(h.log(number, "a").await, "x\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_run_of_a_commit_builds_that_commit() {
    let h = Harness::start().await;
    let by_branch = h.run(json!({"branch": "main"})).await;
    let sha = by_branch["commit"].as_str().expect("a commit").to_owned();
    let by_commit = h.run(json!({"commit": sha})).await;
    assert_eq!(
        (
            &by_commit["status"],
            &by_commit["commit"],
            &by_commit["event"]
        ),
        (&json!("pending"), &json!(sha), &json!("custom")),
        "a commit's build is queued like a branch's: {by_commit}"
    );
    // Its restart too (the mirror is fetched again then).
    let number = by_commit["number"].as_i64().expect("a number");
    let (status, restarted) = h
        .admin_post(
            &format!("/api/repos/{REPO}/builds/{number}/cancel"),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{restarted}");
    let (status, restarted) = h
        .admin_post(
            &format!("/api/repos/{REPO}/builds/{number}/restart"),
            json!({}),
        )
        .await;
    assert_eq!(status, 201, "{restarted}");
    assert_eq!(
        (&restarted["status"], &restarted["commit"]),
        (&json!("pending"), &json!(sha)),
        "{restarted}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_stages_go_to_a_runner_of_their_platform() {
    let h = Harness::with_pipeline(
        "matrix:\n  GO:\n    - \"1.10\"\n    - \"1.11\"\npipeline:\n  build:\n    image: busybox\n    \
         commands: [\"echo $GO\"]\n",
    )
    .await;
    let runner = h.register("linux-runner").await;
    h.run(json!({"branch": "main"})).await;
    let mut titles = Vec::new();
    for _ in 0..2 {
        let (status, lease) = h.runner_post("/poll", &json!({"runner_id": runner})).await;
        assert_eq!(status, 200, "a matrix stage is leased: {lease}");
        titles.push(lease["title"].as_str().expect("a title").to_owned());
        let labels = &lease["plan"]["pipelines"][0]["labels"];
        assert_eq!(
            labels,
            &json!({"arch": "amd64", "os": "linux"}),
            "only what a runner must have: {lease}"
        );
    }
    assert_eq!(
        titles,
        [format!("{REPO}#1 matrix-1"), format!("{REPO}#1 matrix-2")]
    );
}

/// Each runner gets its own credential at registration, which acts as that runner only:
/// not as another runner, not for registering; the shared runner token only registers;
/// registering again replaces the credential; runners cannot give themselves `slipway.*`
/// labels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runners_credential_acts_as_that_runner_only() {
    let h = Harness::start().await;
    let (first, first_credential) = h.register_with("first", true).await;
    let (second, second_credential) = h.register_with("second", true).await;
    assert_ne!(first_credential, second_credential);
    assert!(
        !first_credential.contains(&h.runner_token),
        "the credential is not the runner token"
    );
    h.run(json!({"branch": "main"})).await;

    // The first runner's credential polling as the second: refused, nothing leased.
    let (status, body) = h
        .runner_post_as(&first_credential, "/poll", &json!({"runner_id": second}))
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("runner"),
        "{body}"
    );
    // The shared runner token is for registering only.
    let (status, body) = h
        .runner_post_as(&h.runner_token, "/poll", &json!({"runner_id": first}))
        .await;
    assert_eq!(status, 403, "{body}");
    // A made-up credential for a real runner id.
    let forged = format!("slipway-runner.{first}.{}", "0".repeat(64));
    let (status, body) = h
        .runner_post_as(&forged, "/poll", &json!({"runner_id": first}))
        .await;
    assert_eq!(status, 401, "{body}");
    // A credential cannot register runners.
    let (status, body) = h
        .runner_post_as(
            &first_credential,
            "/register",
            &json!({"name": "third", "labels": {}, "capacity": 1, "version": "test",
                    "protocol": slipway_runner::protocol::PROTOCOL_VERSION}),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    let (_, stage) = h.admin_get(&format!("/api/repos/{REPO}/builds/1")).await;
    assert_eq!(
        stage["stages"][0]["status"], "pending",
        "nothing was leased: {stage}"
    );

    // The stage leased to the first runner: the second cannot report for it, even naming
    // the first runner's id.
    let (status, lease) = h
        .runner_post_as(&first_credential, "/poll", &json!({"runner_id": first}))
        .await;
    assert_eq!(status, 200, "{lease}");
    let stage_id = lease["stage_id"].as_i64().expect("a stage id");
    let (status, body) = h
        .runner_post_as(
            &second_credential,
            &format!("/stages/{stage_id}/heartbeat"),
            &json!({"runner_id": first, "attempt": 1}),
        )
        .await;
    assert_eq!(status, 403, "{body}");

    // Registering again replaces the credential: the old one stops working.
    let (again, new_credential) = h.register_with("first", true).await;
    assert_eq!(again, first);
    let (status, _) = h
        .runner_post_as(
            &first_credential,
            &format!("/stages/{stage_id}/heartbeat"),
            &json!({"runner_id": first, "attempt": 1}),
        )
        .await;
    assert_eq!(status, 401, "the replaced credential is refused");
    let (status, body) = h
        .runner_post_as(
            &new_credential,
            &format!("/stages/{stage_id}/heartbeat"),
            &json!({"runner_id": first, "attempt": 1}),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let (status, body) = h
        .runner_post(
            "/register",
            &json!({"name": "sneaky", "labels": {"slipway.exec": "allowed"}, "capacity": 1,
                    "version": "test", "protocol": slipway_runner::protocol::PROTOCOL_VERSION}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("--allow-exec"),
        "{body}"
    );
}

/// A `type: exec` stage is leased only to a runner that registered allowing exec.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_stages_go_only_to_runners_that_allow_exec() {
    let h = Harness::start().await;
    let (plain, _) = h.register_with("plain", false).await;
    let (exec, _) = h.register_with("exec", true).await;
    h.run(json!({"branch": "main"})).await;
    let (status, body) = h.runner_post("/poll", &json!({"runner_id": plain})).await;
    assert_eq!(status, 204, "nothing for a runner without exec: {body}");
    let (status, lease) = h.runner_post("/poll", &json!({"runner_id": exec})).await;
    assert_eq!(status, 200, "{lease}");
    assert_eq!(lease["plan"]["pipelines"][0]["type"], "exec", "{lease}");
    assert_eq!(
        lease["trusted"], true,
        "a trusted repository's run: {lease}"
    );
}
