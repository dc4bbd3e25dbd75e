//! The last route table, kept in the data dir (`DATA/proxy/routes.json`), so a new
//! instance (a takeover or a plain restart) serves the last routes at once, before its
//! providers (routes file, Docker labels, deployer) have synced.
//!
//! What is kept is each provider's [`RouteSet`] as [`Proxy::set_provider`] last set it
//! ([`Proxy::providers`]), in a stored form of its own (`Stored*` here, version
//! [`VERSION`]): unlike the `--json` output it keeps basic-auth password hashes, and it is
//! read back through the same checks as any provider's input ([`Host::parse`],
//! [`Address::parse`], [`User::parse`], ...), so a value that exists was checked.
//! [`spawn_saver`] writes it on every change (debounced); [`restore`] loads it at start.
//!
//! Invariants: the file is written atomically (a temporary file, fsync, rename, fsync of
//! the directory) with mode 0600 (it holds password hashes), so a reader sees the old
//! table or the new, never half; a file that is missing, unknown (another version) or
//! corrupt is logged with its path and ignored, never a crash and never half applied.
//! Two instances during a takeover may both write it: each write is a whole table.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::auth::{BasicAuth, PasswordHash, User};
use crate::forward::Proxy;
use crate::route::{
    Address, Backend, BackendSet, HealthCheck, HealthProbe, Host, Hsts, PlainHttp, Route, RouteKey,
    RouteOptions, RouteSet, RouteSource, Scheme, StickyCookie, Tls, parse_path,
};

/// The directory under the data dir.
pub const DIR: &str = "proxy";
/// The file in it.
pub const FILE: &str = "routes.json";
/// The stored form's version; a file of another is ignored.
pub const VERSION: u32 = 1;

/// `DATA/proxy`.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join(DIR)
}

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not a stored route table: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error("{}: version {found} of the stored routes; this build reads version {VERSION}", path.display())]
    Unknown { path: PathBuf, found: u32 },
}

/// What [`restore`] did.
#[derive(Debug, Default)]
pub struct Restored {
    /// The providers whose routes were restored. A provider this instance no longer runs
    /// (a routes file dropped from the flags) keeps serving its last routes until the
    /// caller clears it with `set_provider(name, RouteSet::default())`.
    pub providers: Vec<String>,
    /// The file that was there but could not be used (already logged).
    pub ignored: Option<PersistError>,
}

/// Serves the routes stored in `dir` (`DATA/proxy`), each provider's as its own set.
/// Call before the providers start: each replaces its restored set when it first syncs.
pub fn restore(proxy: &Proxy, dir: &Path) -> Restored {
    match load(dir) {
        Ok(None) => Restored::default(),
        Ok(Some(providers)) => {
            let names: Vec<String> = providers.keys().cloned().collect();
            let routes: usize = providers.values().map(|s| s.routes.len()).sum();
            for (name, set) in providers {
                proxy.set_provider(&name, set);
            }
            tracing::info!(
                path = %dir.join(FILE).display(),
                routes,
                providers = ?names,
                "serving the last stored routes until the providers sync"
            );
            Restored {
                providers: names,
                ignored: None,
            }
        }
        Err(e) => {
            tracing::warn!("{e}; ignored, the providers will fill the route table");
            Restored {
                providers: Vec::new(),
                ignored: Some(e),
            }
        }
    }
}

/// The stored providers' routes in `dir`; `None` when nothing is stored.
pub fn load(dir: &Path) -> Result<Option<BTreeMap<String, RouteSet>>, PersistError> {
    let path = dir.join(FILE);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(PersistError::Io { path, source }),
    };
    let corrupt = |reason: String| PersistError::Corrupt {
        path: path.clone(),
        reason,
    };
    #[derive(Deserialize)]
    struct Versioned {
        version: u32,
    }
    let versioned: Versioned = serde_json::from_slice(&text).map_err(|e| corrupt(e.to_string()))?;
    if versioned.version != VERSION {
        return Err(PersistError::Unknown {
            path,
            found: versioned.version,
        });
    }
    let stored: Stored = serde_json::from_slice(&text).map_err(|e| corrupt(e.to_string()))?;
    let mut providers = BTreeMap::new();
    for (name, routes) in stored.providers {
        let routes = routes
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                r.check()
                    .map_err(|e| format!("provider `{name}`, route {i}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(corrupt)?;
        providers.insert(name, RouteSet { routes });
    }
    Ok(Some(providers))
}

/// Writes `providers` to `dir` (created 0700 if missing) atomically, mode 0600.
pub fn save(dir: &Path, providers: &BTreeMap<String, RouteSet>) -> Result<(), PersistError> {
    let path = dir.join(FILE);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PersistError::Io { path, source }
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))?;
    let stored = Stored {
        version: VERSION,
        providers: providers
            .iter()
            .map(|(name, set)| {
                (
                    name.clone(),
                    set.routes.iter().map(StoredRoute::from).collect(),
                )
            })
            .collect(),
    };
    let text = serde_json::to_vec_pretty(&stored).map_err(|e| PersistError::Corrupt {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let tmp = dir.join(format!(".{FILE}.{}.tmp", std::process::id()));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&text)?;
        f.write_all(b"\n")?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(&tmp)(e));
    }
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    // The rename is durable once the directory is.
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    Ok(())
}

/// Writes the proxy's providers' routes to `dir` after every change, at most once per
/// `debounce` (a burst of changes, as a Docker resync, is one write); a last write of a
/// pending change at `shutdown`. A failed write is logged and retried at the next change.
pub fn spawn_saver(
    proxy: Arc<Proxy>,
    dir: PathBuf,
    debounce: Duration,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let mut changes = proxy.provider_changes();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                () = shutdown.cancelled() => return,
            }
            tokio::select! {
                () = tokio::time::sleep(debounce) => {}
                () = shutdown.cancelled() => {}
            }
            changes.borrow_and_update();
            let providers = proxy.providers();
            let to = dir.clone();
            match tokio::task::spawn_blocking(move || save(&to, &providers)).await {
                Ok(Ok(())) => tracing::debug!(path = %dir.join(FILE).display(), "routes stored"),
                Ok(Err(e)) => tracing::warn!("cannot store the routes: {e}"),
                Err(e) => tracing::warn!("cannot store the routes: {e}"),
            }
            if shutdown.is_cancelled() {
                return;
            }
        }
    })
}

#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    version: u32,
    providers: BTreeMap<String, Vec<StoredRoute>>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredRoute {
    host: String,
    path: Option<String>,
    exact: bool,
    priority: i64,
    tls: StoredTls,
    backend_sets: Vec<StoredSet>,
    options: StoredOptions,
    source: StoredSource,
    origin: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum StoredTls {
    Acme,
    Off,
    Certificate(String),
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredSet {
    name: String,
    weight: u32,
    backends: Vec<StoredBackend>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredBackend {
    address: String,
    weight: u32,
    https: bool,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredOptions {
    http: String,
    hsts: Option<(u64, bool, bool)>,
    request_headers: BTreeMap<String, String>,
    response_headers: BTreeMap<String, String>,
    strip_prefixes: Vec<String>,
    basic_auth: Option<StoredAuth>,
    sticky: Option<(String, bool, bool)>,
    health_check: Option<StoredHealth>,
    acme_email: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredAuth {
    realm: String,
    /// `NAME:HASH`, as htpasswd writes them.
    users: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredHealth {
    /// `None`: a TCP check.
    http_path: Option<String>,
    status: Option<u16>,
    interval_ms: u64,
    timeout_ms: u64,
    healthy_threshold: u32,
    unhealthy_threshold: u32,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
enum StoredSource {
    PublicUrl,
    Deploy { stack: String, service: String },
    File { path: String },
    Labels { container: String },
}

/// A hash as htpasswd writes it.
fn hash_text(hash: &PasswordHash) -> String {
    match hash {
        PasswordHash::Bcrypt(h) => h.clone(),
        PasswordHash::Apr1 { salt, hash } => format!("$apr1${salt}${hash}"),
        PasswordHash::Sha1(b64) => format!("{{SHA}}{b64}"),
    }
}

fn plain_http_text(p: PlainHttp) -> &'static str {
    match p {
        PlainHttp::Serve => "serve",
        PlainHttp::Redirect => "redirect",
        PlainHttp::Off => "off",
    }
}

impl From<&Route> for StoredRoute {
    fn from(route: &Route) -> StoredRoute {
        // Destructured whole, so a field added to a route does not compile here until it
        // is stored too.
        let Route {
            key: RouteKey { host, path, exact },
            priority,
            tls,
            backend_sets,
            options,
            source,
            origin,
        } = route;
        let RouteOptions {
            http,
            hsts,
            request_headers,
            response_headers,
            strip_prefixes,
            basic_auth,
            sticky,
            health_check,
            acme_email,
        } = options;
        StoredRoute {
            host: host.as_str().to_owned(),
            path: path.clone(),
            exact: *exact,
            priority: *priority,
            tls: match tls {
                Tls::Acme => StoredTls::Acme,
                Tls::Off => StoredTls::Off,
                Tls::Certificate(name) => StoredTls::Certificate(name.clone()),
            },
            backend_sets: backend_sets
                .iter()
                .map(|s| StoredSet {
                    name: s.name.clone(),
                    weight: s.weight,
                    backends: s
                        .backends
                        .iter()
                        .map(|b| StoredBackend {
                            address: b.address.as_str().to_owned(),
                            weight: b.weight,
                            https: b.scheme == Scheme::Https,
                        })
                        .collect(),
                })
                .collect(),
            options: StoredOptions {
                http: plain_http_text(*http).to_owned(),
                hsts: hsts
                    .as_ref()
                    .map(|h| (h.max_age_secs, h.include_subdomains, h.preload)),
                request_headers: request_headers.clone(),
                response_headers: response_headers.clone(),
                strip_prefixes: strip_prefixes.clone(),
                basic_auth: basic_auth.as_ref().map(|a| StoredAuth {
                    realm: a.realm.clone(),
                    users: a
                        .users
                        .iter()
                        .map(|u| format!("{}:{}", u.name, hash_text(&u.hash)))
                        .collect(),
                }),
                sticky: sticky
                    .as_ref()
                    .map(|s| (s.name.clone(), s.secure, s.http_only)),
                health_check: health_check.as_ref().map(|h| StoredHealth {
                    http_path: match &h.probe {
                        HealthProbe::Http { path, .. } => Some(path.clone()),
                        HealthProbe::Tcp => None,
                    },
                    status: match &h.probe {
                        HealthProbe::Http { status, .. } => *status,
                        HealthProbe::Tcp => None,
                    },
                    interval_ms: h.interval.as_millis() as u64,
                    timeout_ms: h.timeout.as_millis() as u64,
                    healthy_threshold: h.healthy_threshold,
                    unhealthy_threshold: h.unhealthy_threshold,
                }),
                acme_email: acme_email.clone(),
            },
            source: match source {
                RouteSource::PublicUrl => StoredSource::PublicUrl,
                RouteSource::Deploy { stack, service } => StoredSource::Deploy {
                    stack: stack.clone(),
                    service: service.clone(),
                },
                RouteSource::File { path } => StoredSource::File { path: path.clone() },
                RouteSource::Labels { container } => StoredSource::Labels {
                    container: container.clone(),
                },
            },
            origin: origin.clone(),
        }
    }
}

impl StoredRoute {
    /// Back to a route, through the checks every provider's input goes through.
    fn check(self) -> Result<Route, String> {
        let host = Host::parse(&self.host)?;
        let path = self.path.as_deref().map(parse_path).transpose()?;
        let mut key = RouteKey::new(host, path);
        key.exact = self.exact;
        let tls = match self.tls {
            StoredTls::Acme => Tls::Acme,
            StoredTls::Off => Tls::Off,
            StoredTls::Certificate(name) => match Tls::parse(&name)? {
                Tls::Certificate(n) => Tls::Certificate(n),
                _ => return Err(format!("`{name}` is not a certificate's name")),
            },
        };
        let backend_sets = self
            .backend_sets
            .into_iter()
            .map(|s| {
                let backends = s
                    .backends
                    .into_iter()
                    .map(|b| {
                        Ok(Backend {
                            address: Address::parse(&b.address)?,
                            weight: checked_weight(b.weight)?,
                            scheme: if b.https { Scheme::Https } else { Scheme::Http },
                        })
                    })
                    .collect::<Result<Vec<_>, String>>()?;
                Ok(BackendSet {
                    name: s.name,
                    weight: checked_weight(s.weight)?,
                    backends,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let o = self.options;
        let options = RouteOptions {
            http: PlainHttp::parse(&o.http)?,
            hsts: o
                .hsts
                .map(|(max_age_secs, include_subdomains, preload)| Hsts {
                    max_age_secs,
                    include_subdomains,
                    preload,
                }),
            request_headers: checked_headers(o.request_headers)?,
            response_headers: checked_headers(o.response_headers)?,
            strip_prefixes: o
                .strip_prefixes
                .iter()
                .map(|p| parse_path(p))
                .collect::<Result<_, _>>()?,
            basic_auth: o
                .basic_auth
                .map(|a| {
                    Ok::<_, String>(BasicAuth {
                        realm: a.realm,
                        users: a
                            .users
                            .iter()
                            .map(|u| User::parse(u))
                            .collect::<Result<_, _>>()?,
                    })
                })
                .transpose()?,
            sticky: o
                .sticky
                .map(|(name, secure, http_only)| {
                    Ok::<_, String>(StickyCookie {
                        name: crate::route::parse_cookie_name(&name)?,
                        secure,
                        http_only,
                    })
                })
                .transpose()?,
            health_check: o
                .health_check
                .map(|h| {
                    let probe = match h.http_path {
                        Some(path) => HealthProbe::Http {
                            path: parse_path(&path)?,
                            status: h
                                .status
                                .map(|s| crate::route::parse_status(&s.to_string()))
                                .transpose()?,
                        },
                        None => HealthProbe::Tcp,
                    };
                    if h.interval_ms == 0 || h.timeout_ms == 0 {
                        return Err("a health check's interval and timeout are not zero".to_owned());
                    }
                    Ok(HealthCheck {
                        probe,
                        interval: Duration::from_millis(h.interval_ms),
                        timeout: Duration::from_millis(h.timeout_ms),
                        healthy_threshold: h.healthy_threshold.max(1),
                        unhealthy_threshold: h.unhealthy_threshold.max(1),
                    })
                })
                .transpose()?,
            acme_email: o.acme_email,
        };
        let source = match self.source {
            StoredSource::PublicUrl => RouteSource::PublicUrl,
            StoredSource::Deploy { stack, service } => RouteSource::Deploy { stack, service },
            StoredSource::File { path } => RouteSource::File { path },
            StoredSource::Labels { container } => RouteSource::Labels { container },
        };
        Ok(Route {
            key,
            priority: self.priority,
            tls,
            backend_sets,
            options,
            source,
            origin: self.origin,
        })
    }
}

fn checked_weight(w: u32) -> Result<u32, String> {
    crate::route::parse_weight(&w.to_string())
}

fn checked_headers(h: BTreeMap<String, String>) -> Result<BTreeMap<String, String>, String> {
    for name in h.keys() {
        crate::route::parse_header_name(name)?;
    }
    Ok(h)
}
