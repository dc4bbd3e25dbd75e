//! [`LogSource`]: what a route reads, so routes do not depend on how the store keeps
//! records. The store implements it; route tests implement it in memory.
//!
//! Positions are per service: a record's position is where it starts in its service's
//! log (a logical byte offset that only grows), so a route's cursor for a service is one
//! number, and `(service, position)` names a record for good (Elasticsearch document ids
//! are made from it).

use std::io;

use crate::record::{ContainerMeta, Record, ServiceKey};

/// A record and where it starts in its service's log.
#[derive(Debug, Clone, PartialEq)]
pub struct Positioned {
    pub position: u64,
    pub record: Record,
}

/// What one [`LogSource::read`] gave.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    /// In the order they were stored (in order per container).
    pub records: Vec<Positioned>,
    /// The position to read from next: after the last record given.
    pub next: u64,
    /// Bytes passed over because retention had removed them before they were read.
    pub skipped: u64,
}

/// The committed records of every service, for routes and followers.
pub trait LogSource: Send + Sync + 'static {
    /// Every service that has records (or had: its log may be empty after retention).
    fn services(&self) -> Vec<ServiceKey>;
    /// Committed records of `key` at or after `from`, at most `max` of them. Never a
    /// record that is not yet committed (durable, with its checkpoint written). When
    /// `from` is before the first kept position, reading starts there and
    /// [`Batch::skipped`] says how much was lost to retention.
    fn read(&self, key: &ServiceKey, from: u64, max: usize) -> io::Result<Batch>;
    /// The position after the last committed record of `key` (0 for an unknown service).
    fn end(&self, key: &ServiceKey) -> u64;
    /// What is known of a container that wrote records of `key`, by full or 12-digit id.
    fn container(&self, key: &ServiceKey, id: &str) -> Option<ContainerMeta>;
    /// A receiver whose value changes after every commit in any service: routes and live
    /// tails wait on it instead of polling.
    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64>;
}
