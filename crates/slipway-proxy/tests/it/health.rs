//! Backend health on real loopback TCP: active HTTP and TCP checks move backends between
//! `starting`, `serving` and `unhealthy`; passive ejection moves traffic off a backend that
//! refuses connections, for a backoff that doubles, and never fails a route on its own.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use slipway_proxy::{BackendState, Config, PassiveHealth, Proxy, RouteTable};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A backend named `name`: `/health` answers 200 while `healthy`, else 500; `/fail` 500;
/// anything else its name.
struct Backend {
    addr: SocketAddr,
    healthy: Arc<AtomicBool>,
    hits: Arc<AtomicUsize>,
    _stop: tokio_util::sync::DropGuard,
}

impl Backend {
    async fn start(name: &'static str, healthy: bool) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let healthy = Arc::new(AtomicBool::new(healthy));
        let hits = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let (h, n, s) = (healthy.clone(), hits.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                    () = s.cancelled() => return,
                };
                let (h, n) = (h.clone(), n.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: hyper::Request<_>| {
                        let (h, n) = (h.clone(), n.clone());
                        async move {
                            let status = match req.uri().path() {
                                "/health" if h.load(Ordering::SeqCst) => StatusCode::OK,
                                "/health" | "/fail" => StatusCode::INTERNAL_SERVER_ERROR,
                                _ => {
                                    n.fetch_add(1, Ordering::SeqCst);
                                    StatusCode::OK
                                }
                            };
                            let mut r = Response::new(Full::new(Bytes::from(name)));
                            *r.status_mut() = status;
                            Ok::<_, Infallible>(r)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Backend {
            addr,
            healthy,
            hits,
            _stop: stop.drop_guard(),
        }
    }
}

struct Edge {
    proxy: Arc<Proxy>,
    addr: SocketAddr,
    _stop: tokio_util::sync::DropGuard,
}

async fn edge(routes: &str) -> Edge {
    let table = match slipway_proxy::file::parse(routes, "routes.yml") {
        Ok(set) => RouteTable::build([set]),
        Err(d) => panic!("routes: {d:?}"),
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let addr = listener.local_addr().expect("addr");
    let proxy = Arc::new(Proxy::new(Config::default(), table));
    let stop = CancellationToken::new();
    tokio::spawn(slipway_proxy::serve_http(
        proxy.clone(),
        listener,
        stop.clone(),
    ));
    Edge {
        proxy,
        addr,
        _stop: stop.drop_guard(),
    }
}

impl Edge {
    fn state(&self, backend: SocketAddr) -> Option<BackendState> {
        self.proxy
            .snapshot()
            .backends()
            .find(|b| b.address.as_str() == backend.to_string())
            .map(|b| b.state())
    }

    /// Waits (5 s at most) until `backend` is in `state`.
    async fn wait_state(&self, backend: SocketAddr, state: BackendState) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.state(backend) != Some(state) {
            assert!(
                Instant::now() < deadline,
                "{backend} is {:?}, not {state:?}",
                self.state(backend)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn get(&self, host: &str, path: &str) -> (StatusCode, String) {
        let r = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client")
            .get(format!("http://{}{path}", self.addr))
            .header("host", host)
            .send()
            .await
            .expect("request through the proxy");
        let status = r.status();
        (status, r.text().await.unwrap_or_default())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_check_gives_traffic_only_to_a_passing_backend() {
    let a = Backend::start("a", false).await;
    let b = Backend::start("b", true).await;
    let e = edge(&format!(
        "routes:\n  - host: h.test\n    backends: [\"{}\", \"{}\"]\n    health_check: {{path: /health, interval: 100ms, timeout: 100ms, healthy_threshold: 2, unhealthy_threshold: 2}}\n",
        a.addr, b.addr
    ))
    .await;
    // A new backend with a check starts `starting`; a failing one goes `unhealthy`.
    e.wait_state(b.addr, BackendState::Serving).await;
    e.wait_state(a.addr, BackendState::Unhealthy).await;
    for _ in 0..10 {
        assert_eq!(e.get("h.test", "/").await, (StatusCode::OK, "b".to_owned()));
    }
    assert_eq!(
        a.hits.load(Ordering::SeqCst),
        0,
        "a never passed: no traffic"
    );

    a.healthy.store(true, Ordering::SeqCst);
    e.wait_state(a.addr, BackendState::Serving).await;
    for _ in 0..10 {
        assert_eq!(e.get("h.test", "/").await.0, StatusCode::OK);
    }
    assert_eq!(a.hits.load(Ordering::SeqCst), 5, "a serves its turn again");

    // Its check path starts failing: after two failures, no more traffic.
    a.healthy.store(false, Ordering::SeqCst);
    e.wait_state(a.addr, BackendState::Unhealthy).await;
    let before = a.hits.load(Ordering::SeqCst);
    for _ in 0..10 {
        assert_eq!(e.get("h.test", "/").await, (StatusCode::OK, "b".to_owned()));
    }
    assert_eq!(a.hits.load(Ordering::SeqCst), before);

    // When b fails too, the route has no serving backend: 503, not a request to either.
    b.healthy.store(false, Ordering::SeqCst);
    e.wait_state(b.addr, BackendState::Unhealthy).await;
    assert_eq!(
        e.get("h.test", "/").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    a.healthy.store(true, Ordering::SeqCst);
    e.wait_state(a.addr, BackendState::Serving).await;
    assert_eq!(e.get("h.test", "/").await, (StatusCode::OK, "a".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_check_marks_a_backend_that_refuses_connections_unhealthy() {
    let up = Backend::start("up", true).await;
    let down = {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        l.local_addr().expect("addr")
    };
    let e = edge(&format!(
        "routes:\n  - host: t.test\n    backends: [\"{}\", \"{down}\"]\n    health_check: {{type: tcp, interval: 100ms, timeout: 100ms, unhealthy_threshold: 1}}\n",
        up.addr
    ))
    .await;
    e.wait_state(up.addr, BackendState::Serving).await;
    e.wait_state(down, BackendState::Unhealthy).await;
    let seen = e.proxy.snapshot();
    let json = serde_json::to_string(&seen.backends().map(|b| b.state()).collect::<Vec<_>>())
        .expect("states serialize");
    assert!(
        json.contains("\"unhealthy\"") && json.contains("\"serving\""),
        "{json}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_refuses_connections_is_ejected_with_a_doubling_backoff() {
    let good = Backend::start("good", true).await;
    let refusing = {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        l.local_addr().expect("addr")
    };
    let e = edge(&format!(
        "routes:\n  - host: p.test\n    backends: [\"{}\", \"{refusing}\"]\n",
        good.addr
    ))
    .await;
    e.proxy.set_passive_health(PassiveHealth {
        consecutive_failures: 3,
        base_ejection: Duration::from_millis(600),
        max_ejection: Duration::from_secs(10),
    });
    // Every other request goes to the refusing backend and is retried on the good one.
    for _ in 0..6 {
        assert_eq!(
            e.get("p.test", "/").await,
            (StatusCode::OK, "good".to_owned())
        );
    }
    assert_eq!(e.state(refusing), Some(BackendState::Ejected));
    let ejected_at = Instant::now();
    // While ejected, every request goes to the good backend straight away.
    let hits = good.hits.load(Ordering::SeqCst);
    for _ in 0..6 {
        assert_eq!(e.get("p.test", "/").await.0, StatusCode::OK);
    }
    assert_eq!(good.hits.load(Ordering::SeqCst), hits + 6);
    // After the ejection, one failed probe ejects it again at once, for twice as long.
    e.wait_state(refusing, BackendState::Serving).await;
    let first = ejected_at.elapsed();
    assert!(first >= Duration::from_millis(500), "{first:?}");
    for _ in 0..2 {
        assert_eq!(e.get("p.test", "/").await.0, StatusCode::OK);
    }
    assert_eq!(e.state(refusing), Some(BackendState::Ejected));
    let again = Instant::now();
    e.wait_state(refusing, BackendState::Serving).await;
    assert!(
        again.elapsed() >= Duration::from_millis(1100),
        "the second ejection lasts about 1.2 s: {:?}",
        again.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_whose_every_backend_is_ejected_still_answers() {
    let only = Backend::start("only", true).await;
    let e = edge(&format!(
        "routes:\n  - host: x.test\n    backends: [\"{}\"]\n",
        only.addr
    ))
    .await;
    // The default policy: five 5xx in a row.
    for _ in 0..5 {
        assert_eq!(
            e.get("x.test", "/fail").await.0,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
    assert_eq!(e.state(only.addr), Some(BackendState::Ejected));
    // The backend's own answers, not Slipway's 503.
    assert_eq!(
        e.get("x.test", "/fail").await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    // A success forgives it.
    assert_eq!(
        e.get("x.test", "/").await,
        (StatusCode::OK, "only".to_owned())
    );
    assert_eq!(e.state(only.addr), Some(BackendState::Serving));
}
