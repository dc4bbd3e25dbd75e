//! Listeners: accept loop (max connections), hyper's auto server per connection (HTTP/1.1
//! with keep-alive, HTTP/2 by prior knowledge (h2c), upgrades), and the connection's
//! limits: header-read timeout (a slowloris is closed, not kept), idle timeout.
//!
//! Invariant: no connection costs a task beyond its limits; a connection that stays
//! silent, or never finishes its headers, is closed by a timer. TLS listeners will wrap
//! the same per-connection function.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

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
        }
    }
}

/// Serves plain HTTP on `listener` until `shutdown`; in-flight connections then finish on
/// their own tasks.
pub async fn serve_http(proxy: Arc<Proxy>, listener: TcpListener, shutdown: CancellationToken) {
    let slots = Arc::new(tokio::sync::Semaphore::new(
        proxy.config.max_connections.max(1),
    ));
    loop {
        // Wait for a free slot before accepting: past the limit, clients queue in the
        // kernel's backlog instead of costing a task each.
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
        let proxy = proxy.clone();
        tokio::spawn(async move {
            serve_connection(proxy, stream, peer).await;
            drop(permit);
        });
    }
}

/// One client connection, with its timers.
pub async fn serve_connection(proxy: Arc<Proxy>, stream: TcpStream, peer: SocketAddr) {
    let local = stream.local_addr().unwrap_or(peer);
    let _ = stream.set_nodelay(true);
    let info = Arc::new(ConnInfo::new(peer, local));
    let svc_info = info.clone();
    let svc_proxy = proxy.clone();
    let service = service_fn(move |req| {
        let proxy = svc_proxy.clone();
        let info = svc_info.clone();
        async move { Ok::<_, Infallible>(proxy.handle(req, &info).await) }
    });
    let config = &proxy.config;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(conn);
    // The idle timer also covers a client that connects and sends nothing, which hyper's
    // header timer (started by a request's first byte) does not: such a connection gets
    // the header-read timeout, one that was served the idle timeout.
    let tick =
        (config.header_read_timeout.min(config.idle_timeout) / 4).max(Duration::from_millis(10));
    let mut ticker = tokio::time::interval(tick);
    let mut closing = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection ended");
                }
                return;
            }
            _ = ticker.tick(), if !closing => {
                let idle = if info.served_any() {
                    config.idle_timeout
                } else {
                    config.header_read_timeout
                };
                if info.idle_for(idle) {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}
