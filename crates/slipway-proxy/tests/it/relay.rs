//! The plain HTTP/1.1 fast path against raw backends and raw clients: what hyper would
//! have done for it (pipelining, chunked and close-delimited bodies, HEAD, stale
//! kept-alive connections), and what it must leave to hyper (ambiguous framing).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use slipway_proxy::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::serve::start_proxy;

/// A backend speaking raw HTTP/1.1: each request's path picks a canned answer.
struct RawBackend {
    addr: std::net::SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
}

/// What the raw backend answers to a path; whether it closes the connection after.
fn canned(path: &str) -> (String, bool) {
    match path {
        "/chunked" => (
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-sum\r\n\r\n\
             5\r\nhello\r\n6;note=1\r\n world\r\n0\r\nx-sum: 11\r\n\r\n"
                .into(),
            false,
        ),
        "/close" => ("HTTP/1.1 200 OK\r\n\r\nuntil the end".into(), true),
        // Kept alive in words, closed in deeds: what a backend's keep-alive timeout does.
        "/one-shot" => (
            "HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nshot".into(),
            true,
        ),
        "/early-hints" => (
            "HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n\
             HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                .into(),
            false,
        ),
        path => (
            format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-seen-host: yes\r\n\r\n{path}",
                path.len()
            ),
            false,
        ),
    }
}

impl RawBackend {
    async fn start() -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().expect("addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (c, r) = (connections.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                let r = r.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let Some(end) = find_head_end(&buf) else {
                            let mut chunk = [0u8; 4096];
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        buf.drain(..end);
                        // The body, skipped: by its length, or to the last chunk.
                        let lower = head.to_ascii_lowercase();
                        let body_end = if lower.contains("transfer-encoding: chunked") {
                            loop {
                                if let Some(i) = buf.windows(5).position(|w| w == b"0\r\n\r\n") {
                                    break i + 5;
                                }
                                let mut chunk = [0u8; 4096];
                                match s.read(&mut chunk).await {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                                }
                            }
                        } else {
                            let len = lower
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length: "))
                                .and_then(|v| v.trim().parse::<usize>().ok())
                                .unwrap_or(0);
                            while buf.len() < len {
                                let mut chunk = [0u8; 4096];
                                match s.read(&mut chunk).await {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                                }
                            }
                            len
                        };
                        buf.drain(..body_end);
                        r.fetch_add(1, Ordering::SeqCst);
                        let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
                        let (answer, close) = canned(&path);
                        let answer = if head.starts_with("HEAD ") {
                            answer
                                .split("\r\n\r\n")
                                .next()
                                .unwrap_or_default()
                                .to_owned()
                                + "\r\n\r\n"
                        } else {
                            answer
                        };
                        if s.write_all(answer.as_bytes()).await.is_err() || close {
                            return;
                        }
                    }
                });
            }
        });
        RawBackend {
            addr,
            connections,
            requests,
        }
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

async fn proxy_to(backend: &RawBackend) -> crate::serve::TestProxy {
    start_proxy(
        Config::default(),
        &format!(
            "routes:\n  - host: app.test\n    backends: [\"{}\"]\n",
            backend.addr
        ),
    )
    .await
}

/// Reads from `s` until it closes or `limit` passes; what came.
async fn read_all(s: &mut TcpStream, limit: Duration) -> String {
    let mut got = Vec::new();
    let _ = tokio::time::timeout(limit, s.read_to_end(&mut got)).await;
    String::from_utf8_lossy(&got).into_owned()
}

/// Reads one response whose body has a Content-Length.
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> (String, String) {
    loop {
        if let Some(end) = find_head_end(buf) {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            if buf.len() >= end + len {
                let body = String::from_utf8_lossy(&buf[end..end + len]).into_owned();
                buf.drain(..end + len);
                return (head, body);
            }
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .expect("a response within 5 s")
            .expect("read");
        assert!(
            n > 0,
            "closed mid-response: {:?}",
            String::from_utf8_lossy(buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order_over_one_backend_connection() {
    let backend = RawBackend::start().await;
    let p = proxy_to(&backend).await;
    let mut s = TcpStream::connect(p.addr).await.expect("connect");
    let mut batch = String::new();
    for path in ["/a", "/bb", "/ccc"] {
        batch.push_str(&format!("GET {path} HTTP/1.1\r\nHost: app.test\r\n\r\n"));
    }
    batch.push_str("HEAD /dddd HTTP/1.1\r\nHost: app.test\r\n\r\n");
    s.write_all(batch.as_bytes()).await.expect("send");
    let mut buf = Vec::new();
    for path in ["/a", "/bb", "/ccc"] {
        let (head, body) = read_response(&mut s, &mut buf).await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            head.to_ascii_lowercase().contains("x-request-id: "),
            "{head}"
        );
        assert_eq!(body, path);
    }
    // A HEAD answer has a length and no body: the next answer is not waited for in it.
    s.write_all(b"GET /after-head HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await
        .expect("send");
    let mut head_only = Vec::new();
    loop {
        if let Some(end) = find_head_end(&buf) {
            head_only.extend(buf.drain(..end));
            break;
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.expect("read");
        assert!(n > 0);
        buf.extend_from_slice(&chunk[..n]);
    }
    assert!(String::from_utf8_lossy(&head_only).contains("content-length: 5"));
    let (_, body) = read_response(&mut s, &mut buf).await;
    assert_eq!(body, "/after-head");
    assert_eq!(backend.requests.load(Ordering::SeqCst), 5);
    assert_eq!(
        backend.connections.load(Ordering::SeqCst),
        1,
        "the backend connection is kept alive and reused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_close_delimited_and_interim_answers_are_relayed_whole() {
    let backend = RawBackend::start().await;
    let p = proxy_to(&backend).await;
    let c = crate::serve::client();
    let get = |path: &'static str| {
        let c = c.clone();
        let url = format!("http://{}{path}", p.addr);
        async move {
            let r = c
                .get(url)
                .header("host", "app.test")
                .send()
                .await
                .expect("request");
            let status = r.status();
            (status, r.text().await.expect("body"))
        }
    };
    for _ in 0..3 {
        assert_eq!(get("/chunked").await.1, "hello world");
    }
    assert_eq!(get("/close").await.1, "until the end");
    assert_eq!(
        get("/early-hints").await,
        (reqwest::StatusCode::OK, "ok".into())
    );

    // On the wire: chunks and trailers as the backend sent them, then the connection goes
    // on; a body that ends with its connection ends the client's as well.
    let mut s = TcpStream::connect(p.addr).await.expect("connect");
    s.write_all(b"GET /chunked HTTP/1.1\r\nHost: app.test\r\n\r\nGET /close HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await
        .expect("send");
    let all = read_all(&mut s, Duration::from_secs(5)).await;
    assert!(
        all.contains(
            "5\r\nhello\r\n6;note=1\r\n world\r\n0\r\nx-sum: 11\r\n\r\nHTTP/1.1 200 OK\r\n"
        ),
        "{all:?}"
    );
    assert!(all.ends_with("\r\n\r\nuntil the end"), "{all:?}");
    assert!(all.contains("connection: close\r\n"), "{all:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_closing_its_kept_alive_connections_fails_no_get() {
    let backend = RawBackend::start().await;
    let p = proxy_to(&backend).await;
    let c = crate::serve::client();
    for i in 0..30 {
        let r = c
            .get(format!("http://{}/one-shot", p.addr))
            .header("host", "app.test")
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 200, "request {i}");
        assert_eq!(r.text().await.expect("body"), "shot");
        if i % 3 == 0 {
            // Give the backend's close time to arrive, and none at other times.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert_eq!(backend.requests.load(Ordering::SeqCst), 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_framing_goes_to_hyper_and_never_reaches_the_backend_as_it_came() {
    let backend = RawBackend::start().await;
    let p = proxy_to(&backend).await;
    for request in [
        // Two lengths that disagree: no proxy may pick one.
        "POST /x HTTP/1.1\r\nHost: app.test\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        // A length that is not a number.
        "POST /x HTTP/1.1\r\nHost: app.test\r\nContent-Length: 1x\r\n\r\nab",
        // Two hosts.
        "GET /x HTTP/1.1\r\nHost: app.test\r\nHost: other.test\r\n\r\n",
    ] {
        let mut s = TcpStream::connect(p.addr).await.expect("connect");
        s.write_all(request.as_bytes()).await.expect("send");
        let answer = read_all(&mut s, Duration::from_secs(3)).await;
        assert!(
            answer.starts_with("HTTP/1.1 400"),
            "{request:?} got {answer:?}"
        );
    }
    assert_eq!(backend.requests.load(Ordering::SeqCst), 0);

    // A chunked request body goes through hyper, re-framed, and the connection goes on.
    let mut s = TcpStream::connect(p.addr).await.expect("connect");
    s.write_all(
        b"POST /chunked-in HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n\
          3\r\nabc\r\n0\r\n\r\nGET /next HTTP/1.1\r\nHost: app.test\r\n\r\n",
    )
    .await
    .expect("send");
    let mut buf = Vec::new();
    let (_, first) = read_response(&mut s, &mut buf).await;
    assert_eq!(first, "/chunked-in");
    let (_, second) = read_response(&mut s, &mut buf).await;
    assert_eq!(second, "/next");
}
