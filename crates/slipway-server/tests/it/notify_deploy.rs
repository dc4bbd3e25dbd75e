//! A deployment's event through the server's notifications: recorded in the outbox, fanned
//! out to the channels whose environment rule matches, and delivered with the deploy's
//! fields (environment, stack, revision, URL) to a loopback webhook.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use slipway_server::store::DeployNotice;

const ADMIN: &str = "notify-deploy-admin-token-0123456789";

async fn stand_in() -> (String, Arc<Mutex<Vec<(String, Value)>>>) {
    let seen: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
    let recorded = seen.clone();
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri, body: axum::body::Bytes| {
        let recorded = recorded.clone();
        async move {
            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            recorded
                .lock()
                .expect("lock")
                .push((uri.path().to_owned(), body));
            axum::Json(json!({"ok": true}))
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

async fn add_channel(server: &str, body: Value) {
    let resp = reqwest::Client::new()
        .post(format!("{server}/api/notify/channels"))
        .bearer_auth(ADMIN)
        .json(&body)
        .send()
        .await
        .expect("POST channel");
    assert_eq!(resp.status().as_u16(), 201, "{:?}", resp.text().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_event_reaches_the_channels_of_its_environment() {
    let shutdown = tokio_util::sync::CancellationToken::new();
    let server = super::serve(ADMIN, &shutdown, |_| {}).await;
    let (hook, seen) = stand_in().await;
    add_channel(
        &server.url,
        json!({"name": "prod", "kind": "webhook",
        "secrets": {"url": format!("{hook}/prod")}, "environment": "prod*",
        "events": ["deploy.*"]}),
    )
    .await;
    add_channel(
        &server.url,
        json!({"name": "staging", "kind": "webhook",
        "secrets": {"url": format!("{hook}/staging")}, "environment": "staging"}),
    )
    .await;
    add_channel(
        &server.url,
        json!({"name": "builds", "kind": "webhook",
        "secrets": {"url": format!("{hook}/builds")}, "events": ["build.*"]}),
    )
    .await;

    let state = &server.server.state;
    state
        .store
        .notify_deploy(&DeployNotice {
            environment: "production".into(),
            stack: "shop".into(),
            revision: 7,
            status: "rolled_back".into(),
            url: "https://shop.example.com/".into(),
            images: vec!["127.0.0.1:5000/acme/shop@sha256:0123".into()],
            repo: None,
            build_number: None,
        })
        .await
        .expect("notice");
    state.wake_notifications();

    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.lock().expect("lock").is_empty() {
        assert!(Instant::now() < deadline, "nothing delivered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 1, "only the production channel: {seen:#?}");
    let (path, body) = &seen[0];
    assert_eq!(path, "/prod");
    assert_eq!(
        body["title"], "production/shop: deploy to production rolled back",
        "{body}"
    );
    assert_eq!(body["link"]["url"], "https://shop.example.com/", "{body}");
    assert_eq!(body["event"]["event"], "deploy.rolled_back", "{body}");
    assert_eq!(body["event"]["deploy"]["revision"], "7", "{body}");
    assert_eq!(
        body["event"]["deploy"]["images"][0],
        "127.0.0.1:5000/acme/shop@sha256:0123"
    );
    let log = state.store.deliveries(None, 10).await.expect("log");
    assert_eq!(log.len(), 1);
    assert_eq!(
        (log[0].event.as_str(), log[0].status.as_str()),
        ("deploy.rolled_back", "delivered")
    );
    shutdown.cancel();
}
