//! Real clients through the proxy: a WebSocket echo (tokio-tungstenite on both ends), an
//! SSE stream read by curl over HTTP/1.1 and over HTTP/2 (h2c, prior knowledge), and a
//! bounded h2load run over HTTP/2. A missing curl or h2load skips its test with a message.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use slipway_proxy::{Config, Proxy, RouteTable};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_util::sync::CancellationToken;

use super::serve::TestBackend;

/// A WebSocket server echoing every message, until the test ends.
async fn websocket_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_close() || ws.send(msg).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// A proxy serving `routes` (YAML) on loopback until the guard drops.
async fn proxy(routes: &str) -> (SocketAddr, tokio_util::sync::DropGuard) {
    let set = slipway_proxy::file::parse(routes, "routes.yml").expect("routes");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let p = std::sync::Arc::new(Proxy::new(Config::default(), RouteTable::build([set])));
    let stop = CancellationToken::new();
    tokio::spawn(slipway_proxy::serve_http(p, listener, stop.clone()));
    (addr, stop.drop_guard())
}

fn have(tool: &str) -> bool {
    let found = std::process::Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        eprintln!("skipping: {tool} is not installed (Debian: curl, nghttp2-client)");
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_echoes_through_the_proxy() {
    let echo = websocket_echo().await;
    let (addr, _stop) = proxy(&format!(
        "routes:\n  - host: ws.test\n    backends: [\"{echo}\"]\n"
    ))
    .await;
    let mut request = format!("ws://{addr}/chat")
        .into_client_request()
        .expect("request");
    request
        .headers_mut()
        .insert("host", "ws.test".parse().expect("header"));
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut ws, resp) = tokio_tungstenite::client_async(request, stream)
        .await
        .expect("the WebSocket handshake goes through the proxy");
    assert_eq!(resp.status(), 101);
    for i in 0..20 {
        let text = format!("message {i} {}", "x".repeat(i * 500));
        ws.send(Message::text(text.clone())).await.expect("send");
        match ws.next().await {
            Some(Ok(Message::Text(back))) => assert_eq!(back.as_str(), text),
            other => panic!("expected the echo of message {i}, got {other:?}"),
        }
    }
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .expect("send binary");
    match ws.next().await {
        Some(Ok(Message::Binary(b))) => assert_eq!(&b[..], &[0u8, 1, 2, 255]),
        other => panic!("expected the binary echo, got {other:?}"),
    }
    ws.close(None).await.expect("close");
}

/// Reads an SSE stream with curl (`args` choose the HTTP version); the time each
/// `data:` line arrived after the first.
async fn curl_sse(args: &[&str], url: &str) -> Vec<(String, Duration)> {
    let mut child = tokio::process::Command::new("curl")
        .args(["-sS", "-N", "--max-time", "10", "-H", "host: app.test"])
        .args(args)
        .arg(url)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("curl runs");
    let out = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(out).lines();
    let mut seen = Vec::new();
    let mut first: Option<Instant> = None;
    while let Ok(Some(line)) = lines.next_line().await {
        if line.starts_with("data:") {
            let at = *first.get_or_insert_with(Instant::now);
            seen.push((line, at.elapsed()));
        }
    }
    let status = child.wait().await.expect("curl ends");
    assert!(status.success(), "curl {args:?} failed: {status}");
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_arrives_event_by_event_over_http1_and_http2_with_curl() {
    if !have("curl") {
        return;
    }
    let backend = TestBackend::start("sse").await;
    let (addr, _stop) = proxy(&format!(
        "routes:\n  - host: app.test\n    backends: [\"{}\"]\n",
        backend.addr
    ))
    .await;
    let url = format!("http://{addr}/sse");
    for args in [&["--http1.1"][..], &["--http2-prior-knowledge"][..]] {
        let events = curl_sse(args, &url).await;
        let data: Vec<&str> = events.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(data, ["data: 0", "data: 1", "data: 2"], "{args:?}");
        // The backend waits 400 ms between events: a buffering proxy would deliver them
        // together at the end.
        assert!(
            events[2].1 >= Duration::from_millis(600),
            "{args:?}: the events came together: {events:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2load_over_http2_gets_every_request_answered() {
    if !have("h2load") {
        return;
    }
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    let (addr, _stop) = proxy(&format!(
        "routes:\n  - host: app.test\n    backends: [\"{}\", \"{}\"]\n",
        a.addr, b.addr
    ))
    .await;
    let out = tokio::process::Command::new("h2load")
        .args([
            "-n",
            "2000",
            "-c",
            "4",
            "-m",
            "10",
            "-H",
            ":authority: app.test",
        ])
        .arg(format!("http://{addr}/"))
        .output()
        .await
        .expect("h2load runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "h2load failed: {text}");
    assert!(
        text.contains(
            "requests: 2000 total, 2000 started, 2000 done, 2000 succeeded, 0 failed, 0 errored"
        ),
        "{text}"
    );
    assert!(text.contains("status codes: 2000 2xx"), "{text}");
    assert!(text.contains("h2c"), "HTTP/2 was spoken: {text}");
    // Both backends answered, so the load went through the balancer.
    assert!(
        a.hits() > 0 && b.hits() > 0,
        "a {} b {}",
        a.hits(),
        b.hits()
    );
}
