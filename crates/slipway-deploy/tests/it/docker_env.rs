//! What the Docker tests share: the test image (`$SLIPWAY_TEST_IMAGE`, busybox FROM
//! scratch, built as `scripts/lib/prepare.sh` does when missing), one environment per test
//! (a unique `io.slipway.env`, its network, removed with everything labelled for it when
//! the test ends, even on a panic), a real proxy on a loopback port, busybox httpd
//! services whose version is their `VERSION` (with a slow CGI and a WebSocket one), and a
//! load client that records every answer, every message and every connection error.
//! A test skips, saying so, when Docker is not reachable.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;

pub use crate::engine_cli::{SWARM_LOCK, SwarmMode, docker};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use slipway_deploy::rollout::{
    HealthGate, Probe, RolloutEvent, RouteSpec, ServiceSpec, Strategy, UpdateConfig, route_backends,
};
use slipway_deploy::target::{ContainerSpec, DockerTarget, RestartPolicy, SwarmTarget, Target};
use slipway_proxy::{Config, Proxy, RouteTable};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::CancellationToken;

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
    let dir = std::env::temp_dir().join(format!("slipway-deploy-image-{}", std::process::id()));
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

/// `/cgi-bin/slow`: its head at once (`X-Container: $HOSTNAME`, the short container id
/// Docker sets), then `VERSION` only once `/cgi-bin/release` was asked on the same container
/// (or 20 s passed): a request in flight for as long as the test wants.
const CGI_SLOW: &str = r#"#!/bin/sh
printf 'Content-Type: text/plain\r\nX-Container: %s\r\n\r\n' "$HOSTNAME"
i=0
while [ ! -e /tmp/release ] && [ "$i" -lt 100 ]; do sleep 0.2; i=$((i+1)); done
echo "$VERSION"
"#;

/// `/cgi-bin/release`: lets this container's slow request answer.
const CGI_RELEASE: &str = r#"#!/bin/sh
touch /tmp/release
printf 'Content-Type: text/plain\r\n\r\nreleased\n'
"#;

/// `/cgi-bin/ws`: a WebSocket endpoint in busybox alone. httpd passes a CGI's output that
/// starts with `HTTP/` through unchanged, so the script answers the handshake itself
/// (`Sec-WebSocket-Accept` = base64 of the SHA-1 of key + GUID, the hex turned into bytes
/// by printf) and then pushes unmasked text frames "VERSION HOSTNAME" (under 126 bytes:
/// a one-byte length) every 200 ms until the client goes (httpd never hands the CGI what
/// the client sends on a GET, so it cannot answer a close frame).
const CGI_WS: &str = r#"#!/bin/sh
key=$(printf '%s' "$HTTP_SEC_WEBSOCKET_KEY" | tr -d ' \r')
hex=$(printf '%s258EAFA5-E914-47DA-95CA-C5AB0DC85B11' "$key" | sha1sum | cut -c1-40)
accept=$(printf "$(printf '%s' "$hex" | sed 's/../\\x&/g')" | base64)
printf 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n' "$accept"
msg="$VERSION $HOSTNAME"
len=$(printf '%02x' "${#msg}")
while printf "\\x81\\x$len%s" "$msg"; do sleep 0.2; done
"#;

/// One test's environment on the engine; everything of it goes when it drops. `T` is
/// the target: the engine itself ([`Env::new`]) or the swarm it manages ([`Env::swarm`]).
pub struct Env<T = DockerTarget> {
    pub env: String,
    pub stack: String,
    pub network: String,
    pub image: String,
    pub target: T,
    /// Containers the test made without Slipway's labels, by name.
    pub unlabelled: Mutex<Vec<String>>,
    /// The engine in swarm mode for this test (dropped after everything of it is gone).
    swarm: Option<SwarmMode>,
}

fn env_name(test: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "it-{test}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

impl Env<DockerTarget> {
    pub async fn new(test: &str) -> Option<Env> {
        let image = image()?;
        let target = DockerTarget::connect().await;
        Env::with(test, image, target, None)
    }
}

impl Env<SwarmTarget> {
    /// An environment on a single-node swarm of the local engine, made for this test
    /// ([`SwarmMode`]); `None`, saying why, when swarm mode cannot be had.
    pub async fn swarm(test: &str) -> Option<Env<SwarmTarget>> {
        let image = image()?;
        let swarm = SwarmMode::enter("10.232.0.0/16")?;
        let target = SwarmTarget::connect().await;
        Env::with(test, image, target, Some(swarm))
    }
}

impl<T> Env<T> {
    /// The test's environment on `target`; `None`, saying why, when it did not connect.
    fn with(
        test: &str,
        image: String,
        target: Result<T, impl std::fmt::Display>,
        swarm: Option<SwarmMode>,
    ) -> Option<Env<T>> {
        let target = match target {
            Ok(t) => t,
            Err(e) => {
                eprintln!("skipped: {e}");
                return None;
            }
        };
        let env = env_name(test);
        Some(Env {
            network: format!("{env}-net"),
            stack: "shop".to_owned(),
            env,
            image,
            target,
            unlabelled: Mutex::new(Vec::new()),
            swarm,
        })
    }
}

impl<T> Env<T> {
    /// Whether the target is a swarm.
    pub fn is_swarm(&self) -> bool {
        self.swarm.is_some()
    }
}

impl<T: Target> Env<T> {
    /// A unique host for `service`.
    pub fn host(&self, service: &str) -> String {
        format!("{service}.{}.test", self.env)
    }

    /// `REVISION:State` of each of `service`'s containers, sorted.
    pub async fn revisions_running(&self, service: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .target
            .list_containers(&slipway_deploy::target::Selector::service(
                &self.env,
                &self.stack,
                service,
            ))
            .await
            .expect("list")
            .into_iter()
            .map(|c| {
                format!(
                    "{}:{:?}",
                    c.labels
                        .get(slipway_deploy::target::LABEL_REVISION)
                        .cloned()
                        .unwrap_or_default(),
                    c.state
                )
            })
            .collect();
        out.sort();
        out
    }

    /// A busybox httpd service answering `VERSION` on `/`, gated by an HTTP probe, with the
    /// CGIs `slow`, `release` and `ws` (see [`CGI_SLOW`], [`CGI_WS`]).
    pub fn service(&self, name: &str, revision: &str, version: &str, replicas: u32) -> ServiceSpec {
        // `sh` stays PID 1 and exits on TERM, so a stop is quick. The image is FROM
        // scratch: no /tmp until made.
        let script = "mkdir -p /www/cgi-bin /tmp && echo \"$VERSION\" > /www/index.html; \
                      printf '%s' \"$CGI_SLOW\" > /www/cgi-bin/slow; \
                      printf '%s' \"$CGI_RELEASE\" > /www/cgi-bin/release; \
                      printf '%s' \"$CGI_WS\" > /www/cgi-bin/ws; chmod +x /www/cgi-bin/*; \
                      trap 'exit 0' TERM; httpd -f -p 8080 -h /www & wait";
        ServiceSpec {
            env: self.env.clone(),
            stack: self.stack.clone(),
            name: name.to_owned(),
            revision: revision.to_owned(),
            image: self.image.clone(),
            replicas,
            template: ContainerSpec {
                command: Some(vec!["sh".into(), "-c".into(), script.into()]),
                env: BTreeMap::from([
                    ("VERSION".to_owned(), version.to_owned()),
                    ("CGI_SLOW".to_owned(), CGI_SLOW.to_owned()),
                    ("CGI_RELEASE".to_owned(), CGI_RELEASE.to_owned()),
                    ("CGI_WS".to_owned(), CGI_WS.to_owned()),
                ]),
                labels: BTreeMap::from([("test.purpose".to_owned(), "slipway-deploy".to_owned())]),
                restart: RestartPolicy::No,
                stop_grace: Some(Duration::from_secs(2)),
                ..ContainerSpec::default()
            },
            port: 8080,
            network: self.network.clone(),
            route: Some(RouteSpec {
                host: self.host(name),
                path: None,
                tls: None,
            }),
            health: HealthGate {
                probe: Some(Probe::Http {
                    path: "/".into(),
                    status: Some(200),
                }),
                successes: 2,
                interval: Duration::from_millis(200),
                timeout: Duration::from_secs(20),
                ..HealthGate::default()
            },
            update: UpdateConfig {
                drain_timeout: Duration::from_secs(5),
                ..UpdateConfig::default()
            },
            strategy: Strategy::Rolling,
            pull: Default::default(),
            bake: None,
        }
    }
}

impl<T> Drop for Env<T> {
    fn drop(&mut self) {
        let label = format!("label=io.slipway.env={}", self.env);
        if self.swarm.is_some()
            && let Ok(ids) = docker(&["service", "ls", "-q", "--filter", &label])
        {
            for id in ids.split_whitespace() {
                let _ = docker(&["service", "rm", id]);
            }
            // Their tasks' containers go (and leave the network) a moment later.
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline
                && docker(&["ps", "-q", "--filter", &label]).is_ok_and(|ids| !ids.is_empty())
            {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        if let Ok(ids) = docker(&["ps", "-aq", "--filter", &label]) {
            for id in ids.split_whitespace() {
                let _ = docker(&["rm", "-f", "-v", id]);
            }
        }
        let names = self
            .unlabelled
            .lock()
            .map(|n| n.clone())
            .unwrap_or_default();
        for name in names {
            let _ = docker(&["rm", "-f", "-v", &name]);
        }
        if let Ok(ids) = docker(&["volume", "ls", "-q", "--filter", &label]) {
            for id in ids.split_whitespace() {
                let _ = docker(&["volume", "rm", "-f", id]);
            }
        }
        for _ in 0..20 {
            if docker(&["network", "rm", &self.network]).is_ok()
                || docker(&["network", "inspect", &self.network]).is_err()
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

/// The proxy, serving on a loopback port until dropped.
pub struct Edge {
    pub proxy: Arc<Proxy>,
    pub addr: SocketAddr,
    _stop: tokio_util::sync::DropGuard,
}

pub async fn edge() -> Edge {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let addr = listener.local_addr().expect("addr");
    let proxy = Arc::new(Proxy::new(Config::default(), RouteTable::build([])));
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

fn client(keep_alive: bool) -> reqwest::Client {
    let b = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(15));
    let b = if keep_alive {
        b
    } else {
        b.pool_max_idle_per_host(0)
    };
    b.build().expect("client")
}

/// GET `/` of `host` through the proxy: status and trimmed body.
pub async fn get(addr: SocketAddr, host: &str) -> Result<(u16, String), String> {
    let r = client(false)
        .get(format!("http://{addr}/"))
        .header("host", host)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = r.status().as_u16();
    Ok((status, r.text().await.unwrap_or_default().trim().to_owned()))
}

/// Waits (20 s at most) until `host` answers 200 with `body`.
pub async fn wait_for(addr: SocketAddr, host: &str, body: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = get(addr, host).await;
        if matches!(&got, Ok((200, b)) if b == body) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{host} answers {got:?}, not {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What a load saw: every status, every error, every body, in the order they came.
#[derive(Debug, Default)]
pub struct Seen {
    pub statuses: BTreeMap<u16, usize>,
    /// Every connection error, and every fault of the slow request or the WebSocket.
    pub errors: Vec<String>,
    /// Bodies of the looping clients' 200s.
    pub bodies: BTreeMap<String, usize>,
    /// Bodies of the looping clients' 200s, in arrival order (all clients).
    pub order: Vec<String>,
    /// When each of `order` arrived.
    pub at: Vec<Instant>,
    /// The looping clients' other answers: when, status, body.
    pub other: Vec<(Instant, u16, String)>,
    /// The slow request (its status is in `statuses` too), when the load had one.
    pub slow: Option<Pinned>,
    /// The WebSocket, when the load had one.
    pub websocket: Option<Pinned>,
}

/// A long-lived exchange (the slow request, the WebSocket) on one container, which the
/// client ends [`HOLD`] after that container left the route.
#[derive(Debug, Clone, Default)]
pub struct Pinned {
    /// The container's name, as the rollout's events say it.
    pub container: String,
    /// The slow request's status, or the handshake's (101).
    pub status: u16,
    /// The slow request's body, or the WebSocket's messages, by version.
    pub versions: BTreeMap<String, usize>,
    /// Of those, how many arrived after the container left the route.
    pub after_left_route: usize,
    /// When the container's address was first on none of the route's sets.
    pub left_route: Option<Instant>,
    /// When the client ended it (released the slow request, sent the WebSocket's close).
    pub ended: Option<Instant>,
}

/// How long a long-lived exchange stays open once its container left the route: the
/// rollout's drain of that container has to wait for it.
pub const HOLD: Duration = Duration::from_millis(500);

impl Seen {
    /// Every looping client's answer in arrival order: when, status, body.
    pub fn timeline(&self) -> Vec<(Instant, u16, &str)> {
        let mut all: Vec<(Instant, u16, &str)> = self
            .at
            .iter()
            .zip(&self.order)
            .map(|(t, b)| (*t, 200, b.as_str()))
            .chain(self.other.iter().map(|(t, s, b)| (*t, *s, b.as_str())))
            .collect();
        all.sort_by_key(|(t, _, _)| *t);
        all
    }

    pub fn total(&self) -> usize {
        self.statuses.values().sum::<usize>() + self.errors.len()
    }

    pub fn non_2xx(&self) -> usize {
        self.statuses
            .iter()
            .filter(|(s, _)| !(200..300).contains(*s))
            .map(|(_, n)| n)
            .sum()
    }

    /// No error and no non-2xx, over enough requests to mean something.
    pub fn assert_clean(&self) {
        eprintln!(
            "load: {} requests, statuses {:?}, {} errors, bodies {:?}, slow {:?}, websocket {:?}",
            self.total(),
            self.statuses,
            self.errors.len(),
            self.bodies,
            self.slow.as_ref().map(|p| &p.versions),
            self.websocket.as_ref().map(|p| &p.versions),
        );
        assert!(
            self.errors.is_empty() && self.non_2xx() == 0,
            "{} errors, {} non-2xx of {}: statuses {:?}, errors {:?}",
            self.errors.len(),
            self.non_2xx(),
            self.total(),
            self.statuses,
            &self.errors[..self.errors.len().min(5)]
        );
        assert!(
            self.total() > 50,
            "too few requests to mean anything: {self:?}"
        );
    }

    /// The answers went from `from` to `to`: first `from`, last `to`, and `to` never before
    /// the first `from` answer.
    pub fn assert_switched(&self, from: &str, to: &str) {
        assert_eq!(
            self.order.first().map(String::as_str),
            Some(from),
            "{:?}",
            self.bodies
        );
        assert_eq!(
            self.order.last().map(String::as_str),
            Some(to),
            "{:?}",
            self.bodies
        );
        let bodies: Vec<&String> = self.bodies.keys().collect();
        assert_eq!(bodies, [from, to], "only {from} and {to} answered");
    }

    /// The looping clients' bodies that arrived in `[from, to)`, by version.
    pub fn bodies_between(&self, from: Instant, to: Instant) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for (body, at) in self.order.iter().zip(&self.at) {
            if (from..to).contains(at) {
                *out.entry(body.clone()).or_insert(0) += 1;
            }
        }
        out
    }

    /// The slow request and the WebSocket both went to an `old` container, outlived its
    /// leaving the route (the slow one answered 200 `old` after it, the WebSocket got
    /// messages after it), were ended by the client, and the rollout's drain of their
    /// container waited for them and was clean, before the container was stopped.
    pub fn assert_long_lived_drained(&self, old: &str, events: &[(Instant, RolloutEvent)]) {
        let slow = self.slow.as_ref().expect("the load had a slow request");
        assert_eq!(slow.status, 200, "{slow:?}");
        assert_eq!(
            slow.versions,
            BTreeMap::from([(old.to_owned(), 1)]),
            "{slow:?}"
        );
        assert_eq!(
            slow.after_left_route, 1,
            "the slow request answered before its container left the route: {slow:?}"
        );
        let ws = self.websocket.as_ref().expect("the load had a WebSocket");
        assert_eq!(ws.status, 101, "{ws:?}");
        assert_eq!(
            ws.versions.keys().collect::<Vec<_>>(),
            [old],
            "the WebSocket's messages: {ws:?}"
        );
        assert!(
            ws.after_left_route > 0,
            "no WebSocket message once its container left the route: {ws:?}"
        );
        for (what, pin) in [("slow request", slow), ("WebSocket", ws)] {
            let ended = pin
                .ended
                .unwrap_or_else(|| panic!("the {what} was never ended by the client: {pin:?}"));
            assert!(
                pin.left_route.is_some_and(|l| l + HOLD <= ended),
                "the {what} ended before its container left the route: {pin:?}"
            );
            let at = |f: &dyn Fn(&RolloutEvent) -> bool| {
                events.iter().find(|(_, e)| f(e)).map(|(t, _)| *t)
            };
            let drained = events.iter().find_map(|(t, e)| match e {
                RolloutEvent::Drained { container, clean } if *container == pin.container => {
                    Some((*t, *clean))
                }
                _ => None,
            });
            let (drained_at, clean) = drained.unwrap_or_else(|| {
                panic!(
                    "{} (the {what}'s) never drained: {events:#?}",
                    pin.container
                )
            });
            assert!(clean, "{}'s drain was cut: the {what}", pin.container);
            assert!(
                drained_at >= ended,
                "{} drained while the {what} was still open",
                pin.container
            );
            let stopped = at(
                &|e| matches!(e, RolloutEvent::Stopped { container } if *container == pin.container),
            );
            assert!(
                stopped.is_some_and(|t| t >= drained_at),
                "{} not stopped after its drain: {stopped:?}",
                pin.container
            );
        }
    }
}

/// Where the load's long-lived exchanges are watched: the route of one service.
#[derive(Clone)]
struct Watch {
    proxy: Arc<Proxy>,
    env: String,
    stack: String,
    service: String,
    network: String,
    port: u16,
    /// Containers are a swarm's task containers: named by their service, reached at
    /// their published port on 127.0.0.1.
    swarm: bool,
}

impl Watch {
    /// The name of the container whose hostname (short id) is `hostname`, and its address
    /// as the route has it.
    async fn locate(&self, hostname: &str) -> Result<(String, String), String> {
        let format = if self.swarm {
            format!(
                "{{{{index .Config.Labels \"com.docker.swarm.service.name\"}}}} {{{{(index (index .NetworkSettings.Ports \"{}/tcp\") 0).HostPort}}}}",
                self.port
            )
        } else {
            format!(
                "{{{{.Name}}}} {{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
                self.network
            )
        };
        let hostname = hostname.to_owned();
        let out =
            tokio::task::spawn_blocking(move || docker(&["inspect", "-f", &format, &hostname]))
                .await
                .map_err(|e| e.to_string())??;
        let (name, ip) = out
            .split_once(' ')
            .ok_or_else(|| format!("docker inspect said {out:?}"))?;
        let address = if self.swarm {
            // The container port's published port.
            format!("127.0.0.1:{ip}")
        } else {
            format!("{ip}:{}", self.port)
        };
        Ok((name.trim_start_matches('/').to_owned(), address))
    }

    /// Cancels the returned token [`HOLD`] after `address` is on none of the route's sets
    /// (noting when in `left`), or at `stop`.
    fn end_after_leaving(
        &self,
        address: String,
        left: Arc<Mutex<Option<Instant>>>,
        stop: CancellationToken,
    ) -> CancellationToken {
        let end = CancellationToken::new();
        let (w, done) = (self.clone(), end.clone());
        tokio::spawn(async move {
            loop {
                let sets = route_backends(&w.proxy, &w.env, &w.stack, &w.service);
                if !sets.values().flatten().any(|a| *a == address) {
                    if let Ok(mut l) = left.lock() {
                        *l = Some(Instant::now());
                    }
                    tokio::select! {
                        () = stop.cancelled() => {}
                        () = tokio::time::sleep(HOLD) => {}
                    }
                    break;
                }
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            }
            done.cancel();
        });
        end
    }
}

fn left_yet(left: &Mutex<Option<Instant>>) -> bool {
    left.lock().map(|l| l.is_some()).unwrap_or(false)
}

fn record_error(seen: &Mutex<Seen>, e: String) {
    if let Ok(mut s) = seen.lock() {
        s.errors.push(e);
    }
}

/// The slow request: sent, on a container (its head came) when `ready` fires, released
/// [`HOLD`] after that container left the route; its answer recorded.
async fn slow_request(
    addr: SocketAddr,
    host: String,
    watch: Watch,
    stop: CancellationToken,
    seen: Arc<Mutex<Seen>>,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    let fail = |e: String| record_error(&seen, format!("slow request: {e}"));
    // Longer than the CGI's own 20 s bound.
    let c = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(40))
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let r = match c
        .get(format!("http://{addr}/cgi-bin/slow"))
        .header("host", &host)
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => return fail(format!("{e:?}")),
    };
    let status = r.status().as_u16();
    let Some(hostname) = r
        .headers()
        .get("x-container")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
    else {
        return fail(format!("{status} without X-Container"));
    };
    let (container, address) = match watch.locate(&hostname).await {
        Ok(found) => found,
        Err(e) => return fail(e),
    };
    let _ = ready.send(());
    let left = Arc::new(Mutex::new(None));
    let end = watch.end_after_leaving(address.clone(), left.clone(), stop);
    // The release goes straight to the container: it is off the route by then.
    let release = tokio::spawn(async move {
        end.cancelled().await;
        let ended = Instant::now();
        client(false)
            .get(format!("http://{address}/cgi-bin/release"))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map(|_| ended)
            .map_err(|e| format!("releasing it: {e}"))
    });
    let body = r.text().await.map_err(|e| format!("body ({status}): {e}"));
    let after_left_route = usize::from(left_yet(&left));
    let ended = match release.await.map_err(|e| e.to_string()).and_then(|r| r) {
        Ok(t) => Some(t),
        Err(e) => {
            fail(e);
            None
        }
    };
    let body = match body {
        Ok(b) => b.trim().to_owned(),
        Err(e) => return fail(e),
    };
    let left_route = left.lock().ok().and_then(|l| *l);
    if let Ok(mut s) = seen.lock() {
        *s.statuses.entry(status).or_default() += 1;
        s.slow = Some(Pinned {
            container,
            status,
            versions: BTreeMap::from([(body, 1)]),
            after_left_route,
            left_route,
            ended,
        });
    }
}

/// The WebSocket: open, on a container (its first message came) when `ready` fires,
/// closed by the client [`HOLD`] after that container left the route; every message
/// recorded.
async fn websocket(
    addr: SocketAddr,
    host: String,
    watch: Watch,
    stop: CancellationToken,
    seen: Arc<Mutex<Seen>>,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    let fail = |e: String| record_error(&seen, format!("websocket: {e}"));
    let stream = match tokio::net::TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) => return fail(format!("connecting: {e}")),
    };
    // The handshake checks the 101 and its Sec-WebSocket-Accept.
    let (mut ws, response) =
        match tokio_tungstenite::client_async(format!("ws://{host}/cgi-bin/ws"), stream).await {
            Ok(pair) => pair,
            Err(e) => return fail(format!("handshake: {e}")),
        };
    let mut pin = Pinned {
        status: response.status().as_u16(),
        ..Pinned::default()
    };
    // "VERSION HOSTNAME"
    let parse = |m: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>| match m {
        Some(Ok(Message::Text(t))) => t
            .split_once(' ')
            .map(|(v, h)| (v.to_owned(), h.to_owned()))
            .ok_or_else(|| format!("message {t:?}")),
        Some(Ok(other)) => Err(format!("unexpected {other:?}")),
        Some(Err(e)) => Err(e.to_string()),
        None => Err("closed by the other side".into()),
    };
    let first = match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
        Ok(m) => parse(m),
        Err(_) => Err("no message within 10 s".into()),
    };
    let (version, hostname) = match first {
        Ok(vh) => vh,
        Err(e) => return fail(e),
    };
    *pin.versions.entry(version).or_default() += 1;
    let address;
    (pin.container, address) = match watch.locate(&hostname).await {
        Ok(found) => found,
        Err(e) => return fail(e),
    };
    let _ = ready.send(());
    let left = Arc::new(Mutex::new(None));
    let end = watch.end_after_leaving(address, left.clone(), stop);
    let cut = loop {
        tokio::select! {
            m = ws.next() => match parse(m) {
                Ok((version, _)) => {
                    *pin.versions.entry(version).or_default() += 1;
                    pin.after_left_route += usize::from(left_yet(&left));
                }
                Err(e) => break Some(e),
            },
            () = end.cancelled() => break None,
        }
    };
    if let Some(e) = cut {
        fail(e);
    } else {
        pin.ended = Some(Instant::now());
        // A close frame, then the connection goes: the script cannot answer the close.
        let close = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        if let Err(e) = ws.close(Some(close)).await {
            fail(format!("closing: {e}"));
        }
    }
    drop(ws);
    pin.left_route = left.lock().ok().and_then(|l| *l);
    if let Ok(mut s) = seen.lock() {
        s.websocket = Some(pin);
    }
}

/// Clients in loops of GET `/` until stopped: `keep_alive` ones reuse their connections,
/// `fresh` ones open one per request; and maybe a slow request and a WebSocket.
pub struct Load {
    stop: Arc<AtomicBool>,
    end: CancellationToken,
    seen: Arc<Mutex<Seen>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(addr: SocketAddr, host: &str, keep_alive: usize, fresh: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let mut tasks = Vec::new();
        for i in 0..keep_alive + fresh {
            let (stop, seen, host) = (stop.clone(), seen.clone(), host.to_owned());
            let c = client(i < keep_alive);
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let r = c
                        .get(format!("http://{addr}/"))
                        .header("host", &host)
                        .send()
                        .await;
                    let outcome = match r {
                        Ok(r) => {
                            let status = r.status().as_u16();
                            match r.text().await {
                                Ok(body) => Ok((status, body.trim().to_owned())),
                                Err(e) => Err(format!("body ({status}): {e}")),
                            }
                        }
                        Err(e) => Err(format!("{e:?}")),
                    };
                    if let Ok(mut s) = seen.lock() {
                        match outcome {
                            Ok((status, body)) => {
                                *s.statuses.entry(status).or_default() += 1;
                                if status == 200 {
                                    *s.bodies.entry(body.clone()).or_default() += 1;
                                    s.order.push(body);
                                    s.at.push(Instant::now());
                                } else {
                                    s.other.push((Instant::now(), status, body));
                                }
                            }
                            Err(e) => s.errors.push(e),
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(3)).await;
                }
            }));
        }
        Load {
            stop,
            end: CancellationToken::new(),
            seen,
            tasks,
        }
    }

    /// [`Load::start`] on `service`'s host, plus one slow request and one WebSocket, both
    /// open on a container when this returns; each is ended by the client [`HOLD`] after
    /// its container left the route (or at [`Load::stop`]).
    pub async fn start_with_long_lived<T: Target>(
        edge: &Edge,
        env: &Env<T>,
        service: &ServiceSpec,
        keep_alive: usize,
        fresh: usize,
    ) -> Load {
        let host = env.host(&service.name);
        let mut load = Load::start(edge.addr, &host, keep_alive, fresh);
        let watch = Watch {
            proxy: edge.proxy.clone(),
            env: env.env.clone(),
            stack: env.stack.clone(),
            service: service.name.clone(),
            network: service.network.clone(),
            port: service.port,
            swarm: env.is_swarm(),
        };
        let (slow_ready, slow_on) = tokio::sync::oneshot::channel();
        let (ws_ready, ws_on) = tokio::sync::oneshot::channel();
        load.tasks.push(tokio::spawn(slow_request(
            edge.addr,
            host.clone(),
            watch.clone(),
            load.end.clone(),
            load.seen.clone(),
            slow_ready,
        )));
        load.tasks.push(tokio::spawn(websocket(
            edge.addr,
            host,
            watch,
            load.end.clone(),
            load.seen.clone(),
            ws_ready,
        )));
        let both = async { slow_on.await.is_ok() && ws_on.await.is_ok() };
        let on = tokio::time::timeout(Duration::from_secs(20), both).await;
        if on != Ok(true) {
            let seen = load.stop().await;
            panic!("the slow request or the WebSocket did not open: {seen:?}");
        }
        load
    }

    pub async fn stop(self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        self.end.cancel();
        for t in self.tasks {
            t.await.expect("load client");
        }
        let mut seen = self.seen.lock().expect("seen");
        std::mem::take(&mut *seen)
    }
}

/// Collects a rollout's events, each with when it came.
#[derive(Clone, Default)]
pub struct Events(pub Arc<Mutex<Vec<(Instant, RolloutEvent)>>>);

impl Events {
    pub fn sink(&self) -> impl Fn(&RolloutEvent) + Send + Sync + 'static {
        let all = self.0.clone();
        move |e| {
            if let Ok(mut all) = all.lock() {
                all.push((Instant::now(), e.clone()));
            }
        }
    }

    pub fn take(&self) -> Vec<RolloutEvent> {
        self.take_timed().into_iter().map(|(_, e)| e).collect()
    }

    /// How many of the events so far `f` accepts (none taken).
    pub fn count(&self, f: impl Fn(&RolloutEvent) -> bool) -> usize {
        self.0
            .lock()
            .map(|all| all.iter().filter(|(_, e)| f(e)).count())
            .unwrap_or_default()
    }

    pub fn take_timed(&self) -> Vec<(Instant, RolloutEvent)> {
        self.0
            .lock()
            .map(|mut e| std::mem::take(&mut *e))
            .unwrap_or_default()
    }
}
