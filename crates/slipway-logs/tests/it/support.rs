//! Helpers shared by the test modules.

use slipway_logs::{Record, Stream};

/// A stdout record of container `c` at `time_ns`.
pub fn record(time_ns: i64, c: &str, line: &str) -> Record {
    Record {
        time_ns,
        stream: Stream::Stdout,
        container: c.to_owned(),
        replica: None,
        revision: None,
        line: line.to_owned(),
        fields: None,
    }
}
