//! The edge proxy (`slipway-proxy`): where routes come from and the table they make, and
//! the data plane that serves them (listeners, TLS, ACME, balancing, health, drain).
//!
//! - [`route`]: what a route is. A [`Route`] has a [`RouteKey`] (a [`Host`], exact or
//!   `*.example.com`, and an optional path prefix or exact path), a priority, weighted
//!   [`BackendSet`]s of weighted [`Backend`]s (canary splits), a [`Tls`] mode (`acme`,
//!   `off` or a certificate's name), [`RouteOptions`] (plain HTTP served, redirected or
//!   off; HSTS; request and response headers; strip prefix; basic auth; sticky cookie;
//!   active health check) and the [`RouteSource`] that said so.
//! - [`table`]: a [`RouteTable`] is the merge of every provider's [`RouteSet`]; two
//!   sources claiming one key are resolved by a fixed rank (`--public-url`, then deploy,
//!   then file, then labels) and reported as [`Conflict`]s. Lookup: host, then longest
//!   path, then priority.
//! - Providers, each a pure function from text or a description to routes and
//!   [`Diagnostic`]s: [`file`](mod@file) (the routes file, errors at `FILE:LINE:COL`), [`labels`]
//!   (Slipway, Traefik v1/v2/v3 and nginx-proxy conventions of one [`Workload`]), with
//!   [`rule`] (Traefik rule expressions) and [`auth`] (htpasswd users). [`compose`] reads
//!   a compose file's services into workloads, for `slipway proxy routes-from`.
//! - The data plane, as small layers: [`serve`] (accept loops with a connection limit,
//!   each connection given to the least busy worker, hyper's auto h1/h2 server per
//!   connection, header-read and idle timers, graceful close), `h1_relay` (plain HTTP/1.1
//!   exchanges that need nothing but forwarding, relayed by its own loop; anything else
//!   is handed to hyper with the bytes read), [`forward`] (one request: id → route lookup (unknown host 404) → redirect and
//!   basic auth → balancer (no backend 503) → the backend request with forwarded headers
//!   → one retry of an idempotent bodiless request that failed before any byte → the
//!   streamed response; upgrades and HTTP/2 WebSockets tunnelled), [`balance`] (a
//!   [`RouteTable`] with its live backends: weighted round robin or least-requests P2C,
//!   in-flight counts, drain), and [`observe`] (the access log and Prometheus metrics). A
//!   [`Proxy`] merges its providers' route sets ([`Proxy::set_provider`]) and swaps whole
//!   snapshots. [`status`] is what the routes API shows.
//! - [`edge`]: the assembly `slipway proxy` and `slipway up` run ([`Edge::start`]):
//!   listeners on one single-threaded runtime per core, the routes file's watcher, the
//!   Docker provider, TLS and ACME, the data dir's lock, stored routes and takeover.
//! - [`docker`](mod@docker): the Docker provider, the one that does IO: it follows the local
//!   engine's containers through its events API, reads each one's labels and environment
//!   with [`labels`], and gives the proxy the `docker` route set and the containers'
//!   HEALTHCHECK verdicts. A `kill`/`stop` event drains a container's backends at once;
//!   `die` forgets it; it reconnects with backoff and resyncs. On a Swarm manager it also
//!   follows the services (their `deploy.labels`, `service` events, a periodic task
//!   refresh), reached at their published ports or at their running tasks' IPs on a
//!   network the proxy shares; a task's own container is then not routed a second time.
//! - [`health`]: backend health. Active checks (one task per backend), the engine's verdict
//!   and passive ejection (consecutive connection errors or 5xx, a doubling backoff) make a
//!   backend's [`BackendState`] (`starting → serving ⇄ unhealthy → draining → gone`, and
//!   `ejected`); only `serving` ones get new requests, read lock-free by the balancer.
//! - Restart without dropping traffic: [`instance`] (one instance per data dir, a flock on
//!   `DATA/slipway.lock`; a second is refused naming the pid and `--takeover`),
//!   [`takeover`] (the running instance's [`Handover`] gives its listening sockets, by
//!   name, to a successor's [`take_over`] over `DATA/slipway.sock` as SCM_RIGHTS fds; it
//!   then stops accepting, finishes its connections gracefully through
//!   [`serve::Connections`] and drains before it exits), and [`persist`] (each provider's
//!   routes stored in `DATA/proxy/routes.json`, hashes kept, 0600, atomically, on every
//!   change; restored at start so a new instance serves the last routes at once). The
//!   [`Edge`] does all three when given `EdgeConfig::data_dir` (and `takeover`).
//! - [`tls`]: HTTPS. The [`CertStore`] under the data dir (`certs/HOST/` uploaded by
//!   `add_uploaded`, checked: key matches leaf, leaf names the host, valid now;
//!   `acme/HOST/` issued; files atomic, keys 0600; uploads by another process read again by
//!   [`tls::watch_uploaded`]), the SNI [`CertResolver`] (a route with TLS must name the
//!   SNI, exact then wildcard; no SNI: the route named by the listener's IP; anything else
//!   gets no certificate) and [`tls::HttpsConfig`] for [`serve_https`] (TLS 1.2/1.3, ALPN
//!   `h2`/`http/1.1`, session tickets and cache). Which certificate a route gets: `tls:
//!   NAME` the uploaded NAME, then as `acme`; `tls: acme` the ACME one, else an uploaded
//!   one for the exact host, else for its wildcard (an uploaded certificate serves while
//!   ACME has none, or for a host ACME cannot prove: wildcards, IP addresses).
//! - [`acme`]: the [`AcmeManager`] (RFC 8555 with instant-acme on ring), one background
//!   task that orders, renews (30 days ahead) and backs off (doubling per host) for every
//!   `tls: acme` host of the live table, answering HTTP-01 on the plain listener (before
//!   any route) and TLS-ALPN-01 in the resolver; never on the request path.
//!
//! Invariants: the providers' readers ([`file`](mod@file) but [`file::load`], [`labels`],
//! [`rule`], [`compose`]) do no IO, and nothing panics on any input
//! (property tests feed the rule parser and the label readers arbitrary text); a value
//! that exists was checked (hosts, paths, addresses, weights, hashes), so the data plane
//! never re-validates; a routes file with any error yields no routes, so the previous table
//! keeps serving; a table is immutable once built (the data plane swaps whole tables, and a
//! request keeps the snapshot it started with); no body is buffered; and
//! no route is dropped in silence: every one not used is a diagnostic or a conflict.
//! Everything serializes for `--json` output, password hashes excepted.

pub mod acme;
pub mod auth;
pub mod balance;
pub mod compose;
pub mod diagnostic;
pub mod docker;
pub mod edge;
pub mod file;
pub mod forward;
mod h1_relay;
pub mod health;
pub mod instance;
pub mod labels;
pub mod observe;
pub mod persist;
pub mod route;
pub mod rule;
pub mod serve;
pub mod status;
pub mod table;
pub mod takeover;
pub mod tls;

pub use acme::{AcmeManager, AcmeOptions, ChallengeKind};
pub use balance::{BackendState, Balance, Health};
pub use diagnostic::{Diagnostic, Severity};
pub use edge::{Edge, EdgeConfig, EdgeError};
pub use forward::{Cidr, Proxy};
pub use health::PassiveHealth;
pub use instance::{InstanceError, InstanceLock};
pub use labels::Workload;
pub use observe::StatusCounts;
pub use route::{
    Address, Backend, BackendSet, Host, Route, RouteKey, RouteOptions, RouteSet, RouteSource, Tls,
};
pub use serve::{Config, serve_http, serve_https};
pub use status::{CertificateStatus, ProxyStatus};
pub use table::{Conflict, RouteTable};
pub use takeover::{
    Claim, ClaimError, Handover, HandoverSet, Taken, TakeoverError, claim, take_over,
};
pub use tls::{CertError, CertResolver, CertStore, Challenges};
