//! Webhook delivery: a tiny receiver that fails its first request with 500, a push and a
//! delete over HTTP, and the envelopes that arrive (after a retry).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use reqwest::Method as M;
use slipway_registry::events::ENVELOPE_MEDIA_TYPE;
use slipway_registry::{Notifier, NotifyEndpoint};

use crate::api::Api;
use crate::support::unique;

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    content_type: Option<String>,
    token: Option<String>,
    body: serde_json::Value,
    answered: StatusCode,
}

#[derive(Clone, Default)]
struct Receiver {
    requests: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    fn snapshot(&self) -> Vec<Received> {
        self.requests.lock().expect("lock").clone()
    }
}

async fn receive(State(rx): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let mut requests = rx.requests.lock().expect("lock");
    // The first request fails, so delivery has to retry.
    let answered = if requests.is_empty() {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };
    requests.push(Received {
        content_type: text("content-type"),
        token: text("x-token"),
        body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        answered,
    });
    answered
}

/// Every event of every request answered with `status`, with the request's content type.
fn events(requests: &[Received], status: StatusCode) -> Vec<serde_json::Value> {
    requests
        .iter()
        .filter(|r| r.answered == status)
        .flat_map(|r| r.body["events"].as_array().cloned().unwrap_or_default())
        .collect()
}

/// Polls until `found` returns something, for at most 10 s.
fn wait_for<T>(rx: &Receiver, mut found: impl FnMut(&[Received]) -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let requests = rx.snapshot();
        if let Some(value) = found(&requests) {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "webhook did not get the expected event in 10 s; got {requests:#?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn push_and_delete_events_reach_the_webhook_after_a_retry() {
    let api = Api::new();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let receiver = Receiver::default();
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(receiver.clone());
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let hook_addr = listener.local_addr().expect("addr");
    runtime.spawn(async move { axum::serve(listener, app).await });

    let mut endpoint =
        NotifyEndpoint::new(format!("http://{hook_addr}/hook")).with_header("x-token", "s3cret");
    endpoint.backoff = Duration::from_millis(100);
    endpoint.max_backoff = Duration::from_millis(400);
    let source = api.server.url("");
    let notifier = {
        let _runtime = runtime.enter();
        Notifier::spawn(api.server.registry.subscribe(), vec![endpoint], &source)
    };

    let repo = format!("hooks/app-{}", unique());
    let (digest, manifest) = api.push_image(&repo, "v1", "hook");

    let (push, retried) = wait_for(&receiver, |requests| {
        let ok = events(requests, StatusCode::OK);
        let push = ok.into_iter().find(|e| {
            e["action"] == "push"
                && e["target"]["repository"] == repo.as_str()
                && e["target"]["tag"] == "v1"
        })?;
        Some((push, requests.to_vec()))
    });
    // The first request got 500 and carried the same event, delivered again afterwards.
    assert_eq!(retried[0].answered, StatusCode::INTERNAL_SERVER_ERROR);
    let failed = events(&retried[..1], StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        failed.iter().any(|e| e["id"] == push["id"]),
        "first (failed) request did not carry the push event: {failed:#?}"
    );
    for request in &retried {
        assert_eq!(request.content_type.as_deref(), Some(ENVELOPE_MEDIA_TYPE));
        assert_eq!(request.token.as_deref(), Some("s3cret"));
    }
    assert_eq!(push["target"]["digest"], digest.to_string());
    assert_eq!(
        push["target"]["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(push["target"]["size"], manifest.len());
    assert_eq!(
        push["target"]["url"],
        format!("{source}/v2/{repo}/manifests/{digest}")
    );
    assert_eq!(push["actor"]["name"], "admin");

    let del = api.send(api.req(M::DELETE, &format!("/v2/{repo}/manifests/{digest}")));
    assert_eq!(del.status(), reqwest::StatusCode::ACCEPTED);
    let delete = wait_for(&receiver, |requests| {
        events(requests, StatusCode::OK).into_iter().find(|e| {
            e["action"] == "delete"
                && e["target"]["repository"] == repo.as_str()
                && e["target"]["digest"] == digest.to_string().as_str()
        })
    });
    assert_eq!(delete["actor"]["name"], "admin");
    assert_ne!(delete["id"], push["id"]);
    assert!(!notifier.is_finished());
    drop(notifier);
}
