//! The plain HTTP/1.1 fast path: a client connection's simple exchanges are relayed by
//! this module's own loop, byte for byte, instead of through hyper's server and client.
//!
//! Why: with hyper on both sides a proxied request cost three times nginx's user-space
//! CPU (header maps built and copied twice, a dispatch task per backend connection), and
//! the plain benchmark against nginx is lost on CPU per request. Here a request's head is
//! parsed once (`httparse`), rewritten straight into the backend's request head, and the
//! response head likewise; bodies are copied as they come.
//!
//! What it relays: HTTP/1.1 requests in origin form with one `Host`, no body or a small
//! `Content-Length` body already read, no `Transfer-Encoding`, `Upgrade` or `Expect`, a
//! `Connection` header naming only `keep-alive`/`close`, to a route that needs no header
//! work of its own (no basic auth, sticky cookie, HTTPS redirect, ACME answer). The
//! response may be framed by length, chunks (relayed as they are, their end found by
//! [`ChunkScan`]) or the backend's close.
//!
//! Everything else (HTTP/2's preface, a body to stream, an upgrade, an unknown host, a
//! head that does not parse) hands the connection, with the bytes read so far, to hyper
//! ([`crate::serve::serve_io`]) for the rest of its life, so the two paths never share a
//! connection at once and every edge case keeps hyper's answer.
//!
//! Invariants: a request is relayed only when its framing is unambiguous (one valid
//! `Content-Length` or none, never `Transfer-Encoding`: no request smuggling); the same
//! rules as [`crate::forward`] apply (hop-by-hop headers out, `X-Forwarded-*` trusted only
//! from configured networks, a request id, the backend counted in flight until the
//! response ends, one retry of a bodiless idempotent request that failed before any
//! response byte); a backend connection goes back to this thread's pool only after a
//! complete response with keep-alive and nothing more on it.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::balance::{InFlight, LiveBackend, Snapshot};
use crate::forward::{ConnInfo, Proxy};
use crate::observe::{ClassCounts, Exchange, RouteMetrics};
use crate::route::{PlainHttp, Route, Scheme};

/// A request head longer than this goes to hyper (which has its own, larger limit).
const MAX_HEAD: usize = 16 * 1024;
/// A request body up to this size, read with its head, is relayed; larger ones stream
/// through hyper.
const MAX_SMALL_BODY: u64 = 16 * 1024;
/// A backend response head longer than this is refused (502).
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
const MAX_REQUEST_HEADERS: usize = 64;
const MAX_RESPONSE_HEADERS: usize = 100;
const READ_SIZE: usize = 16 * 1024;
/// A pooled backend connection idle for longer is closed rather than reused.
const POOL_IDLE: Duration = Duration::from_secs(60);
const POOL_PER_BACKEND: usize = 256;
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves one plain client connection: relays what it can, hands the rest to hyper.
pub(crate) async fn serve(
    proxy: Arc<Proxy>,
    mut client: TcpStream,
    info: Arc<ConnInfo>,
    closing: CancellationToken,
) {
    let trusted = proxy
        .config
        .trusted_proxies
        .iter()
        .any(|c| c.contains(info.peer.ip()));
    let mut conn = ClientConn {
        buf: BytesMut::with_capacity(READ_SIZE),
        head: Vec::with_capacity(1024),
        reply: Vec::with_capacity(1024),
        trusted,
        peer: info.peer.ip().to_string(),
        port: info.local.port().to_string(),
        metrics: None,
        closing: closing.is_cancelled(),
        last_done: None,
    };
    let mut waits = Waits {
        timer: Box::pin(tokio::time::sleep(proxy.config.header_read_timeout)),
        closing: Box::pin(closing.clone().cancelled_owned()),
    };
    loop {
        match read_head(&proxy, &mut client, &mut conn, &info, &mut waits).await {
            HeadRead::Complete => {}
            HeadRead::Closed => return,
            HeadRead::TimedOut => {
                let _ = client
                    .write_all(
                        b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    )
                    .await;
                return;
            }
            HeadRead::ToHyper => return to_hyper(proxy, client, conn.buf, info, closing).await,
        }
        let snapshot = proxy.snapshot();
        let Some(plan) = conn.plan(&proxy, &snapshot) else {
            return to_hyper(proxy, client, conn.buf, info, closing).await;
        };
        let _active = info.begin();
        let keep = relay(&proxy, &snapshot, &mut client, &mut conn, plan).await;
        if !keep {
            let _ = client.shutdown().await;
            return;
        }
    }
}

/// A client connection's buffers and what is fixed for all its requests.
struct ClientConn {
    /// Bytes read from the client and not yet relayed.
    buf: BytesMut,
    /// The backend request head being written (reused).
    head: Vec<u8>,
    /// The client's response head being written (reused).
    reply: Vec<u8>,
    /// The peer is a trusted proxy: its `X-Forwarded-*` headers are kept.
    trusted: bool,
    peer: String,
    port: String,
    /// The counters of the route (and backend) last served, reused while they stay the same.
    metrics: Option<CachedMetrics>,
    /// The listener was asked to close (seen while waiting for a request).
    closing: bool,
    /// When the last response ended.
    last_done: Option<Instant>,
}

struct CachedMetrics {
    route: crate::route::RouteKey,
    counts: Arc<RouteMetrics>,
    backend: Option<(Arc<LiveBackend>, Arc<ClassCounts>)>,
}

/// The waits of a connection between requests, kept across them: a timer is reset only
/// when it fires early or must fire sooner, not made anew for every request.
struct Waits {
    timer: Pin<Box<tokio::time::Sleep>>,
    closing: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
}

/// One request, decided: where it goes and what to send.
struct Plan {
    /// Its length in `ClientConn::buf`, head and body.
    len: usize,
    route: usize,
    guard: InFlight,
    retryable: bool,
    head_request: bool,
    /// The client said `Connection: close`.
    close: bool,
    request_id: String,
    started: Instant,
    /// Only when there is an access log to write.
    exchange: Option<Exchange>,
}

enum HeadRead {
    Complete,
    Closed,
    TimedOut,
    ToHyper,
}

/// Reads until `conn.buf` holds a whole request head (or something not for us).
async fn read_head(
    proxy: &Proxy,
    client: &mut TcpStream,
    conn: &mut ClientConn,
    info: &ConnInfo,
    waits: &mut Waits,
) -> HeadRead {
    let config = &proxy.config;
    let buf = &mut conn.buf;
    // Once a request's first byte came, it has the header-read timeout to finish its head;
    // before that, the connection may idle until `idle_deadline`.
    let mut head_deadline = None;
    let mut idle_deadline = None;
    loop {
        if !buf.is_empty() {
            if buf[0] == b'P' && H2_PREFACE.starts_with(&buf[..buf.len().min(H2_PREFACE.len())]) {
                return HeadRead::ToHyper;
            }
            // The blank line that ends a head is enough to go on: `plan` parses it (once),
            // and what does not parse goes to hyper.
            if head_ended(buf) {
                return HeadRead::Complete;
            }
            if buf.len() > MAX_HEAD {
                return HeadRead::ToHyper;
            }
            head_deadline.get_or_insert_with(|| Instant::now() + config.header_read_timeout);
        }
        // A first read without waiting: a pipelined or quick client needs no timer.
        match client.try_read_buf(buf) {
            Ok(0) => return HeadRead::Closed,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return HeadRead::Closed,
        }
        let deadline = head_deadline.unwrap_or_else(|| {
            *idle_deadline.get_or_insert_with(|| {
                let wait = if conn.closing {
                    crate::serve::CLOSE_IDLE_GRACE
                } else if info.served_any() {
                    config.idle_timeout
                } else {
                    config.header_read_timeout
                };
                // The last response's end, read then: one clock read less per request.
                conn.last_done.unwrap_or_else(Instant::now) + wait
            })
        });
        let deadline = tokio::time::Instant::from_std(deadline);
        if waits.timer.deadline() > deadline || waits.timer.is_elapsed() {
            waits.timer.as_mut().reset(deadline);
        }
        tokio::select! {
            biased;
            r = client.read_buf(buf) => match r {
                Ok(0) | Err(_) => return HeadRead::Closed,
                Ok(_) => {}
            },
            () = waits.timer.as_mut() => {
                // The timer may be an earlier one, kept to save a reset: look again.
                if tokio::time::Instant::now() < deadline {
                    waits.timer.as_mut().reset(deadline);
                    continue;
                }
                // A client that started a head and stalled is told; an idle one is closed.
                return if head_deadline.is_some() { HeadRead::TimedOut } else { HeadRead::Closed };
            }
            // Asked to close while idle: the grace starts now.
            () = waits.closing.as_mut(), if !conn.closing => {
                conn.closing = true;
                idle_deadline = None;
            }
        }
    }
}

/// Whether `buf` holds a blank line (`\r\n\r\n`, or the bare `\n\n` that parsers
/// also accept), which ends a head.
fn head_ended(buf: &[u8]) -> bool {
    let mut rest = buf;
    while let Some(i) = rest.iter().position(|&b| b == b'\n') {
        rest = &rest[i + 1..];
        match rest {
            [b'\n', ..] | [b'\r', b'\n', ..] => return true,
            _ => {}
        }
    }
    false
}

/// What a request header is to the relay.
enum RequestHeader {
    Host,
    ContentLength,
    Connection,
    /// Ends the fast path: hyper handles the request.
    Refuse,
    /// Hop-by-hop: not sent on.
    Drop,
    Forwarded,
    RequestId,
    Other,
}

fn request_header(name: &str) -> RequestHeader {
    let is = |n: &str| name.eq_ignore_ascii_case(n);
    match name.len() {
        2 if is("te") => RequestHeader::Refuse,
        4 if is("host") => RequestHeader::Host,
        6 if is("expect") => RequestHeader::Refuse,
        7 if is("upgrade") || is("trailer") => RequestHeader::Refuse,
        9 if is("x-real-ip") => RequestHeader::Forwarded,
        10 if is("connection") => RequestHeader::Connection,
        10 if is("keep-alive") => RequestHeader::Drop,
        12 if is("x-request-id") => RequestHeader::RequestId,
        14 if is("content-length") => RequestHeader::ContentLength,
        15 if is("x-forwarded-for") => RequestHeader::Forwarded,
        16 if is("x-forwarded-host") || is("x-forwarded-port") => RequestHeader::Forwarded,
        16 if is("proxy-connection") => RequestHeader::Drop,
        17 if is("transfer-encoding") => RequestHeader::Refuse,
        17 if is("x-forwarded-proto") => RequestHeader::Forwarded,
        19 if is("proxy-authorization") || is("proxy-authenticate") => RequestHeader::Drop,
        _ => RequestHeader::Other,
    }
}

impl ClientConn {
    /// Decides the request at the start of `buf`: `None` hands it to hyper. On `Some`,
    /// `self.head` is the backend's request head (with the body, if any).
    fn plan(&mut self, proxy: &Proxy, snapshot: &Snapshot) -> Option<Plan> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_REQUEST_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let head_len = match req.parse(&self.buf) {
            Ok(httparse::Status::Complete(n)) => n,
            _ => return None,
        };
        let (method, target) = (req.method?, req.path?);
        if req.version != Some(1) || !target.starts_with('/') || method == "CONNECT" {
            return None;
        }
        let mut host = None;
        let mut content_length = None;
        let mut close = false;
        let mut request_id = None;
        for h in req.headers.iter() {
            match request_header(h.name) {
                RequestHeader::Host if host.is_none() => {
                    host = Some(std::str::from_utf8(h.value).ok()?);
                }
                RequestHeader::ContentLength if content_length.is_none() => {
                    content_length = Some(parse_length(h.value)?);
                }
                RequestHeader::Connection => {
                    for token in std::str::from_utf8(h.value).ok()?.split(',') {
                        match token.trim() {
                            t if t.eq_ignore_ascii_case("close") => close = true,
                            t if t.eq_ignore_ascii_case("keep-alive") => {}
                            // A header named hop-by-hop, or an upgrade: hyper's path.
                            _ => return None,
                        }
                    }
                }
                RequestHeader::RequestId
                    if request_id.is_none() && crate::forward::sane_request_id(h.value) =>
                {
                    request_id = std::str::from_utf8(h.value).ok();
                }
                // A second Host or Content-Length, or a header we leave to hyper.
                RequestHeader::Host | RequestHeader::ContentLength | RequestHeader::Refuse => {
                    return None;
                }
                _ => {}
            }
        }
        let host = host.filter(|h| !h.is_empty())?;
        let body = content_length.unwrap_or(0);
        if body > MAX_SMALL_BODY || ((self.buf.len() - head_len) as u64) < body {
            return None;
        }
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        let index = snapshot.table.lookup_index(host, path)?;
        let route = &snapshot.table.routes()[index];
        if !relayable(route) || path.starts_with(crate::forward::ACME_CHALLENGE_PATH) {
            return None;
        }
        let guard = snapshot
            .pick(index, proxy.config.balance, None)
            .and_then(LiveBackend::into_in_flight)?;
        if guard.backend().scheme == Scheme::Https {
            return None;
        }
        let request_id = match request_id {
            Some(id) => id.to_owned(),
            None => {
                let mut id = String::with_capacity(32);
                let _ = write!(
                    id,
                    "{:016x}{:016x}",
                    crate::balance::random(),
                    crate::balance::random()
                );
                id
            }
        };

        // The backend's request head.
        let set = &route.options.request_headers;
        let is_set = |name: &str| set.keys().any(|k| k.eq_ignore_ascii_case(name));
        let out = &mut self.head;
        out.clear();
        out.extend_from_slice(method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(crate::forward::stripped_path(path, route).as_bytes());
        if let Some(q) = query {
            out.push(b'?');
            out.extend_from_slice(q.as_bytes());
        }
        out.extend_from_slice(b" HTTP/1.1\r\n");
        let mut forwarded_for = None;
        let mut kept = [false; 4]; // proto, host, port, real-ip came from a trusted peer
        for h in req.headers.iter() {
            match request_header(h.name) {
                RequestHeader::Drop | RequestHeader::Connection | RequestHeader::RequestId => {
                    continue;
                }
                RequestHeader::Forwarded => {
                    if !self.trusted || is_set(h.name) {
                        continue;
                    }
                    if h.name.eq_ignore_ascii_case("x-forwarded-for") {
                        forwarded_for.get_or_insert(h.value);
                        continue;
                    }
                    let slot = match h.name.len() {
                        17 => 0,
                        16 if h.name.eq_ignore_ascii_case("x-forwarded-host") => 1,
                        16 => 2,
                        _ => 3,
                    };
                    kept[slot] = true;
                }
                _ if is_set(h.name) => continue,
                _ => {}
            }
            header_line(out, h.name, h.value);
        }
        if !is_set("x-forwarded-for") {
            out.extend_from_slice(b"x-forwarded-for: ");
            if let Some(prev) = forwarded_for {
                out.extend_from_slice(prev);
                out.extend_from_slice(b", ");
            }
            out.extend_from_slice(self.peer.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        let defaults = [
            ("x-forwarded-proto", "http"),
            ("x-forwarded-host", host),
            ("x-forwarded-port", self.port.as_str()),
            ("x-real-ip", self.peer.as_str()),
        ];
        for ((name, value), kept) in defaults.into_iter().zip(kept) {
            if !kept && !is_set(name) {
                header_line(out, name, value.as_bytes());
            }
        }
        header_line(out, "x-request-id", request_id.as_bytes());
        for (name, value) in set {
            if !value.is_empty() {
                header_line(out, name, value.as_bytes());
            }
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.buf[head_len..head_len + body as usize]);

        let exchange = proxy.observer().logs().then(|| {
            Exchange::start(
                self.peer.clone(),
                host.to_owned(),
                method.to_owned(),
                target.to_owned(),
                request_id.clone(),
            )
        });
        Some(Plan {
            len: head_len + body as usize,
            route: index,
            guard,
            retryable: crate::forward::is_idempotent_name(method) && body == 0,
            head_request: method == "HEAD",
            close,
            request_id,
            started: Instant::now(),
            exchange,
        })
    }
}

/// A route whose requests need nothing but forwarding (plain HTTP serves it).
fn relayable(route: &Route) -> bool {
    let o = &route.options;
    o.basic_auth.is_none()
        && o.sticky.is_none()
        && (!route.tls.is_on() || o.http == PlainHttp::Serve)
}

fn header_line(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A `Content-Length` value: digits only (no sign, no list, no spaces inside).
fn parse_length(value: &[u8]) -> Option<u64> {
    let v = value.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// How a backend's response body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Until the backend closes: the client's connection ends with it.
    Close,
}

/// A backend's response head, parsed and rewritten for the client.
struct ResponseHead {
    len: usize,
    status: u16,
    framing: Framing,
    /// The backend keeps the connection open after this response.
    backend_keeps: bool,
    /// The client's connection goes on after this response.
    client_keeps: bool,
    interim: bool,
}

/// Relays one planned request and its response; whether the client connection goes on.
async fn relay(
    proxy: &Proxy,
    snapshot: &Snapshot,
    client: &mut TcpStream,
    conn: &mut ClientConn,
    plan: Plan,
) -> bool {
    let Plan {
        len,
        route: index,
        mut guard,
        retryable,
        head_request,
        close,
        request_id,
        started,
        mut exchange,
    } = plan;
    conn.buf.advance(len);
    let route = &snapshot.table.routes()[index];
    let passive = proxy.health.passive.load();
    let mut retried = false;
    let mut fresh_only = false;
    let mut rewrite = Rewrite {
        out: &mut conn.reply,
        set: &route.options.response_headers,
        request_id: &request_id,
        close: close || conn.closing,
    };
    let (mut backend, mut response) = loop {
        let target = guard.backend();
        match exchange_head(proxy, target, &conn.head, fresh_only, &mut rewrite, started).await {
            Ok(pair) => break pair,
            Err(Failure::Stale) if retryable && !fresh_only => {
                // A pooled connection the backend had closed: a new one, same backend.
                fresh_only = true;
            }
            Err(failure) => {
                if !matches!(failure, Failure::Stale) {
                    target.passive_failure(&passive);
                }
                let next = (retryable && !retried)
                    .then(|| snapshot.pick(index, proxy.config.balance, Some(target)))
                    .flatten()
                    .and_then(LiveBackend::into_in_flight);
                let Some(other) = next else {
                    tracing::warn!(backend = %target.address, error = %failure, "backend failed");
                    let text = format!("backend {} failed: {failure}\n", target.address);
                    let ok = write_local(client, 502, &text, &request_id, close).await;
                    conn.count(
                        proxy,
                        route,
                        target,
                        exchange,
                        502,
                        started,
                        text.len() as u64,
                    );
                    return ok && !close;
                };
                tracing::debug!(backend = %target.address, error = %failure, "retrying on {}", other.backend().address);
                guard = other;
                retried = true;
                fresh_only = false;
            }
        }
    };
    let live = guard.backend();
    // 103 Early Hints and the like go on as they come; the answer follows.
    while response.interim {
        backend.buf.advance(response.len);
        let next = match client.write_all(rewrite.out).await {
            Ok(()) => read_head_only(&mut backend, head_request, &mut rewrite).await,
            Err(e) => Err(Failure::Io(e)),
        };
        match next {
            Ok(r) => response = r,
            Err(_) => return false,
        }
    }
    backend.buf.advance(response.len);
    if response.status >= 500 {
        live.passive_failure(&passive);
    } else {
        live.passive_success();
    }
    let body = relay_body(client, &mut backend, rewrite.out, response.framing, &guard).await;
    conn.count(
        proxy,
        route,
        live,
        exchange.take(),
        response.status,
        started,
        body.bytes,
    );
    if body.complete && response.backend_keeps && backend.buf.is_empty() && live.is_live() {
        give_back(live, backend, conn.last_done.unwrap_or_else(Instant::now));
    }
    drop(guard);
    body.complete && response.client_keeps
}

impl ClientConn {
    /// Counts (and logs, with an access log) one finished exchange.
    #[allow(clippy::too_many_arguments)]
    fn count(
        &mut self,
        proxy: &Proxy,
        route: &Route,
        backend: &Arc<LiveBackend>,
        exchange: Option<Exchange>,
        status: u16,
        started: Instant,
        bytes: u64,
    ) {
        let done = Instant::now();
        self.last_done = Some(done);
        let observer = proxy.observer();
        if let Some(mut e) = exchange {
            e.route = Some(route.key.to_string());
            e.backend = Some(backend.address.to_string());
            e.status = status;
            observer.finish(&e, bytes);
            return;
        }
        let cached = match &mut self.metrics {
            Some(m) if m.route == route.key => m,
            slot => slot.insert(CachedMetrics {
                route: route.key.clone(),
                counts: observer.route_metrics(&route.key.to_string()),
                backend: None,
            }),
        };
        let counts = match &cached.backend {
            Some((b, c)) if Arc::ptr_eq(b, backend) => c.clone(),
            _ => {
                let c = cached.counts.backend(backend.address.as_str());
                cached.backend = Some((backend.clone(), c.clone()));
                c
            }
        };
        cached.counts.count(
            Some(&counts),
            status,
            done.saturating_duration_since(started),
        );
    }
}

/// A backend connection and the bytes read from it.
struct BackendConn {
    stream: TcpStream,
    buf: BytesMut,
    idle_since: Instant,
}

/// Why a request got no response head.
#[derive(Debug)]
enum Failure {
    /// A reused connection turned out closed before any byte came back.
    Stale,
    Connect(io::Error),
    Io(io::Error),
    /// The backend closed before its response head.
    Closed,
    Invalid(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Stale => f.write_str("its kept-alive connection was closed"),
            Failure::Connect(e) => write!(f, "cannot connect: {e}"),
            Failure::Io(e) => write!(f, "{e}"),
            Failure::Closed => f.write_str("it closed the connection before answering"),
            Failure::Invalid(why) => write!(f, "its response is not valid HTTP/1.1: {why}"),
        }
    }
}

/// Sends `head` on a pooled or new connection and reads the response head.
async fn exchange_head(
    proxy: &Proxy,
    backend: &Arc<LiveBackend>,
    head: &[u8],
    fresh_only: bool,
    rewrite: &mut Rewrite<'_>,
    now: Instant,
) -> Result<(BackendConn, ResponseHead), Failure> {
    let pooled = if fresh_only {
        None
    } else {
        take_pooled(backend, now)
    };
    let reused = pooled.is_some();
    let mut conn = match pooled {
        Some(c) => c,
        None => {
            let stream = tokio::time::timeout(
                proxy.config.connect_timeout,
                TcpStream::connect(backend.address.as_str()),
            )
            .await
            .map_err(|_| {
                Failure::Connect(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))
            })?
            .map_err(Failure::Connect)?;
            let _ = stream.set_nodelay(true);
            BackendConn {
                stream,
                buf: BytesMut::with_capacity(READ_SIZE),
                idle_since: now,
            }
        }
    };
    let lost = |e: Failure| match e {
        Failure::Io(_) | Failure::Closed if reused => Failure::Stale,
        e => e,
    };
    conn.stream
        .write_all(head)
        .await
        .map_err(|e| lost(Failure::Io(e)))?;
    let head_request = head.starts_with(b"HEAD ");
    let response = read_head_only(&mut conn, head_request, rewrite)
        .await
        .map_err(lost)?;
    Ok((conn, response))
}

/// Reads a response head into `conn.buf`.
async fn read_head_only(
    conn: &mut BackendConn,
    head_request: bool,
    rewrite: &mut Rewrite<'_>,
) -> Result<ResponseHead, Failure> {
    loop {
        if let Some(head) = parse_response(&conn.buf, head_request, rewrite)? {
            return Ok(head);
        }
        if conn.buf.len() > MAX_RESPONSE_HEAD {
            return Err(Failure::Invalid("its head is over 64 KiB".into()));
        }
        match conn.stream.read_buf(&mut conn.buf).await {
            Ok(0) => return Err(Failure::Closed),
            Ok(_) => {}
            Err(e) => return Err(Failure::Io(e)),
        }
    }
}

/// How the client's response head is made from the backend's.
struct Rewrite<'a> {
    /// Where the client's head is written.
    out: &'a mut Vec<u8>,
    /// The route's response headers (an empty value removes one).
    set: &'a BTreeMap<String, String>,
    request_id: &'a str,
    /// The client's connection ends after this response whatever the backend says.
    close: bool,
}

/// The response head at the start of `buf`, if it is all there; its rewrite for the
/// client goes to `rewrite.out`.
fn parse_response(
    buf: &[u8],
    head_request: bool,
    rewrite: &mut Rewrite<'_>,
) -> Result<Option<ResponseHead>, Failure> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(Failure::Invalid(e.to_string())),
    };
    let status = resp.code.unwrap_or(0);
    if status == 101 {
        return Err(Failure::Invalid(
            "101 to a request that asked no upgrade".into(),
        ));
    }
    let interim = (100..200).contains(&status);
    let mut length: Option<u64> = None;
    let mut chunked = None;
    let mut backend_keeps = resp.version == Some(1);
    let mut names_hop_by_hop = false;
    for h in resp.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let n = parse_length(h.value)
                .ok_or_else(|| Failure::Invalid("a bad Content-Length".into()))?;
            if length.is_some_and(|l| l != n) {
                return Err(Failure::Invalid("two different Content-Lengths".into()));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Only the last coding says how the message ends (RFC 9112 6.3).
            let last = h.value.rsplit(|&b| b == b',').next().unwrap_or_default();
            chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    backend_keeps = false;
                } else if !token.eq_ignore_ascii_case(b"keep-alive") {
                    names_hop_by_hop = true;
                }
            }
        }
    }
    let framing = if interim || head_request || status == 204 || status == 304 {
        Framing::None
    } else {
        match (chunked, length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) | (None, None) => Framing::Close,
            (None, Some(n)) => Framing::Length(n),
        }
    };
    if framing == Framing::Close || (chunked.is_some() && length.is_some()) {
        backend_keeps = false;
    }
    let client_keeps = !rewrite.close && framing != Framing::Close;

    // The client's head.
    let out = &mut *rewrite.out;
    out.clear();
    let _ = write!(
        Buffer(out),
        "HTTP/1.1 {status} {}\r\n",
        resp.reason.unwrap_or_default()
    );
    // Headers the backend's `Connection` names are hop-by-hop too.
    let named: Vec<&[u8]> = if names_hop_by_hop {
        resp.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("connection"))
            .flat_map(|h| h.value.split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .collect()
    } else {
        Vec::new()
    };
    for h in resp.headers.iter() {
        let name = h.name;
        let is = |n: &str| name.eq_ignore_ascii_case(n);
        let hop_by_hop = match name.len() {
            2 => is("te"),
            7 => is("trailer") || is("upgrade"),
            10 => is("connection") || is("keep-alive"),
            12 => is("x-request-id"),
            // The coding wins over a length (RFC 9112 6.3): the length is not passed on.
            14 => is("content-length") && chunked.is_some(),
            16 => is("proxy-connection"),
            17 => is("transfer-encoding"),
            18 => is("proxy-authenticate"),
            19 => is("proxy-authorization"),
            _ => false,
        };
        if hop_by_hop
            || named
                .iter()
                .any(|n| n.eq_ignore_ascii_case(name.as_bytes()))
            || rewrite.set.keys().any(|k| k.eq_ignore_ascii_case(name))
        {
            continue;
        }
        header_line(out, name, h.value);
    }
    if framing == Framing::Chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    for (name, value) in rewrite.set {
        if !value.is_empty() {
            header_line(out, name, value.as_bytes());
        }
    }
    header_line(out, "x-request-id", rewrite.request_id.as_bytes());
    if !client_keeps && !interim {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(Some(ResponseHead {
        len,
        status,
        framing,
        backend_keeps,
        client_keeps,
        interim,
    }))
}

/// `fmt::Write` into a byte buffer.
struct Buffer<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Buffer<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

struct BodyOutcome {
    /// The body ended where its framing says, and reached the client.
    complete: bool,
    bytes: u64,
}

/// Counts a response body through its framing as it is relayed.
struct BodyCursor {
    framing: Framing,
    /// Bytes left of a `Length` body.
    remaining: u64,
    scan: ChunkScan,
    bytes: u64,
}

impl BodyCursor {
    fn new(framing: Framing) -> BodyCursor {
        BodyCursor {
            framing,
            remaining: match framing {
                Framing::Length(n) => n,
                _ => 0,
            },
            scan: ChunkScan::default(),
            bytes: 0,
        }
    }

    /// Moves what of the body `buf` holds to `out`; whether the body is over.
    fn take(&mut self, buf: &mut BytesMut, out: &mut Vec<u8>) -> Result<bool, BadChunk> {
        let n = match self.framing {
            Framing::None => return Ok(true),
            Framing::Length(_) => (buf.len() as u64).min(self.remaining) as usize,
            Framing::Chunked => self.scan.feed(buf)?.unwrap_or(buf.len()),
            Framing::Close => buf.len(),
        };
        out.extend_from_slice(&buf[..n]);
        buf.advance(n);
        self.bytes += n as u64;
        Ok(match self.framing {
            Framing::Length(_) => {
                self.remaining -= n as u64;
                self.remaining == 0
            }
            Framing::Chunked => self.scan.done(),
            _ => false,
        })
    }
}

/// Sends `head` and then the body as the backend sends it. The first write carries the
/// head and what of the body is already read, so a small response is one write.
async fn relay_body(
    client: &mut TcpStream,
    backend: &mut BackendConn,
    head: &mut Vec<u8>,
    framing: Framing,
    guard: &InFlight,
) -> BodyOutcome {
    let mut cursor = BodyCursor::new(framing);
    let first = cursor.take(&mut backend.buf, head);
    let sent = client.write_all(head).await.is_ok();
    let outcome = |complete: bool, cursor: &BodyCursor| BodyOutcome {
        // A close-delimited body is complete, but its connection is not reusable.
        complete: complete && framing != Framing::Close,
        bytes: cursor.bytes,
    };
    match first {
        Ok(true) if sent => return outcome(true, &cursor),
        Ok(false) if sent => {}
        _ => return outcome(false, &cursor),
    }
    let cut = guard.cut();
    let copy = async {
        let mut chunk = Vec::with_capacity(READ_SIZE);
        loop {
            match backend.stream.read_buf(&mut backend.buf).await {
                Ok(0) => return framing == Framing::Close,
                Ok(_) => {}
                Err(_) => return false,
            }
            chunk.clear();
            let Ok(done) = cursor.take(&mut backend.buf, &mut chunk) else {
                return false;
            };
            if client.write_all(&chunk).await.is_err() {
                return false;
            }
            if done {
                return true;
            }
        }
    };
    let complete = tokio::select! {
        c = copy => c,
        () = cut.cancelled() => {
            tracing::info!(backend = %guard.backend().address, "response cut at the drain timeout");
            false
        }
    };
    outcome(complete, &cursor)
}

/// Finds where a chunked body ends (RFC 9112 7.1), fed the bytes as they come: chunks,
/// extensions and trailers are passed on as they are, only their end is looked for.
#[derive(Debug, Default)]
struct ChunkScan {
    state: ChunkState,
    size: u64,
    digits: u8,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

#[derive(Debug)]
struct BadChunk;

impl ChunkScan {
    fn done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Scans `buf`; the offset just past the body's end once it is in `buf`.
    fn feed(&mut self, buf: &[u8]) -> Result<Option<usize>, BadChunk> {
        use ChunkState::*;
        let mut i = 0;
        while i < buf.len() {
            let b = buf[i];
            match self.state {
                Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' if self.digits < 16 => {
                        let d = (b as char).to_digit(16).ok_or(BadChunk)?;
                        self.size = self.size * 16 + u64::from(d);
                        self.digits += 1;
                    }
                    b';' | b' ' | b'\t' if self.digits > 0 => self.state = Extension,
                    b'\r' if self.digits > 0 => self.state = SizeLf,
                    _ => return Err(BadChunk),
                },
                Extension => match b {
                    b'\r' => self.state = SizeLf,
                    b'\n' => return Err(BadChunk),
                    _ => {}
                },
                SizeLf => {
                    if b != b'\n' {
                        return Err(BadChunk);
                    }
                    self.state = if self.size == 0 { TrailerStart } else { Data };
                }
                Data => {
                    let n = (self.size).min((buf.len() - i) as u64) as usize;
                    self.size -= n as u64;
                    i += n;
                    if self.size == 0 {
                        self.state = DataCr;
                    }
                    continue;
                }
                DataCr => {
                    if b != b'\r' {
                        return Err(BadChunk);
                    }
                    self.state = DataLf;
                }
                DataLf => {
                    if b != b'\n' {
                        return Err(BadChunk);
                    }
                    self.state = Size;
                    self.digits = 0;
                }
                TrailerStart => self.state = if b == b'\r' { EndLf } else { Trailer },
                Trailer => {
                    if b == b'\r' {
                        self.state = TrailerLf;
                    }
                }
                TrailerLf => {
                    if b != b'\n' {
                        return Err(BadChunk);
                    }
                    self.state = TrailerStart;
                }
                EndLf => {
                    if b != b'\n' {
                        return Err(BadChunk);
                    }
                    self.state = Done;
                    return Ok(Some(i + 1));
                }
                Done => return Ok(Some(i)),
            }
            i += 1;
        }
        Ok(None)
    }
}

/// A response Slipway gives itself on the fast path; whether it was written.
async fn write_local(
    client: &mut TcpStream,
    status: u16,
    text: &str,
    request_id: &str,
    close: bool,
) -> bool {
    let reason = match status {
        502 => "Bad Gateway",
        _ => "Error",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nx-request-id: {request_id}\r\n",
        text.len()
    );
    if close {
        out.push_str("connection: close\r\n");
    }
    out.push_str("\r\n");
    out.push_str(text);
    client.write_all(out.as_bytes()).await.is_ok()
}

thread_local! {
    /// Idle backend connections of this thread, by backend. Per thread, as the edge runs
    /// one single-threaded runtime per core: a connection stays on the runtime whose
    /// reactor it is registered with.
    static POOL: RefCell<Pool> = RefCell::new(Pool::default());
}

/// A few backends per thread: a list is quicker to search than a map.
#[derive(Default)]
struct Pool {
    idle: Vec<(Arc<LiveBackend>, Vec<BackendConn>)>,
    swept: Option<Instant>,
}

/// An idle connection to `backend` that still looks open.
fn take_pooled(backend: &Arc<LiveBackend>, now: Instant) -> Option<BackendConn> {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let (_, conns) = pool
            .idle
            .iter_mut()
            .find(|(b, _)| Arc::ptr_eq(b, backend))?;
        while let Some(conn) = conns.pop() {
            if now.saturating_duration_since(conn.idle_since) < POOL_IDLE
                && still_open(&conn.stream)
            {
                return Some(conn);
            }
        }
        None
    })
}

fn give_back(backend: &Arc<LiveBackend>, mut conn: BackendConn, now: Instant) {
    conn.idle_since = now;
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        // Now and then, drop what idled too long or was closed, and gone backends' all.
        if pool
            .swept
            .is_none_or(|t| now.duration_since(t) > Duration::from_secs(5))
        {
            pool.swept = Some(now);
            pool.idle.retain_mut(|(b, conns)| {
                conns.retain(|c| {
                    now.duration_since(c.idle_since) < POOL_IDLE && still_open(&c.stream)
                });
                b.is_live() && !conns.is_empty()
            });
        }
        let conns = match pool.idle.iter().position(|(b, _)| Arc::ptr_eq(b, backend)) {
            Some(i) => &mut pool.idle[i].1,
            None => {
                pool.idle.push((backend.clone(), Vec::new()));
                let last = pool.idle.len() - 1;
                &mut pool.idle[last].1
            }
        };
        if conns.len() < POOL_PER_BACKEND {
            conns.push(conn);
        }
    });
}

/// An idle connection is open while nothing can be read from it (no EOF, no stray bytes).
fn still_open(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(stream.try_read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

/// Hands the connection to hyper, replaying what was read from it.
async fn to_hyper(
    proxy: Arc<Proxy>,
    client: TcpStream,
    read: BytesMut,
    info: Arc<ConnInfo>,
    closing: CancellationToken,
) {
    let io = Replay {
        read: read.freeze(),
        io: client,
    };
    crate::serve::serve_io_shared(proxy, io, info, closing).await;
}

/// A connection whose first bytes were already read: they are read again first.
struct Replay {
    read: bytes::Bytes,
    io: TcpStream,
}

impl AsyncRead for Replay {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.read.is_empty() {
            let n = self.read.len().min(buf.remaining());
            buf.put_slice(&self.read[..n]);
            self.read.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Replay {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(parts: &[&[u8]]) -> Result<Option<usize>, BadChunk> {
        let mut s = ChunkScan::default();
        let mut offset = 0;
        for p in parts {
            if let Some(end) = s.feed(p)? {
                return Ok(Some(offset + end));
            }
            offset += p.len();
        }
        Ok(None)
    }

    #[test]
    fn a_chunked_body_ends_after_its_last_chunk_and_trailers() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\nNEXT";
        assert_eq!(scan_all(&[body]).ok().flatten(), Some(body.len() - 4));
        let trailers = b"3\r\nabc\r\n0\r\nx-sum: 1\r\ny: 2\r\n\r\n";
        assert_eq!(scan_all(&[trailers]).ok().flatten(), Some(trailers.len()));
        // The same, one byte at a time: the end is found across reads.
        let bytes: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(scan_all(&bytes).ok().flatten(), Some(body.len() - 4));
        assert_eq!(scan_all(&[b"5\r\nhel"]).ok().flatten(), None);
    }

    #[test]
    fn a_broken_chunked_body_is_refused() {
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"5\r\nhelloXX",
            b"5\nhello",
            b"11111111111111111\r\n",
            b"3;ext\nabc",
        ] {
            assert!(
                scan_all(&[bad]).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn a_head_ends_at_its_blank_line() {
        assert!(head_ended(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(head_ended(b"GET / HTTP/1.1\nHost: a\n\n"));
        assert!(head_ended(b"GET / HTTP/1.1\r\n\r\nGET /next"));
        assert!(!head_ended(b"GET / HTTP/1.1\r\nHost: a\r\n"));
        assert!(!head_ended(b"GET / HTTP/1.1\r\nHost: a\r\n\r"));
        assert!(!head_ended(b""));
    }

    #[test]
    fn content_length_is_digits_only() {
        assert_eq!(parse_length(b"42"), Some(42));
        assert_eq!(parse_length(b" 7 "), Some(7));
        for bad in [
            &b""[..],
            b"-1",
            b"+1",
            b"1,1",
            b"1 2",
            b"0x10",
            b"99999999999999999999",
        ] {
            assert_eq!(
                parse_length(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    /// Parses `head` as a backend's response head: (framing, backend keeps, client head).
    fn response(
        head: &str,
        head_request: bool,
        set: &[(&str, &str)],
    ) -> Result<Option<(Framing, bool, String)>, Failure> {
        let set: BTreeMap<String, String> = set
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut out = Vec::new();
        let mut rewrite = Rewrite {
            out: &mut out,
            set: &set,
            request_id: "id1",
            close: false,
        };
        let parsed = parse_response(head.as_bytes(), head_request, &mut rewrite)?;
        Ok(parsed.map(|h| {
            (
                h.framing,
                h.backend_keeps,
                String::from_utf8_lossy(&out).into_owned(),
            )
        }))
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let framing = |head: &str, head_request: bool| {
            response(head, head_request, &[])
                .ok()
                .flatten()
                .map(|(f, keeps, _)| (f, keeps))
        };
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", false),
            Some((Framing::Length(5), true))
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", true),
            Some((Framing::None, true))
        );
        assert_eq!(
            framing(
                "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
                false
            ),
            Some((Framing::Chunked, true))
        );
        // A length beside a coding: the coding wins and the connection is not reused.
        assert_eq!(
            framing(
                "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n",
                false
            ),
            Some((Framing::Chunked, false))
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\n\r\n", false),
            Some((Framing::Close, false))
        );
        assert_eq!(
            framing(
                "HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n",
                false
            ),
            Some((Framing::None, true))
        );
        assert_eq!(
            framing("HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n", false),
            Some((Framing::Length(1), false))
        );
        assert_eq!(
            framing(
                "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\n",
                false
            ),
            Some((Framing::Length(1), false))
        );
        for bad in [
            "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            "HTTP/1.1 101 Switching\r\n\r\n",
        ] {
            assert!(response(bad, false, &[]).is_err(), "{bad:?}");
        }
        assert!(matches!(
            response("HTTP/1.1 200 OK\r\ncont", false, &[]),
            Ok(None)
        ));
    }

    #[test]
    fn the_clients_head_drops_hop_by_hop_headers_and_sets_the_routes() {
        let (_, _, head) = response(
            "HTTP/1.1 200 Fine\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\n\
             Keep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\
             X-Request-Id: theirs\r\nServer: b\r\nX-Frame-Options: SAMEORIGIN\r\nSet-Cookie: a=1\r\n\r\n",
            false,
            &[("x-frame-options", "DENY"), ("server", "")],
        )
        .ok()
        .flatten()
        .expect("a complete head");
        assert_eq!(
            head,
            "HTTP/1.1 200 Fine\r\nSet-Cookie: a=1\r\ntransfer-encoding: chunked\r\n\
             x-frame-options: DENY\r\nx-request-id: id1\r\n\r\n"
        );
    }
}
