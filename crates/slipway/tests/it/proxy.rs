//! `slipway proxy routes-from` and `slipway proxy check` as a user runs them.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::{slipway, text};

/// `slipway proxy ARGS... FILE`, to run with [`outcome`].
fn proxy(args: &[&str], file: &Path) -> Command {
    let mut cmd = slipway();
    cmd.arg("proxy").args(args).arg(file);
    cmd
}

/// Runs `cmd`: its exit code, standard output and standard error.
fn outcome(mut cmd: Command) -> (Option<i32>, String, String) {
    let out = cmd.output().expect("slipway runs");
    let (stdout, stderr) = text(&out);
    (out.status.code(), stdout, stderr)
}

/// `text` written to `name` in `dir`: its path.
fn written(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let file = dir.path().join(name);
    std::fs::write(&file, text).expect("write");
    file
}

const STACK: &str = r#"
version: "3.7"
x-labels: &common
  traefik.enable: "true"
services:
  web:
    image: nginx
    ports: ["127.0.0.1:8080:80"]
    deploy:
      labels:
        <<: *common
        traefik.http.routers.web.rule: Host(`${APP_HOST}`) || Host(`www.${APP_HOST}`)
        traefik.http.services.web.loadbalancer.server.port: "80"
  api:
    image: api
    expose: ["9000"]
    environment:
      - VIRTUAL_HOST=api.example.com
      - VIRTUAL_PATH=/v1
  db:
    image: postgres
"#;

#[test]
fn proxy_routes_from_prints_the_routes_of_a_stack_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = written(&dir, "stack.yml", STACK);
    let (code, stdout, stderr) = outcome(proxy(
        &[
            "routes-from",
            "--json",
            "--env",
            "APP_HOST=shop.example.com",
        ],
        &file,
    ));
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let v: Value = serde_json::from_str(&stdout).expect("json");
    let routes: Vec<(String, String, String)> = v["routes"]
        .as_array()
        .expect("routes")
        .iter()
        .map(|r| {
            (
                format!(
                    "{}{}",
                    r["host"].as_str().unwrap_or(""),
                    r["path"].as_str().unwrap_or("")
                ),
                r["backend_sets"][0]["backends"][0]["address"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
                r["source"]["container"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        routes,
        [
            (
                "api.example.com/v1".into(),
                "api:9000".into(),
                "service api".into()
            ),
            (
                "shop.example.com".into(),
                "127.0.0.1:8080".into(),
                "service web".into()
            ),
            (
                "www.shop.example.com".into(),
                "127.0.0.1:8080".into(),
                "service web".into()
            ),
        ]
    );
    // A `.env` beside the file is read, and the environment wins over it.
    written(
        &dir,
        ".env",
        "# as compose reads it\nAPP_HOST=dotenv.example.com\n",
    );
    let mut cmd = proxy(&["routes-from"], &file);
    cmd.env_remove("APP_HOST");
    let (_, stdout, stderr) = outcome(cmd);
    assert!(
        stdout.contains("dotenv.example.com -> "),
        "{stdout}{stderr}"
    );
    // The human form: one line a route.
    let mut cmd = proxy(&["routes-from"], &file);
    cmd.env("APP_HOST", "env.example.com");
    let (_, stdout, _) = outcome(cmd);
    assert!(
        stdout.contains("env.example.com -> 127.0.0.1:8080*1 tls=off http=serve (labels of service web, router web)"),
        "{stdout}"
    );
}

#[test]
fn proxy_routes_from_reports_problems_with_their_place_and_exits_1() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = written(
        &dir,
        "stack.yml",
        "services:\n  web:\n    labels:\n      - \"traefik.http.routers.w.rule=Host(`${NAME?set NAME}`)\"\n",
    );
    let mut cmd = proxy(&["routes-from"], &file);
    cmd.env_remove("NAME");
    let (code, stdout, stderr) = outcome(cmd);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}:4:9: error: required variable `NAME`: set NAME",
            file.display()
        )),
        "{stderr}"
    );
    let (code, _, stderr) = outcome(proxy(&["routes-from"], Path::new("/nonexistent.yml")));
    assert_eq!(code, Some(2));
    assert!(stderr.contains("cannot read /nonexistent.yml"), "{stderr}");
}

#[test]
fn proxy_check_reads_a_routes_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = written(
        &dir,
        "routes.yml",
        "routes:\n  - host: app.example.com\n    path: /api\n    backends: [\"127.0.0.1:9000\", {address: \"127.0.0.1:9001\", weight: 3}]\n    tls: acme\n",
    );
    let (code, stdout, stderr) = outcome(proxy(&["check"], &file));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.starts_with(
            "app.example.com/api -> 127.0.0.1:9000*1, 127.0.0.1:9001*3 tls=acme http=serve (file "
        ),
        "{stdout}"
    );
    written(
        &dir,
        "routes.yml",
        "routes:\n  - host: a.com\n    backend: [\"127.0.0.1:1\"]\n",
    );
    let (code, _, stderr) = outcome(proxy(&["check"], &file));
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains(&format!(
            "{}:3:5: error: unknown key `backend` in a route (hint: did you mean `backends`?)",
            file.display()
        )),
        "{stderr}"
    );
}

#[test]
fn proxy_routes_from_shows_a_conflict_and_which_service_won() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = written(
        &dir,
        "compose.yml",
        "services:\n  one:\n    environment: {VIRTUAL_HOST: a.example.com, VIRTUAL_PORT: \"3000\"}\n  two:\n    labels: {slipway.proxy.host: a.example.com, slipway.proxy.port: \"4000\", slipway.proxy.tls: acme}\n",
    );
    let (code, stdout, stderr) = outcome(proxy(&["routes-from"], &file));
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.starts_with("a.example.com -> one:3000*1 tls=off"),
        "{stdout}"
    );
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(
        stderr.contains("conflict: a.example.com: labels of service one wins over labels of service two (their TLS differs)"),
        "{stderr}"
    );
}
