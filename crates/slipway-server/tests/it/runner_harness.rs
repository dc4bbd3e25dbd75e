//! The harness of the tests that speak the runner protocol themselves: the real server
//! (in-process, SQLite in a temporary data dir, on loopback, see [`super::serve`]) with one
//! trusted repository, and this test as its runner(s) and API client.
//!
//! Each test module wraps [`RunnerHarness`] in a `Harness` of its own (dereferencing to it)
//! for the calls only it makes. Runner calls carry the credential of the runner their body
//! names (`runner_id`), which [`RunnerHarness::register_with`] keeps, else the shared runner
//! token (for a registration); [`RunnerHarness::runner_post_as`] picks another on purpose.

use std::collections::HashMap;
use std::sync::Mutex;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::{BareRepo, TestServer, serve};

pub struct RunnerHarness {
    pub url: String,
    /// The admin token the server was started with.
    pub admin: &'static str,
    /// The one repository, trusted, whose `.drone.yml` is the pipeline given to `start`.
    pub repo_name: &'static str,
    pub repo: BareRepo,
    pub runner_token: String,
    /// Each registered runner's own credential, by runner id.
    credentials: Mutex<HashMap<i64, String>>,
    pub http: reqwest::Client,
    pub data: tempfile::TempDir,
    shutdown: CancellationToken,
}

impl Drop for RunnerHarness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl RunnerHarness {
    /// A server with `admin` as its admin token (`tweak` may change the rest of its
    /// configuration) and the trusted repository `repo_name` whose pipeline is `pipeline`.
    pub async fn start(
        admin: &'static str,
        repo_name: &'static str,
        pipeline: &str,
        tweak: impl FnOnce(&mut slipway_server::config::ServerConfig),
    ) -> RunnerHarness {
        let repo = BareRepo::with_pipeline(pipeline);
        let shutdown = CancellationToken::new();
        let TestServer { url, server, data } = serve(admin, &shutdown, tweak).await;
        let h = RunnerHarness {
            url,
            admin,
            repo_name,
            repo,
            runner_token: server.state.runner_token.clone(),
            credentials: Mutex::default(),
            http: reqwest::Client::new(),
            data,
            shutdown,
        };
        let (status, body) = h
            .admin_post(
                "/api/repos",
                json!({"name": repo_name, "provider": "generic", "config_path": ".drone.yml",
                       "clone_url": h.repo.clone_url, "trusted": true}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        h
    }

    /// Sends `request`: the status and the body (JSON, else the text as a string; `null`
    /// when empty).
    pub async fn send(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
        let response = request.send().await.expect("the server answers");
        let status = response.status().as_u16();
        let text = response.text().await.expect("a body");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, body)
    }

    /// An API call with the admin token; a `null` body sends none.
    pub async fn admin(&self, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(self.admin);
        if !body.is_null() {
            request = request.json(&body);
        }
        self.send(request).await
    }

    pub async fn admin_post(&self, path: &str, body: Value) -> (u16, Value) {
        self.admin(reqwest::Method::POST, path, body).await
    }

    pub async fn admin_get(&self, path: &str) -> (u16, Value) {
        self.admin(reqwest::Method::GET, path, Value::Null).await
    }

    /// A runner protocol call with the credential of the runner the body names (the runner
    /// token for a registration).
    pub async fn runner_post(&self, path: &str, body: &Value) -> (u16, Value) {
        let credential = body["runner_id"]
            .as_i64()
            .and_then(|id| self.credentials.lock().expect("lock").get(&id).cloned())
            .unwrap_or_else(|| self.runner_token.clone());
        self.runner_post_as(&credential, path, body).await
    }

    pub async fn runner_post_as(&self, bearer: &str, path: &str, body: &Value) -> (u16, Value) {
        self.send(
            self.http
                .post(format!("{}/api/runner{path}", self.url))
                .bearer_auth(bearer)
                .json(body),
        )
        .await
    }

    /// Registers a runner (allowing exec or not): its id and credential.
    pub async fn register_with(&self, name: &str, allow_exec: bool) -> (i64, String) {
        let (status, body) = self
            .runner_post(
                "/register",
                &json!({"name": name, "labels": {"os": "linux", "arch": "amd64"}, "capacity": 1,
                        "version": "test", "allow_exec": allow_exec,
                        "protocol": slipway_runner::protocol::PROTOCOL_VERSION}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let id = body["runner_id"].as_i64().expect("a runner id");
        let credential = body["credential"]
            .as_str()
            .expect("a credential")
            .to_owned();
        self.credentials
            .lock()
            .expect("lock")
            .insert(id, credential.clone());
        (id, credential)
    }

    /// "Run pipeline" with `body` (`{"branch": …}`, `{"commit": …}`): the new build.
    pub async fn run(&self, body: Value) -> Value {
        let (status, build) = self
            .admin_post(&format!("/api/repos/{}/builds", self.repo_name), body)
            .await;
        assert_eq!(status, 201, "{build}");
        build
    }

    /// Polls as `runner`, which must be given a lease: the lease.
    pub async fn poll(&self, runner: i64) -> Value {
        let (status, lease) = self
            .runner_post("/poll", &json!({"runner_id": runner}))
            .await;
        assert_eq!(status, 200, "a lease: {lease}");
        lease
    }
}
