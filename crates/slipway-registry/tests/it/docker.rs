//! The real Docker CLI against the in-process registry: login, push, pull, mount,
//! permissions.

use std::sync::Arc;

use slipway_registry::Principal;

use crate::support::{
    ADMIN_TOKEN, Docker, ROBOT_TOKEN, Revocable, TestServer, client, text, unique,
};

#[test]
fn docker_login_accepts_the_admin_token_and_refuses_a_bad_password() {
    let server = TestServer::start();
    let docker = Docker::new();
    let good = docker.login(&server.host(), "admin", ADMIN_TOKEN);
    assert!(good.status.success(), "login failed: {}", text(&good));
    assert!(String::from_utf8_lossy(&good.stdout).contains("Login Succeeded"));

    let bad = docker.login(&server.host(), "admin", "not-the-token");
    assert!(
        !bad.status.success(),
        "bad password accepted: {}",
        text(&bad)
    );
    let stderr = String::from_utf8_lossy(&bad.stderr).to_lowercase();
    assert!(
        stderr.contains("unauthorized") || stderr.contains("incorrect"),
        "unexpected error: {}",
        text(&bad)
    );

    let unknown = docker.login(&server.host(), "nobody", ADMIN_TOKEN);
    assert!(
        !unknown.status.success(),
        "unknown user accepted: {}",
        text(&unknown)
    );
}

#[test]
fn docker_push_rmi_pull_and_mount_into_a_second_repository() {
    let server = TestServer::start();
    let docker = Docker::new();
    let id = unique();
    let local = format!("slipway-reg-test/{id}:build");
    let sums = docker.build_image(&local, 3, 300_000);
    let login = docker.login(&server.host(), "admin", ADMIN_TOKEN);
    assert!(login.status.success(), "{}", text(&login));

    let remote = format!("{}/team/app-{id}:v1", server.host());
    docker.owns(&remote);
    docker.ok(&["tag", &local, &remote]);
    let push = docker.ok(&["push", &remote]);
    assert!(push.contains("digest: sha256:"), "push output: {push}");

    // The registry lists the tag and serves the manifest it was given.
    let http = client();
    let tags: serde_json::Value = http
        .get(server.url(&format!("/v2/team/app-{id}/tags/list")))
        .basic_auth("admin", Some(ADMIN_TOKEN))
        .send()
        .expect("tags")
        .json()
        .expect("json");
    assert_eq!(tags["tags"], serde_json::json!(["v1"]));

    // Remove every local copy of the image's own layers, then pull it back and run it.
    docker.ok(&["rmi", &remote, &local]);
    let pull = docker.ok(&["pull", &remote]);
    assert!(
        pull.contains("Downloaded newer image"),
        "pull output: {pull}"
    );
    let after = docker.ok(&["run", "--rm", &remote]);
    assert_eq!(after, sums, "pulled image has different layer contents");

    // Same image into a second repository: the layers are mounted, not uploaded again.
    let second = format!("{}/team/copy-{id}:v1", server.host());
    docker.owns(&second);
    docker.ok(&["tag", &remote, &second]);
    let push2 = docker.ok(&["push", &second]);
    assert!(
        push2.contains("Mounted from team/app-"),
        "second push did not mount: {push2}"
    );
}

#[test]
fn push_without_permission_is_refused_and_with_it_succeeds() {
    let server = TestServer::start();
    let docker = Docker::new();
    let id = unique();
    let local = format!("slipway-reg-test/{id}:build");
    docker.build_image(&local, 1, 1000);
    let login = docker.login(&server.host(), "robot", ROBOT_TOKEN);
    assert!(login.status.success(), "{}", text(&login));

    // The robot may push below `ci/` only.
    let outside = format!("{}/team/app-{id}:v1", server.host());
    docker.owns(&outside);
    docker.ok(&["tag", &local, &outside]);
    let refused = docker.run(&["push", &outside]);
    assert!(
        !refused.status.success(),
        "push outside the namespace worked: {}",
        text(&refused)
    );
    let stderr = String::from_utf8_lossy(&refused.stderr).to_lowercase();
    assert!(
        stderr.contains("denied"),
        "unexpected error: {}",
        text(&refused)
    );

    let inside = format!("{}/ci/app-{id}:v1", server.host());
    docker.owns(&inside);
    docker.ok(&["tag", &local, &inside]);
    docker.ok(&["push", &inside]);

    // Nothing of the refused push is visible.
    let catalog: serde_json::Value = client()
        .get(server.url("/v2/_catalog"))
        .basic_auth("admin", Some(ADMIN_TOKEN))
        .send()
        .expect("catalog")
        .json()
        .expect("json");
    assert_eq!(
        catalog["repositories"],
        serde_json::json!([format!("ci/app-{id}")])
    );
}

#[test]
fn docker_with_a_bearer_token_of_a_revoked_credential_can_neither_push_nor_pull() {
    let auth = Arc::new(Revocable::default());
    auth.add("robot", ROBOT_TOKEN, Principal::robot("robot", "ci"));
    let server = TestServer::start_with_auth(|_| {}, auth.clone());
    let id = unique();
    let local = format!("slipway-reg-test/{id}:build");
    let builder = Docker::new();
    builder.build_image(&local, 1, 1000);

    // The bearer token a robot login earns, handed to a Docker CLI as it is.
    let scope = format!("repository:ci/app-{id}:pull,push");
    let body: serde_json::Value = client()
        .get(server.url(&format!("/v2/token?service=slipway-registry&scope={scope}")))
        .basic_auth("robot", Some(ROBOT_TOKEN))
        .send()
        .expect("token")
        .json()
        .expect("json");
    let bearer = body["token"].as_str().expect("token");
    let docker = Docker::new();
    docker.use_bearer_token(&server.host(), bearer);
    let remote = format!("{}/ci/app-{id}:v1", server.host());
    let second = format!("{}/ci/app-{id}:v2", server.host());
    docker.owns(&remote);
    docker.owns(&second);
    docker.ok(&["tag", &local, &remote]);
    docker.ok(&["tag", &local, &second]);
    docker.ok(&["push", &remote]);

    auth.revoke(ROBOT_TOKEN);

    let push = docker.run(&["push", &second]);
    assert!(
        !push.status.success(),
        "push with a revoked credential's token worked: {}",
        text(&push)
    );
    docker.ok(&["rmi", &remote]);
    let pull = docker.run(&["pull", &remote]);
    assert!(
        !pull.status.success(),
        "pull with a revoked credential's token worked: {}",
        text(&pull)
    );
    let stderr = String::from_utf8_lossy(&pull.stderr).to_lowercase();
    assert!(
        stderr.contains("unauthorized") || stderr.contains("authentication required"),
        "unexpected error: {}",
        text(&pull)
    );
}
