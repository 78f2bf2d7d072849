//! Earliest deadline first, over the deadline a request gives.
//!
//! A client sets `deadline_ms` in a completion or chat request (milliseconds after arrival by
//! which it wants the answer); a workload line sets the same field for `waypoint simulate`.
//! The waiting request with the earliest deadline is admitted first. Requests without one come
//! after every request with one, first come first served among themselves. When KV blocks run
//! out, the running request whose deadline is furthest away gives its blocks back.

#![no_std]

use waypoint_policy::{ByKey, KeyOrder, RequestView};

/// Requests by deadline, then arrival.
#[derive(Default)]
pub struct EarliestDeadlineFirst;

impl KeyOrder for EarliestDeadlineFirst {
    /// `(deadline, arrival)`: no deadline sorts last.
    type Key = (u64, u64);

    fn name(&self) -> &'static str {
        "edf"
    }

    fn version(&self) -> &'static str {
        env!("CARGO_PKG_VERSION")
    }

    fn key(&self, request: &RequestView<'_>) -> (u64, u64) {
        (
            request.deadline_ns().unwrap_or(u64::MAX),
            request.arrival_ns(),
        )
    }
}

waypoint_policy::export!(ByKey<EarliestDeadlineFirst>);
