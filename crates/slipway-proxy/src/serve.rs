//! Listeners: accept loop (max connections), hyper's auto server per connection (HTTP/1.1
//! with keep-alive, HTTP/2 by prior knowledge (h2c), upgrades), and the connection's
//! limits: header-read timeout (a slowloris is closed, not kept), idle timeout.
//!
//! [`serve_https`] is the same behind a rustls handshake (ALPN `h2` or `http/1.1`; the
//! handshake has the header-read timeout); both listeners share [`serve_io`].
//!
//! Invariant: no connection costs a task beyond its limits; a connection that stays
//! silent, or never finishes its headers (or its TLS handshake), is closed by a timer.
//!
//! Graceful close ([`Connections`], for a takeover or a stop): every connection is asked
//! to finish without failing a request. HTTP/2 gets a GOAWAY at once (the client retries
//! what the server never started). HTTP/1.1 has no such signal, and closing a keep-alive
//! connection races with the client's next request, so each response from then on says
//! `Connection: close` and the connection ends after it; one that stays idle for
//! [`CLOSE_IDLE_GRACE`] is closed then (its client was not about to send).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::balance::Balance;
use crate::forward::{Cidr, ConnInfo, Proxy};

/// The proxy's limits and choices; [`Config::default`] is what a user gets with no flags.
#[derive(Debug, Clone)]
pub struct Config {
    /// Time a client has to send a request's headers once it starts one.
    pub header_read_timeout: Duration,
    /// A connection with no request open for this long is closed.
    pub idle_timeout: Duration,
    /// Time to open a connection to a backend before trying another.
    pub connect_timeout: Duration,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// How long a removed backend keeps its in-flight requests and tunnels.
    pub drain_timeout: Duration,
    /// Peers whose `X-Forwarded-*` and `X-Real-IP` are kept (others' are replaced).
    pub trusted_proxies: Vec<Cidr>,
    pub balance: Balance,
    /// The port plain HTTP redirects to (`https://HOST:PORT/…`, no port when 443).
    pub https_port: u16,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(75),
            connect_timeout: Duration::from_secs(5),
            max_connections: 10_000,
            drain_timeout: Duration::from_secs(30),
            trusted_proxies: Vec::new(),
            balance: Balance::RoundRobin,
            https_port: 443,
        }
    }
}

/// How long an HTTP/1.1 connection asked to close may stay idle before it is closed: long
/// enough that a client in a run of requests sends its next one (and is told
/// `Connection: close`), short enough not to hold up a handover.
pub const CLOSE_IDLE_GRACE: Duration = Duration::from_secs(1);

/// The connections of one instance's listeners: each runs on a tracked task, so a stop
/// can ask them all to finish and wait until they have.
#[derive(Debug, Clone, Default)]
pub struct Connections {
    tracker: TaskTracker,
    closing: CancellationToken,
    /// The worker runtimes accepted connections are spread over, if several.
    spread: Option<Arc<Spread>>,
}

impl Connections {
    pub fn new() -> Connections {
        Connections::default()
    }

    /// The same connections, each accepted one served by the least busy runtime of
    /// `spread` (the one that accepted it only when that is the least busy).
    pub fn spread_over(&self, spread: Arc<Spread>) -> Connections {
        Connections {
            spread: Some(spread),
            ..self.clone()
        }
    }

    /// Asks every connection, open or accepted later, to finish gracefully (see the
    /// module doc). Requests in flight and upgraded tunnels go on.
    pub fn close(&self) {
        self.closing.cancel();
    }

    /// Connection tasks not yet ended.
    pub fn open(&self) -> usize {
        self.tracker.len()
    }

    /// Waits until every connection has ended and no request or tunnel of `proxy` is in
    /// flight (a tunnel outlives its connection's task), or `timeout` passed; whether
    /// everything ended.
    pub async fn drained(&self, proxy: &Proxy, timeout: Duration) -> bool {
        self.tracker.close();
        let deadline = tokio::time::Instant::now() + timeout;
        let ended = tokio::time::timeout_at(deadline, self.tracker.wait())
            .await
            .is_ok();
        loop {
            let in_flight: usize = proxy.snapshot().backends().map(|b| b.in_flight()).sum();
            if ended && in_flight == 0 {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    connections = self.open(),
                    in_flight,
                    "drain timeout passed; closing what is still open"
                );
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The worker runtimes (one per core) that one listener's connections are spread over.
///
/// Why: every worker accepts from the same socket, and the first awake takes a whole burst
/// of new connections (a load client's 64 at once) while the others sleep, so one core
/// would serve them all. Each accepted connection is given to the worker with the fewest
/// open connections instead; moving it costs two `epoll_ctl`s, once per connection.
#[derive(Debug)]
pub struct Spread {
    workers: Vec<SpreadWorker>,
}

#[derive(Debug)]
struct SpreadWorker {
    runtime: std::sync::OnceLock<(std::thread::ThreadId, tokio::runtime::Handle)>,
    open: std::sync::atomic::AtomicUsize,
}

impl Spread {
    pub fn new(workers: usize) -> Arc<Spread> {
        Arc::new(Spread {
            workers: (0..workers)
                .map(|_| SpreadWorker {
                    runtime: std::sync::OnceLock::new(),
                    open: std::sync::atomic::AtomicUsize::new(0),
                })
                .collect(),
        })
    }

    /// Worker `index` runs on the calling thread, on the current runtime.
    pub fn register(&self, index: usize) {
        if let (Some(w), Ok(handle)) = (
            self.workers.get(index),
            tokio::runtime::Handle::try_current(),
        ) {
            let _ = w.runtime.set((std::thread::current().id(), handle));
        }
    }

    /// The registered worker with the fewest open connections (the calling thread's on a
    /// tie), counted as serving one more until the returned guard drops.
    fn assign(self: &Arc<Self>) -> Option<Assigned> {
        let me = std::thread::current().id();
        let (index, _) = self
            .workers
            .iter()
            .enumerate()
            .filter_map(|(i, w)| {
                w.runtime
                    .get()
                    .map(|(t, _)| (i, (w.open.load(Ordering::Relaxed), *t != me)))
            })
            .min_by_key(|(_, key)| *key)?;
        self.workers[index].open.fetch_add(1, Ordering::Relaxed);
        Some(Assigned {
            spread: self.clone(),
            index,
        })
    }
}

/// A connection counted on one worker of a [`Spread`] until dropped.
struct Assigned {
    spread: Arc<Spread>,
    index: usize,
}

impl Assigned {
    /// The worker's runtime, unless it is the calling thread's own.
    fn elsewhere(&self) -> Option<&tokio::runtime::Handle> {
        let (thread, handle) = self.spread.workers[self.index].runtime.get()?;
        (*thread != std::thread::current().id()).then_some(handle)
    }
}

impl Drop for Assigned {
    fn drop(&mut self) {
        self.spread.workers[self.index]
            .open
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves plain HTTP on `listener` until `shutdown`; in-flight connections then finish on
/// their own tasks.
pub async fn serve_http(proxy: Arc<Proxy>, listener: TcpListener, shutdown: CancellationToken) {
    serve_http_on(proxy, listener, shutdown, Connections::new()).await;
}

/// [`serve_http`], with the connections tracked in `connections`: `shutdown` ends the
/// accept loop, [`Connections::close`] then finishes the connections.
pub async fn serve_http_on(
    proxy: Arc<Proxy>,
    listener: TcpListener,
    shutdown: CancellationToken,
    connections: Connections,
) {
    accept_connections(
        proxy,
        listener,
        shutdown,
        connections,
        serve_connection_until,
    )
    .await;
}

/// The accept loop both listeners share: at most `max_connections` at once (past it,
/// clients wait in the kernel's backlog instead of costing a task each), each accepted
/// connection served by `serve` on a task of `connections`, until `shutdown`.
async fn accept_connections<F, Fut>(
    proxy: Arc<Proxy>,
    listener: TcpListener,
    shutdown: CancellationToken,
    connections: Connections,
    serve: F,
) where
    F: Fn(Arc<Proxy>, TcpStream, SocketAddr, CancellationToken) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(
        proxy.config.max_connections.max(1),
    ));
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            () = shutdown.cancelled() => return,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = shutdown.cancelled() => return,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and the like: wait, do not spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let assigned = connections.spread.as_ref().and_then(Spread::assign);
        if let Some(handle) = assigned.as_ref().and_then(Assigned::elsewhere).cloned() {
            // Deregistered here, registered with the other worker's reactor there.
            let std_stream = match stream.into_std() {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "cannot hand a connection to another worker");
                    continue;
                }
            };
            let (proxy, serve, closing) =
                (proxy.clone(), serve.clone(), connections.closing.clone());
            handle.spawn(connections.tracker.track_future(async move {
                match TcpStream::from_std(std_stream) {
                    Ok(stream) => serve(proxy, stream, peer, closing).await,
                    Err(e) => {
                        tracing::warn!(%peer, error = %e, "a handed connection cannot be served")
                    }
                }
                drop((permit, assigned));
            }));
            continue;
        }
        let served = serve(proxy.clone(), stream, peer, connections.closing.clone());
        connections.tracker.spawn(async move {
            served.await;
            drop((permit, assigned));
        });
    }
}

/// Serves HTTPS on `listener` until `shutdown`: each connection's TLS handshake (with the
/// header-read timeout), then the same serving as plain HTTP, the requests marked as
/// come over TLS. A client hello without SNI gets the configuration of the connection's
/// local address (see [`crate::tls::HttpsConfig`]).
pub async fn serve_https(
    proxy: Arc<Proxy>,
    listener: TcpListener,
    tls: Arc<crate::tls::HttpsConfig>,
    shutdown: CancellationToken,
) {
    serve_https_on(proxy, listener, tls, shutdown, Connections::new()).await;
}

/// [`serve_https`], with the connections tracked in `connections` (as [`serve_http_on`]).
pub async fn serve_https_on(
    proxy: Arc<Proxy>,
    listener: TcpListener,
    tls: Arc<crate::tls::HttpsConfig>,
    shutdown: CancellationToken,
    connections: Connections,
) {
    accept_connections(
        proxy,
        listener,
        shutdown,
        connections,
        move |proxy, stream, peer, closing| {
            let tls = tls.clone();
            async move {
                let local = stream.local_addr().unwrap_or(peer);
                let _ = stream.set_nodelay(true);
                let handshake = async {
                    let start = tokio_rustls::LazyConfigAcceptor::new(
                        rustls::server::Acceptor::default(),
                        stream,
                    )
                    .await?;
                    let has_sni = start.client_hello().server_name().is_some();
                    start.into_stream(tls.for_client(has_sni, local.ip())).await
                };
                let tls =
                    match tokio::time::timeout(proxy.config.header_read_timeout, handshake).await {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                let alpn = tls.get_ref().1.alpn_protocol();
                if alpn == Some(crate::tls::ACME_TLS_ALPN) {
                    // A TLS-ALPN-01 validation: the handshake was the answer; nothing is
                    // served on such a connection (RFC 8737 3).
                    return;
                }
                serve_io(proxy, tls, ConnInfo::new(peer, local).over_tls(), closing).await;
            }
        },
    )
    .await;
}

/// One plain TCP client connection, with its timers.
pub async fn serve_connection(proxy: Arc<Proxy>, stream: TcpStream, peer: SocketAddr) {
    serve_connection_until(proxy, stream, peer, CancellationToken::new()).await;
}

/// [`serve_connection`], finished gracefully once `closing` fires (see the module doc).
pub async fn serve_connection_until(
    proxy: Arc<Proxy>,
    stream: TcpStream,
    peer: SocketAddr,
    closing: CancellationToken,
) {
    let local = stream.local_addr().unwrap_or(peer);
    let _ = stream.set_nodelay(true);
    // Simple HTTP/1.1 exchanges are relayed by the fast path, which hands anything else
    // (HTTP/2, upgrades, streamed bodies) to hyper through `serve_io_shared`.
    crate::h1_relay::serve(proxy, stream, Arc::new(ConnInfo::new(peer, local)), closing).await;
}

/// One client connection over any transport (TCP, TLS), with its timers; finished
/// gracefully once `closing` fires.
pub async fn serve_io<IO>(proxy: Arc<Proxy>, io: IO, info: ConnInfo, closing: CancellationToken)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    serve_io_shared(proxy, io, Arc::new(info), closing).await;
}

/// [`serve_io`] for a connection whose [`ConnInfo`] is already shared (one the HTTP/1.1
/// fast path hands over).
pub(crate) async fn serve_io_shared<IO>(
    proxy: Arc<Proxy>,
    io: IO,
    info: Arc<ConnInfo>,
    closing: CancellationToken,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let peer = info.peer;
    let svc_info = info.clone();
    let svc_proxy = proxy.clone();
    let svc_closing = closing.clone();
    let is_h2 = Arc::new(AtomicBool::new(false));
    let svc_is_h2 = is_h2.clone();
    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let proxy = svc_proxy.clone();
        let info = svc_info.clone();
        let closing = svc_closing.clone();
        let h2 = req.version() == hyper::Version::HTTP_2;
        svc_is_h2.store(h2, Ordering::Relaxed);
        async move {
            let mut resp = proxy.handle(req, &info).await;
            // Checked as the response head is made, so a client is told before it could
            // send another request on this connection.
            if closing.is_cancelled()
                && !h2
                && resp.status() != hyper::StatusCode::SWITCHING_PROTOCOLS
            {
                resp.headers_mut().insert(
                    hyper::header::CONNECTION,
                    hyper::header::HeaderValue::from_static("close"),
                );
            }
            Ok::<_, Infallible>(resp)
        }
    });
    let config = &proxy.config;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    builder.http2().enable_connect_protocol();
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    // The idle timer also covers a client that connects and sends nothing, which hyper's
    // header timer (started by a request's first byte) does not: such a connection gets
    // the header-read timeout, one that was served the idle timeout.
    let tick =
        (config.header_read_timeout.min(config.idle_timeout) / 4).max(Duration::from_millis(10));
    let mut ticker = tokio::time::interval(tick);
    let mut shut = false;
    let mut asked_to_close = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection ended");
                }
                return;
            }
            _ = ticker.tick(), if !shut => {
                let idle = if info.served_any() {
                    config.idle_timeout
                } else {
                    config.header_read_timeout
                };
                if info.idle_for(idle) {
                    shut = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
            () = closing.cancelled(), if !asked_to_close && !shut => {
                asked_to_close = true;
                ticker = tokio::time::interval(Duration::from_millis(10));
            }
        }
        if asked_to_close
            && !shut
            && (is_h2.load(Ordering::Relaxed) || info.idle_for(CLOSE_IDLE_GRACE))
        {
            shut = true;
            conn.as_mut().graceful_shutdown();
        }
    }
}
