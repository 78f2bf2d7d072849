//! The per-step records as a policy component sends them: parallel lists that name requests by
//! the handle the scheduler gave them. Every transport (wasmtime in the host, jco in the
//! browser) converts its binding's types to these; [`crate::component`] checks and rebuilds
//! them.

use waypoint_scheduler::step_trace::StepEvent;
use waypoint_scheduler::{FinishStatus, JourneyEvent, ModelOutput, RequestId, ScheduledKind};

/// `add-request`'s result: the handle later records name the request by, and its QUEUED event.
#[derive(Clone, Debug)]
pub struct Added {
    /// The handle.
    pub handle: u64,
    /// The QUEUED event, if the request is sampled.
    pub journey_events: Vec<JourneyEvent>,
}

/// A request a component holds, as `live-requests` reports it after an import.
#[derive(Clone, Debug)]
pub struct LiveRequest {
    /// Its handle.
    pub handle: u64,
    /// Its id.
    pub id: RequestId,
    /// Its client.
    pub client_index: u32,
    /// Prompt and generated tokens.
    pub num_tokens: u32,
    /// KV blocks it holds.
    pub num_blocks: u32,
    /// Finished since the last `schedule` (the next one reports it).
    pub finished: bool,
}

/// The full record of a scheduled entry that is new, resumed or got new blocks.
#[derive(Clone, Debug)]
pub struct Detail {
    /// Its position in the batch.
    pub index: u32,
    /// How it was scheduled.
    pub kind: ScheduledKind,
    /// Blocks added (all of them for new and resumed entries).
    pub block_ids: Vec<u32>,
    /// Prompt tokens of a new entry.
    pub token_ids: Vec<u32>,
}

/// A scheduled batch as parallel lists.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    /// Request handles.
    pub handles: Vec<u64>,
    /// Tokens computed before this step.
    pub num_computed_tokens: Vec<u32>,
    /// Tokens scheduled in this step.
    pub num_scheduled_tokens: Vec<u32>,
    /// Whether a token is sampled.
    pub sample: Vec<bool>,
    /// Sparse full records.
    pub details: Vec<Detail>,
}

/// `schedule`'s result as sent.
#[derive(Clone, Debug, Default)]
pub struct WireSchedulerOutput {
    /// The step.
    pub step: u64,
    /// The batch.
    pub batch: Batch,
    /// Tokens scheduled in total.
    pub total_num_scheduled_tokens: u32,
    /// Handles of preempted requests.
    pub preempted: Vec<u64>,
    /// Handles of requests finished since the last step.
    pub finished: Vec<u64>,
    /// Journey events.
    pub journey_events: Vec<JourneyEvent>,
    /// Step-tracing records.
    pub step_events: Vec<StepEvent>,
}

/// A finish among the step's outputs.
#[derive(Clone, Copy, Debug)]
pub struct Finish {
    /// Position among the outputs.
    pub index: u32,
    /// Why it finished.
    pub status: FinishStatus,
    /// The stop token, if one stopped it.
    pub stop_reason: Option<u32>,
}

/// `update_from_output`'s result as sent.
#[derive(Clone, Debug, Default)]
pub struct WireEngineOutputs {
    /// The step.
    pub step: u64,
    /// Handles of requests that got a token.
    pub handles: Vec<u64>,
    /// Their tokens.
    pub token_ids: Vec<u32>,
    /// Which of them finished.
    pub finishes: Vec<Finish>,
    /// Journey events.
    pub journey_events: Vec<JourneyEvent>,
}

/// A model output as sent: a token per scheduled entry (0 where none) and the entries that
/// have none.
pub fn model_output(output: &ModelOutput) -> (Vec<u32>, Vec<u32>) {
    let sampled = &output.sampled_token_ids;
    let token_ids = sampled.iter().map(|token| token.unwrap_or(0)).collect();
    let missing = (0..sampled.len() as u32)
        .filter(|&index| sampled[index as usize].is_none())
        .collect();
    (token_ids, missing)
}
