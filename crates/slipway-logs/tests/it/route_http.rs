//! Elasticsearch and Loki stand-ins (axum on loopback) that answer as the real services
//! document: `_bulk` per-item statuses, whole-request 429s, a mapping error; Loki's strict
//! per-stream order, its 400 text for out-of-order entries, silent dedupe of identical
//! entries, 429s and an answer lost after the push was taken.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use slipway_logs::route::{RouteHandle, RouteUri, go_time, spawn_route};
use slipway_logs::{LogSource, ServiceKey, Stream};
use tokio::sync::watch;

use crate::route_support::{MemSource, meta, record, wait_for};

const T0: i64 = 1_796_682_946_000_000_000;

async fn serve(router: Router) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the stand-in");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    port
}

fn caught_up(h: &RouteHandle) -> bool {
    let s = h.status();
    !s.lag.is_empty() && s.lag.iter().all(|l| l.bytes == 0)
}

/// `n` records over two services and three containers; record `bad` says `marker`.
fn source(n: usize, bad: usize, marker: &str) -> (Arc<MemSource>, Vec<(String, i64, String)>) {
    let src = MemSource::new();
    let cs = [
        (
            ServiceKey::new("prod", "shop", "web"),
            meta("aaa111", "shop-web-1", &[]),
        ),
        (
            ServiceKey::new("prod", "shop", "web"),
            meta("aaa222", "shop-web-2", &[]),
        ),
        (
            ServiceKey::new("prod", "shop", "db"),
            meta("bbb111", "shop-db-1", &[]),
        ),
    ];
    for (_, m) in &cs {
        src.add_container(m.clone());
    }
    let mut all = Vec::new();
    for i in 0..n {
        let (key, m) = &cs[i % cs.len()];
        let line = if i == bad {
            format!("rec {i:05} {marker}")
        } else {
            format!("rec {i:05} \u{1b}[32mok\u{1b}[0m")
        };
        let t = T0 + i as i64 * 1_000_000;
        src.push(key, record(m, t, Stream::Stdout, &line));
        all.push((m.name.clone(), t, line));
    }
    (src, all)
}

#[derive(Debug, Default)]
struct Es {
    docs: HashMap<(String, String), Value>,
    requests: usize,
    item_429: HashSet<String>,
    overwrites: usize,
}

async fn bulk(State(es): State<Arc<Mutex<Es>>>, headers: HeaderMap, body: Bytes) -> Response {
    if headers.get("content-type").and_then(|v| v.to_str().ok()) != Some("application/x-ndjson") {
        return (
            StatusCode::NOT_ACCEPTABLE,
            "Content-Type header is not supported",
        )
            .into_response();
    }
    let mut es = es.lock().expect("es lock");
    es.requests += 1;
    if es.requests % 6 == 3 {
        let answer = json!({"error": {"root_cause": [], "type": "es_rejected_execution_exception",
            "reason": "rejected execution of coordinating operation"}, "status": 429});
        return (StatusCode::TOO_MANY_REQUESTS, axum::Json(answer)).into_response();
    }
    let text = String::from_utf8_lossy(&body).into_owned();
    let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    let mut items = Vec::new();
    let mut errors = false;
    for pair in lines.chunks(2) {
        let action: Value = serde_json::from_str(pair[0]).expect("action line");
        let doc: Value = serde_json::from_str(pair.get(1).expect("doc line")).expect("doc json");
        let index = action["index"]["_index"]
            .as_str()
            .expect("_index")
            .to_string();
        let id = action["index"]["_id"].as_str().expect("_id").to_string();
        let message = doc["message"].as_str().unwrap_or("").to_string();
        let n: usize = message.get(4..9).and_then(|s| s.parse().ok()).unwrap_or(0);
        if message.contains("POISON") {
            errors = true;
            items.push(json!({"index": {"_index": index, "_id": id, "status": 400, "error": {
                "type": "mapper_parsing_exception",
                "reason": "failed to parse field [message] of type [keyword] in document with id '".to_string() + &id + "'"}}}));
        } else if n % 50 == 7 && es.item_429.insert(id.clone()) {
            errors = true;
            items.push(json!({"index": {"_index": index, "_id": id, "status": 429, "error": {
                "type": "es_rejected_execution_exception", "reason": "rejected execution of primary operation"}}}));
        } else {
            let existed = es.docs.insert((index.clone(), id.clone()), doc).is_some();
            if existed {
                es.overwrites += 1;
            }
            items.push(json!({"index": {"_index": index, "_id": id, "_version": 1,
                "result": if existed { "updated" } else { "created" },
                "status": if existed { 200 } else { 201 }}}));
        }
    }
    axum::Json(json!({"took": 3, "errors": errors, "items": items})).into_response()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elasticsearch_bulk_every_good_record_once_bad_one_reported() {
    let es = Arc::new(Mutex::new(Es::default()));
    let port = serve(
        Router::new()
            .route("/_bulk", post(bulk))
            .with_state(es.clone()),
    )
    .await;
    let (src, all) = source(3000, 1234, "POISON");
    let dir = tempfile::tempdir().expect("tempdir");
    let (_tx, rx) = watch::channel(false);
    let uri = RouteUri::parse(&format!("elasticsearch://127.0.0.1:{port}/logs")).expect("uri");
    let h = spawn_route(
        uri,
        src.clone() as Arc<dyn LogSource>,
        dir.path(),
        "node1",
        rx,
    )
    .expect("spawn");
    wait_for("every record indexed", Duration::from_secs(120), || {
        caught_up(&h)
    })
    .await;
    let s = h.status();
    assert_eq!(s.delivered, 2999, "{s:?}");
    assert_eq!(s.rejected, 1);
    assert!(
        s.rejections[0].contains("mapper_parsing_exception")
            && s.rejections[0].contains("HTTP 400"),
        "{:?}",
        s.rejections
    );
    let es = es.lock().expect("es lock");
    assert_eq!(es.docs.len(), 2999);
    let messages: BTreeMap<String, &Value> = es
        .docs
        .iter()
        .map(|((index, _), d)| {
            assert_eq!(index, "logs");
            (d["message"].as_str().expect("message").to_string(), d)
        })
        .collect();
    for (name, _, line) in &all {
        if line.contains("POISON") {
            continue;
        }
        let want = slipway_logs::record::strip_ansi(line).into_owned();
        let d = messages
            .get(&want)
            .unwrap_or_else(|| panic!("{want} missing"));
        assert_eq!(d["container"]["name"], name.as_str());
        assert!(
            d["@timestamp"]
                .as_str()
                .expect("ts")
                .starts_with("2026-12-07T22:35:")
        );
    }
    eprintln!(
        "elasticsearch: {} requests, {} documents overwritten by resends",
        es.requests, es.overwrites
    );
}

#[derive(Debug, Default)]
struct LokiState {
    streams: HashMap<String, Vec<(i64, String)>>,
    requests: usize,
    out_of_order: usize,
    deduped: usize,
}

fn canonical(labels: &serde_json::Map<String, Value>) -> String {
    let sorted: BTreeMap<&String, &str> = labels
        .iter()
        .map(|(k, v)| (k, v.as_str().unwrap_or("")))
        .collect();
    let inner: Vec<String> = sorted.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!("{{{}}}", inner.join(", "))
}

async fn push(State(loki): State<Arc<Mutex<LokiState>>>, body: Bytes) -> Response {
    let mut st = loki.lock().expect("loki lock");
    st.requests += 1;
    if st.requests % 5 == 2 {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            "Ingestion rate limit exceeded for user fake",
        )
            .into_response();
    }
    let body: Value = serde_json::from_slice(&body).expect("push JSON");
    let mut ignored = Vec::new();
    let mut total = 0;
    for stream in body["streams"].as_array().expect("streams") {
        let labels = canonical(stream["stream"].as_object().expect("labels"));
        for v in stream["values"].as_array().expect("values") {
            total += 1;
            let ts: i64 = v[0].as_str().expect("ts string").parse().expect("ns");
            let line = v[1].as_str().expect("line").to_string();
            let entries = st.streams.entry(labels.clone()).or_default();
            let reason = match entries.last() {
                _ if line.contains("TOOLONG") => Some("line too long"),
                Some((lt, ll)) if *lt == ts && *ll == line => None,
                Some((lt, _)) if *lt > ts => Some("entry out of order"),
                _ => {
                    entries.push((ts, line));
                    continue;
                }
            };
            match reason {
                None => st.deduped += 1,
                Some(r) => {
                    if r == "entry out of order" {
                        st.out_of_order += 1;
                    }
                    ignored.push(format!(
                        "entry with timestamp {} ignored, reason: '{r}' for stream: {labels},",
                        go_time(ts)
                    ));
                }
            }
        }
    }
    if !ignored.is_empty() {
        let text = format!(
            "{}\ntotal ignored: {} out of {total}\n",
            ignored.join("\n"),
            ignored.len()
        );
        return (StatusCode::BAD_REQUEST, text).into_response();
    }
    if st.requests % 7 == 4 {
        // Taken, but the answer is lost: the route sends the same entries again.
        return (StatusCode::BAD_GATEWAY, "upstream connect error").into_response();
    }
    StatusCode::NO_CONTENT.into_response()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loki_every_record_once_in_order() {
    let loki = Arc::new(Mutex::new(LokiState::default()));
    let port = serve(
        Router::new()
            .route("/loki/api/v1/push", post(push))
            .with_state(loki.clone()),
    )
    .await;
    let (src, all) = source(3000, 2001, "TOOLONG");
    let dir = tempfile::tempdir().expect("tempdir");
    let (_tx, rx) = watch::channel(false);
    let uri = RouteUri::parse(&format!("loki://127.0.0.1:{port}")).expect("uri");
    let h = spawn_route(
        uri,
        src.clone() as Arc<dyn LogSource>,
        dir.path(),
        "node1",
        rx,
    )
    .expect("spawn");
    wait_for("every record pushed", Duration::from_secs(120), || {
        caught_up(&h)
    })
    .await;
    let s = h.status();
    assert_eq!(s.rejected, 1, "{s:?}");
    assert!(
        s.rejections[0].contains("line too long"),
        "{:?}",
        s.rejections
    );
    assert!(
        s.rejections[0].contains(&go_time(T0 + 2001 * 1_000_000)),
        "names the entry: {:?}",
        s.rejections
    );
    let st = loki.lock().expect("loki lock");
    let mut want: HashMap<String, Vec<(i64, String)>> = HashMap::new();
    for (name, t, line) in &all {
        if line.contains("TOOLONG") {
            continue;
        }
        let service = if name.contains("db") { "db" } else { "web" };
        let key = format!(
            "{{container=\"{name}\", env=\"prod\", service=\"{service}\", stack=\"shop\"}}"
        );
        want.entry(key).or_default().push((*t, line.clone()));
    }
    assert_eq!(st.streams.len(), 3);
    for (k, v) in &want {
        assert_eq!(
            st.streams.get(k),
            Some(v),
            "stream {k}: every entry once, in order"
        );
    }
    assert!(
        st.out_of_order + st.deduped > 0,
        "the lost answers made resends"
    );
    eprintln!(
        "loki: {} requests, {} resent entries ignored as out of order, {} deduplicated",
        st.requests, st.out_of_order, st.deduped
    );
}
