//! The assembled edge: one [`Proxy`], its listeners and its providers, as `slipway proxy`
//! and `slipway up` run it. The binary maps its flags to an [`EdgeConfig`] and calls
//! [`Edge::start`]; everything past the flags is here.
//!
//! Providers own one route set each in the proxy ([`Proxy::set_provider`]): the routes
//! file (`file`, watched and applied live by [`watch_routes_file`]), and whatever the
//! caller adds through [`Edge::proxy`] (the deployer, `--public-url`).
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

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::diagnostic::Diagnostic;
use crate::forward::Proxy;
use crate::observe::{AccessLogTarget, Observer};
use crate::serve::{Config, serve_http};
use crate::table::RouteTable;

/// The provider name of the routes file.
pub const FILE_PROVIDER: &str = "file";

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct EdgeConfig {
    /// Where plain HTTP is served; `None` serves none.
    pub http: Option<SocketAddr>,
    /// The routes file, watched.
    pub routes_file: Option<PathBuf>,
    /// Where the access log goes; `None`: no access log.
    pub access_log: Option<AccessLogTarget>,
    /// Follow the local Docker engine's containers and route them by their labels.
    pub docker: Option<crate::docker::DockerOptions>,
    /// Where `GET /metrics` is served on its own listener (`slipway proxy`; `slipway up`
    /// adds the proxy's metrics to the server's `/metrics` instead).
    pub metrics: Option<SocketAddr>,
    pub proxy: Config,
    /// Where HTTPS is served; `None` serves none. Needs `data_dir`. Plain HTTP redirects
    /// to `proxy.https_port` (the port clients reach, 443 by default), not to this
    /// address's port: set it when they differ.
    pub https: Option<SocketAddr>,
    /// The data dir whose `certs/` (uploaded) and `acme/` (issued) certificates the HTTPS
    /// listener serves; uploaded ones changed by another process are read again.
    pub data_dir: Option<PathBuf>,
    /// Order certificates for `tls: acme` hosts; `None`: no ACME (uploaded ones only).
    /// Needs `data_dir`.
    pub acme: Option<crate::acme::AcmeOptions>,
}

/// Which listener an error is about, for the caller to name its flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Http,
    Https,
    Metrics,
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
}

impl Edge {
    /// Binds the listeners, loads the routes file and starts serving until `shutdown`.
    pub async fn start(config: EdgeConfig, shutdown: CancellationToken) -> Result<Edge, EdgeError> {
        let file_routes = match &config.routes_file {
            Some(path) => Some(load_routes_file(path).await?),
            None => None,
        };
        let http = match config.http {
            Some(addr) => Some(bind(Listener::Http, addr).await?),
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
            Some(addr) => Some(bind(Listener::Https, addr).await?),
            None => None,
        };
        let metrics = match config.metrics {
            Some(addr) => Some(bind(Listener::Metrics, addr).await?),
            None => None,
        };
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
        let mut metrics_addr = None;
        if let Some((listener, addr)) = metrics {
            metrics_addr = Some(addr);
            tasks.spawn(serve_metrics(proxy.clone(), listener, shutdown.clone()));
        }
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
                tasks.spawn(crate::serve::serve_https(
                    proxy.clone(),
                    listener,
                    tls,
                    shutdown.clone(),
                ));
            }
        }
        let mut http_addr = None;
        if let Some((listener, addr)) = http {
            http_addr = Some(addr);
            tasks.spawn(serve_http(proxy.clone(), listener, shutdown.clone()));
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
        })
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

    /// Waits until every listener and provider task has ended (after `shutdown`).
    pub async fn wait(&self) {
        self.tasks.wait().await;
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
