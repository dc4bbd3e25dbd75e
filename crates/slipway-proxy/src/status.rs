//! What the proxy is doing, for `GET /api/proxy/routes`, `slipway proxy routes` and the
//! web UI's proxy page: every route of the live table with its source and its backends'
//! live state, the conflicts, and (joined in by the caller that owns certificates) each
//! host's TLS state.
//!
//! Invariant: a [`ProxyStatus`] is read from one snapshot, so its routes and backends are
//! consistent with each other; it holds no password hashes (routes serialize without them).

use serde::Serialize;

use crate::balance::BackendState;
use crate::forward::Proxy;
use crate::route::{Route, Tls};
use crate::table::Conflict;

/// The whole answer.
#[derive(Debug, Clone, Serialize)]
pub struct ProxyStatus {
    pub routes: Vec<RouteStatus>,
    pub conflicts: Vec<Conflict>,
    /// Problems with what providers read (a container's labels), each naming its origin.
    pub diagnostics: Vec<crate::Diagnostic>,
    /// Why the Docker engine cannot be followed right now (the last routes keep serving).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub docker_error: Option<String>,
}

/// One route as served now.
#[derive(Debug, Clone, Serialize)]
pub struct RouteStatus {
    pub host: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub exact_path: bool,
    pub priority: i64,
    /// `file routes.yml`, `labels of container web-1`, `deploy shop/web`, `--public-url`.
    pub source: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    pub tls: TlsStatus,
    pub backends: Vec<BackendStatus>,
}

/// A route's TLS: its mode and, where a certificate store answered, the certificate.
#[derive(Debug, Clone, Serialize, Default)]
pub struct TlsStatus {
    /// `acme`, `off` or `certificate NAME`.
    pub mode: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertificateStatus>,
}

/// A host's certificate as its store knows it.
#[derive(Debug, Clone, Serialize, Default, PartialEq, Eq)]
pub struct CertificateStatus {
    /// Whether a certificate for the host is loaded and served.
    pub present: bool,
    /// RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// The last ACME failure for the host, and when (RFC 3339); cleared by a success.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error_at: Option<String>,
    /// When the next order or renewal is due (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt: Option<String>,
    /// ACME orders failed in a row (the backoff doubles with each).
    #[serde(skip_serializing_if = "is_zero")]
    pub failures: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// One backend of a route.
#[derive(Debug, Clone, Serialize)]
pub struct BackendStatus {
    pub address: String,
    /// The backend set it belongs to (`default`, or a deploy's revision).
    pub set: String,
    pub set_weight: u32,
    pub weight: u32,
    pub state: BackendState,
    pub in_flight: usize,
}

impl Proxy {
    /// The live table's routes and backends. `certificate` answers a host's TLS state
    /// (the certificate store's view); pass `|_| None` where there is none.
    pub fn status(&self, certificate: impl Fn(&str) -> Option<CertificateStatus>) -> ProxyStatus {
        let snapshot = self.snapshot();
        let routes = snapshot
            .table
            .routes()
            .iter()
            .enumerate()
            .map(|(i, route)| RouteStatus {
                host: route.key.host.as_str().to_owned(),
                path: route.key.path.clone(),
                exact_path: route.key.exact,
                priority: route.priority,
                source: route.source.to_string(),
                origin: route.origin.clone(),
                tls: TlsStatus {
                    mode: tls_mode(route),
                    certificate: route
                        .tls
                        .is_on()
                        .then(|| certificate(route.key.host.as_str()))
                        .flatten(),
                },
                backends: route
                    .backend_sets
                    .iter()
                    .enumerate()
                    .flat_map(|(j, set)| {
                        set.backends.iter().zip(snapshot.set_backends(i, j)).map(
                            move |(b, live)| BackendStatus {
                                address: b.address.to_string(),
                                set: set.name.clone(),
                                set_weight: set.weight,
                                weight: b.weight,
                                state: live.state(),
                                in_flight: live.in_flight(),
                            },
                        )
                    })
                    .collect(),
            })
            .collect();
        ProxyStatus {
            routes,
            conflicts: snapshot.table.conflicts().to_vec(),
            diagnostics: Vec::new(),
            docker_error: None,
        }
    }
}

fn tls_mode(route: &Route) -> String {
    match &route.tls {
        Tls::Acme => "acme".to_owned(),
        Tls::Off => "off".to_owned(),
        Tls::Certificate(name) => format!("certificate {name}"),
    }
}
