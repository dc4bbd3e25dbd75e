//! Backend health: active checks, the engine's verdict (Docker's `HEALTHCHECK`) and passive
//! ejection. Each writes an atomic of the [`LiveBackend`]; [`LiveBackend::state`] reads
//! them, so the picking path takes no lock.
//!
//! - Active checks ([`HealthCheck`] of a route: HTTP `GET path` expecting a status, or a TCP
//!   connect; interval, timeout, thresholds) run on one task per backend, not per route: a
//!   backend is one address with one health. When routes naming one backend have different
//!   checks, the first route of the table that has one decides. A backend that is new with a
//!   check starts `starting` and gets traffic once it passed `healthy_threshold` times in a
//!   row; `unhealthy_threshold` failures in a row make it `unhealthy` until it passes
//!   `healthy_threshold` times again. The check sends `Host: ADDRESS` (the backend's own
//!   address, as Traefik does without a `hostname`); an HTTPS backend is checked by a TCP
//!   connect, as the data plane does not speak HTTPS to backends yet. The task stops when
//!   its backend drains or its route's check changes.
//! - Engine health: a provider says, per address, what the engine knows
//!   ([`Proxy::set_engine_health`]); `starting` and `unhealthy` count as an active check's.
//!   A backend's health is the worse of the two.
//! - Passive ejection ([`PassiveHealth`]): `consecutive_failures` connection errors or 5xx
//!   answers in a row (default 5) eject a backend for `base_ejection` (10 s), doubled on each
//!   ejection that follows without a success in between, up to `max_ejection` (5 min). When
//!   the time is over it gets traffic again: its first answer decides (a success forgives
//!   it, a failure ejects it again at once, for twice as long). A route whose every backend
//!   is ejected still sends to them (as Envoy's panic threshold): passive ejection moves
//!   traffic between backends, and never makes a route fail that would otherwise answer.
//!
//! Invariant: a backend is marked `starting` or given the engine's verdict before the
//! snapshot holding it is published, so no request reaches it before its health is known.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::Empty;
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::balance::{Health, LiveBackend, Snapshot};
use crate::forward::Proxy;
use crate::route::{Address, HealthCheck, HealthProbe, Scheme};

/// Passive ejection's policy; [`PassiveHealth::default`] is what a user gets with no flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PassiveHealth {
    /// Connection errors or 5xx answers in a row that eject a backend; 0 turns ejection off.
    pub consecutive_failures: u32,
    /// How long the first ejection lasts; each one after it without a success in between
    /// lasts twice as long as the one before.
    pub base_ejection: Duration,
    /// The longest an ejection lasts.
    pub max_ejection: Duration,
}

impl Default for PassiveHealth {
    fn default() -> Self {
        PassiveHealth {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(300),
        }
    }
}

impl PassiveHealth {
    fn ejection(&self, ejections_before: u32) -> Duration {
        let factor = 1u32
            .checked_shl(ejections_before.min(31))
            .unwrap_or(u32::MAX);
        self.base_ejection
            .checked_mul(factor)
            .unwrap_or(self.max_ejection)
            .min(self.max_ejection)
    }
}

/// Milliseconds since the first call, plus one: 0 is "not ejected".
fn now_ms() -> u64 {
    static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);
    EPOCH.elapsed().as_millis() as u64 + 1
}

/// A backend's passive record.
#[derive(Debug, Default)]
pub(crate) struct Passive {
    failures: AtomicU32,
    /// Ejections since the last success.
    ejections: AtomicU32,
    /// When the current ejection ends ([`now_ms`]), 0 when none.
    until_ms: AtomicU64,
}

impl Passive {
    pub(crate) fn is_ejected(&self) -> bool {
        let until = self.until_ms.load(Ordering::Relaxed);
        until != 0 && now_ms() < until
    }
}

impl LiveBackend {
    /// A request to this backend failed (connection error, or a 5xx answer).
    pub(crate) fn passive_failure(&self, policy: &PassiveHealth) {
        let p = &self.passive;
        if policy.consecutive_failures == 0 || p.is_ejected() {
            // Requests sent before the ejection that fail now say nothing new.
            return;
        }
        let failures = p.failures.fetch_add(1, Ordering::AcqRel) + 1;
        let probe_failed = p.ejections.load(Ordering::Acquire) > 0;
        if !probe_failed && failures < policy.consecutive_failures {
            return;
        }
        // One of several failing at once ejects.
        if p.failures
            .compare_exchange(failures, 0, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        let before = p.ejections.fetch_add(1, Ordering::AcqRel);
        let time = policy.ejection(before);
        p.until_ms
            .store(now_ms() + time.as_millis() as u64, Ordering::Release);
        tracing::warn!(
            backend = %self.address,
            ejection = before + 1,
            "backend ejected for {} after failed requests",
            humantime::format_duration(time)
        );
    }

    /// A request to this backend was answered (not 5xx).
    pub(crate) fn passive_success(&self) {
        let p = &self.passive;
        // Read before writing: every request lands here, and a write to a line that other
        // cores read on each request would bounce it between them for nothing.
        if p.failures.load(Ordering::Acquire) != 0 {
            p.failures.store(0, Ordering::Release);
        }
        if p.ejections.load(Ordering::Acquire) > 0 && p.ejections.swap(0, Ordering::AcqRel) > 0 {
            p.until_ms.store(0, Ordering::Release);
            tracing::info!(backend = %self.address, "ejected backend answers again");
        }
    }
}

/// An active check running for one backend.
#[derive(Debug)]
pub(crate) struct RunningCheck {
    check: HealthCheck,
    stop: CancellationToken,
}

/// Stops a backend's active check (it is draining).
pub(crate) fn stop_check(backend: &LiveBackend) {
    let mut slot = backend.check.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(running) = slot.take() {
        running.stop.cancel();
    }
}

/// The proxy's health state that is not per backend: what the engine said of each address,
/// passive ejection's policy, and the client active checks use.
#[derive(Debug)]
pub(crate) struct HealthBoard {
    /// Per source (`docker`, …), the engine's verdict by address. The lock also covers the
    /// publication of a snapshot, so a verdict and a swap never miss each other.
    engine: Mutex<BTreeMap<String, HashMap<Address, Health>>>,
    pub(crate) passive: ArcSwap<PassiveHealth>,
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl HealthBoard {
    pub(crate) fn new() -> HealthBoard {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        HealthBoard {
            engine: Mutex::new(BTreeMap::new()),
            passive: ArcSwap::from_pointee(PassiveHealth::default()),
            client: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(0)
                .build(connector),
        }
    }

    /// Gives `next`'s new backends their health, publishes `next`, and starts, changes or
    /// stops active checks to match its routes.
    pub(crate) fn publish(&self, live: &ArcSwap<Snapshot>, old: &Snapshot, next: Arc<Snapshot>) {
        let desired = desired_checks(&next);
        let engine = self.engine.lock().unwrap_or_else(|p| p.into_inner());
        for (key, backend) in &next.backends {
            let is_new = !old
                .backends
                .get(key)
                .is_some_and(|o| Arc::ptr_eq(o, backend));
            if is_new {
                backend
                    .engine
                    .store(engine_verdict(&engine, &key.0).to_u8(), Ordering::Release);
                if desired.contains_key(key) {
                    backend
                        .checked
                        .store(Health::Starting.to_u8(), Ordering::Release);
                }
            }
        }
        live.store(next.clone());
        drop(engine);
        for (key, backend) in &next.backends {
            self.reconcile_check(backend, desired.get(key).copied());
        }
    }

    fn reconcile_check(&self, backend: &Arc<LiveBackend>, want: Option<&HealthCheck>) {
        let mut slot = backend.check.lock().unwrap_or_else(|p| p.into_inner());
        if slot.as_ref().map(|r| &r.check) == want {
            return;
        }
        if let Some(running) = slot.take() {
            running.stop.cancel();
        }
        let Some(check) = want else {
            // The route no longer checks it: nothing says it is unhealthy now.
            backend
                .checked
                .store(Health::Healthy.to_u8(), Ordering::Release);
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            // No runtime (a table built by a tool): nothing will serve it either.
            return;
        };
        let stop = CancellationToken::new();
        rt.spawn(run_check(
            Arc::downgrade(backend),
            check.clone(),
            self.client.clone(),
            stop.clone(),
        ));
        *slot = Some(RunningCheck {
            check: check.clone(),
            stop,
        });
    }
}

/// The worst verdict any source gives `address`.
fn engine_verdict(
    engine: &BTreeMap<String, HashMap<Address, Health>>,
    address: &Address,
) -> Health {
    engine
        .values()
        .filter_map(|m| m.get(address).copied())
        .max()
        .unwrap_or(Health::Healthy)
}

/// Each backend's check: the first route naming it that has one.
fn desired_checks(snapshot: &Snapshot) -> HashMap<(Address, Scheme), &HealthCheck> {
    let mut out = HashMap::new();
    for route in snapshot.table.routes() {
        let Some(check) = &route.options.health_check else {
            continue;
        };
        for b in route.backends() {
            out.entry((b.address.clone(), b.scheme)).or_insert(check);
        }
    }
    out
}

async fn run_check(
    backend: Weak<LiveBackend>,
    check: HealthCheck,
    client: Client<HttpConnector, Empty<Bytes>>,
    stop: CancellationToken,
) {
    let (mut passes, mut failures) = (0u32, 0u32);
    loop {
        let Some(b) = backend.upgrade() else { return };
        if !b.is_live() || stop.is_cancelled() {
            return;
        }
        let (address, scheme) = (b.address.clone(), b.scheme);
        drop(b);
        let outcome = tokio::select! {
            o = probe(&client, &address, scheme, &check) => o,
            () = stop.cancelled() => return,
        };
        let Some(b) = backend.upgrade() else { return };
        let now = Health::from_u8(b.checked.load(Ordering::Acquire));
        let next = match outcome {
            Ok(()) => {
                passes += 1;
                failures = 0;
                (now != Health::Healthy && passes >= check.healthy_threshold.max(1))
                    .then_some(Health::Healthy)
            }
            Err(why) => {
                failures += 1;
                passes = 0;
                tracing::debug!(backend = %address, "health check failed: {why}");
                (now != Health::Unhealthy && failures >= check.unhealthy_threshold.max(1))
                    .then_some(Health::Unhealthy)
            }
        };
        if let Some(next) = next
            && !stop.is_cancelled()
        {
            b.checked.store(next.to_u8(), Ordering::Release);
            match next {
                Health::Healthy => tracing::info!(backend = %address, "health check passes"),
                _ => {
                    tracing::warn!(backend = %address, "health check fails: no traffic until it passes")
                }
            }
        }
        drop(b);
        tokio::select! {
            () = tokio::time::sleep(check.interval) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// One check of `address`; the error says why it failed.
async fn probe(
    client: &Client<HttpConnector, Empty<Bytes>>,
    address: &Address,
    scheme: Scheme,
    check: &HealthCheck,
) -> Result<(), String> {
    let attempt = async {
        match (&check.probe, scheme) {
            (HealthProbe::Http { path, status }, Scheme::Http) => {
                let uri = format!("http://{address}{path}");
                let req = Request::get(&uri)
                    .header(hyper::header::HOST, address.as_str())
                    .header(hyper::header::USER_AGENT, "slipway-health-check")
                    .body(Empty::new())
                    .map_err(|e| format!("GET {uri}: {e}"))?;
                let resp = client
                    .request(req)
                    .await
                    .map_err(|e| format!("GET {uri}: {e}"))?;
                let got = resp.status();
                let ok = match status {
                    Some(want) => got.as_u16() == *want,
                    None => got.is_success() || got.is_redirection(),
                };
                if ok {
                    Ok(())
                } else {
                    Err(format!("GET {uri} answered {got}{}", expected(*status)))
                }
            }
            // The data plane does not speak HTTPS to backends yet: a connect is what can be
            // checked.
            (HealthProbe::Tcp, _) | (HealthProbe::Http { .. }, Scheme::Https) => {
                tokio::net::TcpStream::connect(address.as_str())
                    .await
                    .map(drop)
                    .map_err(|e| format!("connect to {address}: {e}"))
            }
        }
    };
    match tokio::time::timeout(check.timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "{address} did not answer within {}",
            humantime::format_duration(check.timeout)
        )),
    }
}

fn expected(status: Option<u16>) -> String {
    match status.and_then(|s| StatusCode::from_u16(s).ok()) {
        Some(s) => format!(", not {s}"),
        None => ", not 2xx or 3xx".to_owned(),
    }
}

impl Proxy {
    /// Replaces what `source` (`docker`, …) says the engine knows of each address's health:
    /// an address it calls `starting` or `unhealthy` gets no new requests, one it no longer
    /// names is back to what its active check says.
    pub fn set_engine_health(&self, source: &str, health: HashMap<Address, Health>) {
        let mut engine = self.health.engine.lock().unwrap_or_else(|p| p.into_inner());
        if health.is_empty() {
            engine.remove(source);
        } else {
            engine.insert(source.to_owned(), health);
        }
        let snapshot = self.snapshot();
        for (key, backend) in &snapshot.backends {
            backend
                .engine
                .store(engine_verdict(&engine, &key.0).to_u8(), Ordering::Release);
        }
    }

    /// Sets passive ejection's policy, for requests from now on.
    pub fn set_passive_health(&self, policy: PassiveHealth) {
        self.health.passive.store(Arc::new(policy));
    }

    pub fn passive_health(&self) -> PassiveHealth {
        **self.health.passive.load()
    }
}
