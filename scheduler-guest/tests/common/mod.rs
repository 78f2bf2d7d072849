//! The upstream test harness, reproduced: `create_scheduler` and `create_requests` defaults.
#![allow(dead_code)]

use waypoint_scheduler::{
    EngineOutputs, FinishStatus, ModelOutput, NewRequest, RequestHandle, Scheduler,
    SchedulerConfig, SchedulerOutput,
};

/// vLLM's `EOS_TOKEN_ID` in the scheduler tests.
pub const EOS: u32 = 50256;

/// `create_scheduler()`: 16 sequences, 8192-token budget, block 16, 10 000 blocks,
/// max_model_len = budget, chunked prefill on, prefix caching off.
pub fn harness_config() -> SchedulerConfig {
    SchedulerConfig {
        max_num_seqs: 16,
        max_num_batched_tokens: 8192,
        max_model_len: 8192,
        block_size: 16,
        num_blocks: 10_000,
        enable_prefix_caching: false,
        ..SchedulerConfig::default()
    }
}

pub fn scheduler(config: SchedulerConfig) -> Scheduler {
    Scheduler::new(config).expect("valid test config")
}

/// `create_requests(n, num_tokens, max_tokens)`: ids "0".."n-1", prompt `[i; num_tokens]`.
pub fn requests(n: usize, num_tokens: usize, max_tokens: u32) -> Vec<NewRequest> {
    (0..n)
        .map(|i| NewRequest {
            max_tokens,
            eos_token_id: Some(EOS),
            arrival_ns: i as u64,
            ..NewRequest::new(i.to_string(), vec![i as u32; num_tokens])
        })
        .collect()
}

/// Submit every request; their handles and ids, in order.
pub fn add_all(
    scheduler: &mut Scheduler,
    requests: Vec<NewRequest>,
) -> Vec<(RequestHandle, String)> {
    requests
        .into_iter()
        .map(|request| {
            let id = request.id.clone();
            let added = scheduler.add_request(request, 0).expect("valid request");
            (added.handle, id)
        })
        .collect()
}

/// Feed `token` to every request the step samples for.
pub fn sample_all(output: &SchedulerOutput, token: u32) -> ModelOutput {
    ModelOutput {
        sampled_token_ids: output
            .batch
            .sample
            .iter()
            .map(|&sample| sample.then_some(token))
            .collect(),
    }
}

/// One engine step that samples `token` wherever a token is due.
pub fn step(scheduler: &mut Scheduler, token: u32) -> (SchedulerOutput, EngineOutputs) {
    let now = scheduler.step() * 1_000 + 1_000;
    let output = scheduler.schedule(now);
    let engine = scheduler
        .update_from_output(&sample_all(&output, token), now + 500)
        .expect("well-formed model output");
    (output, engine)
}

/// The id of a live request.
pub fn id_of(scheduler: &Scheduler, handle: RequestHandle) -> String {
    scheduler
        .requests()
        .by_handle(handle)
        .map(|request| request.id().to_string())
        .expect("a live request's handle")
}

/// Ids of scheduled entries of one kind.
pub fn ids_of_kind(
    scheduler: &Scheduler,
    output: &SchedulerOutput,
    kind: waypoint_scheduler::ScheduledKind,
) -> Vec<String> {
    output
        .batch
        .entries()
        .filter(|entry| entry.kind == kind)
        .map(|entry| id_of(scheduler, entry.handle))
        .collect()
}

pub fn tokens_of(scheduler: &Scheduler, output: &SchedulerOutput, id: &str) -> Option<u32> {
    output
        .batch
        .entries()
        .find(|entry| id_of(scheduler, entry.handle) == id)
        .map(|entry| entry.num_scheduled_tokens)
}

/// The finish status and stop reason of the `index`th new token's request, if it finished.
pub fn finish_at(engine: &EngineOutputs, index: usize) -> (Option<FinishStatus>, Option<u32>) {
    engine
        .tokens()
        .nth(index)
        .and_then(|(_, _, finish)| finish)
        .map_or((None, None), |finish| {
            (Some(finish.status), finish.stop_reason)
        })
}

pub fn strings(ids: &[waypoint_scheduler::RequestId]) -> Vec<String> {
    ids.iter().map(|id| id.to_string()).collect()
}

pub fn refs(refs: &[waypoint_scheduler::RequestRef]) -> Vec<String> {
    refs.iter().map(|r| r.id.to_string()).collect()
}
