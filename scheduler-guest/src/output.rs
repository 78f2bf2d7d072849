//! The records the scheduler exchanges with its caller: what one step computes, what the model
//! sampled, and what each call reports back.

use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use crate::journey::JourneyEvent;
use crate::kv::PrefixCacheStats;
use crate::request::{FinishStatus, RequestId};
use crate::step_trace::StepEvent;

/// A request named by both its id and its handle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRef {
    /// The request id.
    pub id: RequestId,
    /// The scheduler-assigned handle.
    pub handle: u64,
    /// The request's client index.
    pub client_index: u32,
}

/// How a scheduled request relates to the previous step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduledKind {
    /// Admitted for the first time: `block_ids` is the whole block table, `token_ids` the prompt.
    New,
    /// Admitted again after preemption: `block_ids` is the whole block table, `token_ids` every
    /// token so far (prompt and output), since its KV is recomputed.
    Resumed,
    /// Already running: `block_ids` holds only blocks added this step, `token_ids` is empty (the
    /// caller knows the tokens it sampled).
    Running,
}

/// One request's work in a step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduledRequest {
    /// The request.
    pub request_id: RequestId,
    /// Its handle.
    pub handle: u64,
    /// New, resumed or running.
    pub kind: ScheduledKind,
    /// Tokens with KV already in the cache before this step (prefix hit for new requests).
    pub num_computed_tokens: u32,
    /// Tokens to compute this step, from position `num_computed_tokens` on.
    pub num_scheduled_tokens: u32,
    /// Block ids (all for new and resumed requests, only the added ones for running requests).
    pub block_ids: Vec<u32>,
    /// Token ids the caller may not know yet (see [`ScheduledKind`]).
    pub token_ids: Vec<u32>,
    /// Whether the step completes the request's known tokens, so one token is sampled for it.
    pub sample: bool,
}

/// What `schedule` decided for one step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[must_use = "the step's work and events are only here"]
pub struct SchedulerOutput {
    /// This step's number (the counter after its increment; the first step is 1).
    pub step: u64,
    /// Scheduled requests: running ones first, then admissions, in scheduling order.
    pub scheduled: Vec<ScheduledRequest>,
    /// Sum of `num_scheduled_tokens`.
    pub total_num_scheduled_tokens: u32,
    /// Requests preempted since the previous step's output (their blocks are gone).
    pub preempted: Vec<RequestRef>,
    /// Requests finished or aborted since the previous step's output.
    pub finished: Vec<RequestRef>,
    /// Journey events of this call, in emission order.
    pub journey_events: Vec<JourneyEvent>,
    /// Step-tracing records of this call, in emission order.
    pub step_events: Vec<StepEvent>,
}

/// What the model produced for the step in flight: one entry per [`ScheduledRequest`], in the
/// same order; `Some(token)` exactly where a token was sampled.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelOutput {
    /// The sampled token of each scheduled request.
    pub sampled_token_ids: Vec<Option<u32>>,
}

/// One request's new token, and its finish if the token ended it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestOutput {
    /// The request.
    pub request_id: RequestId,
    /// Its handle.
    pub handle: u64,
    /// Its client index.
    pub client_index: u32,
    /// The token appended.
    pub token_id: u32,
    /// Set when the request finished with this token.
    pub finish_status: Option<FinishStatus>,
    /// The stop token id that finished it, if one did.
    pub stop_reason: Option<u32>,
}

/// What `update_from_output` reports.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[must_use = "new tokens, finishes and events are only here"]
pub struct EngineOutputs {
    /// The step these outputs belong to.
    pub step: u64,
    /// Requests that gained a token, in scheduling order.
    pub outputs: Vec<RequestOutput>,
    /// Journey events of this call, in emission order.
    pub journey_events: Vec<JourneyEvent>,
}

/// What `finish_requests` reports.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[must_use = "journey events are only here"]
pub struct FinishOutcome {
    /// Requests actually finished (unknown and repeated ids are skipped).
    pub finished_ids: Vec<RequestId>,
    /// Journey events of this call.
    pub journey_events: Vec<JourneyEvent>,
}

/// What `reset_prefix_cache` reports.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[must_use = "journey events are only here"]
pub struct ResetOutcome {
    /// Whether the prefix cache was cleared.
    pub reset: bool,
    /// Running requests preempted to make the reset possible.
    pub preempted_ids: Vec<RequestId>,
    /// Journey events of this call.
    pub journey_events: Vec<JourneyEvent>,
}

/// A snapshot of the scheduler's load and cache.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SchedulerStats {
    /// The step counter.
    pub step: u64,
    /// Requests in the running list.
    pub num_running: u32,
    /// Requests in the waiting queue (preempted ones included).
    pub num_waiting: u32,
    /// Fraction of usable KV blocks held by live requests.
    pub kv_cache_usage: f64,
    /// Free KV blocks (evictable cached ones included).
    pub num_free_blocks: u32,
    /// Usable KV blocks (`num_blocks - 1`).
    pub num_usable_blocks: u32,
    /// Cumulative prefix-cache counters.
    pub prefix_cache: PrefixCacheStats,
    /// Preemptions since start.
    pub num_preemptions_total: u64,
}
