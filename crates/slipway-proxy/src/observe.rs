//! What the proxy tells about the traffic it carries: the access log (one JSON line per
//! exchange, written when the response ends) and Prometheus metrics per route and backend
//! (requests by code class, a latency histogram, in-flight requests, backend state).
//!
//! An [`Observer`] belongs to a [`Proxy`](crate::Proxy). Each request carries an
//! `Exchange` from its start; the layers that decide its route and backend note them on
//! it, and it is finished once, when the response body ends or is dropped (a client that
//! goes away mid-body is logged with the bytes that it got).
//!
//! Invariants: counters only grow; a route's counters outlive table swaps (they are keyed
//! by the route's host and path, not by a snapshot); nothing here blocks a request on IO
//! but the access log's write of one line (a file or stderr, as nginx does).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

/// Upper bounds of the latency histogram's buckets, in seconds.
const BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Where the access log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    Stderr,
    /// Appended to (created 0600 if missing).
    File(PathBuf),
}

/// Requests by status class: 1xx … 5xx.
#[derive(Debug, Default)]
pub(crate) struct ClassCounts([AtomicU64; 5]);

impl ClassCounts {
    fn add(&self, status: u16) {
        let class = usize::from((status / 100).clamp(1, 5)) - 1;
        self.0[class].fetch_add(1, Ordering::Relaxed);
    }

    fn read(&self) -> StatusCounts {
        let n = |i: usize| self.0[i].load(Ordering::Relaxed);
        StatusCounts {
            total: (0..5).map(n).sum(),
            server_errors: n(4),
        }
    }
}

/// What one backend of one route answered so far (counters only grow): a deployer
/// watching a new revision's error rate takes the difference of two readings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatusCounts {
    /// Exchanges finished.
    pub total: u64,
    /// Of those, 5xx (the proxy's own 502/504 for a backend that failed included).
    pub server_errors: u64,
}

impl StatusCounts {
    /// `self - earlier`, for counters read twice.
    pub fn since(self, earlier: StatusCounts) -> StatusCounts {
        StatusCounts {
            total: self.total.saturating_sub(earlier.total),
            server_errors: self.server_errors.saturating_sub(earlier.server_errors),
        }
    }
}

impl std::ops::Add for StatusCounts {
    type Output = StatusCounts;
    fn add(self, other: StatusCounts) -> StatusCounts {
        StatusCounts {
            total: self.total + other.total,
            server_errors: self.server_errors + other.server_errors,
        }
    }
}

/// One route's counters; [`Observer::route_metrics`] hands them out.
#[derive(Debug, Default)]
pub(crate) struct RouteMetrics {
    requests: ClassCounts,
    /// Counts per bucket of [`BUCKETS`] (each exchange in the first that holds it), then
    /// those over the last bound. One increment per exchange: the cumulative counts
    /// Prometheus wants are summed when rendered.
    latency: [AtomicU64; BUCKETS.len() + 1],
    latency_sum_micros: AtomicU64,
    backends: RwLock<HashMap<String, Arc<ClassCounts>>>,
}

impl RouteMetrics {
    /// The counters of one backend of this route.
    pub(crate) fn backend(&self, address: &str) -> Arc<ClassCounts> {
        let known = self
            .backends
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(address)
            .cloned();
        known.unwrap_or_else(|| {
            self.backends
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .entry(address.to_owned())
                .or_default()
                .clone()
        })
    }

    /// Counts one exchange that took `elapsed`, answered by `backend` (if one did).
    pub(crate) fn count(&self, backend: Option<&ClassCounts>, status: u16, elapsed: Duration) {
        self.requests.add(status);
        let secs = elapsed.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|bound| secs <= *bound)
            .unwrap_or(BUCKETS.len());
        self.latency[bucket].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
        if let Some(b) = backend {
            b.add(status);
        }
    }
}

/// The access log and the metrics of one proxy.
pub struct Observer {
    log: Option<Mutex<Box<dyn std::io::Write + Send>>>,
    routes: RwLock<HashMap<String, Arc<RouteMetrics>>>,
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observer")
            .field("access_log", &self.log.is_some())
            .finish_non_exhaustive()
    }
}

impl Observer {
    /// An observer writing the access log to `target` (none: no access log).
    pub fn new(target: Option<&AccessLogTarget>) -> std::io::Result<Observer> {
        let log: Option<Box<dyn std::io::Write + Send>> = match target {
            None => return Ok(Observer::without_log()),
            Some(AccessLogTarget::Stderr) => Some(Box::new(std::io::stderr())),
            Some(AccessLogTarget::File(path)) => {
                use std::os::unix::fs::OpenOptionsExt;
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(path)?;
                Some(Box::new(file))
            }
        };
        Ok(Observer {
            log: log.map(Mutex::new),
            ..Observer::without_log()
        })
    }

    /// Metrics only.
    pub fn without_log() -> Observer {
        Observer {
            log: None,
            routes: RwLock::new(HashMap::new()),
        }
    }

    /// The counts of `backend` (an address as `host:port`) on the route `route` (its
    /// host and path as the route key shows them); zero for one that answered nothing.
    pub fn backend_counts(&self, route: &str, backend: &str) -> StatusCounts {
        let Some(m) = self
            .routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(route)
            .cloned()
        else {
            return StatusCounts::default();
        };
        let counts = m
            .backends
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(backend)
            .cloned();
        counts.map(|c| c.read()).unwrap_or_default()
    }

    /// Whether exchanges are written to an access log (else only counted).
    pub(crate) fn logs(&self) -> bool {
        self.log.is_some()
    }

    fn route(&self, key: &str) -> Arc<RouteMetrics> {
        if let Some(m) = self
            .routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
        {
            return m.clone();
        }
        self.routes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.to_owned())
            .or_default()
            .clone()
    }

    /// Counts and logs one finished exchange.
    pub(crate) fn finish(&self, e: &Exchange, bytes: u64) {
        let elapsed = e.started.elapsed();
        if let Some(route) = &e.route {
            let m = self.route(route);
            let backend = e.backend.as_deref().map(|b| m.backend(b));
            m.count(backend.as_deref(), e.status, elapsed);
        }
        if let Some(log) = &self.log {
            let line = AccessLine {
                time: humantime::format_rfc3339_millis(e.time).to_string(),
                client: &e.client,
                host: &e.host,
                method: &e.method,
                path: &e.path,
                status: e.status,
                bytes,
                duration_ms: elapsed.as_secs_f64() * 1000.0,
                route: e.route.as_deref(),
                backend: e.backend.as_deref(),
                request_id: &e.request_id,
            };
            if let Ok(mut text) = serde_json::to_vec(&line) {
                text.push(b'\n');
                let mut out = log.lock().unwrap_or_else(|p| p.into_inner());
                // One write per line: lines of concurrent exchanges never interleave.
                if let Err(err) = out.write_all(&text).and_then(|()| out.flush()) {
                    tracing::warn!("the access log cannot be written: {err}");
                }
            }
        }
    }

    /// The counters of the route `key` (its host and path), to count exchanges with
    /// [`RouteMetrics::count`] without a lookup each time.
    pub(crate) fn route_metrics(&self, key: &str) -> Arc<RouteMetrics> {
        self.route(key)
    }

    /// The counters in Prometheus' text format, appended to `out`. Live state (in
    /// flight, backend state) comes from [`crate::Proxy::render_metrics`].
    pub(crate) fn render(&self, out: &mut String) {
        let routes = self.routes.read().unwrap_or_else(|p| p.into_inner());
        let mut keys: Vec<&String> = routes.keys().collect();
        keys.sort();
        out.push_str("# HELP slipway_proxy_requests_total Requests answered, by route and status class.\n# TYPE slipway_proxy_requests_total counter\n");
        for k in &keys {
            for (i, c) in routes[*k].requests.0.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "slipway_proxy_requests_total{{route=\"{}\",code=\"{}xx\"}} {}",
                    label(k),
                    i + 1,
                    c.load(Ordering::Relaxed)
                );
            }
        }
        out.push_str("# HELP slipway_proxy_backend_requests_total Requests a backend answered, by status class.\n# TYPE slipway_proxy_backend_requests_total counter\n");
        for k in &keys {
            let backends = routes[*k]
                .backends
                .read()
                .unwrap_or_else(|p| p.into_inner());
            let mut names: Vec<&String> = backends.keys().collect();
            names.sort();
            for b in names {
                for (i, c) in backends[b].0.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "slipway_proxy_backend_requests_total{{route=\"{}\",backend=\"{}\",code=\"{}xx\"}} {}",
                        label(k),
                        label(b),
                        i + 1,
                        c.load(Ordering::Relaxed)
                    );
                }
            }
        }
        out.push_str("# HELP slipway_proxy_request_duration_seconds From a request's headers to its response's last byte.\n# TYPE slipway_proxy_request_duration_seconds histogram\n");
        for k in &keys {
            let m = &routes[*k];
            let mut count = 0;
            for (i, bound) in BUCKETS.iter().enumerate() {
                count += m.latency[i].load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "slipway_proxy_request_duration_seconds_bucket{{route=\"{}\",le=\"{bound}\"}} {count}",
                    label(k),
                );
            }
            count += m.latency[BUCKETS.len()].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "slipway_proxy_request_duration_seconds_bucket{{route=\"{k}\",le=\"+Inf\"}} {count}\n\
                 slipway_proxy_request_duration_seconds_sum{{route=\"{k}\"}} {}\n\
                 slipway_proxy_request_duration_seconds_count{{route=\"{k}\"}} {count}",
                m.latency_sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
                k = label(k),
            );
        }
    }
}

/// A Prometheus label value, escaped.
pub(crate) fn label(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[derive(Serialize)]
struct AccessLine<'a> {
    time: String,
    client: &'a str,
    host: &'a str,
    method: &'a str,
    path: &'a str,
    status: u16,
    bytes: u64,
    duration_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    route: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    backend: Option<&'a str>,
    request_id: &'a str,
}

/// One request and its response, as the access log and the metrics see it.
#[derive(Debug)]
pub(crate) struct Exchange {
    started: Instant,
    time: SystemTime,
    pub client: String,
    pub host: String,
    pub method: String,
    pub path: String,
    pub request_id: String,
    /// The route's host and path, once looked up.
    pub route: Option<String>,
    /// The backend that answered (the last tried).
    pub backend: Option<String>,
    pub status: u16,
}

impl Exchange {
    pub(crate) fn start(
        client: String,
        host: String,
        method: String,
        path: String,
        request_id: String,
    ) -> Exchange {
        Exchange {
            started: Instant::now(),
            time: SystemTime::now(),
            client,
            host,
            method,
            path,
            request_id,
            route: None,
            backend: None,
            status: 0,
        }
    }
}

impl crate::Proxy {
    /// The proxy's metrics in Prometheus' text format: counters and the latency histogram
    /// per route, and each backend's live in-flight count and state.
    pub fn render_metrics(&self) -> String {
        let mut out = String::new();
        self.observer().render(&mut out);
        let snapshot = self.snapshot();
        out.push_str("# HELP slipway_proxy_backend_in_flight Requests and tunnels open to a backend.\n# TYPE slipway_proxy_backend_in_flight gauge\n");
        let mut states = String::from(
            "# HELP slipway_proxy_backend_state 1 for the state a backend is in.\n# TYPE slipway_proxy_backend_state gauge\n",
        );
        for (i, route) in snapshot.table.routes().iter().enumerate() {
            let key = label(&route.key.to_string());
            for (j, _) in route.backend_sets.iter().enumerate() {
                for live in snapshot.set_backends(i, j) {
                    let backend = label(live.address.as_str());
                    let _ = writeln!(
                        out,
                        "slipway_proxy_backend_in_flight{{route=\"{key}\",backend=\"{backend}\"}} {}",
                        live.in_flight()
                    );
                    let state = serde_json::to_value(live.state())
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default();
                    let _ = writeln!(
                        states,
                        "slipway_proxy_backend_state{{route=\"{key}\",backend=\"{backend}\",state=\"{state}\"}} 1"
                    );
                }
            }
        }
        out.push_str(&states);
        out
    }
}
