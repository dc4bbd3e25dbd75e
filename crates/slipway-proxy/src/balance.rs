//! Backends as the data plane sees them, and the choice of one per request.
//!
//! A [`Snapshot`] is a [`RouteTable`] with, beside each route, its live backend sets: each
//! backend a shared [`LiveBackend`] (state, in-flight counter) that outlives snapshots, so
//! a backend kept by a swap keeps its counters and one dropped by it can be drained while
//! its requests finish. A snapshot is immutable but for those counters.
//!
//! Choice: weighted round robin over a route's backend sets, then over the set's backends
//! (one counter per route, so the split is exact over any run of requests), or
//! least-requests by the power of two choices within the set. Only `serving` backends of
//! weight above 0 are chosen; a retry excludes the backend that failed.
//!
//! A backend's [`BackendState`] is read from three atomics, so picking takes no lock: its
//! lifecycle (live, draining, gone), its health (worst of the active check's and the
//! engine's verdicts, see [`crate::health`]) and the end of a passive ejection.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::route::{Address, Scheme};
use crate::table::RouteTable;

/// Where a backend is in its life: `starting → serving ⇄ unhealthy → draining → gone`, and
/// `ejected` for a while after consecutive failures. Only `serving` gets new requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendState {
    /// Gets new requests.
    Serving,
    /// Removed from the table: no new requests; in-flight ones and tunnels finish until
    /// the drain timeout.
    Draining,
    /// Failed requests in a row (connection errors, 5xx): no new requests until its
    /// ejection ends, then one request probes it.
    Ejected,
    /// Its health check (or the engine's HEALTHCHECK) fails: no new requests until it
    /// passes again.
    Unhealthy,
    /// It has a health check (or an engine HEALTHCHECK) that has not passed yet.
    Starting,
    /// Drained (or its timeout passed): what was still open to it has been cut.
    Gone,
}

/// Lifecycle values of [`LiveBackend::state`]'s atomic.
const LIVE: u8 = 0;
const DRAINING: u8 = 1;
const GONE: u8 = 2;

/// A verdict on a backend's health, from its active check or from the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Passing, or nothing checks it.
    Healthy,
    /// Checked, and not passed yet.
    Starting,
    /// Failing.
    Unhealthy,
}

impl Health {
    pub(crate) fn to_u8(self) -> u8 {
        match self {
            Health::Healthy => 0,
            Health::Starting => 1,
            Health::Unhealthy => 2,
        }
    }

    pub(crate) fn from_u8(v: u8) -> Health {
        match v {
            0 => Health::Healthy,
            1 => Health::Starting,
            _ => Health::Unhealthy,
        }
    }
}

/// How a backend is picked within a backend set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// Weighted round robin.
    #[default]
    RoundRobin,
    /// The less loaded (in-flight per weight) of two backends picked at random.
    LeastRequests,
}

/// One backend address, shared by every route and snapshot that names it.
#[derive(Debug)]
pub struct LiveBackend {
    pub address: Address,
    pub scheme: Scheme,
    /// Lifecycle: [`LIVE`], [`DRAINING`] or [`GONE`].
    state: AtomicU8,
    /// [`Health`] from the active check.
    pub(crate) checked: AtomicU8,
    /// [`Health`] from the engine (Docker's HEALTHCHECK).
    pub(crate) engine: AtomicU8,
    pub(crate) passive: crate::health::Passive,
    /// The active check running for this backend, if any.
    pub(crate) check: std::sync::Mutex<Option<crate::health::RunningCheck>>,
    in_flight: AtomicUsize,
    /// Cancelled once drained or at the drain timeout: responses and tunnels still open
    /// to this backend end then.
    cut: CancellationToken,
}

impl LiveBackend {
    fn new(address: Address, scheme: Scheme) -> Arc<LiveBackend> {
        Arc::new(LiveBackend {
            address,
            scheme,
            state: AtomicU8::new(LIVE),
            checked: AtomicU8::new(0),
            engine: AtomicU8::new(0),
            passive: crate::health::Passive::default(),
            check: std::sync::Mutex::new(None),
            in_flight: AtomicUsize::new(0),
            cut: CancellationToken::new(),
        })
    }

    pub fn state(&self) -> BackendState {
        match self.state.load(Ordering::SeqCst) {
            LIVE => {}
            DRAINING => return BackendState::Draining,
            _ => return BackendState::Gone,
        }
        match self.health() {
            Health::Unhealthy => BackendState::Unhealthy,
            Health::Starting => BackendState::Starting,
            Health::Healthy if self.passive.is_ejected() => BackendState::Ejected,
            Health::Healthy => BackendState::Serving,
        }
    }

    /// The worse of the active check's and the engine's verdicts.
    pub fn health(&self) -> Health {
        Health::from_u8(self.checked.load(Ordering::Acquire))
            .max(Health::from_u8(self.engine.load(Ordering::Acquire)))
    }

    /// Neither draining nor gone: a swap that keeps its address keeps it.
    pub(crate) fn is_live(&self) -> bool {
        self.state.load(Ordering::SeqCst) == LIVE
    }

    /// Requests (and tunnels) to this backend not yet finished.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Counts a request until the returned guard drops (when its response body ends);
    /// `None` once the backend is gone (a request holding an older snapshot lost a race
    /// with the drain, and must look again).
    pub fn try_start(self: &Arc<Self>) -> Option<InFlight> {
        self.clone().into_in_flight()
    }

    /// [`LiveBackend::try_start`] for a backend just picked: its `Arc` becomes the guard's
    /// (no count taken and given back on a line every core touches).
    pub fn into_in_flight(self: Arc<Self>) -> Option<InFlight> {
        // SeqCst on both sides: either this sees `Gone`, or the drain sees this request.
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let live = self.state.load(Ordering::SeqCst) != GONE;
        let guard = InFlight(self);
        live.then_some(guard)
    }

    /// Stops new requests at once; cuts what is left after `timeout`.
    fn drain(self: &Arc<Self>, timeout: Duration) {
        if self
            .state
            .compare_exchange(LIVE, DRAINING, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return;
        }
        crate::health::stop_check(self);
        let me = self.clone();
        let finish = async move {
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                while me.in_flight.load(Ordering::SeqCst) > 0
                    && tokio::time::Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                me.state.store(GONE, Ordering::SeqCst);
                // A request that counted itself just before `Gone` is served, not cut.
                if me.in_flight.load(Ordering::SeqCst) == 0
                    || tokio::time::Instant::now() >= deadline
                {
                    break;
                }
                me.state.store(DRAINING, Ordering::SeqCst);
            }
            me.cut.cancel();
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(finish);
            }
            // No runtime (a table built in a test or a tool): nothing can be in flight.
            Err(_) => {
                self.state.store(GONE, Ordering::SeqCst);
                self.cut.cancel();
            }
        }
    }
}

/// One request to a backend, counted until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<LiveBackend>);

impl InFlight {
    pub fn backend(&self) -> &Arc<LiveBackend> {
        &self.0
    }

    /// Fires when the backend's drain is over and what is open to it must end.
    pub fn cut(&self) -> CancellationToken {
        self.0.cut.clone()
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Debug)]
struct LiveSet {
    weight: u32,
    backends: Vec<(Arc<LiveBackend>, u32)>,
}

#[derive(Debug)]
struct LiveRoute {
    sets: Vec<LiveSet>,
    counter: AtomicU64,
}

/// A route table and its live backends: what one request sees, whole.
#[derive(Debug)]
pub struct Snapshot {
    pub table: RouteTable,
    routes: Vec<LiveRoute>,
    pub(crate) backends: HashMap<(Address, Scheme), Arc<LiveBackend>>,
}

impl Snapshot {
    /// The snapshot of `table`, reusing `previous`'s live backends for the addresses it
    /// keeps; [`Snapshot::retire`] drains those it dropped.
    pub fn build(table: RouteTable, previous: Option<&Snapshot>) -> Snapshot {
        let mut backends: HashMap<(Address, Scheme), Arc<LiveBackend>> = HashMap::new();
        let mut routes = Vec::with_capacity(table.routes().len());
        for route in table.routes() {
            let sets = route
                .backend_sets
                .iter()
                .map(|set| LiveSet {
                    weight: set.weight,
                    backends: set
                        .backends
                        .iter()
                        .map(|b| {
                            let key = (b.address.clone(), b.scheme);
                            let live = backends
                                .entry(key.clone())
                                .or_insert_with(|| {
                                    previous
                                        .and_then(|p| p.backends.get(&key))
                                        .filter(|l| l.is_live())
                                        .cloned()
                                        .unwrap_or_else(|| {
                                            LiveBackend::new(b.address.clone(), b.scheme)
                                        })
                                })
                                .clone();
                            (live, b.weight)
                        })
                        .collect(),
                })
                .collect();
            routes.push(LiveRoute {
                sets,
                counter: AtomicU64::new(0),
            });
        }
        Snapshot {
            table,
            routes,
            backends,
        }
    }

    /// Drains every backend of `self` that `next` does not have.
    pub fn retire(&self, next: &Snapshot, drain_timeout: Duration) {
        for (key, live) in &self.backends {
            let kept = next.backends.get(key).is_some_and(|n| Arc::ptr_eq(n, live));
            if !kept {
                live.drain(drain_timeout);
            }
        }
    }

    /// The live backends of set `set` of route `route` (indexes of the table), in the
    /// table's order, for listings.
    pub fn set_backends(
        &self,
        route: usize,
        set: usize,
    ) -> impl Iterator<Item = &Arc<LiveBackend>> {
        self.routes
            .get(route)
            .and_then(|r| r.sets.get(set))
            .into_iter()
            .flat_map(|s| s.backends.iter().map(|(b, _)| b))
    }

    /// Every live backend, for listings.
    pub fn backends(&self) -> impl Iterator<Item = &Arc<LiveBackend>> {
        self.backends.values()
    }

    /// A backend for a request on route `route` (an index of the table), not `exclude`:
    /// a serving one, else (every one ejected) an ejected one.
    pub fn pick(
        &self,
        route: usize,
        balance: Balance,
        exclude: Option<&Arc<LiveBackend>>,
    ) -> Option<Arc<LiveBackend>> {
        self.pick_among(route, balance, exclude, &[BackendState::Serving])
            .or_else(|| {
                self.pick_among(
                    route,
                    balance,
                    exclude,
                    &[BackendState::Serving, BackendState::Ejected],
                )
            })
    }

    /// The serving backend of route `route` whose [`sticky_token`] is `token` (a sticky
    /// cookie's value), if it is still there and serving.
    pub fn pick_sticky(&self, route: usize, token: &str) -> Option<Arc<LiveBackend>> {
        let live = self.routes.get(route)?;
        live.sets
            .iter()
            .flat_map(|s| s.backends.iter())
            .find(|(b, w)| *w > 0 && b.state() == BackendState::Serving && sticky_token(b) == token)
            .map(|(b, _)| b.clone())
    }

    fn pick_among(
        &self,
        route: usize,
        balance: Balance,
        exclude: Option<&Arc<LiveBackend>>,
        states: &[BackendState],
    ) -> Option<Arc<LiveBackend>> {
        let live = self.routes.get(route)?;
        let usable = |b: &Arc<LiveBackend>, w: u32| {
            w > 0 && states.contains(&b.state()) && !exclude.is_some_and(|x| Arc::ptr_eq(x, b))
        };
        let set_weight = |s: &LiveSet| {
            if s.backends.iter().any(|(b, w)| usable(b, *w)) {
                u64::from(s.weight)
            } else {
                0
            }
        };
        let total: u64 = live.sets.iter().map(set_weight).sum();
        if total == 0 {
            return None;
        }
        let n = live.counter.fetch_add(1, Ordering::Relaxed);
        let mut r = n % total;
        let set = live.sets.iter().find(|s| {
            let w = set_weight(s);
            if r < w {
                true
            } else {
                r -= w;
                false
            }
        })?;
        let candidates: Vec<(&Arc<LiveBackend>, u32)> = set
            .backends
            .iter()
            .filter(|(b, w)| usable(b, *w))
            .map(|(b, w)| (b, *w))
            .collect();
        match balance {
            Balance::RoundRobin => {
                let sum: u64 = candidates.iter().map(|(_, w)| u64::from(*w)).sum();
                // The quotient, not `n` itself: with two sets, `n % total` already chose
                // the set, and the backends must still take turns within it.
                let mut r = (n / total) % sum.max(1);
                candidates
                    .iter()
                    .find(|(_, w)| {
                        let w = u64::from(*w);
                        if r < w {
                            true
                        } else {
                            r -= w;
                            false
                        }
                    })
                    .map(|(b, _)| (*b).clone())
            }
            Balance::LeastRequests => {
                let len = candidates.len() as u64;
                let a = candidates.get((random() % len) as usize)?;
                let b = candidates.get((random() % len) as usize)?;
                // in_flight / weight, compared without division.
                let load = |(x, w): &(&Arc<LiveBackend>, u32)| {
                    (x.in_flight() as u128 + 1) * 1_000_000 / u128::from(*w)
                };
                Some(if load(a) <= load(b) { a.0 } else { b.0 }.clone())
            }
        }
    }
}

/// A random number good enough to spread load and name requests (not for secrets): std's
/// random hash keys (fresh per thread) over a counter of this thread's (a shared one would
/// be a cache line every core writes on every request).
pub(crate) fn random() -> u64 {
    thread_local! {
        static COUNTER: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }
    let n = COUNTER.with(|c| {
        let n = c.get();
        c.set(n.wrapping_add(1));
        n
    });
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(n);
    h.finish()
}

/// What a sticky cookie holds for `backend`: a hash of its address, so the cookie does
/// not tell clients the network's layout, and stays the same across restarts.
pub fn sticky_token(backend: &LiveBackend) -> String {
    use sha1::Digest;
    let digest = sha1::Sha1::digest(backend.address.as_str().as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}
