//! Timestamps as the records keep them (protobuf `Timestamp`), and as the keys order
//! them (microseconds since the epoch).

use std::time::SystemTime;

use prost_types::Timestamp;

pub fn now() -> Timestamp {
    Timestamp::from(SystemTime::now())
}

/// A timestamp in microseconds since the epoch (0 when unset), for keys that sort by time.
pub fn micros(ts: &Option<Timestamp>) -> i64 {
    ts.as_ref().map_or(0, |t| t.seconds * 1_000_000 + i64::from(t.nanos) / 1_000)
}
