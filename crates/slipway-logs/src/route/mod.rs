//! Routes: forwarding service logs to other systems, one worker per route URI.
//!
//! A route is a logspout-style URI (`--log-route`, `ROUTE_URIS`):
//! `SCHEME://[USER[:PASS]@]HOST[:PORT][/PATH][?OPTIONS]`, parsed by [`RouteUri::parse`]
//! (a comma-separated list by [`parse_route_uris`]). Schemes: `syslog`/`syslog+udp`,
//! `syslog+tcp`, `syslog+tls` (RFC 5424; octet counting by default, `framing=newline`),
//! `relp` (`window=`), `raw`/`raw+tcp` (`template=`, minijinja), `gelf`/`gelf+udp`,
//! `gelf+tcp`, `elasticsearch[+http|+https]` (the path is the index, default `slipway`),
//! `loki[+http|+https]`; `tls.ca=PATH` for the TLS ones. Options `filter.name` (glob on the
//! container's name), `filter.id` (prefix of its id), `filter.labels` (`key:glob,…`) and
//! `filter.sources` (`stdout,stderr`) pick records ([`Filter`]).
//!
//! Main types:
//! - [`RouteUri`], [`Filter`], [`UriError`] (names the URI, password masked, and the bad
//!   part; an unknown scheme lists the supported ones).
//! - [`format`]: the wire forms: [`format::rfc5424`] (SD-ID [`format::SD_ID`]),
//!   [`format::gelf`] and its UDP chunks, the raw template's context.
//! - [`Sink`]: one receiver; [`Sink::send`] takes a batch of [`Outgoing`] records and
//!   says how far it got ([`Sent`]: a done prefix, the records refused for good among it,
//!   and a retryable [`SinkError`] for the rest).
//! - [`spawn_route`]: a worker over a [`LogSource`](crate::LogSource); its
//!   [`RouteHandle`] gives [`RouteStatus`] snapshots.
//!
//! Invariants:
//! - **The cursor moves only over what is done.** Per route and service, one position:
//!   the first record not yet delivered (or refused for good). It is written atomically
//!   (temporary file, fsync, rename) right after each batch the receiver took, and for
//!   RELP also (rename without the fsync: safe from a kill of the process) after each
//!   group of acknowledgements read together. A SIGKILL between the receiver's
//!   acknowledgement and that rename, or with frames in flight, sends them again:
//!   duplicates, never loss.
//! - **How sure "delivered" is depends on the protocol.** RELP: acknowledged (`rsp 200`)
//!   per frame, so nothing is lost when the receiver dies; unacknowledged frames are sent
//!   again in a new session. Elasticsearch: per-item statuses of `_bulk` (2xx done, 429 and
//!   5xx retried, other 4xx refused for good), and `_id` = container + position so a resend
//!   overwrites. Loki: 204; a 400 for out-of-order or duplicate entries (what a resend is)
//!   counts as delivered, other reasons are refused for good. Syslog, raw and GELF over TCP:
//!   written to the socket, at least once while the receiver stays up; what was in flight
//!   when it died is lost. UDP: sent, nothing more (a syslog message is cut at 65,507
//!   bytes, a GELF message at 128 chunks of 8192 bytes).
//! - **A down receiver stalls only its route**: each route has its own worker, which
//!   retries with exponential backoff (250 ms doubling to 30 s).
//! - **Records a filter leaves out still move the cursor.**
//! - **Passwords never print**: `Display`/`Debug` of a [`RouteUri`], its errors and
//!   [`RouteStatus::uri`] show `user:******@`.

pub mod format;
mod http;
mod relp;
mod sink;
mod uri;
mod worker;

pub use format::Outgoing;
pub use http::{Elasticsearch, Loki, es_doc, es_id, go_time, loki_labels};
pub use relp::Relp;
pub use sink::{Sent, Sink, SinkError, StreamSink, UdpSink};
pub use uri::{
    DEFAULT_RELP_WINDOW, Filter, Framing, RouteUri, SUPPORTED_SCHEMES, Scheme, UriError, glob,
    parse_route_uris,
};
pub use worker::{
    BATCH, MAX_BACKOFF, RouteHandle, RouteStatus, ServiceLag, SpawnError, spawn_route,
};
