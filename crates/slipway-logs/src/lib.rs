//! Service logs: every line that the containers Slipway deployed (and the containers that
//! opt in) write to stdout and stderr, collected with checkpoints so that none is lost or
//! taken twice across restarts, kept in a local searchable store, and forwarded to routes.
//!
//! (The architecture guide grows with the modules; see `record` for the data model.)

pub mod collect;
pub mod record;
pub mod source;
pub mod store;

pub use collect::{Collector, CollectorStatus, Selection, StatusHandle};
pub use record::{ContainerMeta, Record, ServiceKey, Stream};
pub use source::{Batch, LogSource, Positioned};
pub use store::{
    Append, Checkpoint, Follow, Query, Retention, RetentionPolicy, Store, StoreOptions,
};
