//! The data plane on real loopback TCP: a proxy in front of small hyper backends that say
//! which of them answered. Loads are bounded, and the load loops count every response and
//! every connection error themselves.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use slipway_proxy::{BackendState, Balance, Config, Proxy, RouteTable};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

type TestBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// A body fed from a channel, so a test decides when each chunk goes out.
struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b))))
    }
}

fn text(s: String) -> TestBody {
    Full::new(Bytes::from(s)).boxed()
}

/// A backend named `name`: `/` answers its name; `/slow?ms=N` after N ms; `/sse` three
/// events 400 ms apart; `/upload` the byte count and sum of the body; `/headers` the
/// request's headers as JSON; an `Upgrade` request is switched and echoed.
pub(crate) struct TestBackend {
    pub(crate) addr: SocketAddr,
    kill: CancellationToken,
    hits: Arc<AtomicUsize>,
    dead: tokio::sync::watch::Receiver<bool>,
}

impl TestBackend {
    pub(crate) async fn start(name: &str) -> TestBackend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().expect("addr");
        let kill = CancellationToken::new();
        let hits = Arc::new(AtomicUsize::new(0));
        let name: Arc<str> = name.into();
        let (k, h) = (kill.clone(), hits.clone());
        let (dead_tx, dead) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            // Connections live in the set: a kill drops them all, as a dying process.
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let (stream, _) = tokio::select! {
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                    () = k.cancelled() => {
                        // Every connection closed before `kill` returns.
                        drop(listener);
                        conns.shutdown().await;
                        dead_tx.send_replace(true);
                        return;
                    }
                };
                let (name, hits) = (name.clone(), h.clone());
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        hits.fetch_add(1, Ordering::Relaxed);
                        backend_answer(name.clone(), req)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        TestBackend {
            addr,
            kill,
            hits,
            dead,
        }
    }

    /// Closes the listener and every connection, as a dying process, and returns once done.
    async fn kill(&self) {
        self.kill.cancel();
        let _ = self.dead.clone().wait_for(|dead| *dead).await;
    }

    /// Requests this backend has received.
    pub(crate) fn hits(&self) -> usize {
        self.hits.load(Ordering::Relaxed)
    }
}

async fn backend_answer(
    name: Arc<str>,
    mut req: Request<Incoming>,
) -> Result<Response<TestBody>, Infallible> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let mut resp = match path.as_str() {
        _ if req.headers().contains_key(hyper::header::UPGRADE) => {
            let on = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(up) = on.await {
                    let mut io = TokioIo::new(up);
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = io.read(&mut buf).await {
                        if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            });
            let mut r = Response::new(text(String::new()));
            *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            r.headers_mut()
                .insert("upgrade", hyper::header::HeaderValue::from_static("echo"));
            r.headers_mut().insert(
                "connection",
                hyper::header::HeaderValue::from_static("upgrade"),
            );
            r
        }
        "/slow" => {
            let ms = query
                .strip_prefix("ms=")
                .and_then(|m| m.parse().ok())
                .unwrap_or(1000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Response::new(text(name.to_string()))
        }
        "/sse" => {
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            tokio::spawn(async move {
                for i in 0..3 {
                    if tx
                        .send(Bytes::from(format!("data: {i}\n\n")))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(400)).await;
                }
            });
            let mut r = Response::new(ChannelBody(rx).boxed());
            r.headers_mut().insert(
                "content-type",
                hyper::header::HeaderValue::from_static("text/event-stream"),
            );
            r
        }
        "/upload" => {
            let mut body = req.into_body();
            let (mut len, mut sum) = (0u64, 0u64);
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else { break };
                if let Some(data) = frame.data_ref() {
                    len += data.len() as u64;
                    sum = data.iter().fold(sum, |s, b| s.wrapping_add(u64::from(*b)));
                }
            }
            Response::new(text(format!("{len} {sum}")))
        }
        "/headers" => {
            let map: BTreeMap<String, String> = req
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("?").to_owned()))
                .collect();
            Response::new(text(serde_json::to_string(&map).unwrap_or_default()))
        }
        _ => Response::new(text(name.to_string())),
    };
    resp.headers_mut().insert(
        "x-backend",
        hyper::header::HeaderValue::from_str(&name).expect("name"),
    );
    resp.headers_mut().insert(
        "x-path",
        hyper::header::HeaderValue::from_str(&format!("{path}?{query}")).expect("path"),
    );
    Ok(resp)
}

fn table(yaml: &str) -> RouteTable {
    match slipway_proxy::file::parse(yaml, "routes.yml") {
        Ok(set) => RouteTable::build([set]),
        Err(d) => panic!("routes: {d:?}"),
    }
}

pub(crate) struct TestProxy {
    pub(crate) proxy: Arc<Proxy>,
    pub(crate) addr: SocketAddr,
    _stop: tokio_util::sync::DropGuard,
}

pub(crate) async fn start_proxy(config: Config, routes: &str) -> TestProxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let addr = listener.local_addr().expect("addr");
    let proxy = Arc::new(Proxy::new(config, table(routes)));
    let stop = CancellationToken::new();
    tokio::spawn(slipway_proxy::serve_http(
        proxy.clone(),
        listener,
        stop.clone(),
    ));
    TestProxy {
        proxy,
        addr,
        _stop: stop.drop_guard(),
    }
}

pub(crate) fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
}

async fn get(c: &reqwest::Client, proxy: SocketAddr, host: &str, path: &str) -> reqwest::Response {
    c.get(format!("http://{proxy}{path}"))
        .header("host", host)
        .send()
        .await
        .expect("request through the proxy")
}

/// What a bounded load saw.
#[derive(Debug, Default)]
struct Load {
    ok: usize,
    failed: Vec<String>,
    by_backend: BTreeMap<String, usize>,
}

/// `clients` concurrent loops of GETs for `duration`.
async fn load(proxy: SocketAddr, host: &'static str, clients: usize, duration: Duration) -> Load {
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for _ in 0..clients {
        tasks.push(tokio::spawn(async move {
            let c = client();
            let mut seen = Load::default();
            while Instant::now() < deadline {
                let r = c
                    .get(format!("http://{proxy}/"))
                    .header("host", host)
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == StatusCode::OK => {
                        let who = r
                            .headers()
                            .get("x-backend")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("?")
                            .to_owned();
                        match r.bytes().await {
                            Ok(_) => {
                                seen.ok += 1;
                                *seen.by_backend.entry(who).or_default() += 1;
                            }
                            Err(e) => seen.failed.push(format!("body: {e}")),
                        }
                    }
                    Ok(r) => seen.failed.push(format!(
                        "{}: {}",
                        r.status(),
                        r.text().await.unwrap_or_default()
                    )),
                    Err(e) => seen.failed.push(format!("error: {e}")),
                }
            }
            seen
        }));
    }
    let mut all = Load::default();
    for t in tasks {
        let l = t.await.expect("load task");
        all.ok += l.ok;
        all.failed.extend(l.failed);
        for (k, v) in l.by_backend {
            *all.by_backend.entry(k).or_default() += v;
        }
    }
    all
}

fn two_backends(host: &str, a: SocketAddr, b: SocketAddr) -> String {
    format!("routes:\n  - host: {host}\n    backends: [\"{a}\", \"{b}\"]\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_and_path_404s_unknown_hosts_and_503s_without_backends() {
    let web = TestBackend::start("web").await;
    let api = TestBackend::start("api").await;
    let routes = format!(
        r#"
routes:
  - host: app.test
    backends: ["{web}"]
  - host: app.test
    path: /api
    strip_prefix: true
    backends: ["{api}"]
    request_headers: {{X-Added: yes}}
    response_headers: {{X-Frame-Options: DENY}}
  - host: "*.wild.test"
    backends: ["{api}"]
  - host: down.test
    backends: [{{address: "{web}", weight: 0}}]
"#,
        web = web.addr,
        api = api.addr
    );
    let p = start_proxy(Config::default(), &routes).await;
    let c = client();
    let r = get(&c, p.addr, "app.test", "/page?q=1").await;
    assert_eq!(r.headers()["x-backend"], "web");
    assert_eq!(r.headers()["x-path"], "/page?q=1");
    let r = get(&c, p.addr, "APP.test:8080", "/api/users?id=2").await;
    assert_eq!(r.headers()["x-backend"], "api");
    assert_eq!(
        r.headers()["x-path"],
        "/users?id=2",
        "the prefix is stripped"
    );
    assert_eq!(r.headers()["x-frame-options"], "DENY");
    let r = get(&c, p.addr, "app.test", "/api/headers").await;
    let seen: BTreeMap<String, String> = r.json().await.expect("json");
    assert_eq!(seen["x-added"], "yes");
    assert_eq!(seen["host"], "app.test", "the client's Host goes on");
    assert_eq!(
        get(&c, p.addr, "a.wild.test", "/").await.headers()["x-backend"],
        "api"
    );
    let r = get(&c, p.addr, "evil.test", "/").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(
        r.text()
            .await
            .expect("body")
            .contains("no route for host `evil.test`")
    );
    assert_eq!(get(&c, p.addr, "a.b.wild.test", "/").await.status(), 404);
    let r = get(&c, p.addr, "down.test", "/").await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers()["retry-after"], "5");
    // An absolute-form request for another host is not proxied there: it is routed by
    // the Host it names, which has no route.
    let mut raw = TcpStream::connect(p.addr).await.expect("connect");
    raw.write_all(b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n")
        .await
        .expect("write");
    let mut buf = vec![0u8; 512];
    let n = raw.read(&mut buf).await.expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 404"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_split_backends_and_backend_sets() {
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    let canary = TestBackend::start("canary").await;
    let routes = format!(
        r#"
routes:
  - host: w.test
    backends: ["{a}", {{address: "{b}", weight: 3}}]
  - host: c.test
    backend_sets:
      - {{name: stable, weight: 9, backends: ["{a}", "{b}"]}}
      - {{name: canary, weight: 1, backends: ["{canary}"]}}
"#,
        a = a.addr,
        b = b.addr,
        canary = canary.addr
    );
    for balance in [Balance::RoundRobin, Balance::LeastRequests] {
        let p = start_proxy(
            Config {
                balance,
                ..Config::default()
            },
            &routes,
        )
        .await;
        let c = client();
        let mut count: BTreeMap<String, usize> = BTreeMap::new();
        for _ in 0..400 {
            let r = get(&c, p.addr, "w.test", "/").await;
            *count
                .entry(r.headers()["x-backend"].to_str().expect("name").to_owned())
                .or_default() += 1;
        }
        // Sequential requests: least-requests sees equal loads and picks at random
        // (weighted ties favour neither), so only round robin must honour 1:3.
        if balance == Balance::RoundRobin {
            assert_eq!(count.get("a"), Some(&100), "{count:?}");
            assert_eq!(count.get("b"), Some(&300), "{count:?}");
        } else {
            assert!(count.get("a").is_some_and(|&n| n > 0), "{count:?}");
            assert!(count.get("b").is_some_and(|&n| n > 0), "{count:?}");
        }
        let mut count: BTreeMap<String, usize> = BTreeMap::new();
        for _ in 0..500 {
            let r = get(&c, p.addr, "c.test", "/").await;
            *count
                .entry(r.headers()["x-backend"].to_str().expect("name").to_owned())
                .or_default() += 1;
        }
        let canary_share = count.get("canary").copied().unwrap_or(0);
        assert!((35..=65).contains(&canary_share), "{balance:?}: {count:?}");
        if balance == Balance::RoundRobin {
            assert_eq!(canary_share, 50, "{count:?}");
            assert_eq!(count.get("a"), Some(&225), "{count:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_two_backends_under_load_fails_no_request() {
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    let p = start_proxy(Config::default(), &two_backends("k.test", a.addr, b.addr)).await;
    let running = tokio::spawn(load(p.addr, "k.test", 4, Duration::from_secs(3)));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let before = b.hits.load(Ordering::Relaxed);
    b.kill().await;
    let seen = running.await.expect("load");
    assert!(before > 0, "b served before it was killed");
    assert!(
        seen.failed.is_empty(),
        "{} failed: {:?}",
        seen.failed.len(),
        &seen.failed[..seen.failed.len().min(5)]
    );
    assert!(seen.ok > 200, "too few requests to mean anything: {seen:?}");
    assert!(
        seen.by_backend.get("a").is_some_and(|&n| n > seen.ok / 2),
        "{seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_swap_under_load_fails_no_request() {
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    let p = start_proxy(
        Config::default(),
        &format!(
            "routes:\n  - host: s.test\n    backends: [\"{}\"]\n",
            a.addr
        ),
    )
    .await;
    let running = tokio::spawn(load(p.addr, "s.test", 4, Duration::from_secs(3)));
    // Every 25 ms the route moves between b, both and a: each swap drains a backend that
    // requests holding the previous table may still pick.
    let tables = [
        format!(
            "routes:\n  - host: s.test\n    backends: [\"{}\"]\n",
            b.addr
        ),
        two_backends("s.test", a.addr, b.addr),
        format!(
            "routes:\n  - host: s.test\n    backends: [\"{}\"]\n",
            a.addr
        ),
    ];
    let start = Instant::now();
    let mut i = 0;
    while start.elapsed() < Duration::from_millis(2800) {
        p.proxy.set_routes(table(&tables[i % tables.len()]));
        i += 1;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let seen = running.await.expect("load");
    assert!(
        seen.failed.is_empty(),
        "{} failed: {:?}",
        seen.failed.len(),
        &seen.failed[..seen.failed.len().min(5)]
    );
    assert!(i > 50 && seen.ok > 200, "{i} swaps, {seen:?}");
    assert!(seen.by_backend.len() == 2, "both served: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_drained_by_a_swap_finishes_its_slow_request() {
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    let p = start_proxy(
        Config::default(),
        &format!(
            "routes:\n  - host: d.test\n    backends: [\"{}\"]\n",
            a.addr
        ),
    )
    .await;
    let c = client();
    let slow = {
        let c = c.clone();
        let addr = p.addr;
        tokio::spawn(async move {
            let r = get(&c, addr, "d.test", "/slow?ms=1500").await;
            (r.status(), r.text().await.unwrap_or_default())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let live_a = p
        .proxy
        .snapshot()
        .backends()
        .find(|l| l.address.as_str() == a.addr.to_string())
        .cloned()
        .expect("a is live");
    assert_eq!(live_a.in_flight(), 1);
    p.proxy.set_routes(table(&format!(
        "routes:\n  - host: d.test\n    backends: [\"{}\"]\n",
        b.addr
    )));
    assert_eq!(live_a.state(), BackendState::Draining);
    let hits_a = a.hits.load(Ordering::Relaxed);
    for _ in 0..20 {
        assert_eq!(
            get(&c, p.addr, "d.test", "/").await.headers()["x-backend"],
            "b"
        );
    }
    assert_eq!(
        a.hits.load(Ordering::Relaxed),
        hits_a,
        "a drained gets nothing new"
    );
    let (status, body) = slow.await.expect("slow request");
    assert_eq!((status, body.as_str()), (StatusCode::OK, "a"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(live_a.state(), BackendState::Gone);
    assert_eq!(live_a.in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_is_passed_through_and_echoes() {
    let a = TestBackend::start("a").await;
    let p = start_proxy(
        Config::default(),
        &format!(
            "routes:\n  - host: ws.test\n    backends: [\"{}\"]\n",
            a.addr
        ),
    )
    .await;
    let mut s = TcpStream::connect(p.addr).await.expect("connect");
    s.write_all(
        b"GET /socket HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .await
    .expect("handshake");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut byte).await.expect("read head"),
            1,
            "closed: {head:?}"
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    // A swap while the tunnel is open does not close it (the backend stays).
    p.proxy.set_routes(table(&format!(
        "routes:\n  - host: ws.test\n    path: /x\n    backends: [\"{}\"]\n  - host: ws.test\n    backends: [\"{}\"]\n",
        a.addr, a.addr
    )));
    for msg in ["hello", "through the proxy"] {
        s.write_all(msg.as_bytes()).await.expect("send");
        let mut buf = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
            .await
            .expect("echo in time")
            .expect("echo");
        assert_eq!(buf, msg.as_bytes());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_stream_arrives_event_by_event() {
    let a = TestBackend::start("a").await;
    let p = start_proxy(
        Config::default(),
        &format!(
            "routes:\n  - host: sse.test\n    backends: [\"{}\"]\n",
            a.addr
        ),
    )
    .await;
    let start = Instant::now();
    let mut r = get(&client(), p.addr, "sse.test", "/sse").await;
    let mut arrivals = Vec::new();
    let mut all = String::new();
    while let Some(chunk) = r.chunk().await.expect("chunk") {
        arrivals.push(start.elapsed());
        all.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert_eq!(all, "data: 0\n\ndata: 1\n\ndata: 2\n\n");
    assert!(arrivals.len() >= 3, "{arrivals:?}");
    // The first event comes before the second is even sent (400 ms later).
    assert!(arrivals[0] < Duration::from_millis(300), "{arrivals:?}");
    assert!(
        arrivals[arrivals.len() - 1] > Duration::from_millis(700),
        "{arrivals:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_are_set_and_trusted_only_from_configured_networks() {
    let a = TestBackend::start("a").await;
    let routes = format!(
        "routes:\n  - host: h.test\n    backends: [\"{}\"]\n",
        a.addr
    );
    let spoof = |c: &reqwest::Client, addr: SocketAddr| {
        c.get(format!("http://{addr}/headers"))
            .header("host", "h.test")
            .header("x-forwarded-for", "6.6.6.6")
            .header("x-real-ip", "6.6.6.6")
            .header("x-forwarded-proto", "https")
            .header("connection", "x-secret")
            .header("x-secret", "hop")
            .header("x-request-id", "req-42")
            .send()
    };
    let c = client();
    let p = start_proxy(Config::default(), &routes).await;
    let r = spoof(&c, p.addr).await.expect("request");
    assert_eq!(r.headers()["x-request-id"], "req-42", "kept");
    let seen: BTreeMap<String, String> = r.json().await.expect("json");
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-real-ip"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-host"], "h.test");
    assert_eq!(seen["x-forwarded-port"], p.addr.port().to_string());
    assert_eq!(seen["x-request-id"], "req-42");
    assert!(
        !seen.contains_key("x-secret"),
        "named by Connection: hop-by-hop"
    );
    let r = get(&c, p.addr, "h.test", "/headers").await;
    let id = r.headers()["x-request-id"].to_str().expect("id").to_owned();
    let seen: BTreeMap<String, String> = r.json().await.expect("json");
    assert_eq!(id.len(), 32, "{id}");
    assert_eq!(
        seen["x-request-id"], id,
        "the backend sees the id the client gets"
    );

    let trusting = start_proxy(
        Config {
            trusted_proxies: vec![slipway_proxy::Cidr::parse("127.0.0.0/8").expect("cidr")],
            ..Config::default()
        },
        &routes,
    )
    .await;
    let seen: BTreeMap<String, String> = spoof(&c, trusting.addr)
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(seen["x-forwarded-for"], "6.6.6.6, 127.0.0.1");
    assert_eq!(seen["x-real-ip"], "6.6.6.6");
    assert_eq!(seen["x-forwarded-proto"], "https");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_20_mb_upload_streams_through_whole() {
    let a = TestBackend::start("a").await;
    let p = start_proxy(
        Config::default(),
        &format!(
            "routes:\n  - host: up.test\n    backends: [\"{}\"]\n",
            a.addr
        ),
    )
    .await;
    let data: Vec<u8> = (0..20 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let sum = data.iter().fold(0u64, |s, b| s.wrapping_add(u64::from(*b)));
    // Chunked, as a streaming client sends it.
    let chunks: Vec<Result<Bytes, Infallible>> = data
        .chunks(64 * 1024)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let r = client()
        .post(format!("http://{}/upload", p.addr))
        .header("host", "up.test")
        .body(body)
        .send()
        .await
        .expect("upload");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.text().await.expect("body"),
        format!("{} {sum}", data.len())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_silent_clients_are_closed_by_the_timers() {
    let a = TestBackend::start("a").await;
    let p = start_proxy(
        Config {
            header_read_timeout: Duration::from_millis(500),
            idle_timeout: Duration::from_millis(800),
            ..Config::default()
        },
        &format!(
            "routes:\n  - host: t.test\n    backends: [\"{}\"]\n",
            a.addr
        ),
    )
    .await;
    // Each ends (EOF, reset or a 408) within the timeout and some slack, not never.
    async fn ends_within(mut s: TcpStream, limit: Duration) -> String {
        let mut buf = vec![0u8; 1024];
        let mut got = Vec::new();
        let r = tokio::time::timeout(limit, async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        assert!(
            r.is_ok(),
            "still open after {limit:?}: {:?}",
            String::from_utf8_lossy(&got)
        );
        String::from_utf8_lossy(&got).into_owned()
    }
    let start = Instant::now();
    let silent = TcpStream::connect(p.addr).await.expect("connect");
    ends_within(silent, Duration::from_secs(2)).await;
    let mut slowloris = TcpStream::connect(p.addr).await.expect("connect");
    slowloris
        .write_all(b"GET / HTTP/1.1\r\nHost: t.te")
        .await
        .expect("write");
    let said = ends_within(slowloris, Duration::from_secs(2)).await;
    assert!(
        said.is_empty() || said.starts_with("HTTP/1.1 408"),
        "{said}"
    );
    // A kept-alive connection is closed once idle, after its request was served.
    let mut kept = TcpStream::connect(p.addr).await.expect("connect");
    kept.write_all(b"GET / HTTP/1.1\r\nHost: t.test\r\n\r\n")
        .await
        .expect("write");
    let said = ends_within(kept, Duration::from_secs(3)).await;
    assert!(said.starts_with("HTTP/1.1 200"), "{said}");
    assert!(start.elapsed() < Duration::from_secs(6));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_is_served() {
    let a = TestBackend::start("a").await;
    let p = start_proxy(
        Config::default(),
        &format!(
            "routes:\n  - host: h2.test\n    backends: [\"{}\"]\n",
            a.addr
        ),
    )
    .await;
    let stream = TcpStream::connect(p.addr).await.expect("connect");
    let (mut send, conn) = hyper::client::conn::http2::handshake::<
        _,
        _,
        http_body_util::Empty<Bytes>,
    >(TokioExecutor::new(), TokioIo::new(stream))
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);
    let req = Request::get("http://h2.test/page")
        .body(http_body_util::Empty::new())
        .expect("request");
    let resp = send.send_request(req).await.expect("h2 response");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-backend"], "a");
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(&body[..], b"a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_provider_replaces_only_its_own_routes() {
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    let p = start_proxy(Config::default(), "routes: []").await;
    let set = |host: &str, backend: SocketAddr| {
        let t = table(&format!(
            "routes:\n  - host: {host}\n    backends: [\"{backend}\"]\n"
        ));
        slipway_proxy::RouteSet {
            routes: t.routes().to_vec(),
        }
    };
    p.proxy.set_provider("file", set("a.test", a.addr));
    p.proxy.set_provider("docker", set("b.test", b.addr));
    let c = client();
    assert_eq!(
        get(&c, p.addr, "a.test", "/").await.headers()["x-backend"],
        "a"
    );
    assert_eq!(
        get(&c, p.addr, "b.test", "/").await.headers()["x-backend"],
        "b"
    );
    p.proxy
        .set_provider("docker", slipway_proxy::RouteSet::default());
    assert_eq!(
        get(&c, p.addr, "a.test", "/").await.headers()["x-backend"],
        "a"
    );
    assert_eq!(
        get(&c, p.addr, "b.test", "/").await.status(),
        404,
        "an emptied provider's routes are gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sticky_cookie_keeps_a_client_on_its_backend_until_that_one_is_gone() {
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    let p = start_proxy(
        Config::default(),
        &format!(
            "routes:\n  - host: app.test\n    sticky: {{cookie: pin, http_only: true}}\n    backends: [\"{}\", \"{}\"]\n",
            a.addr, b.addr
        ),
    )
    .await;
    let c = client();
    let first = get(&c, p.addr, "app.test", "/").await;
    let set = first.headers()["set-cookie"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(
        set.starts_with("pin=") && set.contains("Path=/") && set.contains("HttpOnly"),
        "{set}"
    );
    assert!(
        !set.contains(&a.addr.to_string()) && !set.contains(&b.addr.to_string()),
        "{set}"
    );
    let pinned = first.headers()["x-backend"]
        .to_str()
        .expect("name")
        .to_owned();
    let cookie = set.split(';').next().expect("pair").to_owned();
    for _ in 0..10 {
        let r = c
            .get(format!("http://{}/", p.addr))
            .header("host", "app.test")
            .header("cookie", format!("other=1; {cookie}"))
            .send()
            .await
            .expect("request");
        assert_eq!(
            r.headers()["x-backend"],
            pinned.as_str(),
            "stays on its backend"
        );
        assert!(
            r.headers().get("set-cookie").is_none(),
            "no new cookie while pinned"
        );
    }
    // The pinned backend goes away: the client's request is retried on the other.
    let (gone, other) = if pinned == "a" { (&a, "b") } else { (&b, "a") };
    gone.kill().await;
    let r = c
        .get(format!("http://{}/", p.addr))
        .header("host", "app.test")
        .header("cookie", cookie.clone())
        .send()
        .await
        .expect("request");
    assert_eq!(r.headers()["x-backend"], other);
}
