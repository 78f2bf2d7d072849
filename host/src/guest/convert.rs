//! Field-for-field conversions between the WIT records and the scheduler crate's types, so the
//! rest of the host sees one set of types whatever backend runs.

use waypoint_scheduler::output::{
    EngineOutputs, FinishOutcome, OutputFinish, RequestRef, ResetOutcome, ScheduledBatch,
    ScheduledDetail, SchedulerOutput,
};
use waypoint_scheduler::step_trace::{BatchSummary, RequestSnapshot, StepEvent};
use waypoint_scheduler::{
    ConfigError, FinishStatus, JourneyEvent, JourneyEventType, NewRequest, OutputError, Phase,
    RequestError, RequestHandle, RequestId, ScheduleKind, ScheduledKind, SchedulerConfig,
    SchedulerStats, StateError,
};

use super::wit;
use waypoint_engine::wire::LiveRequest;

pub(super) fn config(config: &SchedulerConfig) -> wit::SchedulerConfig {
    let tracing = config.step_tracing;
    wit::SchedulerConfig {
        max_num_seqs: config.max_num_seqs,
        max_num_batched_tokens: config.max_num_batched_tokens,
        max_model_len: config.max_model_len,
        block_size: config.block_size,
        num_blocks: config.num_blocks,
        enable_prefix_caching: config.enable_prefix_caching,
        enable_chunked_prefill: config.enable_chunked_prefill,
        long_prefill_token_threshold: config.long_prefill_token_threshold,
        reserve_full_prompt: config.reserve_full_prompt,
        journey: wit::JourneyConfig {
            enabled: config.journey.enabled,
        },
        step_tracing: wit::StepTracingConfig {
            enabled: tracing.enabled,
            sample_rate: tracing.sample_rate,
            rich_subsample_rate: tracing.rich_subsample_rate,
            closure_interval: tracing.closure_interval,
            seed: tracing.seed,
        },
    }
}

pub(super) fn new_request(request: &NewRequest) -> wit::NewRequest {
    wit::NewRequest {
        id: request.id.clone(),
        client_index: request.client_index,
        prompt_token_ids: request.prompt_token_ids.clone(),
        max_tokens: request.max_tokens,
        min_tokens: request.min_tokens,
        eos_token_id: request.eos_token_id,
        stop_token_ids: request.stop_token_ids.clone(),
        priority: request.priority,
        arrival_ns: request.arrival_ns,
        journey_sampled: request.journey_sampled,
        cache_salt: request.cache_salt.clone(),
    }
}

pub(super) fn live_request(request: wit::LiveRequest) -> LiveRequest {
    LiveRequest {
        handle: RequestHandle(request.handle),
        id: id(request.request_id),
        client_index: request.client_index,
        num_tokens: request.num_tokens,
        num_blocks: request.num_blocks,
        finished: request.finished,
    }
}

pub(super) fn finish_status_out(status: FinishStatus) -> wit::FinishStatus {
    match status {
        FinishStatus::Stopped => wit::FinishStatus::Stopped,
        FinishStatus::LengthCapped => wit::FinishStatus::LengthCapped,
        FinishStatus::Aborted => wit::FinishStatus::Aborted,
        FinishStatus::Ignored => wit::FinishStatus::Ignored,
        FinishStatus::Error => wit::FinishStatus::Error,
    }
}

fn finish_status(status: wit::FinishStatus) -> FinishStatus {
    match status {
        wit::FinishStatus::Stopped => FinishStatus::Stopped,
        wit::FinishStatus::LengthCapped => FinishStatus::LengthCapped,
        wit::FinishStatus::Aborted => FinishStatus::Aborted,
        wit::FinishStatus::Ignored => FinishStatus::Ignored,
        wit::FinishStatus::Error => FinishStatus::Error,
    }
}

fn id(id: String) -> RequestId {
    RequestId::from(id)
}

fn ids(ids: Vec<String>) -> Vec<RequestId> {
    ids.into_iter().map(id).collect()
}

fn phase(phase: wit::Phase) -> Phase {
    match phase {
        wit::Phase::Waiting => Phase::Waiting,
        wit::Phase::Prefill => Phase::Prefill,
        wit::Phase::Decode => Phase::Decode,
    }
}

fn journey_event(event: wit::JourneyEvent) -> JourneyEvent {
    JourneyEvent {
        request_id: id(event.request_id),
        event_type: match event.event_type {
            wit::JourneyEventType::Queued => JourneyEventType::Queued,
            wit::JourneyEventType::Scheduled => JourneyEventType::Scheduled,
            wit::JourneyEventType::FirstToken => JourneyEventType::FirstToken,
            wit::JourneyEventType::Preempted => JourneyEventType::Preempted,
            wit::JourneyEventType::Finished => JourneyEventType::Finished,
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
            wit::ScheduleKind::First => ScheduleKind::First,
            wit::ScheduleKind::Resume => ScheduleKind::Resume,
        }),
        finish_status: event.finish_status.map(finish_status),
        client_index: event.client_index,
    }
}

pub(super) fn journey_events(events: Vec<wit::JourneyEvent>) -> Vec<JourneyEvent> {
    events.into_iter().map(journey_event).collect()
}

pub(super) fn step_event(event: wit::StepEvent) -> StepEvent {
    match event {
        wit::StepEvent::WindowOpened(w) => StepEvent::WindowOpened {
            sequence: w.sequence,
            step_range_start: w.step_range_start,
            closure_interval: w.closure_interval,
        },
        wit::StepEvent::BatchSummary(s) => StepEvent::BatchSummary(BatchSummary {
            step_id: s.step_id,
            ts_start_ns: s.ts_start_ns,
            running_depth: s.running_depth,
            waiting_depth: s.waiting_depth,
            num_prefill_reqs: s.num_prefill_reqs,
            num_decode_reqs: s.num_decode_reqs,
            scheduled_tokens: s.scheduled_tokens,
            prefill_tokens: s.prefill_tokens,
            decode_tokens: s.decode_tokens,
            num_finished: s.num_finished,
            num_preempted: s.num_preempted,
            kv_usage_ratio: s.kv_usage_ratio,
            kv_blocks_total: s.kv_blocks_total,
            kv_blocks_free: s.kv_blocks_free,
        }),
        wit::StepEvent::RequestSnapshot(r) => StepEvent::RequestSnapshot(RequestSnapshot {
            step_id: r.step_id,
            request_id: id(r.request_id),
            phase: phase(r.phase),
            num_prompt_tokens: r.num_prompt_tokens,
            num_computed_tokens: r.num_computed_tokens,
            num_output_tokens: r.num_output_tokens,
            num_preemptions: r.num_preemptions,
            scheduled_tokens_this_step: r.scheduled_tokens_this_step,
            kv_blocks_allocated: r.kv_blocks_allocated,
            kv_blocks_cached: r.kv_blocks_cached,
            effective_prompt_len: r.effective_prompt_len,
        }),
        wit::StepEvent::WindowClosed(w) => StepEvent::WindowClosed {
            sequence: w.sequence,
            step_range_start: w.step_range_start,
            step_range_end: w.step_range_end,
        },
    }
}

fn scheduled_kind(kind: wit::ScheduledKind) -> ScheduledKind {
    match kind {
        wit::ScheduledKind::New => ScheduledKind::New,
        wit::ScheduledKind::Resumed => ScheduledKind::Resumed,
        wit::ScheduledKind::Running => ScheduledKind::Running,
    }
}

fn handles(handles: Vec<u64>) -> Vec<RequestHandle> {
    handles.into_iter().map(RequestHandle).collect()
}

fn references(references: Vec<wit::RequestRef>) -> Vec<RequestRef> {
    references
        .into_iter()
        .map(|reference| RequestRef {
            id: id(reference.id),
            handle: RequestHandle(reference.handle),
            client_index: reference.client_index,
        })
        .collect()
}

/// The step as the scheduler crate's flat batch (moves, no copies of the lists).
pub(super) fn scheduler_output(output: wit::SchedulerOutput) -> SchedulerOutput {
    let batch = output.batch;
    SchedulerOutput {
        step: output.step,
        batch: ScheduledBatch {
            handles: handles(batch.handles),
            num_computed_tokens: batch.num_computed_tokens,
            num_scheduled_tokens: batch.num_scheduled_tokens,
            sample: batch.sample,
            details: batch
                .details
                .into_iter()
                .map(|detail| ScheduledDetail {
                    index: detail.index,
                    kind: scheduled_kind(detail.kind),
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

/// The step's new tokens as the scheduler crate's parallel lists.
pub(super) fn engine_outputs(outputs: wit::EngineOutputs) -> EngineOutputs {
    EngineOutputs {
        step: outputs.step,
        handles: handles(outputs.handles),
        token_ids: outputs.token_ids,
        finishes: outputs
            .finishes
            .into_iter()
            .map(|finish| OutputFinish {
                index: finish.index,
                status: finish_status(finish.status),
                stop_reason: finish.stop_reason,
            })
            .collect(),
        journey_events: journey_events(outputs.journey_events),
    }
}

pub(super) fn finish_outcome(outcome: wit::FinishOutcome) -> FinishOutcome {
    FinishOutcome {
        finished_ids: ids(outcome.finished_ids),
        journey_events: journey_events(outcome.journey_events),
    }
}

pub(super) fn reset_outcome(outcome: wit::ResetOutcome) -> ResetOutcome {
    ResetOutcome {
        reset: outcome.reset,
        preempted_ids: ids(outcome.preempted_ids),
        journey_events: journey_events(outcome.journey_events),
    }
}

pub(super) fn stats(stats: wit::SchedulerStats) -> SchedulerStats {
    let cache = stats.prefix_cache;
    SchedulerStats {
        step: stats.step,
        num_running: stats.num_running,
        num_waiting: stats.num_waiting,
        kv_cache_usage: stats.kv_cache_usage,
        num_free_blocks: stats.num_free_blocks,
        num_usable_blocks: stats.num_usable_blocks,
        prefix_cache: waypoint_scheduler::kv::PrefixCacheStats {
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

pub(super) fn config_error(error: wit::ConfigError) -> ConfigError {
    use wit::ConfigError as W;
    match error {
        W::ZeroBlockSize => ConfigError::ZeroBlockSize,
        W::TooFewBlocks(num_blocks) => ConfigError::TooFewBlocks { num_blocks },
        W::ZeroMaxNumSeqs => ConfigError::ZeroMaxNumSeqs,
        W::ZeroMaxModelLen => ConfigError::ZeroMaxModelLen,
        W::BudgetBelowBlockSize(l) => ConfigError::BudgetBelowBlockSize {
            max_num_batched_tokens: l.budget,
            block_size: l.limit,
        },
        W::BudgetBelowMaxNumSeqs(l) => ConfigError::BudgetBelowMaxNumSeqs {
            max_num_batched_tokens: l.budget,
            max_num_seqs: l.limit,
        },
        W::BudgetBelowModelLenUnchunked(l) => ConfigError::BudgetBelowModelLenUnchunked {
            max_num_batched_tokens: l.budget,
            max_model_len: l.limit,
        },
        W::KvCacheTooSmall(k) => ConfigError::KvCacheTooSmall {
            capacity_tokens: k.capacity_tokens,
            usable_blocks: k.usable_blocks,
            block_size: k.block_size,
            max_model_len: k.max_model_len,
        },
        W::ThresholdAboveModelLen(l) => ConfigError::ThresholdAboveModelLen {
            threshold: l.budget,
            max_model_len: l.limit,
        },
        W::SampleRateOutOfRange(rate) => ConfigError::SampleRateOutOfRange(rate),
        W::RichSubsampleRateOutOfRange(rate) => ConfigError::RichSubsampleRateOutOfRange(rate),
        W::ClosureIntervalOutOfRange(interval) => ConfigError::ClosureIntervalOutOfRange(interval),
    }
}

pub(super) fn request_error(error: wit::RequestError) -> RequestError {
    use wit::RequestError as W;
    match error {
        W::DuplicateId(id) => RequestError::DuplicateId { id },
        W::EmptyPrompt(id) => RequestError::EmptyPrompt { id },
        W::PromptTooLong(e) => RequestError::PromptTooLong {
            id: e.id,
            prompt_len: e.prompt_len,
            max_model_len: e.max_model_len,
        },
        W::ZeroMaxTokens(id) => RequestError::ZeroMaxTokens { id },
        W::MinTokensAboveMaxTokens(e) => RequestError::MinTokensAboveMaxTokens {
            id: e.id,
            min_tokens: e.min_tokens,
            max_tokens: e.max_tokens,
        },
    }
}

pub(super) fn output_error(error: wit::OutputError) -> OutputError {
    match error {
        wit::OutputError::NoStepInFlight => OutputError::NoStepInFlight,
        wit::OutputError::LengthMismatch(e) => OutputError::LengthMismatch {
            expected: e.expected as usize,
            got: e.got as usize,
        },
        wit::OutputError::TokenDuringPrefill(id) => OutputError::TokenDuringPrefill { id },
    }
}

pub(super) fn state_error(error: wit::StateError) -> StateError {
    match error {
        wit::StateError::NotAState => StateError::NotAState,
        wit::StateError::UnsupportedVersion(version) => StateError::UnsupportedVersion(version),
        wit::StateError::Malformed(message) => StateError::Malformed(message),
        wit::StateError::Inconsistent(message) => StateError::Inconsistent(message),
        wit::StateError::Config(error) => StateError::Config(config_error(error)),
    }
}
