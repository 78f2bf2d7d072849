//! Shortest job first, with aging so that long jobs still finish.
//!
//! A request's job is its prompt plus its `max_tokens`: what it may cost before it leaves. The
//! shortest job waiting is admitted first, but every 20 ms a request has waited counts as one
//! token off its job. The order therefore never starves anyone: a request that arrived at `t`
//! with a job of `n` tokens is ahead of every request that arrives after `t + 20·n` ms.
//!
//! Aging by `waited / AGE` changes every job's score by the same amount at any instant, so the
//! order is that of the fixed key `job · AGE + arrival`, computed once per enqueue.

#![no_std]

extern crate alloc;

use alloc::vec::Vec;

use waypoint_policy::{Enqueue, Ordered, Policy, RequestView, Ticket};

/// Nanoseconds of waiting that count as one token less of job: 20 ms, so a 2,000-token job
/// yields to shorter ones for at most 40 s.
const AGE_NS_PER_TOKEN: u64 = 20_000_000;

/// The job's tokens: its prompt and the most it may generate.
fn job_tokens(request: &RequestView<'_>) -> u64 {
    u64::from(request.prompt_len()) + u64::from(request.max_tokens())
}

/// The aged job length, as a key that stays fixed while the request waits.
fn key(request: &RequestView<'_>) -> u64 {
    job_tokens(request)
        .saturating_mul(AGE_NS_PER_TOKEN)
        .saturating_add(request.arrival_ns())
}

/// The waiting requests by aged job length.
#[derive(Default)]
pub struct ShortestJobFirst {
    waiting: Ordered<u64>,
}

impl Policy for ShortestJobFirst {
    fn name(&self) -> &'static str {
        "sjf"
    }

    fn version(&self) -> &'static str {
        env!("CARGO_PKG_VERSION")
    }

    /// A preempted request keeps its key, so it resumes where its job length and age put it.
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

    /// The running request this policy would have admitted last: the largest aged job (the
    /// latest admitted of equals).
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

waypoint_policy::export!(ShortestJobFirst);
