//! Listeners: accept loop (max connections), hyper's auto server per connection (HTTP/1.1
//! with keep-alive, HTTP/2 by prior knowledge (h2c), upgrades), and the connection's
//! limits: header-read timeout (a slowloris is closed, not kept), idle timeout.
//!
//! [`serve_https`] is the same behind a rustls handshake (ALPN `h2` or `http/1.1`; the
//! handshake has the header-read timeout); both listeners share [`serve_io`].
//!
//! Invariant: no connection costs a task beyond its limits; a connection that stays
//! silent, or never finishes its headers (or its TLS handshake), is closed by a timer.

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
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let proxy = proxy.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
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
            let tls = match tokio::time::timeout(proxy.config.header_read_timeout, handshake).await
            {
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
            serve_io(proxy, tls, ConnInfo::new(peer, local).over_tls()).await;
            drop(permit);
        });
    }
}

/// One plain TCP client connection, with its timers.
pub async fn serve_connection(proxy: Arc<Proxy>, stream: TcpStream, peer: SocketAddr) {
    let local = stream.local_addr().unwrap_or(peer);
    let _ = stream.set_nodelay(true);
    serve_io(proxy, stream, ConnInfo::new(peer, local)).await;
}

/// One client connection over any transport (TCP, TLS), with its timers.
pub async fn serve_io<IO>(proxy: Arc<Proxy>, io: IO, info: ConnInfo)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let peer = info.peer;
    let info = Arc::new(info);
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
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
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
