//! Field-for-field conversions between the crate's types and the WIT records.

use alloc::string::String;
use alloc::vec::Vec;

use waypoint_scheduler::output::{
    EngineOutputs, FinishOutcome, RequestHandle, RequestRef, ResetOutcome, SchedulerOutput,
};
use waypoint_scheduler::step_trace::{BatchSummary, RequestSnapshot, StepEvent};
use waypoint_scheduler::{
    ConfigError, FinishStatus, JourneyConfig, JourneyEvent, JourneyEventType, ModelOutput,
    NewRequest, OutputError, Phase, PolicyKind, RequestError, RequestId, ScheduleKind,
    ScheduledKind, SchedulerConfig, SchedulerStats, StateError, StepTracingConfig,
};

use crate::wit;

pub(crate) fn config(config: wit::SchedulerConfig, policy: PolicyKind) -> SchedulerConfig {
    let tracing = config.step_tracing;
    SchedulerConfig {
        max_num_seqs: config.max_num_seqs,
        max_num_batched_tokens: config.max_num_batched_tokens,
        max_model_len: config.max_model_len,
        block_size: config.block_size,
        num_blocks: config.num_blocks,
        enable_prefix_caching: config.enable_prefix_caching,
        enable_chunked_prefill: config.enable_chunked_prefill,
        long_prefill_token_threshold: config.long_prefill_token_threshold,
        reserve_full_prompt: config.reserve_full_prompt,
        policy,
        journey: JourneyConfig {
            enabled: config.journey.enabled,
        },
        step_tracing: StepTracingConfig {
            enabled: tracing.enabled,
            sample_rate: tracing.sample_rate,
            rich_subsample_rate: tracing.rich_subsample_rate,
            closure_interval: tracing.closure_interval,
            seed: tracing.seed,
        },
    }
}

pub(crate) fn new_request(request: wit::NewRequest) -> NewRequest {
    NewRequest {
        id: request.id,
        client_index: request.client_index,
        prompt_token_ids: request.prompt_token_ids,
        max_tokens: request.max_tokens,
        min_tokens: request.min_tokens,
        eos_token_id: request.eos_token_id,
        stop_token_ids: request.stop_token_ids,
        priority: request.priority,
        arrival_ns: request.arrival_ns,
        journey_sampled: request.journey_sampled,
        cache_salt: request.cache_salt,
    }
}

/// Positions listed in `missing` (out-of-range ones are ignored) get no token.
pub(crate) fn model_output(output: wit::ModelOutput) -> ModelOutput {
    let mut sampled: Vec<Option<u32>> = output.token_ids.into_iter().map(Some).collect();
    for index in output.missing {
        if let Some(entry) = sampled.get_mut(index as usize) {
            *entry = None;
        }
    }
    ModelOutput {
        sampled_token_ids: sampled,
    }
}

pub(crate) fn finish_status_in(status: wit::FinishStatus) -> FinishStatus {
    match status {
        wit::FinishStatus::Stopped => FinishStatus::Stopped,
        wit::FinishStatus::LengthCapped => FinishStatus::LengthCapped,
        wit::FinishStatus::Aborted => FinishStatus::Aborted,
        wit::FinishStatus::Ignored => FinishStatus::Ignored,
        wit::FinishStatus::Error => FinishStatus::Error,
    }
}

fn finish_status(status: FinishStatus) -> wit::FinishStatus {
    match status {
        FinishStatus::Stopped => wit::FinishStatus::Stopped,
        FinishStatus::LengthCapped => wit::FinishStatus::LengthCapped,
        FinishStatus::Aborted => wit::FinishStatus::Aborted,
        FinishStatus::Ignored => wit::FinishStatus::Ignored,
        FinishStatus::Error => wit::FinishStatus::Error,
    }
}

fn id(id: RequestId) -> String {
    String::from(&*id)
}

fn ids(ids: Vec<RequestId>) -> Vec<String> {
    ids.into_iter().map(id).collect()
}

fn phase(phase: Phase) -> wit::Phase {
    match phase {
        Phase::Waiting => wit::Phase::Waiting,
        Phase::Prefill => wit::Phase::Prefill,
        Phase::Decode => wit::Phase::Decode,
    }
}

fn journey_event(event: JourneyEvent) -> wit::JourneyEvent {
    wit::JourneyEvent {
        request_id: id(event.request_id),
        event_type: match event.event_type {
            JourneyEventType::Queued => wit::JourneyEventType::Queued,
            JourneyEventType::Scheduled => wit::JourneyEventType::Scheduled,
            JourneyEventType::FirstToken => wit::JourneyEventType::FirstToken,
            JourneyEventType::Preempted => wit::JourneyEventType::Preempted,
            JourneyEventType::Finished => wit::JourneyEventType::Finished,
        },
        ts_monotonic_ns: event.ts_monotonic_ns,
        scheduler_step: event.scheduler_step,
        prefill_done_tokens: event.prefill_done_tokens,
        prefill_total_tokens: event.prefill_total_tokens,
        decode_done_tokens: event.decode_done_tokens,
        decode_max_tokens: event.decode_max_tokens,
        phase: phase(event.phase),
        num_preemptions_so_far: event.num_preemptions_so_far,
        schedule_kind: event.schedule_kind.map(|kind| match kind {
            ScheduleKind::First => wit::ScheduleKind::First,
            ScheduleKind::Resume => wit::ScheduleKind::Resume,
        }),
        finish_status: event.finish_status.map(finish_status),
        client_index: event.client_index,
    }
}

pub(crate) fn journey_events(events: Vec<JourneyEvent>) -> Vec<wit::JourneyEvent> {
    events.into_iter().map(journey_event).collect()
}

fn batch_summary(summary: BatchSummary) -> wit::BatchSummary {
    wit::BatchSummary {
        step_id: summary.step_id,
        ts_start_ns: summary.ts_start_ns,
        running_depth: summary.running_depth,
        waiting_depth: summary.waiting_depth,
        num_prefill_reqs: summary.num_prefill_reqs,
        num_decode_reqs: summary.num_decode_reqs,
        scheduled_tokens: summary.scheduled_tokens,
        prefill_tokens: summary.prefill_tokens,
        decode_tokens: summary.decode_tokens,
        num_finished: summary.num_finished,
        num_preempted: summary.num_preempted,
        kv_usage_ratio: summary.kv_usage_ratio,
        kv_blocks_total: summary.kv_blocks_total,
        kv_blocks_free: summary.kv_blocks_free,
    }
}

fn request_snapshot(snapshot: RequestSnapshot) -> wit::RequestSnapshot {
    wit::RequestSnapshot {
        step_id: snapshot.step_id,
        request_id: id(snapshot.request_id),
        phase: phase(snapshot.phase),
        num_prompt_tokens: snapshot.num_prompt_tokens,
        num_computed_tokens: snapshot.num_computed_tokens,
        num_output_tokens: snapshot.num_output_tokens,
        num_preemptions: snapshot.num_preemptions,
        scheduled_tokens_this_step: snapshot.scheduled_tokens_this_step,
        kv_blocks_allocated: snapshot.kv_blocks_allocated,
        kv_blocks_cached: snapshot.kv_blocks_cached,
        effective_prompt_len: snapshot.effective_prompt_len,
    }
}

pub(crate) fn step_event(event: StepEvent) -> wit::StepEvent {
    match event {
        StepEvent::WindowOpened {
            sequence,
            step_range_start,
            closure_interval,
        } => wit::StepEvent::WindowOpened(wit::WindowOpened {
            sequence,
            step_range_start,
            closure_interval,
        }),
        StepEvent::BatchSummary(summary) => wit::StepEvent::BatchSummary(batch_summary(summary)),
        StepEvent::RequestSnapshot(snapshot) => {
            wit::StepEvent::RequestSnapshot(request_snapshot(snapshot))
        }
        StepEvent::WindowClosed {
            sequence,
            step_range_start,
            step_range_end,
        } => wit::StepEvent::WindowClosed(wit::WindowClosed {
            sequence,
            step_range_start,
            step_range_end,
        }),
    }
}

fn handles(handles: Vec<RequestHandle>) -> Vec<u64> {
    handles.into_iter().map(|handle| handle.0).collect()
}

fn references(references: Vec<RequestRef>) -> Vec<wit::RequestRef> {
    references
        .into_iter()
        .map(|reference| wit::RequestRef {
            id: id(reference.id),
            handle: reference.handle.0,
            client_index: reference.client_index,
        })
        .collect()
}

pub(crate) fn scheduler_output(output: SchedulerOutput) -> wit::SchedulerOutput {
    let batch = output.batch;
    wit::SchedulerOutput {
        step: output.step,
        batch: wit::ScheduledBatch {
            handles: handles(batch.handles),
            num_computed_tokens: batch.num_computed_tokens,
            num_scheduled_tokens: batch.num_scheduled_tokens,
            sample: batch.sample,
            details: batch
                .details
                .into_iter()
                .map(|detail| wit::ScheduledDetail {
                    index: detail.index,
                    kind: match detail.kind {
                        ScheduledKind::New => wit::ScheduledKind::New,
                        ScheduledKind::Resumed => wit::ScheduledKind::Resumed,
                        ScheduledKind::Running => wit::ScheduledKind::Running,
                    },
                    block_ids: detail.block_ids,
                    token_ids: detail.token_ids,
                })
                .collect(),
        },
        total_num_scheduled_tokens: output.total_num_scheduled_tokens,
        preempted: references(output.preempted),
        finished: references(output.finished),
        journey_events: journey_events(output.journey_events),
        step_events: output.step_events.into_iter().map(step_event).collect(),
    }
}

pub(crate) fn engine_outputs(outputs: EngineOutputs) -> wit::EngineOutputs {
    wit::EngineOutputs {
        step: outputs.step,
        handles: handles(outputs.handles),
        token_ids: outputs.token_ids,
        finishes: outputs
            .finishes
            .into_iter()
            .map(|finish| wit::OutputFinish {
                index: finish.index,
                status: finish_status(finish.status),
                stop_reason: finish.stop_reason,
            })
            .collect(),
        journey_events: journey_events(outputs.journey_events),
    }
}

pub(crate) fn finish_outcome(outcome: FinishOutcome) -> wit::FinishOutcome {
    wit::FinishOutcome {
        finished_ids: ids(outcome.finished_ids),
        journey_events: journey_events(outcome.journey_events),
    }
}

pub(crate) fn reset_outcome(outcome: ResetOutcome) -> wit::ResetOutcome {
    wit::ResetOutcome {
        reset: outcome.reset,
        preempted_ids: ids(outcome.preempted_ids),
        journey_events: journey_events(outcome.journey_events),
    }
}

pub(crate) fn stats(stats: SchedulerStats) -> wit::SchedulerStats {
    let cache = stats.prefix_cache;
    wit::SchedulerStats {
        step: stats.step,
        num_running: stats.num_running,
        num_waiting: stats.num_waiting,
        kv_cache_usage: stats.kv_cache_usage,
        num_free_blocks: stats.num_free_blocks,
        num_usable_blocks: stats.num_usable_blocks,
        prefix_cache: wit::PrefixCacheStats {
            requests: cache.requests,
            queries: cache.queries,
            hits: cache.hits,
            preempted_requests: cache.preempted_requests,
            preempted_queries: cache.preempted_queries,
            preempted_hits: cache.preempted_hits,
            resets: cache.resets,
        },
        num_preemptions_total: stats.num_preemptions_total,
    }
}

fn limit(budget: u32, limit: u32) -> wit::BudgetAndLimit {
    wit::BudgetAndLimit { budget, limit }
}

pub(crate) fn config_error(error: ConfigError) -> wit::ConfigError {
    use wit::ConfigError as W;
    match error {
        ConfigError::ZeroBlockSize => W::ZeroBlockSize,
        ConfigError::TooFewBlocks { num_blocks } => W::TooFewBlocks(num_blocks),
        ConfigError::ZeroMaxNumSeqs => W::ZeroMaxNumSeqs,
        ConfigError::ZeroMaxModelLen => W::ZeroMaxModelLen,
        ConfigError::BudgetBelowBlockSize {
            max_num_batched_tokens,
            block_size,
        } => W::BudgetBelowBlockSize(limit(max_num_batched_tokens, block_size)),
        ConfigError::BudgetBelowMaxNumSeqs {
            max_num_batched_tokens,
            max_num_seqs,
        } => W::BudgetBelowMaxNumSeqs(limit(max_num_batched_tokens, max_num_seqs)),
        ConfigError::BudgetBelowModelLenUnchunked {
            max_num_batched_tokens,
            max_model_len,
        } => W::BudgetBelowModelLenUnchunked(limit(max_num_batched_tokens, max_model_len)),
        ConfigError::KvCacheTooSmall {
            capacity_tokens,
            usable_blocks,
            block_size,
            max_model_len,
        } => W::KvCacheTooSmall(wit::KvTooSmall {
            capacity_tokens,
            usable_blocks,
            block_size,
            max_model_len,
        }),
        ConfigError::ThresholdAboveModelLen {
            threshold,
            max_model_len,
        } => W::ThresholdAboveModelLen(limit(threshold, max_model_len)),
        ConfigError::SampleRateOutOfRange(rate) => W::SampleRateOutOfRange(rate),
        ConfigError::RichSubsampleRateOutOfRange(rate) => W::RichSubsampleRateOutOfRange(rate),
        ConfigError::ClosureIntervalOutOfRange(interval) => W::ClosureIntervalOutOfRange(interval),
    }
}

pub(crate) fn request_error(error: RequestError) -> wit::RequestError {
    use wit::RequestError as W;
    match error {
        RequestError::DuplicateId { id } => W::DuplicateId(id),
        RequestError::EmptyPrompt { id } => W::EmptyPrompt(id),
        RequestError::PromptTooLong {
            id,
            prompt_len,
            max_model_len,
        } => W::PromptTooLong(wit::PromptTooLong {
            id,
            prompt_len,
            max_model_len,
        }),
        RequestError::ZeroMaxTokens { id } => W::ZeroMaxTokens(id),
        RequestError::MinTokensAboveMaxTokens {
            id,
            min_tokens,
            max_tokens,
        } => W::MinTokensAboveMaxTokens(wit::MinAboveMax {
            id,
            min_tokens,
            max_tokens,
        }),
    }
}

pub(crate) fn output_error(error: OutputError) -> wit::OutputError {
    match error {
        OutputError::NoStepInFlight => wit::OutputError::NoStepInFlight,
        OutputError::LengthMismatch { expected, got } => {
            wit::OutputError::LengthMismatch(wit::LengthMismatch {
                expected: expected as u32,
                got: got as u32,
            })
        }
        OutputError::TokenDuringPrefill { id } => wit::OutputError::TokenDuringPrefill(id),
    }
}

pub(crate) fn state_error(error: StateError) -> wit::StateError {
    match error {
        StateError::NotAState => wit::StateError::NotAState,
        StateError::UnsupportedVersion(version) => wit::StateError::UnsupportedVersion(version),
        StateError::Malformed(message) => wit::StateError::Malformed(message),
        StateError::Inconsistent(message) => wit::StateError::Inconsistent(message),
        StateError::Config(error) => wit::StateError::Config(config_error(error)),
    }
}
