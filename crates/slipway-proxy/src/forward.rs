//! One request through the proxy, as layers in this order: request id → route lookup
//! (unknown host: 404 from Slipway, never an open proxy) → the route's header work
//! (redirect to HTTPS, basic auth) → balancer (no serving backend: 503 + `Retry-After`) →
//! the request to the backend (hop-by-hop headers out, `X-Forwarded-*`/`X-Real-IP` in,
//! strip prefix, request headers) → the pooled client, with one retry on another backend
//! of an idempotent bodiless request that failed before any response byte → the response
//! (hop-by-hop out, response headers), its body streamed as it comes and counted in flight
//! until it ends; a `101` joins the two upgraded connections.
//!
//! WebSocket works over HTTP/1.1 (the `Upgrade` handshake, passed on) and over HTTP/2
//! (RFC 8441: an extended `CONNECT` with `:protocol websocket`, which the server's SETTINGS
//! allow). Backends speak HTTP/1.1 only, so the h2 request is sent as the HTTP/1.1
//! handshake (`GET`, `Upgrade: websocket`, a fresh `Sec-WebSocket-Key`) and the backend's
//! `101` goes back as the `200` RFC 8441 asks for; the h2 stream and the backend's
//! connection are then one tunnel, counted and drained as an HTTP/1.1 one. Any other
//! `CONNECT` is refused: this is a reverse proxy, it opens no tunnel to where a client says.
//!
//! Invariants: no body is buffered (request and response bodies are passed as streams);
//! a request holds the snapshot it looked up, so a swap mid-request changes nothing for
//! it; the backend's in-flight count covers the response body and any tunnel, which is
//! what a drain waits for.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::balance::{InFlight, Snapshot};
use crate::observe::{Exchange, Observer, StatusCounts};
use crate::route::{Address, PlainHttp, Route, RouteKey, RouteSet, Scheme};
use crate::serve::Config;
use crate::table::RouteTable;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every body the proxy sends, both ways.
pub type Body = BoxBody<Bytes, BoxError>;

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Hop-by-hop headers (RFC 9110 7.6.1, and the non-standard ones proxies also drop).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

/// The proxy: the live snapshot, the backend pool and the limits.
#[derive(Debug)]
pub struct Proxy {
    live: ArcSwap<Snapshot>,
    /// Each provider's routes (`file`, `docker`, `deploy:STACK`, `public-url`, …), merged
    /// into the live table on every change; the lock also serializes swaps so each retires
    /// exactly what it replaced.
    providers: std::sync::Mutex<BTreeMap<String, RouteSet>>,
    /// Bumped on every provider change, for whoever persists the providers' routes.
    providers_changed: tokio::sync::watch::Sender<u64>,
    pub(crate) config: Config,
    observer: Arc<Observer>,
    pub(crate) health: crate::health::HealthBoard,
    /// ACME challenge answers (HTTP-01 here, TLS-ALPN-01 in the HTTPS resolver).
    challenges: Arc<crate::tls::Challenges>,
}

thread_local! {
    /// The pool of backend connections of this thread, by connect timeout. A pool per
    /// thread: a connection's task runs where it was opened, so a request served on one
    /// worker never hands its bytes to another thread (the edge runs one single-threaded
    /// runtime per core, as nginx runs one worker per core).
    static BACKEND_CLIENTS: std::cell::RefCell<Vec<(Duration, Client<HttpConnector, Body>)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

fn backend_client(connect_timeout: Duration) -> Client<HttpConnector, Body> {
    BACKEND_CLIENTS.with(|clients| {
        let mut clients = clients.borrow_mut();
        if let Some((_, c)) = clients.iter().find(|(t, _)| *t == connect_timeout) {
            return c.clone();
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        clients.push((connect_timeout, client.clone()));
        client
    })
}

/// What the connection a request came on knows: who sent it, where, and whether it is
/// idle (for the idle timeout).
#[derive(Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// The connection came over TLS (the HTTPS listener).
    pub tls: bool,
    active: AtomicUsize,
    served: AtomicU64,
    /// Milliseconds since `born` when the last request ended.
    last_done: AtomicU64,
    born: Instant,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, local: SocketAddr) -> ConnInfo {
        ConnInfo {
            peer,
            local,
            tls: false,
            active: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            last_done: AtomicU64::new(0),
            born: Instant::now(),
        }
    }

    /// The same, for a connection that came over TLS.
    pub fn over_tls(mut self) -> ConnInfo {
        self.tls = true;
        self
    }

    /// No request open (responses streaming count as open) for `idle`.
    pub fn idle_for(&self, idle: Duration) -> bool {
        self.active.load(Ordering::Acquire) == 0 && {
            let done = Duration::from_millis(self.last_done.load(Ordering::Acquire));
            self.born.elapsed().saturating_sub(done) >= idle
        }
    }

    /// Whether a request came on this connection yet.
    pub fn served_any(&self) -> bool {
        self.served.load(Ordering::Acquire) > 0
    }

    pub(crate) fn begin(self: &Arc<Self>) -> Active {
        self.served.fetch_add(1, Ordering::AcqRel);
        self.active.fetch_add(1, Ordering::AcqRel);
        Active(self.clone())
    }
}

/// A request open on its connection, until its response body ends.
#[derive(Debug)]
pub(crate) struct Active(Arc<ConnInfo>);

impl Drop for Active {
    fn drop(&mut self) {
        let ms = self.0.born.elapsed().as_millis() as u64;
        self.0.last_done.store(ms, Ordering::Release);
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Proxy {
    /// A proxy with no access log (metrics are always kept).
    pub fn new(config: Config, table: RouteTable) -> Proxy {
        Proxy::with_observer(config, table, Observer::without_log())
    }

    /// A proxy whose exchanges `observer` logs and counts.
    pub fn with_observer(config: Config, table: RouteTable, observer: Observer) -> Proxy {
        let proxy = Proxy {
            live: ArcSwap::from_pointee(Snapshot::build(RouteTable::build([]), None)),
            providers: std::sync::Mutex::new(BTreeMap::new()),
            providers_changed: tokio::sync::watch::Sender::new(0),
            config,
            observer: Arc::new(observer),
            health: crate::health::HealthBoard::new(),
            challenges: Arc::new(crate::tls::Challenges::default()),
        };
        // Published like any later table, so its backends' health checks start.
        proxy.swap_in(table);
        proxy
    }

    /// Serves `table` from now on. Requests already in flight keep the snapshot they
    /// started with; backends `table` no longer has get no new requests and are drained.
    /// Callers that own one provider's routes use [`Proxy::set_provider`] instead; this
    /// replaces everything, providers' routes included, until the next provider change.
    pub fn set_routes(&self, table: RouteTable) {
        let _one_at_a_time = self.providers.lock().unwrap_or_else(|p| p.into_inner());
        self.swap_in(table);
    }

    /// Replaces the routes of one provider (an empty set removes them) and serves the merge
    /// of every provider's routes from now on, as [`Proxy::set_routes`] does.
    pub fn set_provider(&self, provider: &str, routes: RouteSet) {
        let mut providers = self.providers.lock().unwrap_or_else(|p| p.into_inner());
        if routes.routes.is_empty() {
            providers.remove(provider);
        } else {
            providers.insert(provider.to_owned(), routes);
        }
        self.swap_in(RouteTable::build(providers.values().cloned()));
        self.providers_changed
            .send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Every provider's routes, as [`Proxy::set_provider`] last set them.
    pub fn providers(&self) -> BTreeMap<String, RouteSet> {
        self.providers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Changes on every [`Proxy::set_provider`].
    pub fn provider_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.providers_changed.subscribe()
    }

    /// Holding the providers' lock.
    fn swap_in(&self, table: RouteTable) {
        let old = self.live.load_full();
        let next = Arc::new(Snapshot::build(table, Some(&old)));
        self.health.publish(&self.live, &old, next.clone());
        old.retire(&next, self.config.drain_timeout);
    }

    /// What `backend` answered on the route `key` so far (see [`StatusCounts`]).
    pub fn backend_counts(&self, key: &RouteKey, backend: &Address) -> StatusCounts {
        self.observer
            .backend_counts(&key.to_string(), &backend.to_string())
    }

    pub(crate) fn observer(&self) -> &Observer {
        &self.observer
    }

    /// The ACME challenge answers this proxy serves; the ACME manager fills them.
    pub fn challenges(&self) -> &Arc<crate::tls::Challenges> {
        &self.challenges
    }

    /// The snapshot being served.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.live.load_full()
    }

    /// Answers one request; never fails (errors are responses).
    pub async fn handle(&self, mut req: Request<Incoming>, conn: &Arc<ConnInfo>) -> Response<Body> {
        let active = conn.begin();
        let id = request_id(req.headers());
        req.headers_mut().insert(X_REQUEST_ID, id.clone());
        let mut exchange = Exchange::start(
            conn.peer.ip().to_string(),
            request_host(&req).unwrap_or_default(),
            req.method().to_string(),
            req.uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned(),
            id.to_str().unwrap_or_default().to_owned(),
        );
        let mut resp = self.route_attempt(req, conn, 0, &mut exchange).await;
        resp.headers_mut().insert(X_REQUEST_ID, id);
        exchange.status = resp.status().as_u16();
        let finish = Finish {
            exchange,
            observer: self.observer.clone(),
            bytes: 0,
        };
        resp.map(|body| Tracked::wrap(body, None, Some(active), Some(finish)))
    }

    async fn route_attempt(
        &self,
        req: Request<Incoming>,
        conn: &ConnInfo,
        attempt: u8,
        exchange: &mut Exchange,
    ) -> Response<Body> {
        if req.method() == Method::CONNECT && !is_websocket_connect(&req) {
            return local(
                StatusCode::NOT_IMPLEMENTED,
                "this proxy opens no CONNECT tunnels (WebSocket over HTTP/2 excepted)\n",
            );
        }
        let Some(host) = request_host(&req) else {
            return local(
                StatusCode::BAD_REQUEST,
                "this request names no host: send a Host header\n",
            );
        };
        // Two Hosts could route one way here and another at the backend (RFC 9112 3.2).
        if req.headers().get_all(header::HOST).iter().nth(1).is_some() {
            return local(
                StatusCode::BAD_REQUEST,
                "this request names more than one host: send one Host header\n",
            );
        }
        // An ACME HTTP-01 validation is answered before any route: a route that redirects
        // to HTTPS (or has no certificate yet) must not hide it.
        if !conn.tls
            && let Some(token) = req.uri().path().strip_prefix(ACME_CHALLENGE_PATH)
            && let Some(answer) = self.challenges.http01(token)
        {
            return local(StatusCode::OK, &answer);
        }
        let snapshot = self.live.load_full();
        let Some(index) = snapshot.table.lookup_index(&host, req.uri().path()) else {
            return local(
                StatusCode::NOT_FOUND,
                &format!("no route for host `{host}` on this proxy (Slipway)\n"),
            );
        };
        let route = &snapshot.table.routes()[index];
        exchange.route = Some(route.key.to_string());
        if route.tls.is_on() && !conn.tls {
            match route.options.http {
                PlainHttp::Serve => {}
                PlainHttp::Off => {
                    return local(
                        StatusCode::NOT_FOUND,
                        &format!("`{host}` is served over HTTPS only\n"),
                    );
                }
                PlainHttp::Redirect => {
                    return redirect_to_https(&host, self.config.https_port, req.uri());
                }
            }
        }
        if let Some(auth) = &route.options.basic_auth
            && !basic_auth_ok(auth, req.headers())
        {
            let mut resp = local(StatusCode::UNAUTHORIZED, "401 Unauthorized\n");
            let challenge = format!("Basic realm=\"{}\"", auth.realm.replace('"', "'"));
            if let Ok(v) = HeaderValue::from_str(&challenge) {
                resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
            }
            return resp;
        }
        // A sticky cookie naming a backend still serving sends the request there.
        let sticky = route.options.sticky.as_ref();
        let pinned = sticky
            .and_then(|c| cookie(req.headers(), &c.name))
            .and_then(|token| snapshot.pick_sticky(index, &token));
        let repin = sticky.is_some() && pinned.is_none();
        let Some(guard) = pinned
            .or_else(|| snapshot.pick(index, self.config.balance, None))
            .and_then(|b| b.try_start())
        else {
            // The pick lost a race with a swap that drained its backend: the new table
            // has this route's backends now.
            if attempt == 0 && !Arc::ptr_eq(&snapshot, &self.live.load()) {
                return Box::pin(self.route_attempt(req, conn, 1, exchange)).await;
            }
            let mut resp = local(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("no backend of `{}` is serving; retry shortly\n", route.key),
            );
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            return resp;
        };
        let token = repin.then(|| crate::balance::sticky_token(guard.backend()));
        let mut resp = self
            .forward(req, conn, &snapshot, index, route, &host, guard, exchange)
            .await;
        if let (Some(c), Some(token)) = (sticky, token) {
            let mut value = format!("{}={token}; Path=/", c.name);
            if c.http_only {
                value.push_str("; HttpOnly");
            }
            if c.secure {
                value.push_str("; Secure");
            }
            if let Ok(v) = HeaderValue::from_str(&value) {
                resp.headers_mut().append(header::SET_COOKIE, v);
            }
        }
        // HSTS only over TLS (RFC 6797 7.2: a browser ignores it on plain HTTP anyway).
        if conn.tls
            && let Some(hsts) = &route.options.hsts
            && let Ok(v) = HeaderValue::from_str(&hsts_value(hsts))
        {
            resp.headers_mut()
                .insert(header::STRICT_TRANSPORT_SECURITY, v);
        }
        resp
    }

    #[allow(clippy::too_many_arguments)]
    async fn forward(
        &self,
        mut req: Request<Incoming>,
        conn: &ConnInfo,
        snapshot: &Snapshot,
        index: usize,
        route: &Route,
        host: &str,
        guard: InFlight,
        exchange: &mut Exchange,
    ) -> Response<Body> {
        // An h2 WebSocket (RFC 8441) goes to the HTTP/1.1 backend as its handshake.
        let websocket_h2 = is_websocket_connect(&req);
        let upgrade = if websocket_h2 {
            Some(HeaderValue::from_static("websocket"))
        } else {
            upgrade_protocol(req.headers())
        };
        let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        let mut headers = self.backend_headers(&parts.headers, conn, host, route, upgrade.as_ref());
        if websocket_h2 {
            parts.method = Method::GET;
            // An h2 client sends no key (its stream needs none); the backend's handshake does.
            if let Ok(key) = HeaderValue::from_str(&websocket_key()) {
                headers.insert(header::SEC_WEBSOCKET_KEY, key);
            }
        }
        let path = backend_path(&parts.uri, route);
        // A bodiless idempotent request can be sent again as it was; one whose body has
        // started streaming cannot.
        let retryable = is_idempotent(&parts.method) && hyper::body::Body::is_end_stream(&body);
        let mut body = Some(body.map_err(BoxError::from).boxed());
        let mut backend = guard.backend().clone();
        let mut guard = Some(guard);
        let mut retried = false;
        let (resp, guard) = loop {
            if backend.scheme == Scheme::Https {
                return local(
                    StatusCode::BAD_GATEWAY,
                    &format!(
                        "backend {} speaks HTTPS, which this proxy does not reach yet: \
                         give the route an http:// backend\n",
                        backend.address
                    ),
                );
            }
            let uri = match Uri::try_from(format!("http://{}{path}", backend.address)) {
                Ok(u) => u,
                Err(e) => {
                    return local(
                        StatusCode::BAD_REQUEST,
                        &format!("the request's path cannot be sent on: {e}\n"),
                    );
                }
            };
            let mut out = Request::new(body.take().unwrap_or_else(empty));
            *out.method_mut() = parts.method.clone();
            *out.uri_mut() = uri;
            // The pool speaks HTTP/1.1 to backends whatever the client spoke to us.
            *out.version_mut() = Version::HTTP_11;
            *out.headers_mut() = headers.clone();
            exchange.backend = Some(backend.address.to_string());
            let Some(counted) = guard.take().or_else(|| backend.try_start()) else {
                return local(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("backend {} is gone; retry shortly\n", backend.address),
                );
            };
            match backend_client(self.config.connect_timeout)
                .request(out)
                .await
            {
                Ok(resp) => {
                    if resp.status().is_server_error() {
                        backend.passive_failure(&self.health.passive.load());
                    } else {
                        backend.passive_success();
                    }
                    break (resp, counted);
                }
                Err(e) => {
                    backend.passive_failure(&self.health.passive.load());
                    drop(counted);
                    let next = if retryable && !retried {
                        snapshot
                            .pick(index, self.config.balance, Some(&backend))
                            .and_then(|b| b.try_start())
                    } else {
                        None
                    };
                    match next {
                        Some(other) => {
                            tracing::debug!(backend = %backend.address, error = %e, "retrying on {}", other.backend().address);
                            backend = other.backend().clone();
                            guard = Some(other);
                            retried = true;
                        }
                        None => {
                            tracing::warn!(backend = %backend.address, error = %e, "backend failed");
                            return local(
                                StatusCode::BAD_GATEWAY,
                                &format!(
                                    "backend {} failed: {}\n",
                                    backend.address,
                                    error_chain(&e)
                                ),
                            );
                        }
                    }
                }
            }
        };
        self.respond(resp, guard, route, client_upgrade, websocket_h2)
    }

    fn respond(
        &self,
        mut resp: Response<Incoming>,
        guard: InFlight,
        route: &Route,
        client_upgrade: Option<hyper::upgrade::OnUpgrade>,
        websocket_h2: bool,
    ) -> Response<Body> {
        let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        let kept_upgrade = if switching {
            resp.headers().get(header::UPGRADE).cloned()
        } else {
            None
        };
        strip_hop_by_hop(resp.headers_mut());
        set_headers(resp.headers_mut(), &route.options.response_headers);
        if let (true, Some(client_upgrade), Some(protocol)) =
            (switching, client_upgrade, kept_upgrade)
        {
            if websocket_h2 {
                // RFC 8441 5: a 2xx opens the stream; the accept answers a key the client
                // never sent. Sec-WebSocket-Protocol and -Extensions go back as they are.
                *resp.status_mut() = StatusCode::OK;
                resp.headers_mut().remove(header::SEC_WEBSOCKET_ACCEPT);
            } else {
                resp.headers_mut().insert(header::UPGRADE, protocol);
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            }
            let backend_upgrade = hyper::upgrade::on(&mut resp);
            tokio::spawn(tunnel(client_upgrade, backend_upgrade, guard));
            return resp.map(|_| empty());
        }
        resp.map(|body| {
            Tracked::wrap(
                body.map_err(BoxError::from).boxed(),
                Some(guard),
                None,
                None,
            )
        })
    }

    /// The headers sent to the backend.
    fn backend_headers(
        &self,
        incoming: &HeaderMap,
        conn: &ConnInfo,
        host: &str,
        route: &Route,
        upgrade: Option<&HeaderValue>,
    ) -> HeaderMap {
        let mut h = incoming.clone();
        strip_hop_by_hop(&mut h);
        h.remove(header::UPGRADE);
        if let Some(protocol) = upgrade {
            h.insert(header::UPGRADE, protocol.clone());
            h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        // HTTP/2 carries the host in `:authority`; backends read `Host`.
        if !h.contains_key(header::HOST)
            && let Ok(v) = HeaderValue::from_str(host)
        {
            h.insert(header::HOST, v);
        }
        let peer = conn.peer.ip();
        let trusted = self.config.trusted_proxies.iter().any(|c| c.contains(peer));
        let peer_text = peer.to_string();
        let value = |s: &str| HeaderValue::from_str(s).ok();
        let forwarded_for = match (trusted, incoming.get(&X_FORWARDED_FOR)) {
            (true, Some(prev)) => prev
                .to_str()
                .ok()
                .and_then(|p| value(&format!("{p}, {peer_text}"))),
            _ => value(&peer_text),
        };
        if !trusted {
            for name in [
                &X_FORWARDED_PROTO,
                &X_FORWARDED_HOST,
                &X_FORWARDED_PORT,
                &X_REAL_IP,
            ] {
                h.remove(name);
            }
        }
        if let Some(v) = forwarded_for {
            h.insert(X_FORWARDED_FOR, v);
        }
        let defaults = [
            (
                X_FORWARDED_PROTO,
                value(if conn.tls { "https" } else { "http" }),
            ),
            (
                X_FORWARDED_HOST,
                incoming.get(header::HOST).cloned().or_else(|| value(host)),
            ),
            (X_FORWARDED_PORT, value(&conn.local.port().to_string())),
            (X_REAL_IP, value(&peer_text)),
        ];
        for (name, v) in defaults {
            if !h.contains_key(&name)
                && let Some(v) = v
            {
                h.insert(name, v);
            }
        }
        set_headers(&mut h, &route.options.request_headers);
        h
    }
}

/// Joins the client's and the backend's upgraded connections until either closes or the
/// backend's drain is over.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    backend: hyper::upgrade::OnUpgrade,
    guard: InFlight,
) {
    let cut = guard.cut();
    let (client, backend) = match tokio::try_join!(client, backend) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut backend_io = TokioIo::new(backend);
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut client, &mut backend_io) => {
            if let Err(e) = r {
                tracing::debug!(backend = %guard.backend().address, error = %e, "tunnel closed");
            }
        }
        () = cut.cancelled() => {
            tracing::info!(backend = %guard.backend().address, "tunnel cut at the drain timeout");
        }
    }
    drop(guard);
}

/// A body that holds its request's counters until it ends (or is dropped), and ends with
/// an error if its backend's drain timeout passes first.
struct Tracked {
    inner: Body,
    _backend: Option<InFlight>,
    _active: Option<Active>,
    cut: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    finish: Option<Finish>,
}

/// An exchange to log and count once its response ends.
struct Finish {
    exchange: Exchange,
    observer: Arc<Observer>,
    bytes: u64,
}

impl Drop for Finish {
    fn drop(&mut self) {
        self.observer.finish(&self.exchange, self.bytes);
    }
}

impl Tracked {
    fn wrap(
        inner: Body,
        backend: Option<InFlight>,
        active: Option<Active>,
        finish: Option<Finish>,
    ) -> Body {
        let cut = backend
            .as_ref()
            .map(|b| Box::pin(b.cut().cancelled_owned()));
        Tracked {
            inner,
            _backend: backend,
            _active: active,
            cut,
            finish,
        }
        .boxed()
    }
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(cut) = self.cut.as_mut()
            && cut.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Some(Err("the backend's drain timeout passed".into())));
        }
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let (Poll::Ready(Some(Ok(frame))), Some(finish)) = (&polled, self.finish.as_mut())
            && let Some(data) = frame.data_ref()
        {
            finish.bytes += data.len() as u64;
        }
        if matches!(polled, Poll::Ready(None)) {
            // The last byte went out: the exchange is over now, not when hyper drops us.
            self.finish.take();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn empty() -> Body {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed()
}

/// A response Slipway itself gives (404, 503, ...).
fn local(status: StatusCode, text: &str) -> Response<Body> {
    let mut resp = Response::new(
        Full::new(Bytes::from(text.to_owned()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Where ACME's HTTP-01 validations ask (RFC 8555 8.3).
pub(crate) const ACME_CHALLENGE_PATH: &str = "/.well-known/acme-challenge/";

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().to_owned())
}

fn hsts_value(hsts: &crate::route::Hsts) -> String {
    let mut v = format!("max-age={}", hsts.max_age_secs);
    if hsts.include_subdomains {
        v.push_str("; includeSubDomains");
    }
    if hsts.preload {
        v.push_str("; preload");
    }
    v
}

fn redirect_to_https(host: &str, https_port: u16, uri: &Uri) -> Response<Body> {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let host = crate::table::normalize_host(host);
    let target = if https_port == 443 {
        format!("https://{host}{path}")
    } else {
        format!("https://{host}:{https_port}{path}")
    };
    let mut resp = local(StatusCode::PERMANENT_REDIRECT, &format!("{target}\n"));
    if let Ok(v) = HeaderValue::from_str(&target) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// The host a request is for: its `Host` header, else its URI's authority (HTTP/2).
fn request_host(req: &Request<Incoming>) -> Option<String> {
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.as_str().to_owned()))
        .filter(|h| !h.is_empty())
}

/// The request's id when it sent a sane one, else a new one.
fn request_id(headers: &HeaderMap) -> HeaderValue {
    headers
        .get(&X_REQUEST_ID)
        .filter(|v| sane_request_id(v.as_bytes()))
        .cloned()
        .unwrap_or_else(|| {
            let id = format!(
                "{:016x}{:016x}",
                crate::balance::random(),
                crate::balance::random()
            );
            HeaderValue::from_str(&id).unwrap_or_else(|_| HeaderValue::from_static("0"))
        })
}

/// A client's request id worth keeping: short printable ASCII.
pub(crate) fn sane_request_id(b: &[u8]) -> bool {
    !b.is_empty() && b.len() <= 200 && b.iter().all(|c| c.is_ascii_graphic())
}

/// `Upgrade`'s value when the request asks for one (`Connection: upgrade`).
fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if asks {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    }
}

/// An HTTP/2 extended CONNECT for a WebSocket (RFC 8441 4: `:protocol websocket`).
fn is_websocket_connect<B>(req: &Request<B>) -> bool {
    req.method() == Method::CONNECT
        && req
            .extensions()
            .get::<hyper::ext::Protocol>()
            .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"))
}

/// A `Sec-WebSocket-Key`: base64 of 16 random bytes (RFC 6455 4.1). It is a nonce, not a
/// secret (it only proves the backend read the handshake), so [`crate::balance::random`]
/// is random enough.
fn websocket_key() -> String {
    use base64::Engine;
    let mut nonce = [0u8; 16];
    nonce[..8].copy_from_slice(&crate::balance::random().to_le_bytes());
    nonce[8..].copy_from_slice(&crate::balance::random().to_le_bytes());
    base64::engine::general_purpose::STANDARD.encode(nonce)
}

fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        h.remove(name);
    }
    for name in HOP_BY_HOP {
        h.remove(name);
    }
    h.remove(header::UPGRADE);
}

/// Sets each header; an empty value removes it (as Traefik's `customRequestHeaders`).
fn set_headers(h: &mut HeaderMap, set: &std::collections::BTreeMap<String, String>) {
    for (name, value) in set {
        let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
            continue;
        };
        if value.is_empty() {
            h.remove(&name);
        } else if let Ok(v) = HeaderValue::from_str(value) {
            h.insert(name, v);
        }
    }
}

/// The path and query sent to the backend: the route's first matching strip prefix
/// removed (what is left starts with `/`).
fn backend_path(uri: &Uri, route: &Route) -> String {
    let mut out = stripped_path(uri.path(), route).into_owned();
    if let Some(q) = uri.query() {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// `path` with the route's first matching strip prefix removed, starting with `/`.
pub(crate) fn stripped_path<'a>(path: &'a str, route: &Route) -> std::borrow::Cow<'a, str> {
    let stripped = route
        .options
        .strip_prefixes
        .iter()
        .find_map(|p| {
            let p = p.trim_end_matches('/');
            let rest = path.strip_prefix(p)?;
            (rest.is_empty() || rest.starts_with('/')).then_some(rest)
        })
        .unwrap_or(path);
    if stripped.starts_with('/') {
        std::borrow::Cow::Borrowed(stripped)
    } else {
        std::borrow::Cow::Owned(format!("/{stripped}"))
    }
}

fn is_idempotent(m: &Method) -> bool {
    is_idempotent_name(m.as_str())
}

/// GET, HEAD, OPTIONS, PUT and DELETE: sending one again does what sending it once did.
pub(crate) fn is_idempotent_name(method: &str) -> bool {
    matches!(method, "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE")
}

fn basic_auth_ok(auth: &crate::auth::BasicAuth, headers: &HeaderMap) -> bool {
    use base64::Engine;
    let Some(encoded) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Basic ")
                .or_else(|| v.strip_prefix("basic "))
        })
    else {
        return false;
    };
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
        return false;
    };
    let Ok(text) = String::from_utf8(decoded) else {
        return false;
    };
    let Some((name, password)) = text.split_once(':') else {
        return false;
    };
    auth.check(name, password)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// An IP network (`10.0.0.0/8`, `::1/128`, or a bare address) whose forwarded headers are
/// trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let t = text.trim();
        let (ip, bits) = match t.split_once('/') {
            Some((ip, bits)) => (ip, Some(bits)),
            None => (t, None),
        };
        let net: IpAddr = ip.parse().map_err(|_| {
            format!("`{text}` is not an IP network: write e.g. 10.0.0.0/8 or 192.168.1.5")
        })?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            None => max,
            Some(b) => match b.parse::<u8>() {
                Ok(b) if b <= max => b,
                _ => return Err(format!("`{text}`: the prefix length must be 0 to {max}")),
            },
        };
        Ok(Cidr { net, bits })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.bits))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.net, self.bits)
    }
}
