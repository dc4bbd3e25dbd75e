//! Service logs: every line that the containers Slipway deployed (and the containers that
//! opt in) write to stdout and stderr, collected with checkpoints so that none is lost or
//! taken twice across restarts, kept in a local searchable store, and forwarded to routes.
//!
//! Modules:
//! - [`record`]: the data model: a [`Record`] (one line, or several joined) of a
//!   [`ServiceKey`] (the unit of storage, retention and search), what is known of the
//!   container that wrote it ([`ContainerMeta`]), [`strip_ansi`] for search.
//! - [`source`]: [`LogSource`], what routes and live tails read: committed records per
//!   service by position (a logical byte offset that only grows), the end, a watch bumped
//!   after each commit.
//! - [`store`]: the local store ([`Store`], shared as `Arc<Store>`): per service
//!   (`<dir>/<env>/<stack>/<service>/`, names escaped reversibly) append-only segment
//!   files named by base position, rolled at 64 MiB; one escaped line per record; a
//!   `checkpoint.json` written atomically after each append's `fdatasync` holding the
//!   committed end and the per-container [`Checkpoint`]s (so records and the collector's
//!   progress change together: exactly once across SIGKILL; what is past the committed
//!   end is truncated on open and read again); `containers.json` beside it. Search
//!   ([`Store::query`] with a [`Query`]: services, time range, regex on the text without
//!   ANSI, revision, replica, stream, tail) skips segments by their time range and merges
//!   services by time; [`Store::follow`] gives the tail then what is committed after.
//!   Retention ([`RetentionPolicy`], by default 7 days and 1 GiB per service, per
//!   environment through `--log-retention [ENV=]AGE[,SIZE]`) removes whole closed
//!   segments; reads then report [`Batch::skipped`].
//! - [`collect`]: the [`Collector`]: which containers ([`Selection`]: Slipway's labels,
//!   `slipway.logs=true`, extra name/label filters; never `slipway.logs=false` or
//!   `LOGSPOUT=ignore`), discovered by a list, Docker events and a periodic re-list; one
//!   task per container following `logs` with timestamps from its checkpoint, an
//!   [`collect::Assembler`] that skips what was stored, joins 16 KiB partials and
//!   multi-line records (`io.slipway.logs.multiline`) and parses JSON
//!   (`io.slipway.logs.json`), and one writer that group-commits (bounded channels,
//!   blocking IO on `spawn_blocking`). [`CollectorStatus`] says per container what was
//!   taken and what was lost (a container removed while the collector was down).
//! - [`route`]: forward routes (logspout's `ROUTE_URIS`): syslog over UDP, TCP and TLS,
//!   RELP, raw TCP, GELF, Elasticsearch `_bulk`, Loki push; one worker per route with its
//!   own cursor per service over a [`LogSource`], so a receiver that is down delays only
//!   its own route.
//!
//! Invariants: a record is readable only once durable with its checkpoint; a container's
//! records are stored in its output order; positions name records for good.

pub mod collect;
pub mod record;
pub mod route;
pub mod source;
pub mod store;

pub use collect::{Collector, CollectorStatus, Selection, StatusHandle};
pub use record::{ContainerMeta, Record, ServiceKey, Stream, strip_ansi};
pub use source::{Batch, LogSource, Positioned};
pub use store::{
    Append, Checkpoint, Follow, Query, Retention, RetentionPolicy, Store, StoreOptions,
};
