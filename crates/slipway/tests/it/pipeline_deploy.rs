//! Deploy steps of pipelines through a real `slipway up` (its embedded runner, real git,
//! the built-in registry, the edge proxy): the seed's `peloton/drone-rancher` step run
//! natively, `slipway/deploy` with its defaults and a rollout that rolls back, and a pull
//! request's deploy step refused by the server.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::deploy::{Fixture, httpd_stack, push_version, stack_cli, through};
use super::security::{github_pull_request, logs, push_pull_request, wait_done};
use super::server::{Delivery, Up, api, deliver, github_push_to, head, ui_session};
use super::{git, test_image, text};

fn history(up: &Up, target: &str) -> Value {
    let out = stack_cli(up, &["history", target, "--json"]);
    serde_json::from_slice::<Value>(&out.stdout).unwrap_or_default()
}

/// The newest revision of `target` once it is `number` and has ended.
fn wait_revision(up: &Up, target: &str, number: i64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let h = history(up, target);
        let ended = ["succeeded", "failed", "rolled_back", "paused"]
            .contains(&h[0]["status"].as_str().unwrap_or_default());
        if h[0]["number"] == number && ended {
            return h[0].clone();
        }
        assert!(Instant::now() < deadline, "revision {number}: {h}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn commit_all(work: &std::path::Path, bare: &str, branch: &str, message: &str) {
    git(work, &["add", "-A"]);
    git(
        work,
        &[
            "-c",
            "user.name=T",
            "-c",
            "user.email=t@example.invalid",
            "commit",
            "-q",
            "-m",
            message,
        ],
    );
    git(work, &["push", "-q", bare, branch]);
}

#[test]
fn the_seed_pipeline_builds_pushes_and_updates_the_rancher_service_natively() {
    let Some(dir) = super::shared_dir("examples") else {
        return;
    };
    let Ok(seed) = std::fs::read_to_string(dir.join("legacy-harbor-rancher-wechat.drone.yml"))
    else {
        eprintln!("skipping: the seed pipeline legacy-harbor-rancher-wechat.drone.yml is absent");
        return;
    };
    let Some(fx) = Fixture::start("rancher") else {
        return;
    };
    let (env, edge, up) = (fx.env.clone(), fx.edge.clone(), &fx.up);
    let (registry, config) = fx.registry_login();
    // Pointed at the built-in registry; the WeChat step is dropped from the test's copy
    // (notify.rs covers the native WeChat step against a stand-in).
    let mut pipeline = seed.replace("harbor.company.com", &registry);
    if let Some(i) = pipeline.find("  # Use clem109/drone-wechat") {
        pipeline.truncate(i);
    }
    assert!(pipeline.contains("peloton/drone-rancher"), "{pipeline}");

    // The stack is deployed first, serving v1.
    api(up, &["env", "add", &env, "--domain", "apps.test"]);
    push_version(config.path(), &format!("{registry}/registry/test:v1"), "v1");
    let compose = format!(
        "{}    x-slipway:\n      route: {{host: rancher.apps.test}}\n",
        httpd_stack("rancher_service", &format!("{registry}/registry/test:v1"))
    );
    let target = format!("{env}/rancher_stack");
    let out = fx.deploy_text(&target, &compose);
    assert!(out.status.success(), "{}", text(&out).1);
    assert_eq!(through(&edge, "rancher.apps.test"), (200, "v1".to_owned()));

    // A push to `develop` builds v2, pushes it and updates the service. The repository
    // is `registry/test`, the seed's image path, which its builds may push to.
    let served = super::served_repo(&[
        (".drone.yml", &pipeline),
        (
            "Dockerfile",
            &format!("FROM {}\nENV VERSION=v2\n", test_image()),
        ),
    ]);
    let bare = served.clone_url.trim_start_matches("file://").to_owned();
    let added = api(
        up,
        &[
            "repo",
            "add",
            "registry/test",
            "--clone-url",
            &served.clone_url,
            "--trusted",
        ],
    );
    let secret = added["webhook_secret"].as_str().expect("secret").to_owned();
    git(served.work.path(), &["checkout", "-q", "-b", "develop"]);
    git(served.work.path(), &["push", "-q", &bare, "develop"]);
    let sha = head(served.work.path());
    let body = github_push_to(
        "registry/test",
        &served.clone_url,
        "develop",
        "0000000000000000000000000000000000000000",
        &sha,
        "v2",
    );
    let (status, answer) = deliver(
        &up.url,
        &Delivery::signed(&secret, &body, "seed-develop", "push"),
    );
    assert_eq!(status, 201, "{answer}");
    let build = wait_done(up, "registry/test", 1);
    let log = logs(up, "registry/test", 1, 1);
    assert_eq!(build["status"], "success", "{build:#}\n{log}");

    let revision = wait_revision(up, &target, 2);
    assert_eq!(revision["status"], "succeeded", "{revision:#}");
    assert_eq!(revision["cause"], "build:registry/test#1", "{revision:#}");
    assert_eq!(
        revision["build_id"].as_i64(),
        build["id"].as_i64(),
        "{revision:#}"
    );
    let pinned = revision["images"]["rancher_service"]
        .as_str()
        .unwrap_or_default();
    assert!(
        pinned.starts_with(&format!("{registry}/registry/test@sha256:")),
        "{revision:#}"
    );
    assert_eq!(through(&edge, "rancher.apps.test"), (200, "v2".to_owned()));
    // The build's page links to the revision it deployed.
    let page = reqwest::blocking::Client::new()
        .get(format!("{}/repos/registry/test/builds/1", up.url))
        .header("Cookie", ui_session(up))
        .send()
        .expect("build page")
        .text()
        .expect("page text");
    assert!(
        page.contains(&format!("href=\"/deploy/{env}/rancher_stack#revision-"))
            && page.contains("revision #2"),
        "{page}"
    );

    assert!(log.contains("peloton/drone-rancher runs natively"), "{log}");
    for key in ["url", "access_key", "secret_key"] {
        assert!(log.contains(&format!("`{key}` is not needed")), "{log}");
    }
    for value in [
        "rancher access key",
        "rancher secret key",
        "rancher.company.com",
    ] {
        assert!(!log.contains(value), "`{value}` is in the log:\n{log}");
    }
    assert!(log.contains("revision 2 recorded"), "{log}");
    assert!(log.contains("rollout succeeded"), "{log}");
}

/// A repository whose pipeline builds `team/app` and deploys it with `slipway/deploy`
/// (only `environment` set), its compose file a busybox httpd of that image.
fn deploy_repo(env: &str, dockerfile: &str, compose: &str) -> super::ServedRepo {
    let pipeline = format!(
        "kind: pipeline\nname: default\nsteps:\n- name: publish\n  image: plugins/docker\n  settings:\n    repo: team/app\n    tags: [latest]\n- name: deploy\n  image: slipway/deploy\n  settings:\n    environment: {env}\n"
    );
    super::served_repo(&[
        (".drone.yml", &pipeline),
        ("Dockerfile", dockerfile),
        ("compose.yaml", compose),
    ])
}

#[test]
fn a_deploy_step_deploys_the_pushed_image_and_fails_when_the_rollout_rolls_back() {
    let Some(fx) = Fixture::start("step") else {
        return;
    };
    let (env, edge, up) = (fx.env.clone(), fx.edge.clone(), &fx.up);
    let registry = up.url.trim_start_matches("http://").to_owned();
    let dockerfile = |v: &str| format!("FROM {}\nENV VERSION={v}\n", test_image());
    let compose = httpd_stack("app", "${REGISTRY}/team/app:latest");
    let served = deploy_repo(&env, &dockerfile("v1"), &compose);
    let bare = served.clone_url.trim_start_matches("file://").to_owned();
    fx.trusted_repo_and_env("team/app", &served.clone_url);
    let target = format!("{env}/app");

    api(up, &["build", "run", "team/app", "--branch", "main"]);
    let build = wait_done(up, "team/app", 1);
    let log = logs(up, "team/app", 1, 1);
    assert_eq!(build["status"], "success", "{build:#}\n{log}");
    let revision = wait_revision(up, &target, 1);
    assert_eq!(revision["status"], "succeeded", "{revision:#}");
    assert_eq!(revision["cause"], "build:team/app#1");
    let pinned = revision["images"]["app"].as_str().unwrap_or_default();
    assert!(
        pinned.starts_with(&format!("{registry}/team/app@sha256:")),
        "{revision:#}"
    );
    assert!(log.contains("slipway/deploy runs natively"), "{log}");
    assert!(
        log.contains("app: container"),
        "each step is logged:\n{log}"
    );
    assert!(log.contains("rollout succeeded"), "{log}");
    assert_eq!(through(&edge, "app.apps.test"), (200, "v1".to_owned()));

    // v2 never gets healthy: the step fails, and v1 keeps serving.
    std::fs::write(served.work.path().join("Dockerfile"), dockerfile("v2")).expect("write");
    let broken = format!(
        "{compose}    healthcheck:\n      test: [\"CMD-SHELL\", \"exit 1\"]\n      interval: 1s\n      timeout: 1s\n      retries: 1\n"
    );
    std::fs::write(served.work.path().join("compose.yaml"), broken).expect("write");
    commit_all(served.work.path(), &bare, "main", "v2, unhealthy");
    api(up, &["build", "run", "team/app", "--branch", "main"]);
    let build = wait_done(up, "team/app", 2);
    let log = logs(up, "team/app", 2, 1);
    assert_eq!(build["status"], "failure", "{build:#}\n{log}");
    let revision = wait_revision(up, &target, 2);
    assert_eq!(revision["status"], "rolled_back", "{revision:#}");
    assert!(log.contains("the rollout rolled back"), "{log}");
    assert_eq!(through(&edge, "app.apps.test"), (200, "v1".to_owned()));
}

#[test]
fn deploy_steps_of_pull_requests_and_untrusted_repositories_are_refused_by_the_server() {
    let Some(fx) = Fixture::start("prdeploy") else {
        return;
    };
    let (env, edge, up) = (fx.env.clone(), fx.edge.clone(), &fx.up);
    let (registry, config) = fx.registry_login();
    api(up, &["env", "add", &env, "--domain", "apps.test"]);
    push_version(config.path(), &format!("{registry}/team/app:v1"), "v1");
    let target = format!("{env}/app");
    let out = fx.deploy_text(
        &target,
        &httpd_stack("app", &format!("{registry}/team/app:v1")),
    );
    assert!(out.status.success(), "{}", text(&out).1);

    // Even a trusted repository's pull request may not deploy, whatever it names.
    let pipeline = format!(
        "kind: pipeline\nname: default\nclone:\n  disable: true\nsteps:\n- name: deploy\n  image: slipway/deploy\n  settings:\n    environment: {env}\n    stack: app\n    images: [\"app={registry}/team/app:v1\"]\n"
    );
    let served = super::served_repo(&[(".drone.yml", &pipeline)]);
    let bare = served.clone_url.trim_start_matches("file://").to_owned();
    let added = api(
        up,
        &[
            "repo",
            "add",
            "team/app",
            "--clone-url",
            &served.clone_url,
            "--trusted",
        ],
    );
    let secret = added["webhook_secret"].as_str().expect("secret").to_owned();
    let sha = push_pull_request(served.work.path(), &bare, &[("change.txt", "1\n")]);
    let body = github_pull_request("team/app", "opened", &sha);
    let (status, answer) = deliver(
        &up.url,
        &Delivery::signed(&secret, &body, "pr-deploy", "pull_request"),
    );
    assert_eq!(status, 201, "{answer}");
    let build = wait_done(up, "team/app", 1);
    let log = logs(up, "team/app", 1, 1);
    assert_eq!(build["status"], "failure", "{build:#}\n{log}");
    assert!(
        log.contains("the server refused to deploy") && log.contains("pull request"),
        "{log}"
    );

    // Nor does a push build of an untrusted repository.
    let untrusted = super::served_repo(&[(".drone.yml", &pipeline)]);
    api(
        up,
        &[
            "repo",
            "add",
            "team/other",
            "--clone-url",
            &untrusted.clone_url,
        ],
    );
    api(up, &["build", "run", "team/other", "--branch", "main"]);
    let build = wait_done(up, "team/other", 1);
    let log = logs(up, "team/other", 1, 1);
    assert_eq!(build["status"], "failure", "{build:#}\n{log}");
    assert!(
        log.contains("the server refused to deploy") && log.contains("not trusted"),
        "{log}"
    );

    let h = history(up, &target);
    assert_eq!(h.as_array().map(Vec::len), Some(1), "{h}");
    assert_eq!(through(&edge, "app.apps.test"), (200, "v1".to_owned()));
}
