//! The access log and the metrics of an edge, read as a user reads them: the log file's
//! JSON lines and the metrics listener's Prometheus text.

use std::time::{Duration, Instant};

use serde_json::Value;
use slipway_proxy::observe::AccessLogTarget;
use slipway_proxy::{Edge, EdgeConfig};
use tokio_util::sync::CancellationToken;

use super::serve::{TestBackend, client};

fn log_lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("a JSON line: {e}: {l}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_exchange_is_logged_when_it_ends_and_counted_per_route_and_backend() {
    let web = TestBackend::start("web").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let routes = dir.path().join("routes.yml");
    std::fs::write(
        &routes,
        format!(
            "routes:\n  - host: app.test\n    backends: [\"{}\"]\n",
            web.addr
        ),
    )
    .expect("write routes");
    let log = dir.path().join("access.log");
    let stop = CancellationToken::new();
    let edge = Edge::start(
        EdgeConfig {
            http: Some("127.0.0.1:0".parse().expect("addr")),
            routes_file: Some(routes),
            access_log: Some(AccessLogTarget::File(log.clone())),
            metrics: Some("127.0.0.1:0".parse().expect("addr")),
            ..EdgeConfig::default()
        },
        stop.clone(),
    )
    .await
    .expect("edge starts");
    let _stop = stop.drop_guard();
    let proxy = edge.http_addr().expect("http");
    let c = client();
    let r = c
        .get(format!("http://{proxy}/hello?x=1"))
        .header("host", "app.test")
        .header("x-request-id", "req-42")
        .send()
        .await
        .expect("through the proxy");
    assert_eq!(r.headers()["x-request-id"], "req-42");
    let body = r.text().await.expect("body");
    let r = c
        .get(format!("http://{proxy}/"))
        .header("host", "nobody.test")
        .send()
        .await
        .expect("unknown host");
    assert_eq!(r.status(), 404);
    let _ = r.text().await;

    // A stream is logged once it ends, with its whole length and duration.
    let started = Instant::now();
    let sse = c
        .get(format!("http://{proxy}/sse"))
        .header("host", "app.test")
        .send()
        .await
        .expect("sse");
    let mut sse = sse.bytes_stream();
    let mut first = true;
    let mut sse_len = 0;
    use futures_util::StreamExt;
    while let Some(chunk) = sse.next().await {
        let chunk = chunk.expect("chunk");
        sse_len += chunk.len();
        if first {
            first = false;
            let logged = log_lines(&log);
            assert!(
                !logged.iter().any(|l| l["path"] == "/sse"),
                "a stream still open is not logged yet: {logged:?}"
            );
        }
    }
    let streamed_for = started.elapsed();

    let deadline = Instant::now() + Duration::from_secs(5);
    let lines = loop {
        let lines = log_lines(&log);
        if lines.len() >= 3 || Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(lines.len(), 3, "{lines:?}");
    let hello = &lines[0];
    assert_eq!(hello["host"], "app.test");
    assert_eq!(hello["method"], "GET");
    assert_eq!(hello["path"], "/hello?x=1");
    assert_eq!(hello["status"], 200);
    assert_eq!(hello["bytes"], body.len());
    assert_eq!(hello["route"], "app.test");
    assert_eq!(hello["backend"], web.addr.to_string());
    assert_eq!(hello["request_id"], "req-42");
    assert_eq!(hello["client"], "127.0.0.1");
    assert!(
        hello["time"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{hello}"
    );
    let unknown = &lines[1];
    assert_eq!(unknown["status"], 404);
    assert!(unknown.get("route").is_none(), "{unknown}");
    assert!(
        unknown["request_id"]
            .as_str()
            .is_some_and(|id| id.len() == 32),
        "an id is made for a request without one: {unknown}"
    );
    let sse_line = &lines[2];
    assert_eq!(sse_line["bytes"], sse_len);
    let ms = sse_line["duration_ms"].as_f64().expect("duration");
    assert!(
        ms >= 700.0 && ms <= streamed_for.as_secs_f64() * 1000.0 + 50.0,
        "the stream's duration is its whole life: {ms} ms of {streamed_for:?}"
    );

    let metrics = c
        .get(format!(
            "http://{}/metrics",
            edge.metrics_addr().expect("metrics")
        ))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for line in [
        "slipway_proxy_requests_total{route=\"app.test\",code=\"2xx\"} 2".to_owned(),
        "slipway_proxy_requests_total{route=\"app.test\",code=\"5xx\"} 0".to_owned(),
        format!(
            "slipway_proxy_backend_requests_total{{route=\"app.test\",backend=\"{}\",code=\"2xx\"}} 2",
            web.addr
        ),
        "slipway_proxy_request_duration_seconds_count{route=\"app.test\"} 2".to_owned(),
        "slipway_proxy_request_duration_seconds_bucket{route=\"app.test\",le=\"+Inf\"} 2"
            .to_owned(),
        format!(
            "slipway_proxy_backend_state{{route=\"app.test\",backend=\"{}\",state=\"serving\"}} 1",
            web.addr
        ),
        format!(
            "slipway_proxy_backend_in_flight{{route=\"app.test\",backend=\"{}\"}} 0",
            web.addr
        ),
    ] {
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
    // The bucket of 1 s holds only the quick one; the stream took longer.
    assert!(
        metrics.contains(
            "slipway_proxy_request_duration_seconds_bucket{route=\"app.test\",le=\"0.5\"} 1"
        ),
        "{metrics}"
    );
}
