//! The deployer through a real `slipway up`: environments, their variables and secrets.

use serde_json::json;

use super::server::{ADMIN, api, start_up};
use super::{slipway, text};

#[test]
fn environments_with_domain_variables_and_secrets() {
    let data = tempfile::tempdir().expect("data dir");
    let up = &start_up(data.path(), &[]);
    let env = api(
        up,
        &[
            "env",
            "add",
            "production",
            "--domain",
            "Example.COM.",
            "--var",
            "REPLICAS=3",
            "--var",
            "TAG=v1",
        ],
    );
    assert_eq!(env["domain"], "example.com");
    assert_eq!(env["vars"], json!({"REPLICAS": "3", "TAG": "v1"}));
    api(up, &["env", "add", "qa"]);
    let out = slipway()
        .args([
            "env",
            "secret",
            "add",
            "production",
            "DB_PASSWORD",
            "--value",
            "s3cr3t-value",
        ])
        .args(["--server", &up.url, "--token", ADMIN])
        .output()
        .expect("slipway runs");
    assert!(out.status.success(), "{}", text(&out).1);
    let shown = api(up, &["env", "show", "production"]);
    assert_eq!(shown["secrets"][0]["name"], "DB_PASSWORD", "{shown}");
    assert!(!shown.to_string().contains("s3cr3t-value"), "{shown}");
    let listed = api(up, &["env", "ls"]);
    let names: Vec<&str> = listed
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert_eq!(names, ["production", "qa"]);

    // Refusals say what is wrong and change nothing.
    for (args, says) in [
        (
            vec!["env", "add", "Prod Env"],
            "environment name `Prod Env`",
        ),
        (vec!["env", "add", "production"], "already exists"),
        (
            vec!["env", "add", "x", "--var", "1BAD=v"],
            "variable `1BAD`",
        ),
        (
            vec![
                "env",
                "secret",
                "add",
                "production",
                "bad-name",
                "--value",
                "v",
            ],
            "secret `bad-name`",
        ),
        (vec!["env", "show", "nowhere"], "no environment `nowhere`"),
    ] {
        let out = slipway()
            .args(&args)
            .args(["--server", &up.url, "--token", ADMIN])
            .output()
            .expect("slipway runs");
        let (_, stderr) = text(&out);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    assert_eq!(api(up, &["env", "ls"]).as_array().map(Vec::len), Some(2));
    let out = slipway()
        .args(["env", "rm", "qa", "--server", &up.url, "--token", ADMIN])
        .output()
        .expect("slipway runs");
    assert!(out.status.success(), "{}", text(&out).1);
    assert_eq!(api(up, &["env", "ls"]).as_array().map(Vec::len), Some(1));
}

/// A busybox httpd answering `$VERSION`, started after `delay` seconds; `extra` goes into
/// the service (a health check, ...).
fn stack_file(version: &str, delay: u32, extra: &str) -> String {
    format!(
        r#"services:
  web:
    image: {image}
    command: ["sh", "-c", "sleep {delay}; mkdir -p /www && echo \"$$VERSION\" > /www/index.html; trap 'exit 0' TERM; httpd -f -p 8080 -h /www & wait"]
    environment:
      VERSION: {version}
    expose: ["8080"]
    stop_grace_period: 2s
    deploy:
      replicas: 2
{extra}"#,
        image = super::test_image()
    )
}

/// A stack of one service `name` running `image`, a busybox httpd answering the image's
/// `$VERSION`.
pub(super) fn httpd_stack(name: &str, image: &str) -> String {
    format!(
        "services:\n  {name}:\n    image: {image}\n    command: [\"sh\", \"-c\", \"mkdir -p /www && echo \\\"$$VERSION\\\" > /www/index.html; trap 'exit 0' TERM; httpd -f -p 8080 -h /www & wait\"]\n    expose: [\"8080\"]\n    stop_grace_period: 2s\n"
    )
}

/// `GET http://HOST/` through the edge proxy at `edge`: (status, body).
pub(super) fn through(edge: &str, host: &str) -> (u16, String) {
    let client = reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .build()
        .expect("client");
    match client
        .get(format!("http://{edge}/"))
        .header("host", host)
        .send()
    {
        Ok(r) => (
            r.status().as_u16(),
            r.text().unwrap_or_default().trim().to_owned(),
        ),
        Err(e) => (0, e.to_string()),
    }
}

/// Requests through the proxy until stopped, each answer recorded (0: a connection error).
struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<(u16, String)>>,
}

impl Load {
    fn start(edge: &str, host: &str) -> Load {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (flag, edge, host) = (stop.clone(), edge.to_owned(), host.to_owned());
        let thread = std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) && seen.len() < 20_000 {
                seen.push(through(&edge, &host));
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            seen
        });
        Load { stop, thread }
    }

    fn finish(self) -> Vec<(u16, String)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().expect("load thread")
    }
}

pub(super) fn stack_cli(up: &super::server::Up, args: &[&str]) -> std::process::Output {
    slipway()
        .arg("stack")
        .args(args)
        .args(["--server", &up.url, "--token", ADMIN])
        .output()
        .expect("slipway runs")
}

fn engine_containers(env: &str) -> Vec<String> {
    let out = std::process::Command::new("docker")
        .args([
            "ps",
            "-a",
            "--filter",
            &format!("label=io.slipway.env={env}"),
        ])
        .args(["--format", "{{.Label \"io.slipway.revision\"}} {{.State}}"])
        .output()
        .expect("docker ps");
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

/// Removes every container and network of a test's environment when it ends.
struct EngineCleanup(String);

impl Drop for EngineCleanup {
    fn drop(&mut self) {
        let label = format!("label=io.slipway.env={}", self.0);
        for kind in [["ps", "-aq"], ["network", "ls"]] {
            let mut list = std::process::Command::new("docker");
            list.args(kind).args(["--filter", &label]);
            if kind[0] == "network" {
                list.arg("-q");
            }
            let ids = list
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            for id in ids.split_whitespace() {
                let rm: &[&str] = if kind[0] == "network" {
                    &["network", "rm"]
                } else {
                    &["rm", "-f"]
                };
                let _ = std::process::Command::new("docker")
                    .args(rm)
                    .arg(id)
                    .output();
            }
        }
    }
}

/// One test's `slipway up` with its edge proxy on loopback ports, and its own environment
/// name (`PREFIX<pid>`), whose containers and networks go when the test ends.
pub(super) struct Fixture {
    pub(super) up: super::server::Up,
    pub(super) edge: String,
    pub(super) env: String,
    data: tempfile::TempDir,
    /// Given to `slipway up` after the proxy's arguments, at each start.
    extra: Vec<String>,
    _cleanup: EngineCleanup,
}

const PROXY_ARGS: [&str; 6] = [
    "--proxy-http",
    "127.0.0.1:0",
    "--proxy-https",
    "127.0.0.1:0",
    "--no-docker-labels",
    "--no-acme",
];

impl Fixture {
    /// `None`, saying so, without a Docker engine.
    pub(super) fn start(prefix: &str) -> Option<Fixture> {
        Fixture::start_with(prefix, &[])
    }

    /// [`Fixture::start`] with more arguments for `slipway up`.
    pub(super) fn start_with(prefix: &str, extra: &[&str]) -> Option<Fixture> {
        let engine = std::process::Command::new("docker").arg("version").output();
        if !engine.is_ok_and(|o| o.status.success()) {
            eprintln!("skipping: no Docker engine");
            return None;
        }
        let env = format!("{prefix}{}", std::process::id());
        let cleanup = EngineCleanup(env.clone());
        let data = tempfile::tempdir().expect("data dir");
        let extra: Vec<String> = extra.iter().map(|a| (*a).to_owned()).collect();
        let up = start_up(data.path(), &Fixture::args(&extra));
        let edge = Fixture::edge_of(&up);
        Some(Fixture {
            up,
            edge,
            env,
            data,
            extra,
            _cleanup: cleanup,
        })
    }

    /// Adds the trusted repository `name` cloned from `clone_url`, and the test's
    /// environment (domain `apps.test`) whose `REGISTRY` is the built-in registry's host.
    pub(crate) fn trusted_repo_and_env(&self, name: &str, clone_url: &str) {
        let up = &self.up;
        api(
            up,
            &["repo", "add", name, "--clone-url", clone_url, "--trusted"],
        );
        let registry = format!("REGISTRY={}", up.url.trim_start_matches("http://"));
        api(
            up,
            &[
                "env",
                "add",
                &self.env,
                "--domain",
                "apps.test",
                "--var",
                &registry,
            ],
        );
    }

    fn args(extra: &[String]) -> Vec<&str> {
        PROXY_ARGS
            .iter()
            .copied()
            .chain(extra.iter().map(String::as_str))
            .collect()
    }

    fn edge_of(up: &super::server::Up) -> String {
        up.facts["proxy_http"]
            .as_str()
            .expect("proxy_http")
            .to_owned()
    }

    /// `docker login` to the server's registry with the admin token, in a config dir of
    /// the test's own: the registry's host, and the config dir.
    pub(super) fn registry_login(&self) -> (String, tempfile::TempDir) {
        let registry = self.up.url.trim_start_matches("http://").to_owned();
        let config = tempfile::tempdir().expect("docker config");
        let login = docker_cli(
            config.path(),
            &["login", &registry, "-u", "admin", "-p", ADMIN],
        );
        assert!(login.status.success(), "{}", text(&login).1);
        (registry, config)
    }

    /// `stack deploy TARGET -f FILE --wait` of a stack file's `text`.
    pub(super) fn deploy_text(&self, target: &str, text: &str) -> std::process::Output {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("compose.yaml");
        std::fs::write(&file, text).expect("write");
        stack_cli(
            &self.up,
            &[
                "deploy",
                target,
                "-f",
                file.to_str().expect("utf-8"),
                "--wait",
            ],
        )
    }

    /// `kill -9` of the server, and a new one on the same data dir.
    pub(super) fn kill_and_restart(&mut self) {
        self.up.child.kill().expect("kill -9");
        self.up.child.wait().expect("wait");
        self.up = start_up(self.data.path(), &Fixture::args(&self.extra));
        self.edge = Fixture::edge_of(&self.up);
    }
}

#[test]
fn a_stack_deploys_rolls_out_without_a_failed_request_rolls_back_and_survives_a_kill() {
    let Some(mut fx) = Fixture::start("e2e") else {
        return;
    };
    let (env, edge) = (fx.env.clone(), fx.edge.clone());
    let up = &fx.up;
    api(up, &["env", "add", &env, "--domain", "apps.test"]);
    let target = format!("{env}/shop");
    let host = "web.apps.test";
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("stack.yml");
    let deploy = |text: &str| {
        std::fs::write(&file, text).expect("write");
        stack_cli(
            up,
            &[
                "deploy",
                &target,
                "-f",
                file.to_str().expect("utf-8"),
                "--wait",
            ],
        )
    };

    // Revision 1.
    let out = deploy(&stack_file("v1", 0, ""));
    assert!(out.status.success(), "{}", text(&out).1);
    assert!(
        text(&out).1.contains("container"),
        "progress is shown: {}",
        text(&out).1
    );
    assert_eq!(through(&edge, host), (200, "v1".to_owned()));

    // Revision 2, rolling, under load: every answer 200, from v1 then v2.
    let load = Load::start(&edge, host);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let out = deploy(&stack_file("v2", 0, ""));
    assert!(out.status.success(), "{}", text(&out).1);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let answers = load.finish();
    let failed: Vec<&(u16, String)> = answers.iter().filter(|(s, _)| *s != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} failed: {:?}",
        failed.len(),
        answers.len(),
        &failed[..failed.len().min(5)]
    );
    let first_v2 = answers
        .iter()
        .position(|(_, b)| b == "v2")
        .expect("v2 answered");
    assert!(
        answers[..first_v2].iter().all(|(_, b)| b == "v1"),
        "v1 until the switch"
    );
    assert_eq!(answers.last().map(|(_, b)| b.as_str()), Some("v2"));

    // Revision 3 never becomes healthy: rolled back, v2 keeps serving, no v3 container left.
    let unhealthy = "    healthcheck:\n      test: [\"CMD\", \"false\"]\n      interval: 1s\n      retries: 1\n";
    let out = deploy(&stack_file("v3", 0, unhealthy));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out).1);
    assert!(text(&out).1.contains("rolled_back"), "{}", text(&out).1);
    assert_eq!(through(&edge, host), (200, "v2".to_owned()));
    assert!(
        engine_containers(&env).iter().all(|c| c.starts_with("2 ")),
        "{:?}",
        engine_containers(&env)
    );

    // Back to revision 1, exactly its image, as revision 4.
    let out = stack_cli(up, &["rollback", &target, "--to", "1", "--wait"]);
    assert!(out.status.success(), "{}", text(&out).1);
    assert_eq!(through(&edge, host), (200, "v1".to_owned()));
    let history = stack_cli(up, &["history", &target, "--json"]);
    let history: serde_json::Value = serde_json::from_slice(&history.stdout).expect("history JSON");
    let statuses: Vec<(i64, &str, &str)> = history
        .as_array()
        .expect("list")
        .iter()
        .map(|r| {
            (
                r["number"].as_i64().unwrap_or(0),
                r["status"].as_str().unwrap_or(""),
                r["cause"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        [
            (4, "succeeded", "rollback:1"),
            (3, "rolled_back", "user:admin"),
            (2, "succeeded", "user:admin"),
            (1, "succeeded", "user:admin")
        ]
    );
    assert_eq!(
        history[0]["images"], history[3]["images"],
        "the same pinned image"
    );

    // Killed mid-rollout (revision 5 is slow to start): the restarted server puts
    // revision 4 back, alone.
    std::fs::write(&file, stack_file("v5", 20, "")).expect("write");
    let out = stack_cli(
        up,
        &["deploy", &target, "-f", file.to_str().expect("utf-8")],
    );
    assert!(out.status.success(), "{}", text(&out).1);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !engine_containers(&env).iter().any(|c| c.starts_with("5 ")) {
        assert!(
            std::time::Instant::now() < deadline,
            "revision 5 never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    fx.kill_and_restart();
    let (up, edge) = (&fx.up, fx.edge.clone());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let out = stack_cli(up, &["history", &target, "--json"]);
        let history: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if history[0]["status"] == "rolled_back" {
            assert_eq!(history[0]["number"], 5);
            assert!(
                history[0]["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("server stopped"),
                "{}",
                history[0]
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "revision 5 not reverted: {history}"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let containers = engine_containers(&env);
    assert!(
        !containers.is_empty() && containers.iter().all(|c| c == "4 running"),
        "{containers:?}"
    );
    assert_eq!(through(&edge, host), (200, "v1".to_owned()));

    // Removed: no container left.
    let out = stack_cli(up, &["rm", &target]);
    assert!(out.status.success(), "{}", text(&out).1);
    assert!(
        engine_containers(&env).is_empty(),
        "{:?}",
        engine_containers(&env)
    );
}

pub(super) fn docker_cli(config: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new("docker")
        .arg("--config")
        .arg(config)
        .args(args)
        .env("DOCKER_BUILDKIT", "0")
        .output()
        .expect("docker runs")
}

/// Builds `FROM <test image>` with `VERSION` baked in, tagged `tag`, and pushes it.
pub(super) fn push_version(config: &std::path::Path, tag: &str, version: &str) {
    let dockerfile = format!("FROM {}\nENV VERSION={version}\n", super::test_image());
    push_dockerfile(config, tag, &dockerfile);
}

/// Builds `dockerfile` (in an empty context), tagged `tag`, and pushes it.
fn push_dockerfile(config: &std::path::Path, tag: &str, dockerfile: &str) {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("Dockerfile"), dockerfile).expect("Dockerfile");
    let out = docker_cli(
        config,
        &[
            "build",
            "-q",
            "-t",
            tag,
            dir.path().to_str().expect("utf-8"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out).1);
    let out = docker_cli(config, &["push", tag]);
    assert!(out.status.success(), "{}", text(&out).1);
}

#[test]
fn the_redeploy_hook_pulls_a_new_image_pushed_under_the_same_tag() {
    let Some(fx) = Fixture::start("hook") else {
        return;
    };
    let (env, edge, up) = (fx.env.clone(), fx.edge.clone(), &fx.up);
    let (registry, config) = fx.registry_login();
    let tag = format!("{registry}/team/web:live");
    push_version(config.path(), &tag, "v1");
    // Only the registry has it now: the deployer pulls with its own credentials.
    let _ = docker_cli(config.path(), &["rmi", &tag]);

    api(up, &["env", "add", &env, "--domain", "apps.test"]);
    let target = format!("{env}/web");
    let out = fx.deploy_text(&target, &httpd_stack("web", &tag));
    assert!(out.status.success(), "{}", text(&out).1);
    assert_eq!(through(&edge, "web.apps.test"), (200, "v1".to_owned()));

    let out = stack_cli(up, &["webhook", &target]);
    assert!(out.status.success(), "{}", text(&out).1);
    let hook = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        hook.starts_with(&format!("{}/hooks/deploy/{env}/web/", up.url)),
        "{hook}"
    );

    // v2 under the same tag.
    push_version(config.path(), &tag, "v2");
    let _ = docker_cli(config.path(), &["rmi", &tag]);
    let client = reqwest::blocking::Client::new();
    let wrong = client.post(format!("{}x", &hook)).send().expect("POST");
    assert_eq!(wrong.status().as_u16(), 404);
    let history = |up: &super::server::Up| {
        let out = stack_cli(up, &["history", &target, "--json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("history")
    };
    assert_eq!(
        history(up).as_array().map(Vec::len),
        Some(1),
        "a wrong token changes nothing"
    );
    let accepted = client.post(&hook).send().expect("POST");
    assert_eq!(accepted.status().as_u16(), 202, "{:?}", accepted.text());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let h = history(up);
        if h[0]["number"] == 2 && h[0]["status"] == "succeeded" {
            assert_eq!(h[0]["cause"], "webhook");
            assert_ne!(h[0]["images"]["web"], h[1]["images"]["web"], "a new digest");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{h}");
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    assert_eq!(through(&edge, "web.apps.test"), (200, "v2".to_owned()));

    // The UI: the stack in the overview, its history, and a rollback from its page.
    let cookie = super::server::ui_session(up);
    let browser = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let page = |path: &str| {
        browser
            .get(format!("{}{path}", up.url))
            .header("cookie", &cookie)
            .send()
            .and_then(|r| r.text())
            .expect("GET page")
    };
    let overview = page("/deploy");
    assert!(
        overview.contains(&format!("data-env=\"{env}\""))
            && overview.contains("data-stack=\"web\""),
        "{overview}"
    );
    let stack_page = page(&format!("/deploy/{env}/web"));
    assert!(
        stack_page.contains("data-number=\"2\" data-status=\"succeeded\""),
        "{stack_page}"
    );
    assert!(stack_page.contains("Roll back to #1"), "{stack_page}");
    let csrf = super::server::form_token(&stack_page);
    let rolled = browser
        .post(format!("{}/deploy/{env}/web/rollback", up.url))
        .header("cookie", &cookie)
        .header("origin", &up.url)
        .form(&[("csrf", csrf.as_str()), ("to", "1")])
        .send()
        .expect("POST rollback");
    assert_eq!(rolled.status().as_u16(), 303);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let h = history(up);
        if h[0]["number"] == 3 && h[0]["status"] == "succeeded" {
            assert_eq!(h[0]["cause"], "rollback:1");
            assert_eq!(h[0]["images"], h[2]["images"], "exactly revision 1's image");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{h}");
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    assert_eq!(through(&edge, "web.apps.test"), (200, "v1".to_owned()));
    let out = stack_cli(up, &["rm", &target]);
    assert!(out.status.success(), "{}", text(&out).1);
}

#[test]
fn an_environment_rule_deploys_each_successful_build_with_the_image_it_pushed() {
    let Some(fx) = Fixture::start("rule") else {
        return;
    };
    let (env, edge, up) = (fx.env.clone(), fx.edge.clone(), &fx.up);
    let image = super::test_image();
    let pipeline = "kind: pipeline\nname: default\nsteps:\n- name: publish\n  image: plugins/docker\n  settings:\n    repo: team/app\n    tags: [latest]\n";
    let dockerfile = |v: &str| format!("FROM {image}\nENV VERSION={v}\n");
    let compose = httpd_stack("app", "${REGISTRY}/team/app:latest");
    let served = super::served_repo(&[
        (".drone.yml", pipeline),
        ("Dockerfile", &dockerfile("v1")),
        ("compose.yaml", &compose),
    ]);
    let registry = up.url.trim_start_matches("http://").to_owned();
    fx.trusted_repo_and_env("team/app", &served.clone_url);
    let rule = api(
        up,
        &[
            "env", "rule", "add", &env, "--repo", "team/app", "--branch", "main",
        ],
    );
    assert_eq!(rule["stack"], "app");
    let target = format!("{env}/app");
    let history = |up: &super::server::Up| {
        let out = stack_cli(up, &["history", &target, "--json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default()
    };
    let wait_revision = |number: i64| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
        loop {
            let h = history(up);
            if h[0]["number"] == number && h[0]["status"] == "succeeded" {
                return h;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "revision {number}: {h}"
            );
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
    };
    api(up, &["build", "run", "team/app", "--branch", "main"]);
    let h = wait_revision(1);
    assert_eq!(h[0]["cause"], "build:team/app#1");
    let pinned = h[0]["images"]["app"].as_str().expect("image").to_owned();
    assert!(
        pinned.starts_with(&format!("{registry}/team/app@sha256:")),
        "{pinned}"
    );
    assert_eq!(through(&edge, "app.apps.test"), (200, "v1".to_owned()));

    std::fs::write(served.work.path().join("Dockerfile"), dockerfile("v2")).expect("write");
    super::git(served.work.path(), &["add", "-A"]);
    super::git(
        served.work.path(),
        &[
            "-c",
            "user.name=T",
            "-c",
            "user.email=t@example.invalid",
            "commit",
            "-q",
            "-m",
            "v2",
        ],
    );
    super::git(
        served.work.path(),
        &[
            "push",
            "-q",
            served.clone_url.trim_start_matches("file://"),
            "main",
        ],
    );
    api(up, &["build", "run", "team/app", "--branch", "main"]);
    let h = wait_revision(2);
    assert_eq!(h[0]["cause"], "build:team/app#2");
    assert_ne!(h[0]["images"]["app"], h[1]["images"]["app"]);
    assert_eq!(through(&edge, "app.apps.test"), (200, "v2".to_owned()));

    // By hand, from the repository at build 1: its file and the image it pushed.
    let out = stack_cli(
        up,
        &[
            "deploy", &target, "--repo", "team/app", "--build", "1", "--wait",
        ],
    );
    assert!(out.status.success(), "{}", text(&out).1);
    let h = wait_revision(3);
    assert_eq!(h[0]["cause"], "user:admin (build team/app#1)");
    assert_eq!(
        h[0]["images"]["app"], h[2]["images"]["app"],
        "build 1's image"
    );
    assert_eq!(through(&edge, "app.apps.test"), (200, "v1".to_owned()));
    let out = stack_cli(
        up,
        &["deploy", &target, "--repo", "team/app", "--build", "99"],
    );
    assert!(!out.status.success());
    assert!(
        text(&out).1.contains("team/app has no build #99"),
        "{}",
        text(&out).1
    );
    let out = stack_cli(up, &["rm", &target]);
    assert!(out.status.success(), "{}", text(&out).1);
}

#[test]
fn the_demo_example_lints_clean() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello");
    for args in [
        vec![
            "lint".to_owned(),
            dir.join(".drone.yml").display().to_string(),
        ],
        vec![
            "stack".to_owned(),
            "lint".to_owned(),
            dir.join("compose.yaml").display().to_string(),
        ],
    ] {
        let out = slipway().args(&args).output().expect("slipway runs");
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{args:?}: {stdout}{stderr}");
        assert!(!stdout.contains("error"), "{args:?}: {stdout}");
    }
}

#[test]
fn an_image_tag_rule_deploys_a_matching_push_to_the_registry() {
    let Some(fx) = Fixture::start("tagrule") else {
        return;
    };
    let (env, edge, up) = (fx.env.clone(), fx.edge.clone(), &fx.up);
    let (registry, config) = fx.registry_login();
    let image = format!("{registry}/team/web");
    push_version(config.path(), &format!("{image}:v1.0"), "v1");
    api(up, &["env", "add", &env, "--domain", "apps.test"]);
    let target = format!("{env}/web");
    let out = fx.deploy_text(&target, &httpd_stack("web", &format!("{image}:v1.0")));
    assert!(out.status.success(), "{}", text(&out).1);
    let rule = api(
        up,
        &[
            "env",
            "rule",
            "add",
            &env,
            "--repo",
            "team/web",
            "--image-tag",
            "v*",
        ],
    );
    assert_eq!(
        (rule["stack"].as_str(), rule["image_tag"].as_str()),
        (Some("web"), Some("v*"))
    );
    let history = || {
        let out = stack_cli(up, &["history", &target, "--json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default()
    };

    // A tag the rule does not match deploys nothing.
    push_version(config.path(), &format!("{image}:latest"), "latest");
    push_version(config.path(), &format!("{image}:v2.0"), "v2");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let h = history();
        if h[0]["number"] == 2 && h[0]["status"] == "succeeded" {
            assert_eq!(h[0]["cause"], "image:team/web:v2.0", "{h}");
            assert_eq!(
                h.as_array().map(Vec::len),
                Some(2),
                "`latest` deployed nothing: {h}"
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{h}");
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    assert_eq!(through(&edge, "web.apps.test"), (200, "v2".to_owned()));
    let out = stack_cli(up, &["rm", &target]);
    assert!(out.status.success(), "{}", text(&out).1);
}

#[test]
fn a_service_dropped_from_the_file_is_removed_by_the_next_deploy() {
    let Some(fx) = Fixture::start("drop") else {
        return;
    };
    let (env, up) = (fx.env.clone(), &fx.up);
    api(up, &["env", "add", &env, "--domain", "apps.test"]);
    let target = format!("{env}/pair");
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("compose.yaml");
    let image = super::test_image();
    let both = format!(
        "{}{}",
        httpd_stack("web", &image),
        httpd_stack("api", &image).trim_start_matches("services:\n")
    );
    for (stack_text, services) in [
        (both.as_str(), vec!["api", "web"]),
        (&httpd_stack("web", &image), vec!["web"]),
    ] {
        std::fs::write(&file, stack_text).expect("write");
        let out = stack_cli(
            up,
            &[
                "deploy",
                &target,
                "-f",
                file.to_str().expect("utf-8"),
                "--wait",
            ],
        );
        assert!(out.status.success(), "{}", text(&out).1);
        let out = stack_cli(up, &["show", &target, "--json"]);
        let shown: serde_json::Value = serde_json::from_slice(&out.stdout).expect("show");
        let mut running: Vec<&str> = shown["containers"]
            .as_array()
            .expect("containers")
            .iter()
            .filter_map(|c| c["service"].as_str())
            .collect();
        running.sort();
        running.dedup();
        assert_eq!(running, services, "{shown}");
    }
    let out = stack_cli(up, &["rm", &target]);
    assert!(out.status.success(), "{}", text(&out).1);
}

/// The status of revision `number` of `target`, polled (30 s at most) until `done` says so.
fn wait_revision(up: &super::server::Up, target: &str, number: i64, done: &[&str]) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let history = api(up, &["stack", "history", target]);
        let status = history
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["number"] == number)
            .and_then(|r| r["status"].as_str())
            .unwrap_or_default()
            .to_owned();
        if done.contains(&status.as_str()) {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "revision {number} is still {status}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn a_canary_is_paused_promoted_and_the_next_one_aborted_from_the_cli() {
    let Some(fx) = Fixture::start("steer") else {
        return;
    };
    let (env, edge, up) = (fx.env.clone(), fx.edge.clone(), &fx.up);
    api(up, &["env", "add", &env, "--domain", "apps.test"]);
    let target = format!("{env}/shop");
    let host = "web.apps.test";
    let out = fx.deploy_text(&target, &stack_file("v1", 0, ""));
    assert!(out.status.success(), "{}", text(&out).1);
    let out = stack_cli(up, &["pause", &target]);
    assert!(!out.status.success());
    assert!(text(&out).1.contains("no rollout"), "{}", text(&out).1);

    // A canary whose first step holds 10 minutes: started without --wait.
    let canary = "    x-slipway:\n      strategy: canary\n      steps:\n        - {weight: 10, pause: 10m}\n";
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("compose.yaml");
    let start = |version: &str| {
        std::fs::write(&file, stack_file(version, 0, canary)).expect("write");
        let out = stack_cli(
            up,
            &["deploy", &target, "-f", file.to_str().expect("utf-8")],
        );
        assert!(out.status.success(), "{}", text(&out).1);
    };
    let http = reqwest::blocking::Client::new();
    let at_ten = |number: i64| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let steps: serde_json::Value = http
                .get(format!(
                    "{}/api/stacks/{env}/shop/revisions/{number}",
                    up.url
                ))
                .bearer_auth(ADMIN)
                .send()
                .and_then(|r| r.json())
                .expect("GET the revision");
            if steps["steps"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| s["kind"] == "traffic_shifted" && s["detail"]["new_weight"] == 10)
            {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "no 10% step: {steps}");
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    };
    start("v2");
    at_ten(2);
    let out = stack_cli(up, &["pause", &target]);
    assert!(out.status.success(), "{}", text(&out).1);
    assert!(text(&out).1.contains("paused"), "{}", text(&out).1);
    let shown = stack_cli(up, &["show", &target]);
    assert!(
        text(&shown).0.contains("rolling out revision 2 (paused"),
        "{}",
        text(&shown).0
    );
    let out = stack_cli(up, &["promote", &target]);
    assert!(out.status.success(), "{}", text(&out).1);
    assert_eq!(
        wait_revision(up, &target, 2, &["succeeded", "rolled_back"]),
        "succeeded"
    );
    assert_eq!(through(&edge, host), (200, "v2".to_owned()));

    start("v3");
    at_ten(3);
    let out = stack_cli(up, &["abort", &target]);
    assert!(out.status.success(), "{}", text(&out).1);
    assert_eq!(
        wait_revision(up, &target, 3, &["succeeded", "rolled_back"]),
        "rolled_back"
    );
    assert_eq!(through(&edge, host), (200, "v2".to_owned()));
    assert!(
        engine_containers(&env).iter().all(|c| c.starts_with("2 ")),
        "{:?}",
        engine_containers(&env)
    );
}

/// Builds `FROM <test image>` with `VERSION` and a label naming `tag` (so no other test
/// shares the image through the builder's cache), tagged `tag`, and pushes it.
fn push_unique_version(config: &std::path::Path, tag: &str, version: &str) {
    let dockerfile = format!(
        "FROM {}\nLABEL io.slipway.test.image=\"{tag}\"\nENV VERSION={version}\n",
        super::test_image()
    );
    push_dockerfile(config, tag, &dockerfile);
}

/// The `pull` events of the Docker engine while it runs (a `docker events` stream):
/// (timeNano, the image reference pulled).
struct Pulls {
    child: std::process::Child,
    seen: std::sync::Arc<std::sync::Mutex<Vec<(i128, String)>>>,
}

impl Pulls {
    fn watch() -> Pulls {
        let mut child = std::process::Command::new("docker")
            .args(["events", "--filter", "type=image", "--filter", "event=pull"])
            .args(["--format", "{{json .}}"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("docker events");
        let stdout = child.stdout.take().expect("events stdout");
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = seen.clone();
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                let at = event["timeNano"].as_i64().map_or(0, i128::from);
                let id = event["id"].as_str().unwrap_or_default().to_owned();
                sink.lock().expect("pulls lock").push((at, id));
            }
        });
        // Let the stream subscribe before anything it should see happens.
        std::thread::sleep(std::time::Duration::from_millis(500));
        Pulls { child, seen }
    }

    /// The references pulled at or after `since` (ns since the epoch) that start with
    /// `prefix`, once the engine has had time to report them.
    fn since(&self, since: i128, prefix: &str) -> Vec<String> {
        std::thread::sleep(std::time::Duration::from_millis(500));
        self.seen
            .lock()
            .expect("pulls lock")
            .iter()
            .filter(|(at, id)| *at >= since && id.starts_with(prefix))
            .map(|(_, id)| id.clone())
            .collect()
    }
}

impl Drop for Pulls {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn now_nanos() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i128::try_from(d.as_nanos()).unwrap_or(i128::MAX))
}

/// Removes the test's images (`docker rmi` of each reference) from the engine when it ends.
struct ImageCleanup(Vec<String>);

impl Drop for ImageCleanup {
    fn drop(&mut self) {
        for image in &self.0 {
            let _ = std::process::Command::new("docker")
                .args(["rmi", "-f", image])
                .output();
        }
    }
}

/// `docker image inspect --format FORMAT IMAGE`, trimmed.
fn inspect_image(image: &str, format: &str) -> String {
    let out = std::process::Command::new("docker")
        .args(["image", "inspect", "--format", format, image])
        .output()
        .expect("docker image inspect");
    assert!(out.status.success(), "{image}: {}", text(&out).1);
    text(&out).0.trim().to_owned()
}

/// The tenth-latest revision is one of the ten whose images registry GC keeps: after 11
/// revisions (each an image pushed to the built-in registry, pulled by the deployer by
/// digest) and a GC run that drops every tag, the rollback to it finds its image on the
/// engine and pulls nothing, while GC did delete the 11th-latest revision's image and one
/// never deployed.
#[test]
fn a_rollback_to_the_tenth_latest_revision_after_registry_gc_pulls_nothing() {
    let Some(fx) = Fixture::start("rbgc") else {
        return;
    };
    let started = std::time::Instant::now();
    let (env, edge, up) = (fx.env.clone(), fx.edge.clone(), &fx.up);
    let (registry, config) = fx.registry_login();
    let repo = format!("{registry}/team/web");
    let pulls = Pulls::watch();

    // v0 (never deployed) to v11, built and pushed in parallel; only the registry keeps
    // them: the engine's copies are the deployer's own pulls.
    let pushed: Vec<(String, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..=11)
            .map(|n| {
                let (repo, config) = (&repo, config.path());
                s.spawn(move || {
                    let tag = format!("{repo}:v{n}");
                    push_unique_version(config, &tag, &format!("v{n}"));
                    let pinned = inspect_image(&tag, "{{range .RepoDigests}}{{println .}}{{end}}")
                        .lines()
                        .find(|d| d.starts_with(&format!("{repo}@")))
                        .expect("pushed: a digest in this registry")
                        .to_owned();
                    let config_blob = inspect_image(&tag, "{{.Id}}");
                    let out = docker_cli(config, &["rmi", &tag]);
                    assert!(out.status.success(), "{}", text(&out).1);
                    (pinned, config_blob)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("push thread"))
            .collect()
    });
    let _images = ImageCleanup(pushed.iter().map(|(p, _)| p.clone()).collect());
    let pushed_in = started.elapsed();

    // Revisions 1 to 11: v1 to v11, each pinned by digest and pulled by the deployer.
    api(up, &["env", "add", &env, "--domain", "apps.test"]);
    let target = format!("{env}/web");
    let deploys_from = now_nanos();
    for (n, (pinned, _)) in pushed.iter().enumerate().skip(1) {
        let out = fx.deploy_text(&target, &httpd_stack("web", pinned));
        assert!(out.status.success(), "v{n}: {}", text(&out).1);
    }
    assert_eq!(through(&edge, "web.apps.test"), (200, "v11".to_owned()));
    let deploy_pulls = pulls.since(deploys_from, &repo);
    assert_eq!(
        deploy_pulls.len(),
        11,
        "the watch sees the deployer's pulls: {deploy_pulls:?}"
    );
    let history = || {
        let out = stack_cli(up, &["history", &target, "--json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("history JSON")
    };
    let h = history();
    assert_eq!(h[0]["number"], 11, "{h}");
    let tenth_latest = &h[9];
    assert_eq!(tenth_latest["number"], 2);
    assert_eq!(tenth_latest["images"]["web"], pushed[2].0.as_str());
    let deployed_in = started.elapsed();

    // GC with every tag dropped and no grace: only the last 10 revisions' images stay.
    let gc_from = now_nanos();
    let out = slipway()
        .args(["gc", "--keep-last", "0", "--untagged-older-than", "0s"])
        .args(["--blob-grace", "0s", "--server", &up.url, "--token", ADMIN])
        .arg("--json")
        .output()
        .expect("slipway runs");
    assert!(out.status.success(), "{}", text(&out).1);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("gc JSON");
    let strings = |key: &str| -> Vec<String> {
        let mut all: Vec<String> = report[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().or(v["digest"].as_str()).map(str::to_owned))
            .collect();
        all.sort();
        all
    };
    assert_eq!(strings("tags").len(), 12, "every tag dropped: {report}");
    let manifest = |pinned: &str| pinned.replacen(&format!("{registry}/"), "", 1);
    let mut collected = vec![manifest(&pushed[0].0), manifest(&pushed[1].0)];
    collected.sort();
    assert_eq!(
        strings("manifests"),
        collected,
        "v0 (never deployed) and revision 1 (11th-latest) go: {report}"
    );
    let digest_of = |pinned: &str| pinned.rsplit_once('@').expect("pinned").1.to_owned();
    let mut swept = vec![
        pushed[0].1.clone(),
        pushed[1].1.clone(),
        digest_of(&pushed[0].0),
        digest_of(&pushed[1].0),
    ];
    swept.sort();
    assert_eq!(
        strings("blobs"),
        swept,
        "their config and manifest blobs go, the shared layer stays: {report}"
    );

    // What the kept revisions run is all still in the registry.
    let http = reqwest::blocking::Client::new();
    let status = |path: &str| {
        http.head(format!("{}/v2/team/web/{path}", up.url))
            .basic_auth("admin", Some(ADMIN))
            .header(
                "accept",
                "application/vnd.docker.distribution.manifest.v2+json, \
                 application/vnd.oci.image.manifest.v1+json",
            )
            .send()
            .expect("HEAD")
            .status()
            .as_u16()
    };
    for (n, (pinned, config_blob)) in pushed.iter().enumerate() {
        let digest = digest_of(pinned);
        let want = if n < 2 { 404 } else { 200 };
        assert_eq!(
            status(&format!("manifests/{digest}")),
            want,
            "v{n} manifest"
        );
        assert_eq!(status(&format!("blobs/{config_blob}")), want, "v{n} config");
    }

    // Back to revision 2 (the tenth-latest): its pinned image, no pull, v2 served.
    let out = stack_cli(up, &["rollback", &target, "--to", "2", "--wait"]);
    assert!(out.status.success(), "{}", text(&out).1);
    assert_eq!(through(&edge, "web.apps.test"), (200, "v2".to_owned()));
    let after_gc = pulls.since(gc_from, &repo);
    assert!(after_gc.is_empty(), "no pull after GC: {after_gc:?}");
    let h = history();
    assert_eq!(
        (h[0]["number"].as_i64(), h[0]["status"].as_str()),
        (Some(12), Some("succeeded")),
        "{h}"
    );
    assert_eq!(h[0]["cause"], "rollback:2");
    assert_eq!(
        h[0]["images"], h[10]["images"],
        "exactly revision 2's image"
    );
    let out = stack_cli(up, &["rm", &target]);
    assert!(out.status.success(), "{}", text(&out).1);
    eprintln!(
        "pushed in {pushed_in:?}, 11 revisions by {deployed_in:?}, all in {:?}",
        started.elapsed()
    );
}
