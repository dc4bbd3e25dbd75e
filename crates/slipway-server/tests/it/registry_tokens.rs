//! Registry credentials end when what they were made from ends, against the real server
//! (in-process, SQLite in a temporary data dir, on loopback), with this test as the runner
//! and as the registry client: a robot token deleted through the API takes its bearer
//! tokens with it; a bearer token is no password at `/v2/token`; a stage's token, and the
//! bearer tokens made from it, stop working when its attempt ends (also when the stage is
//! tried again); a pipeline's token pushes to its repository's path and below it only,
//! unless the repository's `registry_paths` setting adds more.

use std::time::Duration;

use serde_json::{Value, json};
use sha2::Digest as _;

use super::runner_harness::RunnerHarness;

const ADMIN: &str = "registry-admin-token-0123456789abcdef";
const REPO: &str = "team/app";
/// A pipeline that pushes images, so its stage gets a registry token (nothing runs it but
/// this test).
const PIPELINE: &str = "kind: pipeline\ntype: docker\nname: default\nclone:\n  disable: true\n\
                        steps:\n- name: publish\n  image: plugins/docker\n  settings:\n    \
                        repo: team/app\n";

/// [`RunnerHarness`] and the registry calls of these tests.
struct Harness(RunnerHarness);

impl std::ops::Deref for Harness {
    type Target = RunnerHarness;

    fn deref(&self) -> &RunnerHarness {
        &self.0
    }
}

/// What the registry answered: status, the first error's message (if any).
#[derive(Debug, PartialEq)]
struct Answer {
    status: u16,
    message: String,
}

impl Harness {
    async fn start(tweak: impl FnOnce(&mut slipway_server::config::ServerConfig)) -> Harness {
        Harness(RunnerHarness::start(ADMIN, REPO, PIPELINE, tweak).await)
    }

    async fn register(&self) -> i64 {
        self.register_with("registry-runner", false).await.0
    }

    /// Runs a build of `main`; the lease `runner` gets for its stage.
    async fn build_and_lease(&self, runner: i64) -> Value {
        self.run(json!({"branch": "main"})).await;
        self.poll(runner).await
    }

    async fn done(&self, runner: i64, lease: &Value) {
        let stage = lease["stage_id"].as_i64().expect("a stage id");
        let body = json!({"runner_id": runner, "attempt": lease["attempt"], "status": "success",
                          "error": null, "events": []});
        let (status, answer) = self
            .runner_post(&format!("/stages/{stage}/done"), &body)
            .await;
        assert_eq!(status, 204, "{answer}");
    }

    /// The repository as the API shows it.
    async fn repo_json(&self) -> Value {
        let (status, repo) = self.admin_get(&format!("/api/repos/{REPO}")).await;
        assert_eq!(status, 200, "{repo}");
        repo
    }

    /// Changes the repository's settings: the status and the answer.
    async fn patch_repo(&self, settings: Value) -> (u16, Value) {
        self.admin(
            reqwest::Method::PATCH,
            &format!("/api/repos/{REPO}"),
            settings,
        )
        .await
    }

    /// Runs a build whose stage `runner` leases; for each `(repository, allowed)`, a bearer
    /// token of the stage's registry credentials pushes to it (201) if allowed, else is
    /// refused naming the repository (403), and so do the Basic credentials themselves.
    /// Then the stage ends.
    async fn assert_stage_pushes(&self, runner: i64, cases: &[(&str, bool)]) {
        let lease = self.build_and_lease(runner).await;
        let (user, password) = registry_password(&lease);
        let (user, password) = (user.as_str(), password.as_str());
        for &(repo, allowed) in cases {
            let bearer = self.bearer(user, password, repo).await;
            let push = self.push(repo, &Auth::Bearer(&bearer)).await;
            if allowed {
                assert_eq!(push.status, 201, "{repo}: {push:?}");
            } else {
                assert_eq!(push.status, 403, "{repo}: {push:?}");
                assert!(
                    push.message.contains(&format!("may not push `{repo}`")),
                    "{repo}: {push:?}"
                );
            }
            // Basic credentials are held to the same paths.
            let basic = self.push(repo, &Auth::Basic(user, password)).await;
            assert_eq!(basic.status, if allowed { 201 } else { 403 }, "{repo}");
        }
        self.done(runner, &lease).await;
    }

    /// `GET /v2/token` for `scopes` with Basic credentials: the status and the token.
    async fn token(&self, user: &str, password: &str, scopes: &[String]) -> (u16, String) {
        let mut url = format!("{}/v2/token?service=slipway-registry", self.url);
        for s in scopes {
            url.push_str(&format!("&scope={s}"));
        }
        let (status, body) = self
            .send(self.http.get(url).basic_auth(user, Some(password)))
            .await;
        (
            status,
            body["token"].as_str().unwrap_or_default().to_owned(),
        )
    }

    /// A bearer token for pull and push on `repo`, which must be granted.
    async fn bearer(&self, user: &str, password: &str, repo: &str) -> String {
        let (status, token) = self
            .token(user, password, &[format!("repository:{repo}:pull,push")])
            .await;
        assert_eq!(status, 200, "a token for {repo}");
        token
    }

    /// Pushes a small blob to `repo` (monolithic upload) with `auth`.
    async fn push(&self, repo: &str, auth: &Auth<'_>) -> Answer {
        let blob = format!("a layer of {repo}");
        let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&blob)));
        let request = self
            .http
            .post(format!(
                "{}/v2/{repo}/blobs/uploads/?digest={digest}",
                self.url
            ))
            .body(blob);
        self.answer(auth.apply(request)).await
    }

    /// Lists `repo`'s tags with `auth` (a pull).
    async fn pull(&self, repo: &str, auth: &Auth<'_>) -> Answer {
        let request = self.http.get(format!("{}/v2/{repo}/tags/list", self.url));
        self.answer(auth.apply(request)).await
    }

    async fn answer(&self, request: reqwest::RequestBuilder) -> Answer {
        let (status, body) = self.send(request).await;
        Answer {
            status,
            message: body["errors"][0]["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        }
    }
}

enum Auth<'a> {
    Bearer(&'a str),
    Basic(&'a str, &'a str),
}

impl Auth<'_> {
    fn apply(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self {
            Auth::Bearer(token) => request.bearer_auth(token),
            Auth::Basic(user, password) => request.basic_auth(user, Some(password)),
        }
    }
}

fn registry_password(lease: &Value) -> (String, String) {
    let registry = &lease["registry"];
    (
        registry["username"]
            .as_str()
            .expect("a registry user")
            .to_owned(),
        registry["password"]
            .as_str()
            .expect("a registry password")
            .to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_robot_token_takes_its_bearer_tokens_with_it() {
    let h = Harness::start(|_| {}).await;
    let (status, robot) = h
        .admin_post(
            "/api/tokens",
            json!({"name": "deployer", "scope": "robot:team"}),
        )
        .await;
    assert_eq!(status, 201, "{robot}");
    let secret = robot["token"].as_str().expect("the secret").to_owned();
    let bearer = h.bearer("deployer", &secret, "team/app").await;
    let auth = Auth::Bearer(&bearer);
    assert_eq!(h.push("team/app", &auth).await.status, 201);
    assert_eq!(h.pull("team/app", &auth).await.status, 200);

    // A bearer token is no password: it buys no fresh token at the token endpoint.
    let (status, _) = h
        .token(
            "deployer",
            &bearer,
            &["repository:team/app:pull,push".into()],
        )
        .await;
    assert_eq!(status, 401, "a bearer token was traded for a new one");

    let id = robot["id"].as_i64().expect("an id");
    let (status, body) = h
        .admin(
            reqwest::Method::DELETE,
            &format!("/api/tokens/{id}"),
            Value::Null,
        )
        .await;
    assert_eq!(status, 204, "{body}");

    // The bearer token is 15 minutes from expiring, yet neither pushes nor pulls.
    let push = h.push("team/app", &auth).await;
    assert_eq!(push.status, 401, "{push:?}");
    assert!(push.message.contains("revoked"), "{push:?}");
    assert_eq!(h.pull("team/app", &auth).await.status, 401);
    assert_eq!(
        h.push("team/app", &Auth::Basic("deployer", &secret))
            .await
            .status,
        401
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stages_registry_token_ends_with_the_stage() {
    let h = Harness::start(|_| {}).await;
    let runner = h.register().await;
    let lease = h.build_and_lease(runner).await;
    let (user, password) = registry_password(&lease);
    let bearer = h.bearer(&user, &password, "team/app").await;
    assert_eq!(h.push("team/app", &Auth::Bearer(&bearer)).await.status, 201);
    assert_eq!(
        h.push("team/app", &Auth::Basic(&user, &password))
            .await
            .status,
        201
    );

    h.done(runner, &lease).await;

    let push = h.push("team/app", &Auth::Bearer(&bearer)).await;
    assert_eq!(push.status, 401, "{push:?}");
    assert_eq!(h.pull("team/app", &Auth::Bearer(&bearer)).await.status, 401);
    assert_eq!(
        h.push("team/app", &Auth::Basic(&user, &password))
            .await
            .status,
        401
    );
    let (status, _) = h
        .token(&user, &password, &["repository:team/app:pull".into()])
        .await;
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_attempts_token_ends_with_the_attempt_when_the_stage_is_tried_again() {
    // A short lease: this runner never heartbeats, so attempt 1 expires and the stage is
    // queued again.
    let h = Harness::start(|c| c.lease = Duration::from_millis(600)).await;
    let runner = h.register().await;
    let first = h.build_and_lease(runner).await;
    assert_eq!(first["attempt"], 1, "{first}");
    let (user, password) = registry_password(&first);
    let old = h.bearer(&user, &password, "team/app").await;
    assert_eq!(h.push("team/app", &Auth::Bearer(&old)).await.status, 201);

    let second = h.poll(runner).await;
    assert_eq!(second["attempt"], 2, "the stage was tried again: {second}");
    let (user2, password2) = registry_password(&second);
    assert_ne!(password, password2, "each attempt has its own token");

    // Attempt 1 is over: neither its token nor its bearer token works; attempt 2's does.
    assert_eq!(h.push("team/app", &Auth::Bearer(&old)).await.status, 401);
    assert_eq!(
        h.push("team/app", &Auth::Basic(&user, &password))
            .await
            .status,
        401
    );
    let new = h.bearer(&user2, &password2, "team/app").await;
    assert_eq!(h.push("team/app", &Auth::Bearer(&new)).await.status, 201);
    h.done(runner, &second).await;
    assert_eq!(h.push("team/app", &Auth::Bearer(&new)).await.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_token_pushes_to_its_repositorys_path_unless_the_setting_widens_it() {
    let h = Harness::start(|_| {}).await;
    let runner = h.register().await;
    h.assert_stage_pushes(
        runner,
        &[
            ("team/app", true),
            ("team/app/sub", true),
            ("team/other", false),
            ("team/apple", false),
            ("team/shared-lib", false),
            ("other/x", false),
        ],
    )
    .await;

    // Invalid patterns are refused with the reason, and nothing changes.
    for (bad, reason) in [
        ("*", "owner"),
        ("team/Shared", "`S`"),
        ("team//x", "empty segment"),
    ] {
        let (status, body) = h
            .patch_repo(json!({"registry_paths": ["team/ok-*", bad], "auto_cancel": true}))
            .await;
        assert_eq!(status, 400, "{bad}: {body}");
        let text = body.to_string();
        assert!(
            text.contains("registry_paths") && text.contains(reason),
            "{bad}: {text}"
        );
    }
    let repo = h.repo_json().await;
    assert_eq!(repo["registry_paths"], json!([]), "{repo}");
    assert_eq!(repo["auto_cancel"], json!(false), "{repo}");

    let (status, repo) = h
        .patch_repo(json!({"registry_paths": [" team/shared-* ", "", "team/shared-*"]}))
        .await;
    assert_eq!(status, 200, "{repo}");
    assert_eq!(repo["registry_paths"], json!(["team/shared-*"]), "{repo}");

    h.assert_stage_pushes(
        runner,
        &[
            ("team/app", true),
            ("team/shared-lib", true),
            ("team/shared-lib/x", true),
            ("team/other", false),
            ("other/shared-lib", false),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_settings_page_shows_and_edits_the_registry_paths() {
    let h = Harness::start(|_| {}).await;
    let page = format!("/repos/{REPO}/settings");
    // As the UI itself posts it: its own origin, a session, the page's form token.
    let (session, _) = crate::web::login(&h.url, ADMIN).await;
    let (_, _, settings) = crate::web::get(&h.url, &page, &session).await;
    let csrf = crate::web::csrf_of(&settings);
    let post = |paths: &str| {
        crate::web::form_post(
            &h.url,
            &page,
            &session,
            &[
                ("csrf", csrf.as_str()),
                ("clone_url", h.repo.clone_url.as_str()),
                ("default_branch", "main"),
                ("max_running", "0"),
                ("registry_paths", paths),
            ],
        )
    };
    let saved = post("team/shared-*\r\nteam/tools/x\r\n")
        .send()
        .await
        .expect("the form is posted");
    assert!(saved.status().is_redirection(), "{}", saved.status());
    let repo = h.repo_json().await;
    assert_eq!(
        repo["registry_paths"],
        json!(["team/shared-*", "team/tools/x"]),
        "{repo}"
    );
    let (_, _, html) = crate::web::get(&h.url, &page, &session).await;
    assert!(
        html.contains("name=\"registry_paths\"")
            && html.contains("team/shared-*\nteam/tools/x</textarea>"),
        "{html}"
    );

    // A bad pattern: an error page saying which and why; the setting is unchanged.
    let refused = post("team/shared-*\nTeam/x").send().await.expect("posted");
    assert_eq!(refused.status(), 400);
    let text = refused.text().await.expect("the error page");
    assert!(
        text.contains("Team/x") && text.contains("not allowed"),
        "{text}"
    );
    let repo = h.repo_json().await;
    assert_eq!(
        repo["registry_paths"],
        json!(["team/shared-*", "team/tools/x"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_token_pulls_everything_and_does_nothing_else() {
    let h = Harness::start(|_| {}).await;
    let (status, pusher) = h
        .admin_post("/api/tokens", json!({"name": "ci", "scope": "robot:team"}))
        .await;
    assert_eq!(status, 201, "{pusher}");
    let pusher = pusher["token"].as_str().expect("the secret").to_owned();
    assert_eq!(
        h.push("team/app", &Auth::Basic("ci", &pusher)).await.status,
        201
    );
    let (status, puller) = h
        .admin_post(
            "/api/tokens",
            json!({"name": "deploy-host", "scope": "pull"}),
        )
        .await;
    assert_eq!(status, 201, "{puller}");
    let puller = puller["token"].as_str().expect("the secret").to_owned();
    let basic = Auth::Basic("deploy-host", &puller);
    assert_eq!(h.pull("team/app", &basic).await.status, 200);
    let push = h.push("team/app", &basic).await;
    assert!(
        matches!(push.status, 401 | 403),
        "a pull token pushed: {push:?}"
    );
    // Nothing in the API either.
    let (status, _) = h
        .send(
            h.http
                .get(format!("{}/api/repos", h.url))
                .bearer_auth(&puller),
        )
        .await;
    assert!(matches!(status, 401 | 403), "the API answered {status}");
}
