//! What the server tells the outside world: journey and step spans over OTLP, Prometheus
//! metrics, and vLLM's KV events over ZMQ.

pub mod kv_events;
pub mod metrics;
pub mod traces;

use std::time::{Duration, Instant, SystemTime};

/// The server's one clock: monotonic nanoseconds since start-up (the time the scheduler sees),
/// and their wall-clock equivalent for exported spans.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    start: Instant,
    wall_start: SystemTime,
}

impl Clock {
    /// A clock starting now.
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            wall_start: SystemTime::now(),
        }
    }

    /// Nanoseconds since start-up.
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The wall-clock time of a monotonic reading.
    pub fn wall(&self, monotonic_ns: u64) -> SystemTime {
        self.wall_start + Duration::from_nanos(monotonic_ns)
    }

    /// Time since the Unix epoch of a monotonic reading.
    pub fn since_epoch(&self, monotonic_ns: u64) -> Duration {
        self.wall(monotonic_ns)
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}
