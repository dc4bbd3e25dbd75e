//! The assembled edge: one [`Proxy`], its listeners and its providers, as `slipway proxy`
//! and `slipway up` run it. The binary maps its flags to an [`EdgeConfig`] and calls
//! [`Edge::start`]; everything past the flags is here.
//!
//! Providers own one route set each in the proxy ([`Proxy::set_provider`]): the routes
//! file (`file`, watched and applied live by [`watch_routes_file`]), and whatever the
//! caller adds through [`Edge::proxy`] (the deployer, `--public-url`).
//!
//! With a data dir ([`EdgeConfig::data_dir`]) the edge is the data dir's one instance
//! ([`crate::instance`]): it serves the last stored routes at once and stores every change
//! ([`crate::persist`]), and answers a successor on `DATA/slipway.sock`
//! ([`crate::takeover`]): it then stops accepting, drains (up to
//! [`EdgeConfig::drain_timeout`]), releases the lock and ends, so [`Edge::wait`] returns
//! and [`Edge::handed_over`] says why. Started with [`EdgeConfig::takeover`], it serves
//! on the running instance's listeners (by [`Listener::handover_name`]) and answers its own
//! successors once that one has gone.
//!
//! With a data dir, the edge owns the [`crate::tls::CertStore`] (uploads by other
//! processes read again, see [`crate::tls::watch_uploaded`]), the HTTPS listener's
//! resolver over it, and the [`crate::acme::AcmeManager`] following the live table's
//! `tls: acme` hosts.
//!
//! Invariants: nothing is served unless every listener was bound (a port that cannot be
//! bound is an [`EdgeError::Bind`] naming the listener and the address); a routes file
//! with errors at start is an [`EdgeError::RoutesFile`] (there is nothing earlier to keep
//! serving), while a later broken version is reported at FILE:LINE:COL and the routes in
//! use stay.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::diagnostic::Diagnostic;
use crate::forward::Proxy;
use crate::instance::InstanceLock;
use crate::observe::{AccessLogTarget, Observer};
use crate::serve::{Config, Connections, serve_http_on};
use crate::table::RouteTable;
use crate::takeover::{
    Claim, ClaimError, Handover, HandoverSet, Predecessor, TakeoverError, listener_fd, socket_path,
};

/// How long a predecessor serves its in-flight requests and tunnels after a handover,
/// unless [`EdgeConfig::drain_timeout`] says otherwise.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How often route changes are stored, at most.
const STORE_DEBOUNCE: Duration = Duration::from_millis(500);
/// How long a successor waits for the lock after its predecessor's EOF (its exit).
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// The provider name of the routes file.
pub const FILE_PROVIDER: &str = "file";

/// What to run.
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    /// Where plain HTTP is served; `None` serves none.
    pub http: Option<SocketAddr>,
    /// The routes file, watched.
    pub routes_file: Option<PathBuf>,
    /// Where the access log goes; `None`: no access log.
    pub access_log: Option<AccessLogTarget>,
    /// Follow the local Docker engine's containers and route them by their labels.
    pub docker: Option<crate::docker::DockerOptions>,
    /// Threads serving the listeners, each with its own single-threaded runtime and pool
    /// of backend connections (as nginx's workers); 0 serves them on the caller's runtime.
    /// [`EdgeConfig::default`] gives one per core.
    pub workers: usize,
    /// Where `GET /metrics` is served on its own listener (`slipway proxy`; `slipway up`
    /// adds the proxy's metrics to the server's `/metrics` instead).
    pub metrics: Option<SocketAddr>,
    pub proxy: Config,
    /// The data dir: one instance per dir, the last routes stored in `DATA/proxy` and
    /// served at start, a successor answered on `DATA/slipway.sock`, and the `certs/`
    /// (uploaded) and `acme/` (issued) certificates the HTTPS listener serves (uploads
    /// by another process are read again). `None`: none of these.
    pub data_dir: Option<PathBuf>,
    /// Take the listeners over from the instance running on `data_dir` (`--takeover`);
    /// with none running, start afresh.
    pub takeover: bool,
    /// After a handover, how long in-flight requests and tunnels may go on; `None`:
    /// [`DEFAULT_DRAIN_TIMEOUT`].
    pub drain_timeout: Option<Duration>,
    /// Where HTTPS is served; `None` serves none. Needs `data_dir`. Plain HTTP redirects
    /// to `proxy.https_port` (the port clients reach, 443 by default), not to this
    /// address's port: set it when they differ.
    pub https: Option<SocketAddr>,
    /// Order certificates for `tls: acme` hosts; `None`: no ACME (uploaded ones only).
    /// Needs `data_dir`.
    pub acme: Option<crate::acme::AcmeOptions>,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig {
            http: None,
            routes_file: None,
            access_log: None,
            docker: None,
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            metrics: None,
            data_dir: None,
            takeover: false,
            drain_timeout: None,
            https: None,
            acme: None,
            proxy: Config::default(),
        }
    }
}

/// Which listener an error is about, for the caller to name its flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Http,
    Https,
    Metrics,
}

impl Listener {
    /// Its name in a takeover.
    pub fn handover_name(self) -> &'static str {
        match self {
            Listener::Http => "proxy-http",
            Listener::Https => "proxy-https",
            Listener::Metrics => "proxy-metrics",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        listener: Listener,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot open the access log {path}: {source}")]
    AccessLog {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the routes file {path} has errors")]
    RoutesFile {
        path: PathBuf,
        diagnostics: Vec<Diagnostic>,
    },
    /// The data dir is another instance's (the message names the pid and `--takeover`),
    /// or the takeover from it failed (naming the socket).
    #[error(transparent)]
    Claim(#[from] ClaimError),
    #[error(transparent)]
    Handover(#[from] TakeoverError),
    #[error("{what} needs a data dir for its certificates")]
    NoDataDir { what: &'static str },
    #[error("the certificate store under {path}: {source}")]
    CertStore {
        path: PathBuf,
        source: crate::tls::CertError,
    },
    #[error("the HTTPS listener's TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// A running edge.
#[derive(Debug)]
pub struct Edge {
    proxy: Arc<Proxy>,
    http_addr: Option<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    https_addr: Option<SocketAddr>,
    docker: Option<crate::docker::DockerProvider>,
    certs: Option<Arc<crate::tls::CertStore>>,
    acme: Option<crate::acme::AcmeManager>,
    tasks: TaskTracker,
    /// Fires when this instance's listeners were handed to a successor.
    handed_over: CancellationToken,
    /// Fires once this instance holds the data dir's lock (at once when it started fresh;
    /// after its predecessor has gone on a takeover; at once without a data dir).
    holds: CancellationToken,
    /// What a successor hands over: the edge's listeners, and the caller's.
    handover_set: HandoverSet,
    /// Listeners taken over that the edge does not serve itself (`api`), for the caller.
    taken: std::sync::Mutex<BTreeMap<String, std::net::TcpListener>>,
}

impl Edge {
    /// Binds the listeners, loads the routes file and starts serving until `shutdown`.
    pub async fn start(config: EdgeConfig, shutdown: CancellationToken) -> Result<Edge, EdgeError> {
        let file_routes = match &config.routes_file {
            Some(path) => Some(load_routes_file(path).await?),
            None => None,
        };
        // After the routes file (a broken one must not take the listeners over).
        let (lock, predecessor, mut taken) = match &config.data_dir {
            None => (None, None, BTreeMap::new()),
            Some(dir) => match crate::takeover::claim(dir, config.takeover).await? {
                Claim::Fresh(lock) => (Some(lock), None, BTreeMap::new()),
                Claim::Successor(t) => (None, Some(t.predecessor), t.listeners),
            },
        };
        let http = match config.http {
            Some(addr) => Some(listen(Listener::Http, addr, &mut taken).await?),
            None => None,
        };
        let certs = match &config.data_dir {
            Some(dir) => Some(Arc::new(crate::tls::CertStore::open(dir).map_err(
                |source| EdgeError::CertStore {
                    path: dir.clone(),
                    source,
                },
            )?)),
            None if config.https.is_some() => {
                return Err(EdgeError::NoDataDir {
                    what: "the HTTPS listener",
                });
            }
            None if config.acme.is_some() => return Err(EdgeError::NoDataDir { what: "ACME" }),
            None => None,
        };
        let https = match config.https {
            Some(addr) => Some(listen(Listener::Https, addr, &mut taken).await?),
            None => None,
        };
        let metrics = match config.metrics {
            Some(addr) => Some(listen(Listener::Metrics, addr, &mut taken).await?),
            None => None,
        };
        // A proxy listener this configuration no longer has is closed; the rest wait for
        // the caller.
        taken.retain(|name, _| !name.starts_with("proxy-"));
        let observer =
            Observer::new(config.access_log.as_ref()).map_err(|source| EdgeError::AccessLog {
                path: match &config.access_log {
                    Some(AccessLogTarget::File(p)) => p.clone(),
                    _ => PathBuf::from("stderr"),
                },
                source,
            })?;
        let proxy = Arc::new(Proxy::with_observer(
            config.proxy.clone(),
            RouteTable::default(),
            observer,
        ));
        let tasks = TaskTracker::new();
        // The providers and accept loops end at `stop`: the caller's shutdown, or the end
        // of a handover's drain.
        let stop = shutdown.child_token();
        let accepting = stop.child_token();
        let shutdown = stop.clone();
        if let Some(dir) = &config.data_dir {
            let stored = crate::persist::dir(dir);
            crate::persist::restore(&proxy, &stored);
            let saver =
                crate::persist::spawn_saver(proxy.clone(), stored, STORE_DEBOUNCE, stop.clone());
            tasks.spawn(async move {
                let _ = saver.await;
            });
        }
        if let (Some(path), Some((set, text))) = (config.routes_file.clone(), file_routes) {
            proxy.set_provider(FILE_PROVIDER, set);
            report_conflicts(&proxy);
            tasks.spawn(watch_routes_file(
                proxy.clone(),
                path,
                text,
                shutdown.clone(),
            ));
        }
        let docker = config.docker.clone().map(|options| {
            crate::docker::DockerProvider::spawn(proxy.clone(), options, shutdown.clone())
        });
        let handover_set = HandoverSet::new();
        let mut metrics_addr = None;
        if let Some((listener, addr)) = metrics {
            metrics_addr = Some(addr);
            add_to_handover(&handover_set, Listener::Metrics.handover_name(), &listener)?;
            tasks.spawn(serve_metrics(proxy.clone(), listener, accepting.clone()));
        }
        let connections = Connections::new();
        let mut https_addr = None;
        let mut acme = None;
        if let Some(store) = &certs {
            tasks.spawn(crate::tls::watch_uploaded(store.clone(), shutdown.clone()));
            if let Some(options) = config.acme.clone() {
                let manager = crate::acme::AcmeManager::spawn(
                    options,
                    store.clone(),
                    proxy.challenges().clone(),
                    shutdown.clone(),
                );
                manager.follow(proxy.clone(), shutdown.clone());
                acme = Some(manager);
            }
            if let Some((listener, addr)) = https {
                https_addr = Some(addr);
                let resolver = crate::tls::CertResolver::new(proxy.clone(), store.clone());
                let tls = Arc::new(crate::tls::HttpsConfig::new(resolver)?);
                add_to_handover(&handover_set, Listener::Https.handover_name(), &listener)?;
                let (conns, until) = (connections.clone(), stop.clone());
                let serve = move |proxy, listener, accepting, spread| {
                    let (conns, until, tls) =
                        (conns.spread_over(spread), until.clone(), tls.clone());
                    async move {
                        crate::serve::serve_https_on(proxy, listener, tls, accepting, conns).await;
                        until.cancelled().await;
                    }
                };
                serve_on_workers(
                    &tasks,
                    &proxy,
                    (listener, Listener::Https, addr),
                    config.workers,
                    &accepting,
                    serve,
                )?;
            }
        }
        let mut http_addr = None;
        if let Some((listener, addr)) = http {
            http_addr = Some(addr);
            add_to_handover(&handover_set, Listener::Http.handover_name(), &listener)?;
            let (conns, until) = (connections.clone(), stop.clone());
            // A worker's runtime holds its connections' tasks: it lives until the edge
            // stops (after a handover's drain), not only until its accept loop ends.
            let serve = move |proxy, listener, accepting, spread| {
                let (conns, until) = (conns.spread_over(spread), until.clone());
                async move {
                    serve_http_on(proxy, listener, accepting, conns).await;
                    until.cancelled().await;
                }
            };
            serve_on_workers(
                &tasks,
                &proxy,
                (listener, Listener::Http, addr),
                config.workers,
                &accepting,
                serve,
            )?;
        }
        let handed_over = CancellationToken::new();
        let holds = CancellationToken::new();
        if let Some(dir) = config.data_dir.clone() {
            let holder = match (lock, predecessor) {
                (Some(lock), _) => Holder::Locked(lock),
                (None, Some(predecessor)) => Holder::Succeeding(predecessor),
                (None, None) => Holder::Nothing,
            };
            tasks.spawn(
                HandoverTask {
                    dir,
                    set: handover_set.clone(),
                    proxy: proxy.clone(),
                    connections,
                    accepting,
                    stop,
                    handed_over: handed_over.clone(),
                    holds: holds.clone(),
                    drain_timeout: config.drain_timeout.unwrap_or(DEFAULT_DRAIN_TIMEOUT),
                }
                .run(holder),
            );
        } else {
            holds.cancel();
        }
        tasks.close();
        Ok(Edge {
            proxy,
            http_addr,
            metrics_addr,
            https_addr,
            docker,
            certs,
            acme,
            tasks,
            handed_over,
            holds,
            handover_set,
            taken: std::sync::Mutex::new(taken),
        })
    }

    /// A listener taken over from the predecessor that the edge does not serve itself
    /// (`slipway up`'s `api`), once; `None` when there was no takeover or no such listener.
    /// In blocking mode, as `std` makes it: `set_nonblocking(true)` before
    /// `tokio::net::TcpListener::from_std`.
    pub fn take_listener(&self, name: &str) -> Option<std::net::TcpListener> {
        self.taken
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name)
    }

    /// Hands `listener` over to a successor too, as `name` (`api`), with the edge's own.
    /// Its owner ends its accept loop when [`Edge::handed_over_signal`] fires.
    pub fn hand_over_also(&self, name: &str, listener: &impl AsFd) -> Result<(), EdgeError> {
        add_to_handover(&self.handover_set, name, listener)
    }

    /// Fires when this instance's listeners were handed over to a successor: it stops
    /// accepting and drains, then everything ends ([`Edge::wait`] returns).
    pub fn handed_over_signal(&self) -> CancellationToken {
        self.handed_over.clone()
    }

    /// Waits until this instance holds the data dir: what must never run twice on one
    /// store (the server) starts after this.
    pub async fn holds_data_dir(&self) {
        self.holds.cancelled().await;
    }

    /// Whether the listeners were handed over (why [`Edge::wait`] returned).
    pub fn handed_over(&self) -> bool {
        self.handed_over.is_cancelled()
    }

    pub fn proxy(&self) -> &Arc<Proxy> {
        &self.proxy
    }

    /// Every route with its backends' live state and its host's certificate.
    pub fn status(&self) -> crate::ProxyStatus {
        let snapshot = self.proxy.snapshot();
        let mut status = self.proxy.status(|host| {
            let store = self.certs.as_ref()?;
            // The host's mode: an exact route's wins, as in the resolver.
            let tls = snapshot
                .table
                .routes()
                .iter()
                .find(|r| r.tls.is_on() && r.key.host.as_str() == host)
                .map(|r| r.tls.clone())?;
            Some(store.status(host, &tls))
        });
        if let Some(docker) = &self.docker {
            status.diagnostics = docker.diagnostics();
            status.docker_error = docker.last_error();
        }
        status
    }

    /// The Docker provider, when it runs.
    pub fn docker(&self) -> Option<&crate::docker::DockerProvider> {
        self.docker.as_ref()
    }

    /// The proxy's metrics (Prometheus text): traffic per route and backend, backends'
    /// state.
    pub fn render_metrics(&self) -> String {
        let mut text = self.proxy.render_metrics();
        if let Some(store) = &self.certs {
            text.push_str(&store.render_metrics());
        }
        text
    }

    /// The HTTPS listener's address, as bound.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https_addr
    }

    /// The certificate store, when the edge has a data dir.
    pub fn certs(&self) -> Option<&Arc<crate::tls::CertStore>> {
        self.certs.as_ref()
    }

    /// The ACME manager, when ACME is on.
    pub fn acme(&self) -> Option<&crate::acme::AcmeManager> {
        self.acme.as_ref()
    }

    /// The metrics listener's address, as bound.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The plain HTTP listener's address, as bound (port 0 resolved).
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// Waits until every listener and provider task has ended: after `shutdown`, or after
    /// a handover once the drain has ended ([`Edge::handed_over`]).
    pub async fn wait(&self) {
        self.tasks.wait().await;
    }
}

fn add_to_handover(set: &HandoverSet, name: &str, listener: &impl AsFd) -> Result<(), EdgeError> {
    let fd = listener_fd(listener).map_err(|source| TakeoverError::Io {
        path: PathBuf::from(name),
        source,
    })?;
    Ok(set.insert(name, fd)?)
}

/// The listener taken over under `listener`'s name when it listens on `addr` (or `addr`
/// asks for any port); else a new one bound to `addr`.
async fn listen(
    listener: Listener,
    addr: SocketAddr,
    taken: &mut BTreeMap<String, std::net::TcpListener>,
) -> Result<(TcpListener, SocketAddr), EdgeError> {
    let name = listener.handover_name();
    if let Some(old) = taken.remove(name) {
        let err = |source| EdgeError::Bind {
            listener,
            addr,
            source,
        };
        let local = old.local_addr().map_err(err)?;
        if local == addr || (addr.port() == 0 && local.ip() == addr.ip()) {
            old.set_nonblocking(true).map_err(err)?;
            return Ok((TcpListener::from_std(old).map_err(err)?, local));
        }
        tracing::warn!(
            "{name}: the running instance listens on {local}, this one is asked for {addr}: binding {addr}"
        );
    }
    bind(listener, addr).await
}

/// What the handover task starts with.
enum Holder {
    Locked(InstanceLock),
    Succeeding(Predecessor),
    Nothing,
}

/// Answers successors on the data dir's socket; after a handover, ends this instance.
struct HandoverTask {
    dir: PathBuf,
    set: HandoverSet,
    proxy: Arc<Proxy>,
    connections: Connections,
    accepting: CancellationToken,
    stop: CancellationToken,
    handed_over: CancellationToken,
    holds: CancellationToken,
    drain_timeout: Duration,
}

impl HandoverTask {
    async fn run(self, holder: Holder) {
        let lock = match holder {
            Holder::Locked(lock) => lock,
            Holder::Succeeding(predecessor) => {
                let pid = predecessor.pid();
                tokio::select! {
                    got = predecessor.gone_then_lock(&self.dir, LOCK_WAIT) => match got {
                        Ok(lock) => {
                            tracing::info!(pid, "the previous instance has gone; this one holds the data dir");
                            lock
                        }
                        Err(e) => {
                            tracing::error!("{e}; this instance serves on but cannot hand over");
                            return;
                        }
                    },
                    () = self.stop.cancelled() => return,
                }
            }
            Holder::Nothing => {
                self.holds.cancel();
                return;
            }
        };
        self.holds.cancel();
        let handover = match Handover::bind_set(&socket_path(&self.dir), self.set.clone()) {
            Ok(h) => h,
            Err(e) => {
                tracing::error!("{e}; this instance serves on but cannot hand over");
                // The lock is held until the stop all the same.
                self.stop.cancelled().await;
                drop(lock);
                return;
            }
        };
        let successor = tokio::select! {
            s = handover.taken() => s,
            () = self.stop.cancelled() => {
                remove_socket(handover.path());
                return;
            }
        };
        self.accepting.cancel();
        self.handed_over.cancel();
        successor
            .drain_and_depart(
                &self.connections,
                &self.proxy,
                self.drain_timeout,
                Some(lock),
            )
            .await;
        self.stop.cancel();
    }
}

/// A stopped instance's socket is not left for a successor to find dead.
fn remove_socket(path: &Path) {
    if let Err(e) = std::fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!("cannot remove {}: {e}", path.display());
    }
}

async fn bind(
    listener: Listener,
    addr: SocketAddr,
) -> Result<(TcpListener, SocketAddr), EdgeError> {
    let bound = TcpListener::bind(addr)
        .await
        .map_err(|source| EdgeError::Bind {
            listener,
            addr,
            source,
        })?;
    let local = bound.local_addr().map_err(|source| EdgeError::Bind {
        listener,
        addr,
        source,
    })?;
    Ok((bound, local))
}

async fn load_routes_file(path: &PathBuf) -> Result<(crate::RouteSet, String), EdgeError> {
    let shown = path.display().to_string();
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| EdgeError::RoutesFile {
            path: path.clone(),
            diagnostics: vec![
                Diagnostic::error(format!("cannot read the routes file: {e}"))
                    .origin(&shown)
                    .hint("check the path given to --routes"),
            ],
        })?;
    match crate::file::parse(&text, &shown) {
        Ok(set) => Ok((set, text)),
        Err(diagnostics) => Err(EdgeError::RoutesFile {
            path: path.clone(),
            diagnostics,
        }),
    }
}

fn report_conflicts(proxy: &Proxy) {
    for c in proxy.snapshot().table.conflicts() {
        tracing::warn!("route conflict: {c}");
    }
}

/// Polls the routes file every second until `shutdown`; a changed file that parses
/// replaces the file's routes, one with errors is reported and the routes in use stay.
pub async fn watch_routes_file(
    proxy: Arc<Proxy>,
    path: PathBuf,
    mut last: String,
    shutdown: CancellationToken,
) {
    let shown = path.display().to_string();
    let mut missing_reported = false;
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = shutdown.cancelled() => return,
        }
        let text = match tokio::fs::read_to_string(&path).await {
            Ok(t) => {
                missing_reported = false;
                t
            }
            Err(e) => {
                // An editor that writes a new file and renames it leaves a moment without
                // one: report once, keep serving.
                if !missing_reported {
                    tracing::warn!(
                        "{shown}: cannot read the routes file ({e}); the previous routes keep serving"
                    );
                    missing_reported = true;
                }
                continue;
            }
        };
        if text == last {
            continue;
        }
        match crate::file::parse(&text, &shown) {
            Ok(set) => {
                let n = set.routes.len();
                proxy.set_provider(FILE_PROVIDER, set);
                report_conflicts(&proxy);
                tracing::info!("{shown}: applied, {n} route(s)");
            }
            Err(diagnostics) => {
                for d in &diagnostics {
                    tracing::error!("{d}");
                }
                tracing::warn!("{shown}: not applied; the previous routes keep serving");
            }
        }
        last = text;
    }
}

/// The provider name of Slipway's own host.
pub const PUBLIC_URL_PROVIDER: &str = "public-url";

/// The route that sends `--public-url`'s host to Slipway itself at `target` (its API
/// listener): every path, no size limit, an ACME certificate when the URL is `https://`
/// (plain HTTP is then redirected, as a browser or `docker login` expects).
pub fn public_url_routes(public_url: &str, target: SocketAddr) -> Result<crate::RouteSet, String> {
    use crate::route::{
        Address, Backend, BackendSet, Host, PlainHttp, Route, RouteKey, RouteSource, Tls,
    };
    let (https, rest) = if let Some(r) = public_url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = public_url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(format!(
            "--public-url {public_url}: write http://HOST or https://HOST"
        ));
    };
    let authority = rest.split('/').next().unwrap_or_default();
    // A port in the URL is where clients connect (the proxy's), not part of the host.
    let host = match authority.rsplit_once(':') {
        Some((h, port)) if !h.ends_with(']') && port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => authority,
    };
    let host = Host::parse(host).map_err(|e| format!("--public-url {public_url}: {e}"))?;
    let target = if target.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], target.port()))
    } else {
        target
    };
    let address = Address::parse(&target.to_string())?;
    let mut route = Route::new(
        RouteKey::new(host, None),
        vec![BackendSet::single("slipway", vec![Backend::new(address)])],
        RouteSource::PublicUrl,
    );
    if https {
        route.tls = Tls::Acme;
        route.options.http = PlainHttp::Redirect;
    }
    route.origin = Some("--public-url".to_owned());
    Ok(crate::RouteSet {
        routes: vec![route],
    })
}

/// `GET /metrics` on its own listener, until `shutdown`; every other path is 404.
async fn serve_metrics(proxy: Arc<Proxy>, listener: TcpListener, shutdown: CancellationToken) {
    use http_body_util::Full;
    use hyper::{Response, StatusCode};
    loop {
        let (stream, _) = tokio::select! {
            a = listener.accept() => match a {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!("metrics listener: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let proxy = proxy.clone();
                    async move {
                        let resp = if req.uri().path() == "/metrics" {
                            let mut r = Response::new(Full::new(bytes::Bytes::from(
                                proxy.render_metrics(),
                            )));
                            r.headers_mut().insert(
                                hyper::header::CONTENT_TYPE,
                                hyper::header::HeaderValue::from_static(
                                    "text/plain; version=0.0.4",
                                ),
                            );
                            r
                        } else {
                            let mut r = Response::new(Full::new(bytes::Bytes::from_static(
                                b"only /metrics here\n",
                            )));
                            *r.status_mut() = StatusCode::NOT_FOUND;
                            r
                        };
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Runs `serve(proxy, listener, shutdown)` on `workers` threads of their own, each
/// accepting from a clone of `listener` (the kernel hands each connection to one of them),
/// or on the caller's runtime when `workers` is 0. Each is tracked by `tasks`, and
/// registers in the [`Spread`](crate::serve::Spread) given to `serve`, over which the
/// connections it accepts are spread. `listener` comes with its kind and address, for the
/// error when it cannot be shared.
fn serve_on_workers<F, Fut>(
    tasks: &TaskTracker,
    proxy: &Arc<Proxy>,
    (listener, kind, addr): (TcpListener, Listener, SocketAddr),
    workers: usize,
    shutdown: &CancellationToken,
    serve: F,
) -> Result<(), EdgeError>
where
    F: Fn(Arc<Proxy>, TcpListener, CancellationToken, Arc<crate::serve::Spread>) -> Fut
        + Clone
        + Send
        + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let spread = crate::serve::Spread::new(workers);
    if workers == 0 {
        tasks.spawn(serve(proxy.clone(), listener, shutdown.clone(), spread));
        return Ok(());
    }
    let bind = |source| EdgeError::Bind {
        listener: kind,
        addr,
        source,
    };
    let std_listener = listener.into_std().map_err(bind)?;
    for i in 0..workers {
        let mine = std_listener.try_clone().map_err(bind)?;
        let (proxy, shutdown, serve) = (proxy.clone(), shutdown.clone(), serve.clone());
        let spread = spread.clone();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(format!("slipway-edge-{i}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!("edge worker {i}: cannot start its runtime: {e}");
                        return;
                    }
                };
                runtime.block_on(async move {
                    spread.register(i);
                    match TcpListener::from_std(mine) {
                        Ok(listener) => serve(proxy, listener, shutdown, spread).await,
                        Err(e) => tracing::error!("edge worker {i}: {e}"),
                    }
                });
                // `serve` returns once its connections are done with (or the listener is
                // shut); what is left is cut with the runtime.
                runtime.shutdown_timeout(Duration::from_millis(100));
                let _ = done_tx.send(());
            })
            .map_err(bind)?;
        tasks.spawn(async move {
            let _ = done_rx.await;
        });
    }
    Ok(())
}
