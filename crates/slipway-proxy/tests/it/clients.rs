//! Real clients through the proxy: a WebSocket echo (tokio-tungstenite on both ends) over
//! HTTP/1.1 and over HTTP/2 (RFC 8441, h2c and TLS), an SSE stream read by curl over
//! HTTP/1.1 and over HTTP/2 (h2c, prior knowledge), and a bounded h2load run over HTTP/2.
//! A missing curl or h2load skips its test with a message.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use slipway_proxy::{Config, Proxy, RouteTable};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_util::sync::CancellationToken;

use super::serve::TestBackend;

/// A WebSocket server echoing every message (and choosing the first subprotocol asked
/// for), closing when asked, until the test ends.
async fn websocket_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                // The callback's error type is tungstenite's, not ours to box.
                #[allow(clippy::result_large_err)]
                let choose = |req: &Request, mut resp: Response| {
                    let first = req
                        .headers()
                        .get("sec-websocket-protocol")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.split(',').next())
                        .and_then(|p| p.trim().parse().ok());
                    if let Some(p) = first {
                        resp.headers_mut().insert("sec-websocket-protocol", p);
                    }
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, choose).await else {
                    return;
                };
                // A close is answered by tungstenite on the next read, which then ends.
                while let Some(Ok(msg)) = ws.next().await {
                    if !msg.is_close() && ws.send(msg).await.is_err() {
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

/// An HTTP/2 client over `io`, once the server's SETTINGS allowed extended CONNECT
/// (RFC 8441 3; h2 servers reset a `:protocol` request otherwise).
async fn h2_client<IO>(io: IO) -> SendRequest<Empty<Bytes>>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, mut conn): (SendRequest<Empty<Bytes>>, _) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .expect("h2 handshake");
    // The handshake returns before the server's SETTINGS are read: drive the connection
    // until they are.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !conn.is_extended_connect_protocol_enabled() {
        assert!(
            Instant::now() < deadline,
            "the proxy's SETTINGS did not enable extended CONNECT"
        );
        tokio::select! {
            r = &mut conn => panic!("the h2 connection ended: {r:?}"),
            () = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
    }
    tokio::spawn(conn);
    send
}

/// An extended CONNECT for a WebSocket at `uri` (its scheme, authority and path are the
/// pseudo-headers), asking for the `chat` subprotocol.
async fn h2_websocket_request(
    send: &mut SendRequest<Empty<Bytes>>,
    uri: &str,
) -> hyper::Response<hyper::body::Incoming> {
    let mut req = hyper::Request::connect(uri)
        .header("sec-websocket-version", "13")
        .header("sec-websocket-protocol", "chat")
        .body(Empty::new())
        .expect("request");
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    send.send_request(req).await.expect("h2 response")
}

/// A WebSocket over HTTP/2 at `uri`, through the echo backend: the 200 (RFC 8441 5: no
/// accept, the subprotocol passed back), then text and binary messages echoed, then a close.
async fn h2_websocket_echoes(send: &mut SendRequest<Empty<Bytes>>, uri: &str) {
    let mut resp = h2_websocket_request(send, uri).await;
    assert_eq!(resp.status(), 200, "{uri}: {resp:?}");
    assert_eq!(resp.headers()["sec-websocket-protocol"], "chat");
    assert!(!resp.headers().contains_key("sec-websocket-accept"));
    let upgraded = hyper::upgrade::on(&mut resp).await.expect("the h2 stream");
    let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await;
    for i in 0..10 {
        let text = format!("h2 message {i} {}", "y".repeat(i * 2000));
        ws.send(Message::text(text.clone())).await.expect("send");
        match ws.next().await {
            Some(Ok(Message::Text(back))) => assert_eq!(back.as_str(), text),
            other => panic!("{uri}: expected the echo of message {i}, got {other:?}"),
        }
        let bytes: Vec<u8> = (0..=255u8).cycle().take(i * 700 + 1).collect();
        ws.send(Message::binary(bytes.clone()))
            .await
            .expect("send binary");
        match ws.next().await {
            Some(Ok(Message::Binary(back))) => assert_eq!(&back[..], &bytes[..]),
            other => panic!("{uri}: expected the binary echo {i}, got {other:?}"),
        }
    }
    ws.close(None).await.expect("close");
    match ws.next().await {
        Some(Ok(Message::Close(_))) | None => {}
        other => panic!("{uri}: expected the close echoed, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_echoes_through_the_proxy_over_http2_h2c_and_tls() {
    let echo = websocket_echo().await;
    let ca = super::tls::test_ca("websocket test CA");
    let (chain, key) = super::tls::leaf(&ca, &["app.test"], false);
    let data = tempfile::tempdir().expect("tempdir");
    let edge = super::tls::start_edge(
        &format!("routes:\n  - host: app.test\n    backends: [\"{echo}\"]\n    tls: app.test\n    http: serve\n"),
        data.path(),
    )
    .await;
    edge.store
        .add_uploaded("app.test", chain.as_bytes(), key.as_bytes())
        .expect("certificate");

    // h2c by prior knowledge on the plain listener: two WebSockets on one connection.
    let mut send = h2_client(TcpStream::connect(edge.http).await.expect("connect")).await;
    h2_websocket_echoes(&mut send, "http://app.test/ws").await;
    h2_websocket_echoes(&mut send, "http://app.test/ws/again").await;

    // HTTPS, HTTP/2 by ALPN.
    let config = crate::tls::client_config(&ca.pem, &[b"h2"]);
    let tcp = TcpStream::connect(edge.https).await.expect("connect");
    let name = rustls_pki_types::ServerName::try_from("app.test").expect("name");
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("TLS handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut send = h2_client(tls).await;
    h2_websocket_echoes(&mut send, "https://app.test/ws").await;
}

/// A backend that answers every request with a 404 (no WebSocket here), counting them.
async fn not_found_backend() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = hits.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let hits = counted.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    async {
                        let mut resp = hyper::Response::new(http_body_util::Full::new(
                            Bytes::from_static(b"no websocket here\n"),
                        ));
                        *resp.status_mut() = hyper::StatusCode::NOT_FOUND;
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_websocket_a_backend_refuses_gets_its_answer_and_plain_connect_is_refused() {
    let (backend, hits) = not_found_backend().await;
    let (addr, _stop) = proxy(&format!(
        "routes:\n  - host: app.test\n    backends: [\"{backend}\"]\n"
    ))
    .await;
    let mut send = h2_client(TcpStream::connect(addr).await.expect("connect")).await;

    // The backend's 404 goes back as it is, its body too, and no tunnel opens.
    let mut resp = h2_websocket_request(&mut send, "http://app.test/ws").await;
    assert_eq!(resp.status(), 404);
    let upgrade = hyper::upgrade::on(&mut resp);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(&body[..], b"no websocket here\n");
    assert!(upgrade.await.is_err(), "no tunnel on a 404");
    assert_eq!(hits.load(std::sync::atomic::Ordering::Relaxed), 1);

    // A CONNECT without `:protocol` asks for a tunnel to where it names: refused before any
    // route, over HTTP/2 and HTTP/1.1, the backend never asked.
    let plain = hyper::Request::connect("app.test:443")
        .body(Empty::new())
        .expect("request");
    let resp = send.send_request(plain).await.expect("h2 response");
    assert_eq!(resp.status(), 501);
    let mut h1 = TcpStream::connect(addr).await.expect("connect");
    h1.write_all(b"CONNECT app.test:443 HTTP/1.1\r\nhost: app.test:443\r\n\r\n")
        .await
        .expect("write");
    let mut head = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), h1.read(&mut head))
        .await
        .expect("an answer in time")
        .expect("read");
    let head = String::from_utf8_lossy(&head[..n]);
    assert!(head.starts_with("HTTP/1.1 501 "), "{head}");
    assert_eq!(hits.load(std::sync::atomic::Ordering::Relaxed), 1);
}
