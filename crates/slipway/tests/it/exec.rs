//! `slipway exec` on the real Docker engine: the whole pipeline language in one real run,
//! secrets masking, and Ctrl-C.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{git_repo, slipway, test_image, text};

/// Runs `slipway exec --json` in `dir`; returns the event lines and the final report.
fn exec_json(dir: &std::path::Path, extra: &[&str]) -> (Vec<Value>, Value, i32) {
    let out = slipway()
        .arg("exec")
        .arg("--json")
        .args(extra)
        .current_dir(dir)
        .output()
        .expect("slipway runs");
    let (stdout, stderr) = text(&out);
    let mut events: Vec<Value> = stdout
        .lines()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {l}\nstderr: {stderr}"))
        })
        .collect();
    let report = events
        .pop()
        .unwrap_or_else(|| panic!("no output; stderr: {stderr}"));
    assert_eq!(
        report["type"], "report",
        "last line is the report; stderr: {stderr}"
    );
    (events, report, out.status.code().unwrap_or(-1))
}

fn step_status(report: &Value) -> HashMap<String, String> {
    report["pipelines"]
        .as_array()
        .expect("pipelines")
        .iter()
        .flat_map(|p| p["steps"].as_array().cloned().unwrap_or_default())
        .map(|s| {
            (
                s["name"].as_str().unwrap_or("").to_owned(),
                s["status"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

fn logs_of<'a>(events: &'a [Value], step: &str) -> Vec<&'a str> {
    events
        .iter()
        .filter(|e| e["type"] == "log" && e["step"] == step)
        .filter_map(|e| e["line"].as_str())
        .collect()
}

fn time_of(events: &[Value], kind: &str, step: &str) -> u64 {
    events
        .iter()
        .find(|e| e["type"] == kind && e["step"] == step)
        .and_then(|e| e["time"].as_u64())
        .unwrap_or_else(|| panic!("no {kind} event for {step}"))
}

#[test]
fn one_pipeline_exercises_the_language_on_docker() {
    let image = test_image();
    let pipeline = format!(
        r#"kind: pipeline
name: proof
volumes:
  - name: shared
    temp: {{}}
services:
  - name: web
    image: {image}
    commands:
      - mkdir -p /www && echo hello-from-service > /www/index.html
      - httpd -f -p 80 -h /www
steps:
  - name: write
    image: {image}
    volumes: [{{name: shared, path: /shared}}]
    commands:
      - echo "note from write at ${{DRONE_COMMIT_SHA:0:7}}" > /shared/note
  - name: read
    image: {image}
    depends_on: [write]
    volumes: [{{name: shared, path: /shared}}]
    commands:
      - cat /shared/note
  - name: service-check
    image: {image}
    depends_on: [clone]
    commands:
      - for i in $(seq 1 40); do wget -qO- http://web/ && exit 0; sleep 0.25; done; exit 1
  - name: detached
    image: {image}
    detach: true
    depends_on: [clone]
    commands:
      - while true; do echo tick; sleep 0.5; done
  - name: parallel-a
    image: {image}
    depends_on: [read, service-check]
    commands: [sleep 2]
  - name: parallel-b
    image: {image}
    depends_on: [read, service-check]
    commands: [sleep 2]
  - name: ignored
    image: {image}
    depends_on: [parallel-a, parallel-b]
    failure: ignore
    commands: [exit 2]
  - name: slow
    image: {image}
    depends_on: [ignored]
    timeout: 2s
    failure: ignore
    commands: [sleep 30]
  - name: fail
    image: {image}
    depends_on: [slow]
    commands: [echo about to fail, exit 3]
  - name: on-failure
    image: {image}
    depends_on: [fail]
    when: {{status: [failure]}}
    commands: [echo cleaning up after failure]
  - name: on-success
    image: {image}
    depends_on: [fail]
    commands: [echo should not run]
"#
    );
    let repo = git_repo(&[(".drone.yml", &pipeline), ("README", "x")]);
    let started = Instant::now();
    let (events, report, code) = exec_json(repo.path(), &[]);
    let statuses = step_status(&report);
    let st = |name: &str| statuses.get(name).map(String::as_str).unwrap_or("missing");

    assert_eq!(code, 1, "a failed build exits non-zero");
    assert_eq!(report["status"], "failure");
    assert_eq!(st("clone"), "success");
    assert_eq!(st("write"), "success");
    assert_eq!(st("read"), "success");
    assert!(
        logs_of(&events, "read")
            .iter()
            .any(|l| l.starts_with("note from write at ")),
        "temp volume shared: {:?}",
        logs_of(&events, "read")
    );
    assert_eq!(st("service-check"), "success");
    assert!(logs_of(&events, "service-check").contains(&"hello-from-service"));
    assert!(
        logs_of(&events, "detached").contains(&"tick"),
        "detached step ran"
    );
    assert_eq!(st("parallel-a"), "success");
    assert_eq!(st("parallel-b"), "success");
    assert_eq!(st("ignored"), "failure", "it failed, but was ignored");
    assert_eq!(st("slow"), "killed", "timed out");
    assert_eq!(st("fail"), "failure");
    assert_eq!(st("on-failure"), "success");
    assert!(logs_of(&events, "on-failure").contains(&"cleaning up after failure"));
    assert_eq!(st("on-success"), "skipped");
    assert!(logs_of(&events, "on-success").is_empty());
    // `ignored` failing did not stop `slow` and `fail` from running.
    assert!(logs_of(&events, "fail").contains(&"about to fail"));
    // Commands are echoed before they run.
    assert!(logs_of(&events, "fail").contains(&"+ echo about to fail"));

    // Parallel: each started before the other finished.
    let (a0, a1) = (
        time_of(&events, "step_started", "parallel-a"),
        time_of(&events, "step_finished", "parallel-a"),
    );
    let (b0, b1) = (
        time_of(&events, "step_started", "parallel-b"),
        time_of(&events, "step_finished", "parallel-b"),
    );
    assert!(
        a0 < b1 && b0 < a1,
        "parallel steps overlapped: a {a0}..{a1}, b {b0}..{b1}"
    );
    // And a 30 s sleep did not run to its end.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the step timeout cut the sleep"
    );

    assert_no_leftovers_of_exited_process();
}

#[test]
fn secrets_never_reach_the_output() {
    let image = test_image();
    let pipeline = format!(
        r#"kind: pipeline
name: secrets
steps:
  - name: leak
    image: {image}
    environment:
      PLAIN: {{from_secret: plain}}
      KEY: {{from_secret: key}}
    commands:
      - echo "$PLAIN"
      - echo "token=$PLAIN;rest"
      - printf '%s\n' "$KEY"
      - printf 'partial %s' "$PLAIN"; sleep 0.2; echo
  - name: other
    image: {image}
    commands:
      - echo "other sees [$PLAIN]"
"#
    );
    let repo = git_repo(&[(".drone.yml", &pipeline)]);
    let secrets_file = repo.path().join("secrets.env");
    std::fs::write(
        &secrets_file,
        "key=\"-----BEGIN KEY-----\\nc2VjcmV0LWxpbmUtdHdv\\n-----END KEY-----\"\n",
    )
    .expect("write");
    let out = slipway()
        .args(["exec", "--secret", "plain=hunter2-Secret", "--secrets-file"])
        .arg(&secrets_file)
        .current_dir(repo.path())
        .output()
        .expect("runs");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for secret in [
        "hunter2-Secret",
        "c2VjcmV0LWxpbmUtdHdv",
        "-----BEGIN KEY-----",
        "-----END KEY-----",
    ] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "`{secret}` leaked:\n{stdout}"
        );
    }
    assert!(stdout.contains("leak  | ******"), "{stdout}");
    assert!(stdout.contains("token=******;rest"), "{stdout}");
    assert!(stdout.contains("partial ******"), "{stdout}");
    assert!(
        stdout.contains("other sees []"),
        "secrets reach only the steps naming them:\n{stdout}"
    );
}

#[test]
fn sigint_cancels_and_cleans_up() {
    let image = test_image();
    let pipeline = format!(
        "kind: pipeline\nname: long\nvolumes: [{{name: v, temp: {{}}}}]\nservices:\n  - name: svc\n    image: {image}\n    commands: [sleep 300]\nsteps:\n  - name: sleeper\n    image: {image}\n    volumes: [{{name: v, path: /v}}]\n    commands: [echo sleeping, sleep 300]\n"
    );
    let repo = git_repo(&[(".drone.yml", &pipeline)]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(["exec", "--json"])
        .env("NO_COLOR", "1")
        .current_dir(repo.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawns");
    let pid = child.id();
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let line = lines
            .next()
            .expect("output before the step starts")
            .expect("reads");
        if line.contains("\"sleeping\"") {
            break;
        }
        assert!(Instant::now() < deadline, "step never started");
    }
    assert!(!owned_by(pid).is_empty(), "containers exist while running");
    let sent = Instant::now();
    let status = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let exit = loop {
        if let Some(exit) = child.try_wait().expect("wait") {
            break exit;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(10),
            "slipway exec did not exit within 10 s of SIGINT"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!exit.success());
    let report: Value = serde_json::from_str(rest.last().expect("a report")).expect("JSON");
    assert_eq!(report["status"], "killed");
    let left = owned_by(pid);
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// Containers, networks and volumes whose owner label names process `pid`.
pub fn owned_by(pid: u32) -> Vec<String> {
    let needle = format!(":{pid}:");
    let mut found = Vec::new();
    for (kind, format) in [
        ("container", "{{.Names}} {{.Label \"io.slipway.owner\"}}"),
        ("network", "{{.Name}} {{.Label \"io.slipway.owner\"}}"),
        ("volume", "{{.Name}} {{.Label \"io.slipway.owner\"}}"),
    ] {
        let mut cmd = Command::new("docker");
        cmd.arg(kind).arg("ls");
        if kind == "container" {
            cmd.arg("-a");
        }
        let out = cmd
            .args([
                "--filter",
                "label=io.slipway.managed=true",
                "--format",
                format,
            ])
            .output()
            .expect("docker runs");
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if line.contains(&needle) {
                found.push(format!("{kind} {line}"));
            }
        }
    }
    found
}

/// Every slipway process a test started has exited: nothing it created may remain.
fn assert_no_leftovers_of_exited_process() {
    let out = Command::new("docker")
        .args([
            "ps",
            "-a",
            "--filter",
            "label=io.slipway.managed=true",
            "--format",
            "{{.Label \"io.slipway.owner\"}}",
        ])
        .output()
        .expect("docker runs");
    for owner in String::from_utf8_lossy(&out.stdout).lines() {
        let pid = owner.split(':').nth(1).unwrap_or("");
        assert!(
            std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "container of exited process left behind: {owner}"
        );
    }
}

/// A native `plugins/webhook` step sends where `--notify-api webhook=URL` points (the URL's
/// path kept), with no plugin container; a malformed `--notify-api` is refused up front.
#[test]
fn native_notify_step_obeys_notify_api() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    // One request: read it whole, answer 200, hand it to the test.
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = stream.read(&mut buf).expect("read");
            request.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&request).to_string();
            if let Some(end) = text.find("\r\n\r\n") {
                let length = text[..end]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                    })
                    .unwrap_or(0);
                if request.len() >= end + 4 + length || n == 0 {
                    break;
                }
            }
            if n == 0 {
                break;
            }
        }
        stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
            .expect("write");
        String::from_utf8_lossy(&request).to_string()
    });
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join(".drone.yml"),
        "kind: pipeline\ntype: docker\nname: default\nclone:\n  disable: true\nsteps:\n  - name: hook\n    image: plugins/webhook\n    settings:\n      urls: https://hooks.example.com/builds\n      content_type: text/plain\n      template: \"build {{build.number}} {{build.status}}\"\n",
    )
    .expect("write pipeline");
    let (events, report, code) = exec_json(
        dir.path(),
        &[
            "--build-number",
            "5",
            "--notify-api",
            &format!("webhook=http://{addr}"),
        ],
    );
    assert_eq!(code, 0, "{report:#}\n{:#?}", logs_of(&events, "hook"));
    assert_eq!(step_status(&report)["hook"], "success");
    assert!(
        logs_of(&events, "hook")
            .iter()
            .any(|l| l.contains("runs natively")),
        "{:#?}",
        logs_of(&events, "hook")
    );
    let request = server.join().expect("stand-in");
    assert!(request.starts_with("POST /builds HTTP/1.1"), "{request}");
    assert!(request.ends_with("build 5 success"), "{request}");

    let out = slipway()
        .args(["exec", "--notify-api", "pager=http://127.0.0.1:1"])
        .current_dir(dir.path())
        .output()
        .expect("slipway runs");
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("unknown channel kind `pager`"), "{stderr}");
}

/// Without a server, a deploy step fails saying it needs one.
#[test]
fn a_deploy_step_under_exec_fails_saying_it_needs_a_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join(".drone.yml"),
        "kind: pipeline\ntype: docker\nname: default\nclone:\n  disable: true\nsteps:\n  - name: ship\n    image: slipway/deploy\n    settings:\n      environment: production\n      stack: shop\n",
    )
    .expect("write pipeline");
    let (events, report, code) = exec_json(dir.path(), &[]);
    assert_ne!(code, 0, "{report:#}");
    assert_eq!(step_status(&report)["ship"], "failure");
    let lines = logs_of(&events, "ship");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("needs a Slipway server") && l.contains("slipway exec")),
        "{lines:#?}"
    );
}
