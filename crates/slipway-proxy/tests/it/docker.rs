//! The Docker provider against the real engine: containers of `$SLIPWAY_TEST_IMAGE` (busybox
//! httpd, FROM scratch) started with Traefik v1/v2, seed-000 and nginx-proxy conventions are
//! routed by a real proxy on loopback; stop, kill and HEALTHCHECK change their routes live.
//! Each test names its containers with a unique prefix and removes them when it ends; it
//! skips, saying so, when `docker version` fails or the image is missing and cannot be built.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;

use crate::engine_cli::{SwarmMode, docker};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use slipway_proxy::docker::{DockerOptions, DockerProvider};
use slipway_proxy::{BackendState, Config, Proxy, RouteTable};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The test image, built as `scripts/lib/prepare.sh` does when it is missing; `None` (with
/// a message) when Docker or the image cannot be had.
fn image() -> Option<String> {
    if let Err(e) = docker(&["version"]) {
        eprintln!("skipped: no Docker engine ({e})");
        return None;
    }
    let image = std::env::var("SLIPWAY_TEST_IMAGE")
        .unwrap_or_else(|_| "slipway-test/busybox:latest".to_owned());
    if docker(&["image", "inspect", &image]).is_ok() {
        return Some(image);
    }
    let dir = std::env::temp_dir().join(format!("slipway-proxy-image-{}", std::process::id()));
    let built = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::copy("/bin/busybox", dir.join("busybox")).map(drop))
        .and_then(|()| {
            std::fs::write(
                dir.join("Dockerfile"),
                "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n",
            )
        });
    let result = built.map_err(|e| e.to_string()).and_then(|()| {
        let out = Command::new("docker")
            .args(["build", "-q", "-t", &image])
            .arg(&dir)
            .env("DOCKER_BUILDKIT", "0")
            .output()
            .map_err(|e| e.to_string())?;
        out.status
            .success()
            .then_some(())
            .ok_or_else(|| String::from_utf8_lossy(&out.stderr).into_owned())
    });
    let _ = std::fs::remove_dir_all(&dir);
    match result {
        Ok(()) => Some(image),
        Err(e) => {
            eprintln!("skipped: the test image {image} is missing and cannot be built: {e}");
            None
        }
    }
}

/// Containers of one test, removed when it ends.
struct Containers {
    image: String,
    prefix: String,
    names: std::sync::Mutex<Vec<String>>,
}

impl Drop for Containers {
    fn drop(&mut self) {
        let names = self.names.lock().map(|n| n.clone()).unwrap_or_default();
        for name in names {
            let _ = docker(&["rm", "-f", "-v", &name]);
        }
    }
}

/// Serves `/www` (an `index.html` with the container's short name, `/cgi-bin/slow` that
/// answers `slow NAME` after 2 s); `sh` stays PID 1 and ignores TERM, so `docker stop`
/// waits its timeout and kills.
fn httpd_script(name: &str) -> String {
    format!(
        "trap '' TERM; mkdir -p /www/cgi-bin && echo {name} > /www/index.html && \
         printf '#!/bin/sh\\nsleep 2\\nprintf \"Content-Type: text/plain\\\\r\\\\n\\\\r\\\\nslow {name}\\\\n\"\\n' > /www/cgi-bin/slow && \
         chmod +x /www/cgi-bin/slow && httpd -f -p 80 -h /www"
    )
}

impl Containers {
    fn new(test: &str) -> Option<Containers> {
        static N: AtomicUsize = AtomicUsize::new(0);
        let image = image()?;
        let prefix = format!(
            "slipway-proxy-{test}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        Some(Containers {
            image,
            prefix,
            names: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// A unique host under `.test` for `what`.
    fn host(&self, what: &str) -> String {
        format!("{what}.{}.test", self.prefix)
    }

    fn name(&self, short: &str) -> String {
        format!("{}-{short}", self.prefix)
    }

    /// Runs an httpd container `short` with `args` (labels, env, health options).
    fn run(&self, short: &str, args: &[&str]) -> String {
        let name = self.name(short);
        if let Ok(mut names) = self.names.lock() {
            names.push(name.clone());
        }
        let script = httpd_script(short);
        let mut all = vec!["run", "-d", "--name", &name];
        all.extend_from_slice(args);
        all.extend_from_slice(&[&self.image, "sh", "-c", &script]);
        docker(&all).unwrap_or_else(|e| panic!("{e}"));
        name
    }
}

struct Edge {
    proxy: Arc<Proxy>,
    addr: SocketAddr,
    provider: DockerProvider,
    _stop: tokio_util::sync::DropGuard,
}

async fn edge() -> Edge {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let addr = listener.local_addr().expect("addr");
    let proxy = Arc::new(Proxy::new(Config::default(), RouteTable::build([])));
    let stop = CancellationToken::new();
    tokio::spawn(slipway_proxy::serve_http(
        proxy.clone(),
        listener,
        stop.clone(),
    ));
    let provider = DockerProvider::spawn(proxy.clone(), DockerOptions::default(), stop.clone());
    tokio::time::timeout(Duration::from_secs(20), provider.first_sync())
        .await
        .unwrap_or_else(|_| panic!("no first sync: {:?}", provider.last_error()));
    Edge {
        proxy,
        addr,
        provider,
        _stop: stop.drop_guard(),
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
}

impl Edge {
    async fn get(&self, host: &str, path: &str) -> (StatusCode, String) {
        match client()
            .get(format!("http://{}{path}", self.addr))
            .header("host", host)
            .send()
            .await
        {
            Ok(r) => {
                let status = r.status();
                (status, r.text().await.unwrap_or_default().trim().to_owned())
            }
            Err(e) => panic!("GET {host}{path} through the proxy: {e}"),
        }
    }

    /// Waits (20 s at most) until `host` answers `status` (and `body`, when given).
    async fn wait_for(&self, host: &str, status: StatusCode, body: Option<&str>) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = self.get(host, "/").await;
            if got.0 == status && body.is_none_or(|b| got.1 == b) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{host} answers {got:?}, not {status} {body:?}; diagnostics: {:?}",
                self.provider.diagnostics()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The backend address of the container `name` (its first network address, port 80).
    fn address_of(&self, name: &str) -> String {
        let w = self
            .provider
            .workloads()
            .into_iter()
            .find(|w| w.name == name)
            .unwrap_or_else(|| panic!("{name} is not routed"));
        format!("{}:80", w.addresses.first().expect("an address"))
    }

    fn state(&self, address: &str) -> Option<BackendState> {
        self.proxy
            .snapshot()
            .backends()
            .find(|b| b.address.as_str() == address)
            .map(|b| b.state())
    }
}

/// What a bounded load saw.
#[derive(Debug, Default)]
struct Load {
    ok: usize,
    failed: Vec<String>,
    by_backend: BTreeMap<String, usize>,
}

/// `clients` loops of GETs of `/` for `duration`, counting every answer and error.
async fn load(proxy: SocketAddr, host: String, clients: usize, duration: Duration) -> Load {
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let host = host.clone();
        tasks.push(tokio::spawn(async move {
            let c = client();
            let mut seen = Load::default();
            while Instant::now() < deadline {
                match c
                    .get(format!("http://{proxy}/"))
                    .header("host", &host)
                    .send()
                    .await
                {
                    Ok(r) if r.status() == StatusCode::OK => match r.text().await {
                        Ok(body) => {
                            seen.ok += 1;
                            *seen.by_backend.entry(body.trim().to_owned()).or_default() += 1;
                        }
                        Err(e) => seen.failed.push(format!("body: {e}")),
                    },
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

fn assert_no_failure(seen: &Load) {
    assert!(
        seen.failed.is_empty(),
        "{} of {} failed: {:?}",
        seen.failed.len(),
        seen.ok + seen.failed.len(),
        &seen.failed[..seen.failed.len().min(5)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_are_routed_by_their_labels_and_a_stop_removes_the_route() {
    let Some(c) = Containers::new("labels") else {
        return;
    };
    let e = edge().await;
    let (v2, v1, np, off) = (c.host("v2"), c.host("v1"), c.host("np"), c.host("off"));
    let seed_domain = format!("{}.test", c.prefix);
    let seed = format!("seed.{seed_domain}");
    c.run(
        "v2",
        &[
            "--label",
            "traefik.enable=true",
            "--label",
            &format!("traefik.http.routers.web.rule=Host(`{v2}`)"),
            "--label",
            "traefik.http.services.web.loadbalancer.server.port=80",
        ],
    );
    c.run(
        "v1",
        &[
            "--label",
            &format!("traefik.frontend.rule=Host:{v1}"),
            "--label",
            "traefik.port=80",
        ],
    );
    c.run(
        "seed",
        &[
            "--label",
            "traefik.enable=true",
            "--label",
            "traefik.port=80",
            "--label",
            &format!("traefik.domain={seed_domain}"),
            "--label",
            "traefik.alias=seed",
        ],
    );
    c.run(
        "np",
        &["-e", &format!("VIRTUAL_HOST={np}"), "-e", "VIRTUAL_PORT=80"],
    );
    c.run(
        "off",
        &[
            "--label",
            "slipway.proxy=false",
            "-e",
            &format!("VIRTUAL_HOST={off}"),
        ],
    );
    for (host, name) in [(&v2, "v2"), (&v1, "v1"), (&seed, "seed"), (&np, "np")] {
        e.wait_for(host, StatusCode::OK, Some(name)).await;
    }
    assert_eq!(e.get(&off, "/").await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        e.get(&c.host("unknown"), "/").await.0,
        StatusCode::NOT_FOUND
    );
    let ours: Vec<_> = e
        .provider
        .diagnostics()
        .into_iter()
        .filter(|d| d.origin.as_deref().is_some_and(|o| o.contains(&c.prefix)))
        .filter(|d| d.severity == slipway_proxy::Severity::Error)
        .collect();
    assert!(ours.is_empty(), "{ours:?}");

    docker(&["stop", "-t", "1", &c.name("v2")]).expect("stop");
    let (status, _) = e.get(&v2, "/").await;
    assert!(
        status == StatusCode::NOT_FOUND || status == StatusCode::SERVICE_UNAVAILABLE,
        "a stopped container's host answers {status}"
    );
    e.wait_for(&v2, StatusCode::NOT_FOUND, None).await;
    e.wait_for(&v1, StatusCode::OK, Some("v1")).await;
}

/// Two containers behind one host; `b` also serves a host of its own (for its slow request).
async fn two_behind_one_host(c: &Containers, e: &Edge) -> (String, String) {
    let (lb, slow) = (c.host("lb"), c.host("slow"));
    c.run("a", &["-e", &format!("VIRTUAL_HOST={lb}")]);
    c.run("b", &["-e", &format!("VIRTUAL_HOST={lb},{slow}")]);
    e.wait_for(&slow, StatusCode::OK, Some("b")).await;
    e.wait_for(&lb, StatusCode::OK, None).await;
    // Both are in the route: round robin shows each within a few requests.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..10 {
        seen.insert(e.get(&lb, "/").await.1);
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    (lb, slow)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_two_containers_under_load_fails_no_request() {
    let Some(c) = Containers::new("kill") else {
        return;
    };
    let e = edge().await;
    let (lb, _) = two_behind_one_host(&c, &e).await;
    let running = tokio::spawn(load(e.addr, lb.clone(), 4, Duration::from_secs(4)));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    docker(&["kill", &c.name("b")]).expect("kill");
    let seen = running.await.expect("load");
    assert_no_failure(&seen);
    assert!(seen.ok > 100, "too few requests to mean anything: {seen:?}");
    assert!(seen.by_backend.get("b").is_some_and(|&n| n > 0), "{seen:?}");
    e.wait_for(&lb, StatusCode::OK, Some("a")).await;
    for _ in 0..5 {
        assert_eq!(e.get(&lb, "/").await.1, "a");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_stop_drains_on_the_kill_event_and_the_slow_request_completes() {
    let Some(c) = Containers::new("stop") else {
        return;
    };
    let e = edge().await;
    let (lb, slow) = two_behind_one_host(&c, &e).await;
    let b_address = e.address_of(&c.name("b"));
    // Held: once drained, b is in no snapshot.
    let live_b = e
        .proxy
        .snapshot()
        .backends()
        .find(|l| l.address.as_str() == b_address)
        .cloned()
        .expect("b is live");
    assert_eq!(live_b.state(), BackendState::Serving);
    let running = tokio::spawn(load(e.addr, lb.clone(), 4, Duration::from_secs(5)));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let slow_request = {
        let addr = e.addr;
        tokio::spawn(async move {
            let r = client()
                .get(format!("http://{addr}/cgi-bin/slow"))
                .header("host", slow)
                .send()
                .await
                .expect("slow request");
            (
                r.status(),
                r.text().await.unwrap_or_default().trim().to_owned(),
            )
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // b ignores TERM: `docker stop` sends it, waits 4 s, then kills.
    let b = c.name("b");
    let stopping = tokio::task::spawn_blocking(move || docker(&["stop", "-t", "4", &b]));
    let deadline = Instant::now() + Duration::from_secs(3);
    while live_b.state() != BackendState::Draining {
        assert!(
            Instant::now() < deadline,
            "b is {:?} after its stop began",
            live_b.state()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Draining while the container still runs: the kill event, not the die, did it.
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.Running}}", &c.name("b")]).expect("inspect"),
        "true"
    );
    let (status, body) = slow_request.await.expect("slow request");
    assert_eq!((status, body.as_str()), (StatusCode::OK, "slow b"));
    let seen = running.await.expect("load");
    assert_no_failure(&seen);
    assert!(seen.ok > 100, "too few requests to mean anything: {seen:?}");
    stopping.await.expect("docker stop").expect("docker stop");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(live_b.state(), BackendState::Gone);
    assert_eq!(live_b.in_flight(), 0);
    for _ in 0..5 {
        assert_eq!(e.get(&lb, "/").await.1, "a");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_with_a_healthcheck_gets_traffic_only_while_healthy() {
    let Some(c) = Containers::new("health") else {
        return;
    };
    let e = edge().await;
    let host = c.host("hc");
    let name = c.run(
        "hc",
        &[
            "-e",
            &format!("VIRTUAL_HOST={host}"),
            "--health-cmd",
            "test -f /www/ready",
            "--health-interval",
            "1s",
            "--health-retries",
            "1",
            "--health-start-period",
            "60s",
        ],
    );
    // Routed, but its health is `starting`: 503, and the backend shows why.
    e.wait_for(&host, StatusCode::SERVICE_UNAVAILABLE, None)
        .await;
    let address = e.address_of(&name);
    assert_eq!(e.state(&address), Some(BackendState::Starting));
    docker(&["exec", &name, "touch", "/www/ready"]).expect("exec");
    e.wait_for(&host, StatusCode::OK, Some("hc")).await;
    assert_eq!(e.state(&address), Some(BackendState::Serving));
    docker(&["exec", &name, "rm", "/www/ready"]).expect("exec");
    e.wait_for(&host, StatusCode::SERVICE_UNAVAILABLE, None)
        .await;
    assert_eq!(e.state(&address), Some(BackendState::Unhealthy));
}

/// A unix socket that relays to the engine's, and can cut every connection and refuse new
/// ones for a while: an engine restart, as the provider sees it.
struct Relay {
    path: std::path::PathBuf,
    down: Arc<std::sync::atomic::AtomicBool>,
    cut: Arc<std::sync::Mutex<CancellationToken>>,
    _stop: tokio_util::sync::DropGuard,
}

impl Relay {
    fn start(engine: std::path::PathBuf) -> Relay {
        let dir = std::env::temp_dir().join(format!(
            "slipway-proxy-relay-{}-{}",
            std::process::id(),
            crate::docker::unique()
        ));
        std::fs::create_dir_all(&dir).expect("relay dir");
        let path = dir.join("docker.sock");
        let listener = tokio::net::UnixListener::bind(&path).expect("bind relay");
        let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cut = Arc::new(std::sync::Mutex::new(CancellationToken::new()));
        let stop = CancellationToken::new();
        let (d, k, s) = (down.clone(), cut.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let client = tokio::select! {
                    a = listener.accept() => match a { Ok((c, _)) => c, Err(_) => continue },
                    () = s.cancelled() => return,
                };
                if d.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let cut = k.lock().map(|t| t.clone()).unwrap_or_default();
                let engine = engine.clone();
                tokio::spawn(async move {
                    let Ok(mut upstream) = tokio::net::UnixStream::connect(&engine).await else {
                        return;
                    };
                    let mut client = client;
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                        () = cut.cancelled() => {}
                    }
                });
            }
        });
        Relay {
            path,
            down,
            cut,
            _stop: stop.drop_guard(),
        }
    }

    /// Cuts every connection; new ones are closed at once until [`Relay::restore`].
    fn cut(&self) {
        self.down.store(true, Ordering::SeqCst);
        if let Ok(mut t) = self.cut.lock() {
            t.cancel();
            *t = CancellationToken::new();
        }
    }

    fn restore(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

pub(crate) fn unique() -> usize {
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_provider_reconnects_after_the_engine_goes_away_and_resyncs() {
    let Some(c) = Containers::new("reconnect") else {
        return;
    };
    let relay = Relay::start(DockerOptions::default().socket);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let addr = listener.local_addr().expect("addr");
    let proxy = Arc::new(Proxy::new(Config::default(), RouteTable::build([])));
    let stop = CancellationToken::new();
    tokio::spawn(slipway_proxy::serve_http(
        proxy.clone(),
        listener,
        stop.clone(),
    ));
    let options = DockerOptions {
        socket: relay.path.clone(),
        reconnect_min: Duration::from_millis(100),
        reconnect_max: Duration::from_millis(400),
        ..DockerOptions::default()
    };
    let provider = DockerProvider::spawn(proxy.clone(), options, stop.clone());
    let e = Edge {
        proxy,
        addr,
        provider,
        _stop: stop.clone().drop_guard(),
    };
    tokio::time::timeout(Duration::from_secs(20), e.provider.first_sync())
        .await
        .expect("first sync");
    let before = c.host("before");
    c.run("before", &["-e", &format!("VIRTUAL_HOST={before}")]);
    e.wait_for(&before, StatusCode::OK, Some("before")).await;
    let syncs = e.provider.syncs();

    relay.cut();
    let after = c.host("after");
    c.run("after", &["-e", &format!("VIRTUAL_HOST={after}")]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while e.provider.last_error().is_none() {
        assert!(Instant::now() < deadline, "the cut was not noticed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The last routes keep serving while the engine is away; what started meanwhile is
    // not known yet.
    assert_eq!(
        e.get(&before, "/").await,
        (StatusCode::OK, "before".to_owned())
    );
    assert_eq!(e.get(&after, "/").await.0, StatusCode::NOT_FOUND);

    relay.restore();
    tokio::time::timeout(Duration::from_secs(20), e.provider.sync_after(syncs))
        .await
        .expect("a sync after reconnecting");
    e.wait_for(&after, StatusCode::OK, Some("after")).await;
    assert_eq!(e.provider.last_error(), None);
    // And events are followed again.
    docker(&["kill", &c.name("before")]).expect("kill");
    e.wait_for(&before, StatusCode::NOT_FOUND, None).await;

    stop.cancel();
    let Edge {
        proxy, provider, ..
    } = e;
    provider.stopped().await;
    assert!(
        proxy.snapshot().table.routes().is_empty(),
        "a stopped provider's routes are gone"
    );
}

/// A swarm service of one test, removed when the guard drops.
struct SwarmService(String);

impl Drop for SwarmService {
    fn drop(&mut self) {
        let _ = docker(&["service", "rm", &self.0]);
    }
}

/// A TCP port free on every interface now (a `host`-mode published port binds them all).
fn free_port() -> u16 {
    std::net::TcpListener::bind("0.0.0.0:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A live Swarm service with Traefik v2 labels on the *service* (a stack's
/// `deploy.labels`) is routed at its published port, its source reads "labels of service
/// NAME", its task's container (whose own labels say otherwise) yields no second route,
/// and `docker service rm` takes the route away. The port is published in `host` mode: the
/// routing mesh of an `ingress` port needs IPVS, which not every kernel has (this test's
/// does not); the provider reaches both kinds on 127.0.0.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swarm_service_is_routed_by_its_service_labels_and_removing_it_removes_the_route() {
    let Some(c) = Containers::new("swarm") else {
        return;
    };
    let Some(_swarm) = SwarmMode::enter("10.231.0.0/16") else {
        return;
    };
    let e = edge().await;
    let host = c.host("swarm");
    let name = c.name("svc");
    let port = free_port();
    let script = "mkdir -p /www && hostname > /www/index.html && httpd -f -p 8080 -h /www";
    let rule = format!("traefik.http.routers.sw.rule=Host(`{host}`)");
    let publish = format!("mode=host,published={port},target=8080");
    let created = docker(&[
        "service",
        "create",
        "--detach",
        "--no-resolve-image",
        "--name",
        &name,
        "--hostname",
        "swarm-task",
        "--label",
        "traefik.enable=true",
        "--label",
        &rule,
        "--label",
        "traefik.http.services.sw.loadbalancer.server.port=8080",
        // The task container's own labels: a wrong port, which the service's label beats.
        "--container-label",
        "traefik.enable=true",
        "--container-label",
        &rule,
        "--container-label",
        "traefik.http.services.sw.loadbalancer.server.port=9999",
        "--publish",
        &publish,
        &c.image,
        "sh",
        "-c",
        script,
    ]);
    let service = SwarmService(name.clone());
    created.unwrap_or_else(|e| panic!("{e}"));

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = e.get(&host, "/").await;
        if got == (StatusCode::OK, "swarm-task".to_owned()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{host} answers {got:?}; tasks: {:?}; diagnostics: {:?}",
            docker(&["service", "ps", "--no-trunc", &name]),
            e.provider.diagnostics()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let snapshot = e.proxy.snapshot();
    let ours: Vec<_> = snapshot
        .table
        .routes()
        .iter()
        .filter(|r| r.key.host.to_string() == host)
        .collect();
    assert_eq!(ours.len(), 1, "{ours:?}");
    assert_eq!(
        ours[0].source.to_string(),
        format!("labels of service {name}")
    );
    let backends: Vec<String> = ours[0].backends().map(|b| b.address.to_string()).collect();
    assert_eq!(backends, vec![format!("127.0.0.1:{port}")]);
    assert!(
        !snapshot
            .table
            .conflicts()
            .iter()
            .any(|c| format!("{c:?}").contains(&host)),
        "{:?}",
        snapshot.table.conflicts()
    );
    let workloads = e.provider.workloads();
    assert!(
        workloads
            .iter()
            .any(|w| w.name == name && w.kind == slipway_proxy::labels::WorkloadKind::Service),
        "{workloads:?}"
    );
    assert!(
        !workloads
            .iter()
            .any(|w| w.labels.contains_key("com.docker.swarm.service.id")),
        "a task's container is routed by itself: {workloads:?}"
    );

    docker(&["service", "rm", &name]).expect("service rm");
    drop(service);
    e.wait_for(&host, StatusCode::NOT_FOUND, None).await;
}
