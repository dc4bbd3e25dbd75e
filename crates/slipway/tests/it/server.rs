//! `slipway up` end to end: a local bare repository, a GitHub push webhook with a valid
//! signature, the build run in Docker by the embedded runner, logs stored, commit statuses
//! posted to a stand-in that speaks GitHub's statuses API; and the webhook refusals.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use super::{git, slipway, test_image};

pub const ADMIN: &str = "test-admin-token-0123456789abcdef";

/// A running `slipway up`; killed on drop.
pub struct Up {
    pub child: Child,
    pub url: String,
    /// The start-up line (`--json`): url, listen, tokens, proxy_http.
    pub facts: Value,
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `slipway up` on a free loopback port with `data_dir`.
pub fn start_up(data_dir: &Path, extra: &[&str]) -> Up {
    let mut child = slipway()
        .args([
            "up",
            "--listen",
            "127.0.0.1:0",
            "--json",
            "--admin-token",
            ADMIN,
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .args(if extra.iter().any(|a| a.starts_with("--proxy")) {
            &[][..]
        } else {
            &["--no-proxy"][..]
        })
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("slipway up starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("first line of slipway up");
    let facts: Value = serde_json::from_str(&line).expect("slipway up --json prints JSON");
    let url = facts["url"].as_str().expect("url").to_owned();
    Up { child, url, facts }
}

pub fn api(up: &Up, args: &[&str]) -> Value {
    let out = slipway()
        .args(args)
        .args(["--server", &up.url, "--token", ADMIN, "--json"])
        .output()
        .expect("slipway runs");
    let (stdout, stderr) = super::text(&out);
    assert!(out.status.success(), "slipway {args:?} failed: {stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("JSON from {args:?}: {e}: {stdout}"))
}

/// What the GitHub stand-in received: (path, authorization header, body).
type Posted = Arc<Mutex<Vec<(String, String, Value)>>>;

/// A stand-in for GitHub's `POST /repos/{owner}/{repo}/statuses/{sha}`, answering 201 with a
/// status object as GitHub documents it.
fn github_standin() -> (String, Posted, std::thread::JoinHandle<()>) {
    let posted: Posted = Arc::default();
    let seen = posted.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let app = axum::Router::new().route(
                "/repos/{owner}/{repo}/statuses/{sha}",
                axum::routing::post(
                    move |uri: axum::http::Uri,
                          headers: axum::http::HeaderMap,
                          body: axum::body::Bytes| {
                        let seen = seen.clone();
                        async move {
                            let auth = headers
                                .get("authorization")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_owned();
                            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                            let state = body["state"].clone();
                            seen.lock()
                                .expect("lock")
                                .push((uri.path().to_owned(), auth, body));
                            (
                                axum::http::StatusCode::CREATED,
                                axum::Json(json!({"id": 1, "state": state, "context": "slipway"})),
                            )
                        }
                    },
                ),
            );
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            tx.send(listener.local_addr().expect("addr")).expect("send");
            axum::serve(listener, app).await.expect("serve");
        });
    });
    let addr = rx.recv().expect("stand-in address");
    (format!("http://{addr}"), posted, handle)
}

pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// A push event body in GitHub's format (the fields GitHub sends that Slipway reads).
pub fn github_push(
    repo: &str,
    clone_url: &str,
    before: &str,
    after: &str,
    message: &str,
) -> Vec<u8> {
    github_push_to(repo, clone_url, "main", before, after, message)
}

/// [`github_push`] to `branch`.
pub fn github_push_to(
    repo: &str,
    clone_url: &str,
    branch: &str,
    before: &str,
    after: &str,
    message: &str,
) -> Vec<u8> {
    let (owner, name) = repo.split_once('/').expect("owner/name");
    serde_json::to_vec(&json!({
        "ref": format!("refs/heads/{branch}"),
        "before": before,
        "after": after,
        "created": false,
        "deleted": false,
        "forced": false,
        "base_ref": null,
        "compare": format!("https://github.com/{repo}/compare/{before}...{after}"),
        "commits": [{"id": after, "message": message, "timestamp": "2026-12-01T10:00:00Z",
            "url": format!("https://github.com/{repo}/commit/{after}"),
            "author": {"name": "Dev One", "email": "dev@example.invalid", "username": "devone"},
            "committer": {"name": "Dev One", "email": "dev@example.invalid", "username": "devone"},
            "added": [".drone.yml"], "removed": [], "modified": []}],
        "head_commit": {"id": after, "tree_id": after, "distinct": true, "message": message,
            "timestamp": "2026-12-01T10:00:00Z",
            "url": format!("https://github.com/{repo}/commit/{after}"),
            "author": {"name": "Dev One", "email": "dev@example.invalid", "username": "devone"},
            "committer": {"name": "Dev One", "email": "dev@example.invalid", "username": "devone"},
            "added": [".drone.yml"], "removed": [], "modified": []},
        "repository": {"id": 1, "name": name, "full_name": repo, "private": true,
            "owner": {"login": owner, "name": owner},
            "html_url": format!("https://github.com/{repo}"),
            "clone_url": clone_url, "ssh_url": format!("git@github.com:{repo}.git"),
            "default_branch": "main", "master_branch": "main"},
        "pusher": {"name": "devone", "email": "dev@example.invalid"},
        "sender": {"login": "devone", "id": 2, "avatar_url": "https://avatars.example.invalid/u/2"}
    }))
    .expect("JSON")
}

pub struct Delivery<'a> {
    pub body: &'a [u8],
    pub signature: String,
    pub id: &'a str,
    pub event: &'a str,
}

impl<'a> Delivery<'a> {
    /// A delivery of `body` signed with `secret`, as GitHub signs it.
    pub fn signed(secret: &str, body: &'a [u8], id: &'a str, event: &'a str) -> Delivery<'a> {
        Delivery {
            body,
            signature: sign(secret, body),
            id,
            event,
        }
    }
}

pub fn deliver(url: &str, d: &Delivery) -> (u16, Value) {
    let resp = reqwest::blocking::Client::new()
        .post(format!("{url}/hook"))
        .header("Content-Type", "application/json")
        .header("X-GitHub-Event", d.event)
        .header("X-GitHub-Delivery", d.id)
        .header("X-Hub-Signature-256", &d.signature)
        .header("User-Agent", "GitHub-Hookshot/abc")
        .body(d.body.to_vec())
        .send()
        .expect("webhook delivered");
    let status = resp.status().as_u16();
    (status, resp.json().unwrap_or(Value::Null))
}

pub fn head(dir: &Path) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["rev-parse", "HEAD"])
        .output()
        .expect("git");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Signs in through the login form, as a browser on the UI's page does; the session
/// cookie to send (`slipway_session=…`).
pub fn ui_session(up: &Up) -> String {
    let resp = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
        .post(format!("{}/login", up.url))
        .header("Origin", &up.url)
        .form(&[("token", ADMIN)])
        .send()
        .expect("POST /login");
    assert_eq!(resp.status().as_u16(), 303, "login");
    let set = resp
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .expect("a session cookie");
    set.split(';').next().expect("name=value").to_owned()
}

/// The form token (`csrf`) a UI page carries.
pub fn form_token(page: &str) -> String {
    let (_, rest) = page
        .split_once("name=\"csrf\" value=\"")
        .unwrap_or_else(|| panic!("no form token in {page}"));
    rest.split('"').next().expect("a value").to_owned()
}

fn wait_for_build(up: &Up, repo: &str, number: i64, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let build = api(up, &["build", "show", repo, &number.to_string()]);
        let status = build["status"].as_str().unwrap_or_default().to_owned();
        if !["pending", "running"].contains(&status.as_str()) {
            return build;
        }
        assert!(
            Instant::now() < deadline,
            "build #{number} still {status}: {build}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Row counts of every table, to show a request changed nothing.
fn db_counts(up: &Up, repo: &str) -> Value {
    let builds = api(up, &["build", "ls", repo, "--limit", "200"]);
    json!({"builds": builds.as_array().map(Vec::len), "repos": api(up, &["repo", "ls"]).as_array().map(Vec::len)})
}

#[test]
fn github_push_builds_in_docker_with_logs_and_statuses() {
    push_to_build(&[]);
}

/// The same story with the store in PostgreSQL (a fresh database), as `--database-url`
/// gives it.
#[test]
fn github_push_builds_with_the_store_in_postgresql() {
    let Ok(base) = std::env::var("SLIPWAY_TEST_POSTGRES_URL") else {
        eprintln!("skipping: SLIPWAY_TEST_POSTGRES_URL not set");
        return;
    };
    let db = format!("slipway_e2e_{}", std::process::id());
    let try_psql = |sql: &str| {
        let out = Command::new("psql")
            .args([base.as_str(), "-qAtX", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .expect("psql runs");
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("{sql}: {}", super::text(&out).1))
        }
    };
    let psql = |sql: &str| try_psql(sql).unwrap_or_else(|e| panic!("{e}"));
    psql(&format!("DROP DATABASE IF EXISTS {db}"));
    psql(&format!("CREATE DATABASE {db}"));
    let url = match base.rsplit_once('/') {
        Some((server, _)) => format!("{server}/{db}"),
        None => panic!("SLIPWAY_TEST_POSTGRES_URL has no database part: {base}"),
    };
    push_to_build(&["--database-url", &url]);
    // FORCE may be refused (42501) for an autovacuum worker in the database when the role
    // lacks `pg_signal_backend`; a plain DROP waits for such a worker itself.
    let mut dropped = try_psql(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"));
    for _ in 0..8 {
        if dropped.is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
        dropped = try_psql(&format!("DROP DATABASE IF EXISTS {db}"));
    }
    dropped.unwrap_or_else(|e| panic!("cannot drop the test database: {e}"));
}

fn push_to_build(extra: &[&str]) {
    let image = test_image();
    let pipeline = format!(
        "kind: pipeline\nname: default\nsteps:\n- name: greet\n  image: {image}\n  commands:\n  - echo hello from $DRONE_REPO at $DRONE_COMMIT_SHA\n  - echo build $DRONE_BUILD_NUMBER on $DRONE_BRANCH\n  - test -f app.txt && cat app.txt\n"
    );
    let repo = super::served_repo(&[(".drone.yml", &pipeline), ("app.txt", "the app\n")]);
    let work = &repo.work;
    let clone_url = repo.clone_url.clone();
    let sha = head(work.path());

    let (standin, posted, _standin_thread) = github_standin();
    let data = tempfile::tempdir().expect("data dir");
    let mut args = vec!["--lease", "10s"];
    args.extend_from_slice(extra);
    let up = start_up(data.path(), &args);

    let repo = api(
        &up,
        &[
            "repo",
            "add",
            "team/app",
            "--clone-url",
            &clone_url,
            "--provider",
            "github",
            "--status-url",
            &standin,
            "--status-token",
            "gh-token-123",
        ],
    );
    let secret = repo["webhook_secret"]
        .as_str()
        .expect("webhook_secret")
        .to_owned();
    assert!(
        repo["webhook_url"]
            .as_str()
            .expect("webhook_url")
            .ends_with("/hook")
    );

    let zero = "0000000000000000000000000000000000000000";
    let body = github_push("team/app", &clone_url, zero, &sha, "add the app");
    let before = db_counts(&up, "team/app");

    // Refusals change nothing.
    let bad = Delivery::signed("not-the-secret", &body, "d-bad", "push");
    assert_eq!(deliver(&up.url, &bad).0, 401);
    let other = github_push("team/unknown", &clone_url, zero, &sha, "x");
    let unknown = Delivery::signed(&secret, &other, "d-unknown", "push");
    assert_eq!(deliver(&up.url, &unknown).0, 404);
    let garbage = b"{not json";
    let malformed = Delivery::signed(&secret, garbage, "d-garbage", "push");
    assert_eq!(deliver(&up.url, &malformed).0, 400);
    let ping = br#"{"zen":"hi","repository":{"full_name":"team/app"}}"#;
    let ping = Delivery::signed(&secret, ping, "d-ping", "ping");
    let (code, answer) = deliver(&up.url, &ping);
    assert_eq!(code, 202, "{answer}");
    assert_eq!(db_counts(&up, "team/app"), before);

    // The real delivery builds.
    let good = Delivery::signed(&secret, &body, "d-1", "push");
    let (code, answer) = deliver(&up.url, &good);
    assert_eq!(code, 201, "{answer}");
    assert_eq!(answer["build"], 1);

    let build = wait_for_build(&up, "team/app", 1, Duration::from_secs(120));
    assert_eq!(build["status"], "success", "{build:#}");
    assert_eq!(build["commit"], sha.as_str());
    assert_eq!(build["event"], "push");
    let steps: Vec<(String, String)> = build["stages"][0]["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap_or_default().to_owned(),
                s["status"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            ("clone".to_owned(), "success".to_owned()),
            ("greet".to_owned(), "success".to_owned())
        ]
    );
    for step in build["stages"][0]["steps"].as_array().expect("steps") {
        let (started, finished) = (step["started"].as_i64(), step["finished"].as_i64());
        assert!(
            started.is_some() && finished >= started,
            "step times: {step}"
        );
    }

    // Logs are stored and downloadable.
    let out = run_cli(&up, &["build", "logs", "team/app", "1", "--step", "greet"]);
    let (log, stderr) = super::text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        log.lines().collect::<Vec<_>>(),
        [
            "+ echo hello from $DRONE_REPO at $DRONE_COMMIT_SHA",
            format!("hello from team/app at {sha}").as_str(),
            "+ echo build $DRONE_BUILD_NUMBER on $DRONE_BRANCH",
            "build 1 on main",
            "+ test -f app.txt && cat app.txt",
            "the app"
        ]
    );

    // Every page of the UI renders for a signed-in admin, and sends others to the login.
    let http = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    for (page, expect) in [
        ("/", "team/app"),
        ("/repos/team/app", "add the app"),
        ("/repos/team/app/builds/1", "greet"),
        ("/repos/team/app/run", "main"),
        ("/repos/team/app/secrets", "Secrets"),
        ("/repos/team/app/settings", "/hook"),
        ("/repos/new", "clone_url"),
        ("/runners", "embedded@"),
        ("/registry", "Registry"),
    ] {
        let resp = http
            .get(format!("{}{page}", up.url))
            .header("Cookie", ui_session(&up))
            .send()
            .expect("page");
        assert_eq!(resp.status().as_u16(), 200, "{page}");
        let body = resp.text().expect("page text");
        assert!(body.contains(expect), "{page} lacks {expect:?}");
        let anonymous = http.get(format!("{}{page}", up.url)).send().expect("page");
        assert_eq!(anonymous.status().as_u16(), 303, "{page} without a token");
    }

    // A redelivery does not build again.
    let before = db_counts(&up, "team/app");
    let (code, answer) = deliver(&up.url, &good);
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["duplicate"], true);
    assert_eq!(db_counts(&up, "team/app"), before);

    // `[skip ci]` pushes are not built.
    std::fs::write(work.path().join("app.txt"), "v2\n").expect("write");
    git(
        work.path(),
        &[
            "-c",
            "user.name=T",
            "-c",
            "user.email=t@e.invalid",
            "commit",
            "-qam",
            "docs [skip ci]",
        ],
    );
    let sha2 = head(work.path());
    let skip = github_push("team/app", &clone_url, &sha, &sha2, "docs [skip ci]");
    let skip = Delivery::signed(&secret, &skip, "d-2", "push");
    assert_eq!(deliver(&up.url, &skip).0, 202);
    assert_eq!(db_counts(&up, "team/app"), before);

    // Statuses reached the stand-in: pending/running first, success last, for that commit.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let seen = posted.lock().expect("lock").clone();
        if seen.last().is_some_and(|(_, _, b)| b["state"] == "success") {
            for (path, auth, body) in &seen {
                assert_eq!(path, &format!("/repos/team/app/statuses/{sha}"));
                assert_eq!(auth, "Bearer gh-token-123");
                assert!(
                    body["target_url"]
                        .as_str()
                        .is_some_and(|u| u.ends_with("/repos/team/app/builds/1")),
                    "{body}"
                );
            }
            assert_eq!(seen[0].2["state"], "pending");
            break;
        }
        assert!(Instant::now() < deadline, "statuses seen: {seen:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `slipway ARGS --server URL --token ADMIN` (no `--json`): its output.
fn run_cli(up: &Up, args: &[&str]) -> std::process::Output {
    slipway()
        .args(args)
        .args(["--server", &up.url, "--token", ADMIN])
        .output()
        .expect("slipway runs")
}

/// `docker` with a private config dir, so logins do not touch the user's.
fn docker(config: &Path, args: &[&str]) -> std::process::Output {
    Command::new("docker")
        .env("DOCKER_CONFIG", config)
        .args(args)
        .output()
        .expect("docker runs")
}

/// Tags the test image as `image` and pushes it with the credentials in `config`.
fn push_test_image(config: &Path, image: &str) {
    assert!(
        docker(config, &["tag", &test_image(), image])
            .status
            .success()
    );
    let push = docker(config, &["push", image]);
    assert!(push.status.success(), "{}", super::text(&push).1);
}

#[test]
fn slipway_up_serves_the_registry_with_its_admin_token() {
    let data = tempfile::tempdir().expect("data dir");
    let up = start_up(data.path(), &[]);
    let host = up.url.trim_start_matches("http://").to_owned();
    let config = tempfile::tempdir().expect("docker config");
    let cfg = config.path();

    let bad = docker(
        cfg,
        &["login", &host, "-u", "admin", "-p", "wrong-password-000000"],
    );
    assert!(!bad.status.success(), "a wrong password must not log in");
    let good = docker(cfg, &["login", &host, "-u", "admin", "-p", ADMIN]);
    assert!(good.status.success(), "{}", super::text(&good).1);

    let image = format!("{host}/team/base:1");
    push_test_image(cfg, &image);
    assert!(docker(cfg, &["rmi", &image]).status.success());
    let pull = docker(cfg, &["pull", &image]);
    assert!(pull.status.success(), "{}", super::text(&pull).1);
    let _ = docker(cfg, &["rmi", &image]);

    // A robot token pushes below its namespace only.
    let robot = api(&up, &["token", "add", "ci-bot", "--robot", "bots"]);
    let secret = robot["token"].as_str().expect("token secret").to_owned();
    let robot_cfg = tempfile::tempdir().expect("docker config");
    let rcfg = robot_cfg.path();
    let login = docker(rcfg, &["login", &host, "-u", "ci-bot", "-p", &secret]);
    assert!(login.status.success(), "{}", super::text(&login).1);
    let allowed = format!("{host}/bots/tool:1");
    let denied = format!("{host}/team/tool:1");
    for tag in [&allowed, &denied] {
        assert!(docker(rcfg, &["tag", &test_image(), tag]).status.success());
    }
    let ok = docker(rcfg, &["push", &allowed]);
    assert!(ok.status.success(), "{}", super::text(&ok).1);
    let refused = docker(rcfg, &["push", &denied]);
    assert!(
        !refused.status.success(),
        "a robot of `bots` must not push to team/"
    );

    // A bearer token the robot's login earned, handed to a Docker client as it is: it
    // pushes and pulls until the robot token is revoked, then neither.
    let body: Value = reqwest::blocking::Client::new()
        .get(format!(
            "{}/v2/token?service=slipway-registry&scope=repository:bots/tool:pull,push",
            up.url
        ))
        .basic_auth("ci-bot", Some(&secret))
        .send()
        .expect("token")
        .json()
        .expect("token JSON");
    let bearer = body["token"].as_str().expect("a bearer token");
    let bearer_cfg = tempfile::tempdir().expect("docker config");
    let bcfg = bearer_cfg.path();
    std::fs::write(
        bcfg.join("config.json"),
        json!({"auths": {&host: {"registrytoken": bearer}}}).to_string(),
    )
    .expect("docker config with the bearer token");
    let again = format!("{host}/bots/tool:2");
    assert!(
        docker(bcfg, &["tag", &test_image(), &again])
            .status
            .success()
    );
    let ok = docker(bcfg, &["push", &again]);
    assert!(ok.status.success(), "{}", super::text(&ok).1);
    let id = robot["id"].as_i64().expect("the robot's id").to_string();
    let out = run_cli(&up, &["token", "rm", &id]);
    assert!(out.status.success(), "{}", super::text(&out).1);
    let late = format!("{host}/bots/tool:3");
    assert!(
        docker(bcfg, &["tag", &test_image(), &late])
            .status
            .success()
    );
    let push = docker(bcfg, &["push", &late]);
    assert!(
        !push.status.success(),
        "a revoked robot's bearer token pushed"
    );
    let _ = docker(bcfg, &["rmi", &again]);
    let pull = docker(bcfg, &["pull", &again]);
    assert!(
        !pull.status.success(),
        "a revoked robot's bearer token pulled"
    );
    let _ = docker(rcfg, &["rmi", &allowed, &denied, &late]);

    // `repo set --registry-paths` widens where the repository's pipelines may push; a bad
    // pattern is refused with the reason.
    api(
        &up,
        &[
            "repo",
            "add",
            "team/paths",
            "--clone-url",
            "https://git.example/team/paths.git",
        ],
    );
    let set = api(
        &up,
        &[
            "repo",
            "set",
            "team/paths",
            "--registry-paths",
            "team/shared-*, team/tools",
        ],
    );
    assert_eq!(
        set["registry_paths"],
        json!(["team/shared-*", "team/tools"]),
        "{set}"
    );
    let bad = run_cli(
        &up,
        &["repo", "set", "team/paths", "--registry-paths", "*/x"],
    );
    let (_, stderr) = super::text(&bad);
    assert!(
        !bad.status.success() && stderr.contains("`*/x`") && stderr.contains("owner"),
        "{stderr}"
    );

    // The UI lists it, with the pull command.
    let page = reqwest::blocking::Client::new()
        .get(format!("{}/registry/team/base", up.url))
        .header("Cookie", ui_session(&up))
        .send()
        .expect("registry page")
        .text()
        .expect("page text");
    assert!(
        page.contains(&format!("docker pull {host}/team/base:1")),
        "{page}"
    );

    // Retention: keep the last tag of team/*; the dry run lists, the real run deletes.
    for tag in ["2", "3"] {
        // Tags are ordered by push time, which has a resolution of one second.
        std::thread::sleep(Duration::from_millis(1100));
        let image = format!("{host}/team/base:{tag}");
        push_test_image(cfg, &image);
        let _ = docker(cfg, &["rmi", &image]);
    }
    let tags = |up: &Up| -> Vec<String> {
        let out = reqwest::blocking::Client::new()
            .get(format!("{}/v2/team/base/tags/list", up.url))
            .basic_auth("admin", Some(ADMIN))
            .send()
            .expect("tags list");
        let v: Value = out.json().expect("tags JSON");
        v["tags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t.as_str().map(str::to_owned))
            .collect()
    };
    let dry = api(
        &up,
        &["gc", "--dry-run", "--keep-last", "1", "--repos", "team/*"],
    );
    let listed: Vec<&str> = dry["tags"]
        .as_array()
        .expect("tags")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(listed, ["team/base:1", "team/base:2"], "{dry}");
    assert_eq!(tags(&up), ["1", "2", "3"], "a dry run deletes nothing");
    api(&up, &["gc", "--keep-last", "2", "--repos", "team/*"]);
    assert_eq!(tags(&up), ["2", "3"]);

    // The UI's delete button.
    let http = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let session = ui_session(&up);
    let page = http
        .get(format!("{}/registry/team/base", up.url))
        .header("Cookie", &session)
        .send()
        .expect("registry page")
        .text()
        .expect("page text");
    let resp = http
        .post(format!("{}/registry/team/base/tags/2/delete", up.url))
        .header("Cookie", &session)
        .header("Origin", &up.url)
        .form(&[("csrf", form_token(&page))])
        .send()
        .expect("delete form");
    assert_eq!(resp.status().as_u16(), 303);
    assert_eq!(tags(&up), ["3"]);
}

/// Issue 5 through the server: a compile step, then `plugins/docker` with no registry,
/// pushed natively to the server's own registry with the stage's short-lived token; the
/// artifact is recorded on the build, `docker pull` of the tag gives that digest, and the
/// token is revoked once the stage ends.
#[test]
fn plugins_docker_pushes_to_the_built_in_registry_with_a_pipeline_token() {
    let image = test_image();
    let pipeline = format!(
        "kind: pipeline\nname: default\nsteps:\n- name: compile\n  image: {image}\n  commands:\n  - mkdir -p dist\n  - echo built $DRONE_COMMIT_SHA > dist/app.txt\n- name: publish\n  image: plugins/docker\n  settings:\n    repo: team/app\n    tags:\n    - latest\n    - ${{DRONE_BRANCH}}-${{DRONE_BUILD_NUMBER}}\n"
    );
    let dockerfile = format!("FROM {image}\nCOPY dist/app.txt /app.txt\n");
    let served = super::served_repo(&[(".drone.yml", &pipeline), ("Dockerfile", &dockerfile)]);
    let data = tempfile::tempdir().expect("data dir");
    let up = start_up(data.path(), &[]);
    let host = up.url.trim_start_matches("http://").to_owned();
    // Only a trusted repository's builds publish images.
    api(
        &up,
        &[
            "repo",
            "add",
            "team/app",
            "--clone-url",
            &served.clone_url,
            "--trusted",
        ],
    );
    api(&up, &["build", "run", "team/app", "--branch", "main"]);
    let build = wait_for_build(&up, "team/app", 1, Duration::from_secs(180));
    assert_eq!(build["status"], "success", "{build:#}");

    let artifacts = build["artifacts"].as_array().expect("artifacts");
    let images: Vec<&str> = artifacts
        .iter()
        .filter_map(|a| a["image"].as_str())
        .collect();
    let tagged = format!("{host}/team/app:main-1");
    assert!(images.contains(&tagged.as_str()), "{artifacts:?}");
    assert!(
        images.contains(&format!("{host}/team/app:latest").as_str()),
        "{artifacts:?}"
    );
    let digest = artifacts
        .iter()
        .find(|a| a["image"] == tagged.as_str())
        .and_then(|a| a["digest"].as_str())
        .expect("digest")
        .to_owned();

    let config = tempfile::tempdir().expect("docker config");
    let cfg = config.path();
    assert!(
        docker(cfg, &["login", &host, "-u", "admin", "-p", ADMIN])
            .status
            .success()
    );
    let _ = docker(cfg, &["rmi", &tagged]);
    let pull = docker(cfg, &["pull", &tagged]);
    assert!(pull.status.success(), "{}", super::text(&pull).1);
    let inspect = docker(
        cfg,
        &[
            "image",
            "inspect",
            "--format",
            "{{json .RepoDigests}}",
            &tagged,
        ],
    );
    let repo_digests = super::text(&inspect).0;
    assert!(
        repo_digests.contains(&digest),
        "{repo_digests} lacks {digest}"
    );
    let _ = docker(cfg, &["rmi", &tagged, &format!("{host}/team/app:latest")]);

    // The build page lists the image, linked to its registry page.
    let page = reqwest::blocking::Client::new()
        .get(format!("{}/repos/team/app/builds/1", up.url))
        .header("Cookie", ui_session(&up))
        .send()
        .expect("build page")
        .text()
        .expect("page text");
    assert!(page.contains("href=\"/registry/team/app\""), "{page}");
    assert!(page.contains(&tagged), "{page}");

    // The stage's registry token is gone with the stage.
    let tokens = api(&up, &["token", "ls"]);
    assert!(
        tokens.as_array().expect("tokens").iter().all(|t| !t["name"]
            .as_str()
            .unwrap_or_default()
            .starts_with("pipeline:")),
        "{tokens}"
    );
    // The log says it ran natively.
    let out = run_cli(
        &up,
        &["build", "logs", "team/app", "1", "--step", "publish"],
    );
    assert!(
        super::text(&out).0.contains("runs natively"),
        "{}",
        super::text(&out).0
    );
}

/// The rest of a build's life through the CLI: a secret reaches its step masked (and stays
/// back from a pull request), restart and promote make new builds with the right event and
/// target, cancel kills a running step, a broken pipeline file gives an `error` build with
/// its lint messages, and `/healthz` and `/metrics` answer.
#[test]
fn secrets_restart_promote_cancel_and_broken_files() {
    let image = test_image();
    let pipeline = format!(
        "kind: pipeline\nname: default\nsteps:\n- name: use\n  image: {image}\n  environment:\n    TOKEN:\n      from_secret: deploy_token\n  commands:\n  - echo token=$TOKEN event=$DRONE_BUILD_EVENT target=$DRONE_DEPLOY_TO\n  - test \"$SLOW\" != yes || sleep 60\n- name: check/it\n  image: {image}\n  commands:\n  - echo slash ok\n"
    );
    let served = super::served_repo(&[(".drone.yml", &pipeline)]);
    let data = tempfile::tempdir().expect("data dir");
    let up = start_up(data.path(), &[]);
    api(
        &up,
        &["repo", "add", "team/life", "--clone-url", &served.clone_url],
    );
    let secret = run_cli(
        &up,
        &[
            "secret",
            "add",
            "team/life",
            "deploy_token",
            "--value",
            "s3cr3t-deploy-value",
        ],
    );
    assert!(secret.status.success(), "{}", super::text(&secret).1);
    let listed = api(&up, &["secret", "ls", "team/life"]);
    assert_eq!(listed[0]["name"], "deploy_token");
    assert!(
        !listed.to_string().contains("s3cr3t"),
        "values are never listed"
    );

    let log_of = |n: i64| -> String {
        let out = run_cli(
            &up,
            &[
                "build",
                "logs",
                "team/life",
                &n.to_string(),
                "--step",
                "use",
            ],
        );
        super::text(&out).0
    };

    api(&up, &["build", "run", "team/life", "--branch", "main"]);
    let first = wait_for_build(&up, "team/life", 1, Duration::from_secs(120));
    assert_eq!(first["status"], "success", "{first:#}");
    assert!(
        log_of(1).contains("token=****** event=custom target="),
        "{}",
        log_of(1)
    );
    assert!(!log_of(1).contains("s3cr3t"));
    // A step name with `/` is one step, in the API and the CLI.
    let out = run_cli(
        &up,
        &["build", "logs", "team/life", "1", "--step", "check/it"],
    );
    assert!(
        super::text(&out).0.contains("slash ok"),
        "{:?}",
        super::text(&out)
    );

    let restarted = api(&up, &["build", "restart", "team/life", "1"]);
    assert_eq!(restarted["number"], 2);
    assert_eq!(restarted["commit"], first["commit"]);
    assert_eq!(
        wait_for_build(&up, "team/life", 2, Duration::from_secs(120))["status"],
        "success"
    );

    let promoted = api(
        &up,
        &[
            "build",
            "promote",
            "team/life",
            "1",
            "--target",
            "production",
        ],
    );
    assert_eq!(promoted["event"], "promote");
    assert_eq!(promoted["deploy_to"], "production");
    assert_eq!(
        wait_for_build(&up, "team/life", 3, Duration::from_secs(120))["status"],
        "success"
    );
    assert!(
        log_of(3).contains("event=promote target=production"),
        "{}",
        log_of(3)
    );

    // Cancel a step that would sleep a minute.
    api(
        &up,
        &[
            "build",
            "run",
            "team/life",
            "--branch",
            "main",
            "--param",
            "SLOW=yes",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while api(&up, &["build", "show", "team/life", "4"])["stages"][0]["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "use"))
        .is_none_or(|s| s["status"] != "running")
    {
        assert!(Instant::now() < deadline, "step never ran");
        std::thread::sleep(Duration::from_millis(100));
    }
    let asked = Instant::now();
    api(&up, &["build", "cancel", "team/life", "4"]);
    let cancelled = wait_for_build(&up, "team/life", 4, Duration::from_secs(30));
    assert_eq!(cancelled["status"], "killed", "{cancelled:#}");
    assert!(
        asked.elapsed() < Duration::from_secs(20),
        "cancel took {:?}",
        asked.elapsed()
    );

    // A broken pipeline file: an `error` build whose error names file, line and column.
    std::fs::write(
        served.work.path().join(".drone.yml"),
        "kind: pipeline\nsteps:\n- name: a\n  image: x\n  depends_on: [nope]\n  commands: [true]\n",
    )
    .expect("write");
    git(
        served.work.path(),
        &[
            "-c",
            "user.name=T",
            "-c",
            "user.email=t@e.invalid",
            "commit",
            "-qam",
            "break it",
        ],
    );
    git(
        served.work.path(),
        &[
            "push",
            "-q",
            served.clone_url.trim_start_matches("file://"),
            "main",
        ],
    );
    api(&up, &["build", "run", "team/life", "--branch", "main"]);
    let broken = wait_for_build(&up, "team/life", 5, Duration::from_secs(30));
    assert_eq!(broken["status"], "error", "{broken:#}");
    let error = broken["error"].as_str().expect("error text");
    assert!(error.starts_with(".drone.yml:5:"), "{error}");
    assert!(error.contains("nope"), "{error}");

    // Health and metrics.
    let http = reqwest::blocking::Client::new();
    let health = http
        .get(format!("{}/healthz", up.url))
        .send()
        .expect("healthz");
    assert_eq!(health.text().expect("text"), "ok\n");
    let metrics = http
        .get(format!("{}/metrics", up.url))
        .send()
        .expect("metrics")
        .text()
        .expect("text");
    assert!(metrics.contains("slipway_builds_total 5"), "{metrics}");
    assert!(metrics.contains("slipway_runners 1"), "{metrics}");
}

/// A pull request builds the commit only its `refs/pull/N/head` reaches, and gets only the
/// secrets marked `--allow-pull-request`.
#[test]
fn pull_requests_build_their_head_without_withheld_secrets() {
    let image = test_image();
    let pipeline = format!(
        "kind: pipeline\nname: default\nsteps:\n- name: show\n  image: {image}\n  environment:\n    KEPT:\n      from_secret: deploy_token\n    GIVEN:\n      from_secret: pr_token\n    REGISTRY:\n      from_secret: slipway_registry_password\n  commands:\n  - echo kept=[$KEPT] given=[$GIVEN] pr=$DRONE_PULL_REQUEST registry=[$REGISTRY]\n  - cat feature.txt\n"
    );
    let served = super::served_repo(&[(".drone.yml", &pipeline)]);
    let work = served.work.path();
    let bare = served.clone_url.trim_start_matches("file://").to_owned();
    // The change lives on a branch of a fork: the repository only has it as the PR's ref.
    git(work, &["checkout", "-q", "-b", "feature"]);
    std::fs::write(work.join("feature.txt"), "from the pull request\n").expect("write");
    git(work, &["add", "feature.txt"]);
    git(
        work,
        &[
            "-c",
            "user.name=T",
            "-c",
            "user.email=t@e.invalid",
            "commit",
            "-qm",
            "feature",
        ],
    );
    git(work, &["push", "-q", &bare, "feature:refs/pull/1/head"]);
    let head_sha = head(work);

    let data = tempfile::tempdir().expect("data dir");
    let up = start_up(data.path(), &[]);
    let repo = api(
        &up,
        &["repo", "add", "team/pr", "--clone-url", &served.clone_url],
    );
    let secret = repo["webhook_secret"].as_str().expect("secret").to_owned();
    for (name, value, allow) in [
        ("deploy_token", "kept-back-value", false),
        ("pr_token", "given-value", true),
    ] {
        let mut args = vec!["secret", "add", "team/pr", name, "--value", value];
        if allow {
            args.push("--allow-pull-request");
        }
        let out = run_cli(&up, &args);
        assert!(out.status.success(), "{}", super::text(&out).1);
    }
    let body = serde_json::to_vec(&json!({
        "action": "opened",
        "number": 1,
        "pull_request": {
            "number": 1, "title": "Add the feature", "html_url": "https://github.com/team/pr/pull/1",
            "user": {"login": "contributor", "avatar_url": ""},
            "head": {"ref": "feature", "sha": head_sha, "repo": {"full_name": "someone/pr", "clone_url": "https://github.com/someone/pr.git"}},
            "base": {"ref": "main", "sha": "0000000000000000000000000000000000000000", "repo": {"full_name": "team/pr"}}
        },
        "repository": {"full_name": "team/pr", "name": "pr", "owner": {"login": "team"},
            "html_url": "https://github.com/team/pr", "clone_url": "https://github.com/team/pr.git",
            "default_branch": "main", "private": false},
        "sender": {"login": "contributor"}
    }))
    .expect("JSON");
    let d = Delivery::signed(&secret, &body, "pr-1", "pull_request");
    let (status, answer) = deliver(&up.url, &d);
    assert_eq!(status, 201, "{answer}");
    let build = wait_for_build(&up, "team/pr", 1, Duration::from_secs(120));
    assert_eq!(build["status"], "success", "{build:#}");
    assert_eq!(build["event"], "pull_request");
    assert_eq!(build["ref"], "refs/pull/1/head");
    let out = run_cli(&up, &["build", "logs", "team/pr", "1", "--step", "show"]);
    let log = super::text(&out).0;
    // No registry credential either: a pull request must not push over trusted images.
    assert!(
        log.contains("kept=[] given=[******] pr=1 registry=[]"),
        "{log}"
    );
    assert!(log.contains("from the pull request"), "{log}");
    assert!(
        !log.contains("kept-back-value") && !log.contains("given-value"),
        "{log}"
    );
}

#[test]
fn slipway_server_takes_its_admin_token_from_a_file_and_guards_metrics() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("a temp dir");
    let file = dir.path().join("admin.token");
    std::fs::write(&file, format!("{ADMIN}\n")).expect("write the token file");
    let data = dir.path().join("data");
    let mut child = slipway()
        .args(["server", "--listen", "127.0.0.1:0", "--json"])
        .arg("--admin-token-file")
        .arg(&file)
        .args(["--metrics-token", "scrape"])
        .arg("--data-dir")
        .arg(&data)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("slipway server starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("first line of slipway server");
    let facts: Value = serde_json::from_str(&line).expect("JSON facts");
    let up = Up {
        url: facts["url"].as_str().expect("url").to_owned(),
        child,
        facts: facts.clone(),
    };
    assert!(
        facts["admin_token"].is_null(),
        "the token was given: {facts}"
    );
    // The token is not in the process list.
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", up.child.id())).expect("cmdline");
    assert!(
        !String::from_utf8_lossy(&cmdline).contains(ADMIN),
        "the admin token shows in the process list"
    );
    let http = reqwest::blocking::Client::new();
    let repos = http
        .get(format!("{}/api/repos", up.url))
        .bearer_auth(ADMIN)
        .send()
        .expect("GET /api/repos");
    assert_eq!(
        repos.status().as_u16(),
        200,
        "the file's token is the admin's"
    );
    let metrics = |token: Option<&str>| {
        let mut req = http.get(format!("{}/metrics", up.url));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().expect("GET /metrics").status().as_u16()
    };
    assert_eq!(metrics(None), 401);
    assert_eq!(metrics(Some(ADMIN)), 401);
    assert_eq!(metrics(Some("scrape")), 200);
    let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("slipway.db")), 0o600);
    drop(up);

    // An empty file, and an idle timeout that would cut off polling runners: clear errors.
    std::fs::write(&file, "\n").expect("empty the file");
    for (args, expect) in [
        (
            vec!["--admin-token-file", file.to_str().expect("utf-8 path")],
            "first line is empty",
        ),
        (
            vec!["--idle-timeout", "10s"],
            "--idle-timeout 10s is too short",
        ),
    ] {
        let out = slipway()
            .args(["server", "--listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(&data)
            .args(&args)
            .output()
            .expect("slipway server runs");
        let (_, stderr) = super::text(&out);
        assert!(!out.status.success(), "{args:?} must fail");
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
    }
}
