//! Commit statuses against a local stand-in for each git host.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use slipway_server::status::{CommitState, StatusClient, StatusError, StatusTarget};
use slipway_server::webhook::Provider;

const SHA: &str = "6dcb09b5b57875f334f61aebed695e2e4193db5e";
const TOKEN: &str = "tok-3f9a-very-secret";

/// One request as the stand-in saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Value,
}

#[derive(Default)]
struct Host {
    seen: Mutex<Vec<Seen>>,
    /// Answers to give, in order; when empty, 201 with a status object as the hosts do.
    script: Mutex<VecDeque<(StatusCode, Value)>>,
}

async fn record(
    State(host): State<Arc<Host>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    host.seen.lock().expect("lock").push(Seen {
        method,
        path: uri.path().to_owned(),
        headers,
        body: body.clone(),
    });
    let scripted = host.script.lock().expect("lock").pop_front();
    let (status, answer) = scripted.unwrap_or_else(|| {
        (
            StatusCode::CREATED,
            json!({
                "id": 1,
                "state": body["state"],
                "description": body["description"],
                "target_url": body["target_url"],
                "context": body.get("context").or_else(|| body.get("name")),
                "created_at": "2024-05-01T12:00:00Z",
            }),
        )
    });
    (status, axum::Json(answer)).into_response()
}

/// A stand-in listening on 127.0.0.1; returns its state and base URL (no trailing slash).
async fn stand_in(prefix: &str) -> (Arc<Host>, String) {
    let host = Arc::new(Host::default());
    let app = Router::new().fallback(record).with_state(Arc::clone(&host));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (host, format!("http://{addr}{prefix}"))
}

fn target(provider: Provider, base: &str, repo: &str) -> StatusTarget {
    StatusTarget {
        provider,
        api_base: base.to_owned(),
        token: TOKEN.to_owned(),
        repo: repo.to_owned(),
    }
}

fn client() -> StatusClient {
    StatusClient::new().with_backoff(Duration::from_millis(10))
}

fn header<'a>(seen: &'a Seen, name: &str) -> Option<&'a str> {
    seen.headers.get(name).and_then(|v| v.to_str().ok())
}

/// Posts every state of `states` in order; what the stand-in saw, one request each.
async fn post_each(
    host: &Host,
    client: &StatusClient,
    t: &StatusTarget,
    states: &[(CommitState, &str)],
) -> Vec<Seen> {
    for (state, _) in states {
        post(client, t, *state).await.expect("posted");
    }
    let seen = host.seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), states.len());
    seen
}

async fn post(
    client: &StatusClient,
    t: &StatusTarget,
    state: CommitState,
) -> Result<(), StatusError> {
    client
        .post(
            t,
            SHA,
            state,
            "https://ci.example/octo/hello/42",
            "Build is running",
            "continuous-integration/slipway",
        )
        .await
}

#[tokio::test]
async fn status_github_request_and_states() {
    let (host, base) = stand_in("").await;
    let client = client();
    let t = target(Provider::GitHub, &format!("{base}/"), "octo/hello");
    let states = [
        (CommitState::Pending, "pending"),
        (CommitState::Running, "pending"),
        (CommitState::Success, "success"),
        (CommitState::Failure, "failure"),
        (CommitState::Error, "error"),
        (CommitState::Killed, "error"),
    ];
    let seen = post_each(&host, &client, &t, &states).await;
    for (s, (_, name)) in seen.iter().zip(states) {
        assert_eq!(s.method, Method::POST);
        assert_eq!(s.path, format!("/repos/octo/hello/statuses/{SHA}"));
        assert_eq!(
            header(s, "authorization"),
            Some(format!("Bearer {TOKEN}").as_str())
        );
        assert_eq!(header(s, "accept"), Some("application/vnd.github+json"));
        assert_eq!(header(s, "x-github-api-version"), Some("2022-11-28"));
        assert!(
            header(s, "user-agent")
                .expect("user agent")
                .starts_with("slipway/")
        );
        assert_eq!(header(s, "content-type"), Some("application/json"));
        assert_eq!(
            s.body,
            json!({
                "state": name,
                "target_url": "https://ci.example/octo/hello/42",
                "description": "Build is running",
                "context": "continuous-integration/slipway",
            })
        );
    }
}

#[tokio::test]
async fn status_gitea_request_and_states() {
    let (host, base) = stand_in("/api/v1").await;
    let client = client();
    let t = target(Provider::Gitea, &base, "alice/app");
    let states = [
        (CommitState::Pending, "pending"),
        (CommitState::Running, "pending"),
        (CommitState::Success, "success"),
        (CommitState::Failure, "failure"),
        (CommitState::Error, "error"),
        (CommitState::Killed, "error"),
    ];
    let seen = post_each(&host, &client, &t, &states).await;
    for (s, (_, name)) in seen.iter().zip(states) {
        assert_eq!(s.method, Method::POST);
        assert_eq!(s.path, format!("/api/v1/repos/alice/app/statuses/{SHA}"));
        assert_eq!(
            header(s, "authorization"),
            Some(format!("token {TOKEN}").as_str())
        );
        assert_eq!(s.body["state"], name);
        assert_eq!(s.body["context"], "continuous-integration/slipway");
        assert_eq!(s.body["target_url"], "https://ci.example/octo/hello/42");
        assert_eq!(s.body["description"], "Build is running");
    }
}

#[tokio::test]
async fn status_gitlab_request_and_states() {
    let (host, base) = stand_in("/api/v4").await;
    let client = client();
    let t = target(Provider::GitLab, &base, "group/sub group/app");
    let states = [
        (CommitState::Pending, "pending"),
        (CommitState::Running, "running"),
        (CommitState::Success, "success"),
        (CommitState::Failure, "failed"),
        (CommitState::Error, "failed"),
        (CommitState::Killed, "canceled"),
    ];
    let seen = post_each(&host, &client, &t, &states).await;
    for (s, (_, name)) in seen.iter().zip(states) {
        assert_eq!(s.method, Method::POST);
        assert_eq!(
            s.path,
            format!("/api/v4/projects/group%2Fsub%20group%2Fapp/statuses/{SHA}")
        );
        assert_eq!(header(s, "private-token"), Some(TOKEN));
        assert_eq!(header(s, "authorization"), None);
        assert_eq!(
            s.body,
            json!({
                "state": name,
                "target_url": "https://ci.example/octo/hello/42",
                "description": "Build is running",
                "name": "continuous-integration/slipway",
            })
        );
    }

    // Re-posting the state a commit already has: GitLab says 400, which is success.
    host.script.lock().expect("lock").push_back((
        StatusCode::BAD_REQUEST,
        json!({"message": "Cannot transition status via :run from :running (Reasons: )"}),
    ));
    post(&client, &t, CommitState::Running)
        .await
        .expect("already running is fine");

    // A numeric project id goes as it is.
    let by_id = target(Provider::GitLab, &base, "1234");
    post(&client, &by_id, CommitState::Success)
        .await
        .expect("posted");
    let last = host
        .seen
        .lock()
        .expect("lock")
        .last()
        .cloned()
        .expect("seen");
    assert_eq!(last.path, format!("/api/v4/projects/1234/statuses/{SHA}"));
}

#[tokio::test]
async fn status_generic_is_a_no_op() {
    let t = target(Provider::Generic, "http://127.0.0.1:1", "x/y");
    post(&client(), &t, CommitState::Success)
        .await
        .expect("nothing to post");
    assert_eq!(CommitState::Success.for_provider(Provider::Generic), None);
}

#[tokio::test]
async fn status_401_is_clear_and_hides_the_token() {
    let (host, base) = stand_in("").await;
    host.script.lock().expect("lock").push_back((
        StatusCode::UNAUTHORIZED,
        json!({
            "message": format!("Bad credentials for {TOKEN}"),
            "documentation_url": "https://docs.github.com/rest",
        }),
    ));
    let t = target(Provider::GitHub, &base, "octo/hello");
    let err = post(&client(), &t, CommitState::Success)
        .await
        .expect_err("401");
    let text = err.to_string();
    assert!(
        matches!(err, StatusError::Rejected { status: 401, .. }),
        "{err:?}"
    );
    assert!(
        text.contains(&format!("{base}/repos/octo/hello/statuses/{SHA}")),
        "{text}"
    );
    assert!(text.contains("401"), "{text}");
    assert!(text.contains("Bad credentials"), "{text}");
    assert!(!text.contains(TOKEN), "{text}");
    assert!(!format!("{err:?}").contains(TOKEN));
    assert!(!format!("{t:?}").contains(TOKEN));
    assert_eq!(
        host.seen.lock().expect("lock").len(),
        1,
        "a 4xx is not retried"
    );
}

#[tokio::test]
async fn status_500_then_201_is_retried() {
    let (host, base) = stand_in("/api/v1").await;
    host.script.lock().expect("lock").push_back((
        StatusCode::INTERNAL_SERVER_ERROR,
        json!({"message": "boom"}),
    ));
    let t = target(Provider::Gitea, &base, "alice/app");
    post(&client(), &t, CommitState::Success)
        .await
        .expect("retried to success");
    let seen = host.seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].body, seen[1].body);

    // Always 502: gives up after the attempts, saying so.
    for _ in 0..3 {
        host.script
            .lock()
            .expect("lock")
            .push_back((StatusCode::BAD_GATEWAY, json!({"message": "bad gateway"})));
    }
    let err = post(&client().with_attempts(3), &t, CommitState::Failure)
        .await
        .expect_err("keeps failing");
    assert!(
        matches!(
            err,
            StatusError::ServerError {
                status: 502,
                attempts: 3,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(host.seen.lock().expect("lock").len(), 5);
}

#[tokio::test]
async fn status_connection_refused_and_bad_targets() {
    // Bind and drop a listener to find a port nothing listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let t = target(
        Provider::GitHub,
        &format!("http://127.0.0.1:{port}"),
        "octo/hello",
    );
    let err = post(&client().with_attempts(2), &t, CommitState::Pending)
        .await
        .expect_err("refused");
    assert!(
        matches!(err, StatusError::Unreachable { attempts: 2, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );

    for (provider, repo, sha) in [
        (Provider::GitHub, "no-slash", SHA),
        (Provider::Gitea, "a/b/c", SHA),
        (Provider::GitLab, "", SHA),
        (Provider::GitHub, "octo/hello", "not-a-sha"),
    ] {
        let t = target(provider, "http://127.0.0.1:1", repo);
        let err = client()
            .post(&t, sha, CommitState::Success, "", "", "ci")
            .await
            .expect_err("invalid target");
        assert!(matches!(err, StatusError::InvalidTarget { .. }), "{err:?}");
    }
}

#[tokio::test]
async fn status_long_description_is_cut() {
    let (host, base) = stand_in("").await;
    let t = target(Provider::GitHub, &base, "octo/hello");
    let long = "é".repeat(300);
    client()
        .post(&t, SHA, CommitState::Success, "", &long, "ci")
        .await
        .expect("posted");
    let seen = host.seen.lock().expect("lock").clone();
    let description = seen[0].body["description"].as_str().expect("string");
    assert_eq!(description.chars().count(), 140);
    assert!(description.ends_with('…'));
}
