//! Earliest deadline first, over the deadline a request gives.
//!
//! A client sets `deadline_ms` in a completion or chat request (milliseconds after arrival by
//! which it wants the answer); a workload line sets the same field for `waypoint simulate`.
//! The waiting request with the earliest deadline is admitted first. Requests without one come
//! after every request with one, first come first served among themselves. When KV blocks run
//! out, the running request whose deadline is furthest away gives its blocks back.

#![no_std]

extern crate alloc;

use alloc::vec::Vec;

use waypoint_policy::{Enqueue, Ordered, Policy, RequestView, Ticket};

/// `(deadline, arrival)`: no deadline sorts last.
fn key(request: &RequestView<'_>) -> (u64, u64) {
    (
        request.deadline_ns().unwrap_or(u64::MAX),
        request.arrival_ns(),
    )
}

/// The waiting requests by deadline.
#[derive(Default)]
pub struct EarliestDeadlineFirst {
    waiting: Ordered<(u64, u64)>,
}

impl Policy for EarliestDeadlineFirst {
    fn name(&self) -> &'static str {
        "edf"
    }

    fn version(&self) -> &'static str {
        env!("CARGO_PKG_VERSION")
    }

    fn enqueue(&mut self, request: &RequestView<'_>, ticket: Ticket, _why: Enqueue) {
        self.waiting.insert(key(request), ticket);
    }

    fn next(&self) -> Option<Ticket> {
        self.waiting.first()
    }

    fn remove(&mut self, _request: &RequestView<'_>, ticket: Ticket) -> bool {
        self.waiting.remove(ticket)
    }

    fn len(&self) -> usize {
        self.waiting.len()
    }

    fn order(&self) -> Vec<Ticket> {
        self.waiting.iter().collect()
    }

    /// The latest deadline (no deadline is latest); the latest admitted of equals.
    fn preemption_victim(&self, running: &[RequestView<'_>]) -> usize {
        let mut victim = 0;
        for (position, request) in running.iter().enumerate() {
            if key(request) >= key(&running[victim]) {
                victim = position;
            }
        }
        victim
    }
}

waypoint_policy::export!(EarliestDeadlineFirst);
