//! What the Docker tests share: the test image (`$SLIPWAY_TEST_IMAGE`, busybox FROM
//! scratch, built as `scripts/lib/prepare.sh` does when missing), one environment per test
//! (a unique `io.slipway.env`, its network, removed with everything labelled for it when
//! the test ends, even on a panic), a real proxy on a loopback port, busybox httpd
//! services whose version is their `VERSION`, and a load client that records every answer.
//! A test skips, saying so, when Docker is not reachable.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use slipway_deploy::rollout::{
    HealthGate, Probe, RolloutEvent, RouteSpec, ServiceSpec, Strategy, UpdateConfig,
};
use slipway_deploy::target::{ContainerSpec, DockerTarget, RestartPolicy};
use slipway_proxy::{Config, Proxy, RouteTable};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub fn docker(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .map_err(|e| format!("docker {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(format!(
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

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

/// One test's environment on the engine; everything of it goes when it drops.
pub struct Env {
    pub env: String,
    pub stack: String,
    pub network: String,
    pub image: String,
    pub target: DockerTarget,
    /// Containers the test made without Slipway's labels, by name.
    pub unlabelled: Mutex<Vec<String>>,
}

impl Env {
    pub async fn new(test: &str) -> Option<Env> {
        static N: AtomicUsize = AtomicUsize::new(0);
        let image = image()?;
        let target = match DockerTarget::connect().await {
            Ok(t) => t,
            Err(e) => {
                eprintln!("skipped: {e}");
                return None;
            }
        };
        let env = format!(
            "it-{test}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        Some(Env {
            network: format!("{env}-net"),
            stack: "shop".to_owned(),
            env,
            image,
            target,
            unlabelled: Mutex::new(Vec::new()),
        })
    }

    /// A unique host for `service`.
    pub fn host(&self, service: &str) -> String {
        format!("{service}.{}.test", self.env)
    }

    /// A busybox httpd service answering `VERSION` on `/`, gated by an HTTP probe.
    pub fn service(&self, name: &str, revision: &str, version: &str, replicas: u32) -> ServiceSpec {
        // `sh` stays PID 1 and exits on TERM, so a stop is quick.
        let script = "mkdir -p /www && echo \"$VERSION\" > /www/index.html; \
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
                env: BTreeMap::from([("VERSION".to_owned(), version.to_owned())]),
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

impl Drop for Env {
    fn drop(&mut self) {
        let label = format!("label=io.slipway.env={}", self.env);
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
        let _ = docker(&["network", "rm", &self.network]);
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
    pub errors: Vec<String>,
    pub bodies: BTreeMap<String, usize>,
    /// Bodies of 200s, in arrival order (all clients).
    pub order: Vec<String>,
}

impl Seen {
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
            "load: {} requests, statuses {:?}, {} errors, bodies {:?}",
            self.total(),
            self.statuses,
            self.errors.len(),
            self.bodies
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
}

/// Clients in loops of GET `/` until stopped: `keep_alive` ones reuse their connections,
/// `fresh` ones open one per request.
pub struct Load {
    stop: Arc<AtomicBool>,
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
                                }
                            }
                            Err(e) => s.errors.push(e),
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(3)).await;
                }
            }));
        }
        Load { stop, seen, tasks }
    }

    pub async fn stop(self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("load client");
        }
        let mut seen = self.seen.lock().expect("seen");
        std::mem::take(&mut *seen)
    }
}

/// Collects a rollout's events.
#[derive(Clone, Default)]
pub struct Events(pub Arc<Mutex<Vec<RolloutEvent>>>);

impl Events {
    pub fn sink(&self) -> impl Fn(&RolloutEvent) + Send + Sync + 'static {
        let all = self.0.clone();
        move |e| {
            if let Ok(mut all) = all.lock() {
                all.push(e.clone());
            }
        }
    }

    pub fn take(&self) -> Vec<RolloutEvent> {
        self.0
            .lock()
            .map(|mut e| std::mem::take(&mut *e))
            .unwrap_or_default()
    }
}
