//! Shortest job first, with aging so that long jobs still finish.
//!
//! A request's job is its prompt plus its `max_tokens`: what it may cost before it leaves. The
//! shortest job waiting is admitted first, but every 20 ms a request has waited counts as one
//! token off its job. The order therefore never starves anyone: a request that arrived at `t`
//! with a job of `n` tokens is ahead of every request that arrives after `t + 20·n` ms.
//!
//! Aging by `waited / AGE` changes every job's score by the same amount at any instant, so the
//! order is that of the fixed key `job · AGE + arrival`, computed once per enqueue. A preempted
//! request keeps its key, and the victim is the running request with the largest one.

#![no_std]

use waypoint_policy::{ByKey, KeyOrder, RequestView};

/// Nanoseconds of waiting that count as one token less of job: 20 ms, so a 2,000-token job
/// yields to shorter ones for at most 40 s.
const AGE_NS_PER_TOKEN: u64 = 20_000_000;

/// Jobs by aged length.
#[derive(Default)]
pub struct ShortestJobFirst;

impl KeyOrder for ShortestJobFirst {
    type Key = u64;

    fn name(&self) -> &'static str {
        "sjf"
    }

    fn version(&self) -> &'static str {
        env!("CARGO_PKG_VERSION")
    }

    /// The aged job length, as a key that stays fixed while the request waits.
    fn key(&self, request: &RequestView<'_>) -> u64 {
        let job_tokens = u64::from(request.prompt_len()) + u64::from(request.max_tokens());
        job_tokens
            .saturating_mul(AGE_NS_PER_TOKEN)
            .saturating_add(request.arrival_ns())
    }
}

waypoint_policy::export!(ByKey<ShortestJobFirst>);
