//! The per-step records as a policy component sends them — parallel lists that name requests by
//! the handle the scheduler gave them — and their rebuilding into the scheduler crate's
//! records. Every host of components (wasmtime here, jco in the browser) converts its binding's
//! types to these and shares the rebuilding and its contract checks.

use rustc_hash::FxHashMap;
use waypoint_scheduler::output::{
    EngineOutputs, RequestOutput, RequestRef, ScheduledRequest, SchedulerOutput,
};
use waypoint_scheduler::step_trace::StepEvent;
use waypoint_scheduler::{FinishStatus, JourneyEvent, ModelOutput, RequestId, ScheduledKind};

use crate::backend::GuestFault;

/// What a host knows of a live request in a component: its id and client.
#[derive(Clone, Debug)]
pub struct Live {
    /// The request id.
    pub id: RequestId,
    /// Its client.
    pub client_index: u32,
}

/// Live requests by handle (looked up for every scheduled request of every step).
pub type LiveRequests = FxHashMap<u64, Live>;

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

fn live(requests: &LiveRequests, handle: u64) -> Result<&Live, GuestFault> {
    requests.get(&handle).ok_or_else(|| {
        GuestFault::Contract(format!(
            "the guest named request handle {handle}, which it never returned"
        ))
    })
}

fn reference(requests: &LiveRequests, handle: u64) -> Result<RequestRef, GuestFault> {
    let live = live(requests, handle)?;
    Ok(RequestRef {
        id: live.id.clone(),
        handle,
        client_index: live.client_index,
    })
}

/// Rebuild the per-request records from the batch's parallel lists; the requests it reports
/// finished leave `requests`.
pub fn scheduler_output(
    output: WireSchedulerOutput,
    requests: &mut LiveRequests,
) -> Result<SchedulerOutput, GuestFault> {
    let batch = output.batch;
    let count = batch.handles.len();
    if [
        batch.num_computed_tokens.len(),
        batch.num_scheduled_tokens.len(),
        batch.sample.len(),
    ]
    .iter()
    .any(|&len| len != count)
    {
        return Err(GuestFault::Contract(
            "the batch's parallel lists differ in length".into(),
        ));
    }
    let mut scheduled = Vec::with_capacity(count);
    for index in 0..count {
        let handle = batch.handles[index];
        scheduled.push(ScheduledRequest {
            request_id: live(requests, handle)?.id.clone(),
            handle,
            kind: ScheduledKind::Running,
            num_computed_tokens: batch.num_computed_tokens[index],
            num_scheduled_tokens: batch.num_scheduled_tokens[index],
            block_ids: Vec::new(),
            token_ids: Vec::new(),
            sample: batch.sample[index],
        });
    }
    for detail in batch.details {
        let entry = scheduled.get_mut(detail.index as usize).ok_or_else(|| {
            GuestFault::Contract(format!(
                "batch detail for entry {} of {count}",
                detail.index
            ))
        })?;
        entry.kind = detail.kind;
        entry.block_ids = detail.block_ids;
        entry.token_ids = detail.token_ids;
    }
    let rebuilt = SchedulerOutput {
        step: output.step,
        scheduled,
        total_num_scheduled_tokens: output.total_num_scheduled_tokens,
        preempted: output
            .preempted
            .into_iter()
            .map(|handle| reference(requests, handle))
            .collect::<Result<_, _>>()?,
        finished: output
            .finished
            .into_iter()
            .map(|handle| reference(requests, handle))
            .collect::<Result<_, _>>()?,
        journey_events: output.journey_events,
        step_events: output.step_events,
    };
    for finished in &rebuilt.finished {
        requests.remove(&finished.handle);
    }
    Ok(rebuilt)
}

/// Rebuild the per-request outputs from the parallel lists.
pub fn engine_outputs(
    outputs: WireEngineOutputs,
    requests: &LiveRequests,
) -> Result<EngineOutputs, GuestFault> {
    if outputs.handles.len() != outputs.token_ids.len() {
        return Err(GuestFault::Contract(
            "output handles and tokens differ in length".into(),
        ));
    }
    let mut converted = Vec::with_capacity(outputs.handles.len());
    for (&handle, &token_id) in outputs.handles.iter().zip(&outputs.token_ids) {
        let live = live(requests, handle)?;
        converted.push(RequestOutput {
            request_id: live.id.clone(),
            handle,
            client_index: live.client_index,
            token_id,
            finish_status: None,
            stop_reason: None,
        });
    }
    for finish in outputs.finishes {
        let output = converted
            .get_mut(finish.index as usize)
            .ok_or_else(|| GuestFault::Contract(format!("finish for output {}", finish.index)))?;
        output.finish_status = Some(finish.status);
        output.stop_reason = finish.stop_reason;
    }
    Ok(EngineOutputs {
        step: outputs.step,
        outputs: converted,
        journey_events: outputs.journey_events,
    })
}
