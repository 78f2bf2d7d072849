//! The scheduler: continuous batching over the paged KV cache, vLLM v1's algorithm in its 0.33
//! profile with synchronous scheduling.
//!
//! # Calling protocol
//! - [`Scheduler::add_request`] and [`Scheduler::finish_requests`] whenever requests arrive or
//!   leave;
//! - each engine step: [`Scheduler::schedule`], run the model over the returned batch, then
//!   [`Scheduler::update_from_output`] with what it sampled. A `schedule` that is not followed by
//!   `update_from_output` counts as a step that sampled nothing;
//! - every call takes `now_ns`, the caller's monotonic clock; the scheduler never reads a clock.
//!
//! # One step
//! 1. The step counter increments (the first step is 1).
//! 2. Running requests, in running order, get the tokens they still need (a decode token or the
//!    rest of a chunked prompt), capped by `long_prefill_token_threshold` (not when only one
//!    request exists) and by the remaining token budget. When KV blocks run out, the policy's
//!    victim is preempted by recompute (blocks freed, computed count reset, back to the waiting
//!    head) and allocation retried; a request that preempts itself is skipped. A victim already
//!    scheduled this step has its tokens returned to the budget.
//! 3. Only if nothing was preempted in step 2, waiting requests are admitted in policy order
//!    while the budget and `max_num_seqs` allow: prefix-cache lookup, chunked first prefill
//!    (without chunking a prompt that does not fit stops admission), and allocation, which with
//!    `reserve_full_prompt` needs blocks for the whole sequence. A waiting request that does not
//!    fit stops admission; it never preempts.
//! 4. Scheduled requests' computed counts advance, so a chunked prefill continues next step.
//!
//! # Choices where upstream versions differ
//! - vLLM 0.33 free order: blocks without a hash go to the head of the free queue, cached ones
//!   to the tail; prefix-cache stats are counted once per admission.
//! - Stop checks: EOS and stop tokens are held back until `min_tokens` output tokens exist (the
//!   caller need not mask them); then `max_tokens` and `max_model_len` stop with LENGTH.
//! - At most one token per request per step (no speculative decoding).
//! - A prompt must be shorter than `max_model_len` (room for one output token); longer prompts
//!   are a typed error rather than FINISHED_IGNORED. The KV cache must hold `max_model_len`
//!   tokens, so a lone request can always run to completion.
//!
//! # Journey steps
//! QUEUED and explicitly finished requests carry the counter as it stands; SCHEDULED and
//! PREEMPTED from `schedule` carry this step; FIRST_TOKEN and natural FINISHED carry the step
//! of the output being processed; PREEMPTED from `reset_prefix_cache` carries the counter.

use alloc::boxed::Box;
use alloc::string::ToString;
use alloc::vec::Vec;
use core::mem;

use crate::config::SchedulerConfig;
use crate::error::{ConfigError, OutputError, RequestError};
use crate::journey::{JourneyEvent, JourneyEventType, JourneyRecorder, Phase, ScheduleKind};
use crate::kv::{ComputedBlocks, KvCacheManager};
use crate::output::{
    Added, EngineOutputs, FinishOutcome, LiveRequest, ModelOutput, OutputFinish, RequestHandle,
    RequestRef, ResetOutcome, ScheduledBatch, ScheduledKind, SchedulerOutput, SchedulerStats,
};
use crate::policy::{new_policy, Enqueue, Policy, RequestView, Ticket};
use crate::request::{FinishStatus, NewRequest, Request, RequestId, RequestStatus};
use crate::step_trace::{BatchSummary, RequestSnapshot, StepEvent, StepTracer};
use crate::table::{ReqIdx, RequestTable};

/// The step whose model output is awaited.
#[derive(Clone, Debug)]
pub(crate) struct InFlight {
    pub(crate) step: u64,
    /// Per scheduled request: its handle and whether a token is sampled for it.
    pub(crate) entries: Vec<(ReqIdx, bool)>,
}

/// The step `schedule` is deciding, as it grows.
struct StepDraft {
    step: u64,
    now_ns: u64,
    /// Whether only one request exists (the prefill cap does not apply then).
    single_request: bool,
    /// Tokens left to schedule.
    budget: u32,
    batch: ScheduledBatch,
    /// The batch's requests, in batch order.
    scheduled: Vec<ReqIdx>,
    journey_events: Vec<JourneyEvent>,
}

/// `num_new_tokens` capped by the long-prefill threshold, which does not apply to a lone request.
fn cap_prefill(config: &SchedulerConfig, num_new_tokens: u32, single_request: bool) -> u32 {
    let threshold = config.long_prefill_token_threshold;
    if threshold > 0 && !single_request {
        num_new_tokens.min(threshold)
    } else {
        num_new_tokens
    }
}

/// The scheduler state machine. See the module docs for the calling protocol.
///
/// `P` is the policy: a trait object by default, so one type holds any policy chosen at run
/// time; a component that exports one policy names its type, so the policy's calls on every
/// request of every step are direct and can be inlined.
pub struct Scheduler<P: ?Sized = dyn Policy> {
    pub(crate) config: SchedulerConfig,
    pub(crate) kv: KvCacheManager,
    pub(crate) requests: RequestTable,
    pub(crate) waiting: Box<P>,
    pub(crate) running: Vec<ReqIdx>,
    pub(crate) finished_since_schedule: Vec<RequestRef>,
    pub(crate) preempted_since_schedule: Vec<RequestRef>,
    pub(crate) step: u64,
    pub(crate) in_flight: Option<InFlight>,
    pub(crate) journey: Option<JourneyRecorder>,
    pub(crate) step_tracer: Option<StepTracer>,
    pub(crate) num_preemptions_total: u64,
    /// The handle the next submitted request gets.
    pub(crate) next_handle: u64,
}

impl<P: Policy + ?Sized> core::fmt::Debug for Scheduler<P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Scheduler")
            .field("policy", &self.waiting.name())
            .field("step", &self.step)
            .field("running", &self.running.len())
            .field("waiting", &self.waiting.len())
            .finish_non_exhaustive()
    }
}

impl Scheduler {
    /// A scheduler for a validated configuration, with the policy the configuration names.
    pub fn new(config: SchedulerConfig) -> Result<Self, ConfigError> {
        Self::with_policy(config, new_policy(config.policy))
    }
}

impl<P: Policy + ?Sized> Scheduler<P> {
    /// A scheduler with a caller-supplied policy; `config.policy` is not used.
    pub fn with_policy(config: SchedulerConfig, policy: Box<P>) -> Result<Self, ConfigError> {
        config.validate()?;
        let mut kv = KvCacheManager::new(
            config.num_blocks,
            config.block_size,
            config.max_model_len,
            config.enable_prefix_caching,
        );
        if config.enable_kv_cache_events {
            kv.enable_events();
        }
        Ok(Self {
            kv,
            requests: RequestTable::default(),
            waiting: policy,
            running: Vec::new(),
            finished_since_schedule: Vec::new(),
            preempted_since_schedule: Vec::new(),
            step: 0,
            in_flight: None,
            journey: config.journey.enabled.then(JourneyRecorder::default),
            step_tracer: config
                .step_tracing
                .enabled
                .then(|| StepTracer::new(config.step_tracing)),
            num_preemptions_total: 0,
            next_handle: 1,
            config,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// The policy's name.
    pub fn policy_name(&self) -> &'static str {
        self.waiting.name()
    }

    /// The KV cache manager.
    pub fn kv(&self) -> &KvCacheManager {
        &self.kv
    }

    /// The step counter.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// Live requests.
    pub fn requests(&self) -> &RequestTable {
        &self.requests
    }

    /// A live request by id.
    pub fn request(&self, id: &str) -> Option<&Request> {
        self.requests.get(self.requests.lookup(id)?)
    }

    /// Running request ids, in running order.
    pub fn running_ids(&self) -> Vec<RequestId> {
        self.ids_of(&self.running)
    }

    /// Waiting request ids, in admission order.
    pub fn waiting_ids(&self) -> Vec<RequestId> {
        let order: Vec<ReqIdx> = self.waiting.order().iter().map(|t| t.0).collect();
        self.ids_of(&order)
    }

    fn ids_of(&self, handles: &[ReqIdx]) -> Vec<RequestId> {
        handles
            .iter()
            .map(|&idx| self.requests[idx].id.clone())
            .collect()
    }

    /// Requests in the running list.
    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    /// Requests in the waiting queue.
    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Requests not finished.
    pub fn num_unfinished(&self) -> usize {
        self.requests.len()
    }

    /// Requests finished since the last `schedule` (reported in the next output).
    pub fn pending_finished(&self) -> &[RequestRef] {
        &self.finished_since_schedule
    }

    /// Every request the scheduler holds: the live ones, then those finished since the last
    /// `schedule` (which reports them).
    pub fn live_requests(&self) -> Vec<LiveRequest> {
        let live = self.requests.iter().map(|request| LiveRequest {
            handle: request.handle,
            request_id: request.id.clone(),
            client_index: request.client_index,
            num_tokens: request.num_tokens(),
            num_blocks: request.block_ids.len() as u32,
            finished: false,
        });
        let finished = self
            .finished_since_schedule
            .iter()
            .map(|reference| LiveRequest {
                handle: reference.handle,
                request_id: reference.id.clone(),
                client_index: reference.client_index,
                num_tokens: 0,
                num_blocks: 0,
                finished: true,
            });
        live.chain(finished).collect()
    }

    /// Whether journey state exists at all (only while journey tracing is enabled).
    pub fn has_journey_state(&self) -> bool {
        self.journey.is_some()
    }

    /// Requests that hold journey state (sampled live requests).
    pub fn journey_state_len(&self) -> usize {
        self.journey
            .as_ref()
            .map_or(0, JourneyRecorder::num_tracked)
    }

    /// A sampled request's prefill high-water mark: prompt tokens scheduled so far (journey
    /// tracing only).
    pub fn journey_prefill_high_water(&self, id: &str) -> Option<u32> {
        let idx = self.requests.lookup(id)?;
        self.journey.as_ref()?.prefill_hiwater(idx)
    }

    /// Load and cache statistics.
    pub fn stats(&self) -> SchedulerStats {
        SchedulerStats {
            step: self.step,
            num_running: self.running.len() as u32,
            num_waiting: self.waiting.len() as u32,
            kv_cache_usage: self.kv.usage(),
            num_free_blocks: self.kv.pool().num_free_blocks(),
            num_usable_blocks: self.kv.pool().num_usable_blocks(),
            prefix_cache: self.kv.prefix_cache_stats(),
            num_preemptions_total: self.num_preemptions_total,
        }
    }

    fn journey_event(
        &self,
        idx: ReqIdx,
        event_type: JourneyEventType,
        now_ns: u64,
        step: u64,
    ) -> Option<JourneyEvent> {
        let journey = self.journey.as_ref()?;
        let request = &self.requests[idx];
        request
            .journey_sampled
            .then(|| journey.event(idx, request, event_type, now_ns, step))
    }

    /// Submit a request. It joins the waiting queue; its handle and QUEUED event (if sampled)
    /// are returned.
    pub fn add_request(&mut self, new: NewRequest, now_ns: u64) -> Result<Added, RequestError> {
        let prompt_len = new.prompt_token_ids.len();
        if new.prompt_token_ids.is_empty() {
            return Err(RequestError::EmptyPrompt { id: new.id });
        }
        if prompt_len >= self.config.max_model_len as usize {
            return Err(RequestError::PromptTooLong {
                id: new.id,
                prompt_len: u32::try_from(prompt_len).unwrap_or(u32::MAX),
                max_model_len: self.config.max_model_len,
            });
        }
        if new.max_tokens == 0 {
            return Err(RequestError::ZeroMaxTokens { id: new.id });
        }
        if new.min_tokens > new.max_tokens {
            return Err(RequestError::MinTokensAboveMaxTokens {
                min_tokens: new.min_tokens,
                max_tokens: new.max_tokens,
                id: new.id,
            });
        }
        if self.requests.lookup(&new.id).is_some() {
            return Err(RequestError::DuplicateId { id: new.id });
        }
        let recovered = new.recovery.as_ref().map(|r| r.output_token_ids.len());
        if let Some(outputs) = recovered {
            let outputs_left = outputs < new.max_tokens as usize;
            let room_left = prompt_len + outputs < self.config.max_model_len as usize;
            if !(outputs_left && room_left) {
                return Err(RequestError::NothingToRecover { id: new.id });
            }
        }
        let handle = RequestHandle(self.next_handle);
        let request = Request::new(new, handle, self.kv.hash_block_size());
        self.next_handle += 1;
        let idx = self.requests.insert(request);
        self.waiting.enqueue(
            &RequestView::new(&self.requests[idx], now_ns),
            Ticket(idx),
            Enqueue::Arrived,
        );
        let mut events = Vec::new();
        if let Some(journey) = &mut self.journey {
            let request = &self.requests[idx];
            if request.journey_sampled {
                match recovered {
                    // A recovered request's prompt was computed if it has output.
                    Some(outputs) if outputs > 0 => journey.restore(idx, request.prompt_len, true),
                    _ => journey.track(idx),
                }
            }
        }
        let event_type = match recovered {
            Some(_) => JourneyEventType::Recovered,
            None => JourneyEventType::Queued,
        };
        events.extend(self.journey_event(idx, event_type, now_ns, self.step));
        Ok(Added {
            handle,
            journey_events: events,
        })
    }

    /// Decide the next step. See the module docs for the algorithm.
    pub fn schedule(&mut self, now_ns: u64) -> SchedulerOutput {
        self.step += 1;
        let step = self.step;
        let mut step_events = Vec::new();
        if let Some(tracer) = &mut self.step_tracer {
            tracer.begin_step(step, &mut step_events);
        }
        let mut draft = StepDraft {
            step,
            now_ns,
            single_request: self.running.len() + self.waiting.len() == 1,
            budget: self.config.max_num_batched_tokens,
            batch: ScheduledBatch::with_capacity(self.running.len()),
            scheduled: Vec::with_capacity(self.running.len()),
            journey_events: Vec::new(),
        };
        if !self.schedule_running(&mut draft) {
            self.admit_waiting(&mut draft);
        }
        let mut output = SchedulerOutput {
            step,
            total_num_scheduled_tokens: self.config.max_num_batched_tokens - draft.budget,
            batch: draft.batch,
            preempted: mem::take(&mut self.preempted_since_schedule),
            finished: mem::take(&mut self.finished_since_schedule),
            journey_events: draft.journey_events,
            step_events,
            kv_events: self.kv.take_events(),
        };
        if self.step_tracer.is_some() {
            self.trace_step(&mut output, &draft.scheduled, now_ns);
        }
        self.advance_scheduled(&output.batch, &draft.scheduled, now_ns);
        self.in_flight = Some(InFlight {
            step,
            entries: draft
                .scheduled
                .into_iter()
                .zip(output.batch.sample.iter().copied())
                .collect(),
        });
        output
    }

    /// Step 2: running requests get the tokens they still need, preempting when blocks run
    /// out. Returns whether anything was preempted.
    ///
    /// Out of line, as are the steps after it: compiled by Cranelift in a policy component, the
    /// whole of `schedule` as one function kept this per-request loop's values on the stack.
    #[inline(never)]
    fn schedule_running(&mut self, draft: &mut StepDraft) -> bool {
        let mut preempted = false;
        let mut position = 0;
        let no_hit = ComputedBlocks::default();
        while position < self.running.len() && draft.budget > 0 {
            let idx = self.running[position];
            // One lookup of the request when its slots fit, as they do for nearly every one.
            let request = &mut self.requests[idx];
            let num_new_tokens = cap_prefill(
                &self.config,
                request.num_tokens() - request.num_computed_tokens,
                draft.single_request,
            )
            .min(draft.budget);
            if num_new_tokens == 0 {
                position += 1;
                continue;
            }
            let (request, num_new_blocks) =
                match self
                    .kv
                    .allocate_slots(request, num_new_tokens, &no_hit, false)
                {
                    Some(num_new_blocks) => (request, num_new_blocks),
                    None => {
                        preempted = true;
                        let Some(num_new_blocks) =
                            self.preempt_for(idx, num_new_tokens, &mut position, draft)
                        else {
                            continue;
                        };
                        (&mut self.requests[idx], num_new_blocks)
                    }
                };
            request.scheduled_step = draft.step;
            request.scheduled_tokens = num_new_tokens;
            draft.batch.push(
                request.handle,
                request.num_computed_tokens,
                num_new_tokens,
                request.num_computed_tokens + num_new_tokens >= request.num_tokens(),
            );
            if num_new_blocks > 0 {
                let held = request.block_ids.len();
                let new_blocks = &request.block_ids[held - num_new_blocks as usize..];
                draft
                    .batch
                    .set_last_detail(ScheduledKind::Running, new_blocks);
            }
            draft.scheduled.push(idx);
            draft.budget -= num_new_tokens;
            position += 1;
        }
        preempted
    }

    /// Preempt running requests, the policy's victim first, until the running request `idx` at
    /// `position` gets slots for `num_new_tokens` (how many new blocks), or is preempted itself
    /// (`None`). A victim already in the draft leaves it and gives its tokens back.
    fn preempt_for(
        &mut self,
        idx: ReqIdx,
        num_new_tokens: u32,
        position: &mut usize,
        draft: &mut StepDraft,
    ) -> Option<u32> {
        let no_hit = ComputedBlocks::default();
        loop {
            let victim_position = self.preemption_victim(draft.now_ns);
            let victim = self.running.remove(victim_position);
            if let Some(undo) = draft.scheduled.iter().position(|&h| h == victim) {
                draft.budget += draft.batch.num_scheduled_tokens[undo];
                draft.batch.remove(undo);
                draft.scheduled.remove(undo);
            }
            self.preempt(victim, draft.step, draft.now_ns, &mut draft.journey_events);
            if victim == idx {
                return None;
            }
            if victim_position < *position {
                *position -= 1;
            }
            let request = &mut self.requests[idx];
            if let Some(blocks) = self
                .kv
                .allocate_slots(request, num_new_tokens, &no_hit, false)
            {
                return Some(blocks);
            }
        }
    }

    /// Step 4: scheduled requests' computed counts advance; the policy hears of the running
    /// ones (admissions told it as they happened).
    #[inline(never)]
    fn advance_scheduled(&mut self, batch: &ScheduledBatch, scheduled: &[ReqIdx], now_ns: u64) {
        let mut details = batch.details.iter().peekable();
        for (index, (&num_scheduled, &idx)) in
            batch.num_scheduled_tokens.iter().zip(scheduled).enumerate()
        {
            let request = &mut self.requests[idx];
            request.num_computed_tokens += num_scheduled;
            let detail = details.next_if(|detail| detail.index as usize == index);
            if detail.is_none_or(|detail| detail.kind == ScheduledKind::Running) {
                self.waiting
                    .on_scheduled(&RequestView::new(request, now_ns), num_scheduled);
            }
            if let Some(journey) = &mut self.journey {
                if request.journey_sampled {
                    journey.advance_prefill(idx, request);
                }
            }
        }
    }

    /// Step 3: waiting requests are admitted in policy order while the budget, `max_num_seqs`
    /// and the cache allow.
    #[inline(never)]
    fn admit_waiting(&mut self, draft: &mut StepDraft) {
        let StepDraft {
            step,
            now_ns,
            single_request,
            ref mut budget,
            ref mut batch,
            scheduled: ref mut handles,
            ref mut journey_events,
        } = *draft;
        while *budget > 0 && self.running.len() < self.config.max_num_seqs as usize {
            let Some(Ticket(idx)) = self.waiting.next() else {
                break;
            };
            let request = match self.requests.get(idx) {
                Some(request) if request.status != RequestStatus::Running => request,
                _ => panic!("policy contract: `next` named a request that is not waiting"),
            };
            if !self.waiting.may_admit(&RequestView::new(request, now_ns)) {
                break;
            }
            let hit = self.kv.get_computed_blocks(request);
            let wanted = cap_prefill(
                &self.config,
                request.num_tokens() - hit.num_tokens,
                single_request,
            );
            if !self.config.enable_chunked_prefill && wanted > *budget {
                break;
            }
            let num_new_tokens = wanted.min(*budget);
            let request = &mut self.requests[idx];
            let reserve = self.config.reserve_full_prompt;
            if self
                .kv
                .allocate_slots(request, num_new_tokens, &hit, reserve)
                .is_none()
            {
                break;
            }
            self.waiting
                .remove(&RequestView::new(request, now_ns), Ticket(idx));
            self.running.push(idx);
            let kind = match request.status {
                RequestStatus::Preempted => ScheduleKind::Resume,
                _ => ScheduleKind::First,
            };
            self.kv.record_admission(
                kind == ScheduleKind::Resume,
                request.num_tokens(),
                hit.num_tokens,
            );
            request.status = RequestStatus::Running;
            request.num_computed_tokens = hit.num_tokens;
            request.num_cached_tokens.get_or_insert(hit.num_tokens);
            request.scheduled_step = step;
            request.scheduled_tokens = num_new_tokens;
            batch.push(
                request.handle,
                hit.num_tokens,
                num_new_tokens,
                hit.num_tokens + num_new_tokens >= request.num_tokens(),
            );
            let scheduled_kind = match kind {
                ScheduleKind::First => ScheduledKind::New,
                ScheduleKind::Resume => ScheduledKind::Resumed,
            };
            batch.set_last_detail(scheduled_kind, &request.block_ids);
            handles.push(idx);
            *budget -= num_new_tokens;
            // Admissions are final at once (running tokens may still be taken back by a
            // preemption later in the step), so the policy sees them before its next peek.
            self.waiting.on_scheduled(
                &RequestView::new(&self.requests[idx], now_ns),
                num_new_tokens,
            );
            if let Some(mut event) =
                self.journey_event(idx, JourneyEventType::Scheduled, now_ns, step)
            {
                event.schedule_kind = Some(kind);
                journey_events.push(event);
            }
        }
    }

    /// Preempt a running request (already removed from the running list) by recompute.
    fn preempt(&mut self, idx: ReqIdx, step: u64, now_ns: u64, events: &mut Vec<JourneyEvent>) {
        let request = &mut self.requests[idx];
        self.kv.free(request);
        request.status = RequestStatus::Preempted;
        request.num_computed_tokens = 0;
        request.num_preemptions += 1;
        request.scheduled_tokens = 0;
        self.num_preemptions_total += 1;
        self.preempted_since_schedule.push(request.reference());
        events.extend(self.journey_event(idx, JourneyEventType::Preempted, now_ns, step));
        self.waiting.enqueue(
            &RequestView::new(&self.requests[idx], now_ns),
            Ticket(idx),
            Enqueue::Preempted,
        );
    }

    /// The policy's victim among the running requests, held to a position in the list.
    fn preemption_victim(&self, now_ns: u64) -> usize {
        let running: Vec<RequestView<'_>> = self
            .running
            .iter()
            .map(|&idx| RequestView::new(&self.requests[idx], now_ns))
            .collect();
        let victim = self.waiting.preemption_victim(&running);
        assert!(
            victim < running.len(),
            "policy contract: preemption victim {victim} of {} running",
            running.len()
        );
        victim
    }

    fn trace_step(&mut self, output: &mut SchedulerOutput, scheduled: &[ReqIdx], now_ns: u64) {
        let Some(tracer) = &self.step_tracer else {
            return;
        };
        let step = output.step;
        let summarise = tracer.sample_summary(step);
        let rich = summarise && tracer.sample_rich(step);
        if summarise {
            let summary = self.batch_summary(output, scheduled, now_ns);
            output.step_events.push(StepEvent::BatchSummary(summary));
        }
        if rich {
            for &idx in &self.running {
                output
                    .step_events
                    .push(StepEvent::RequestSnapshot(self.snapshot(idx, step)));
            }
        }
        if let Some(tracer) = &mut self.step_tracer {
            if summarise {
                tracer.mark_emitted();
            }
            tracer.end_step(step, &mut output.step_events);
        }
    }

    fn batch_summary(
        &self,
        output: &SchedulerOutput,
        scheduled: &[ReqIdx],
        now_ns: u64,
    ) -> BatchSummary {
        let (mut prefill_reqs, mut decode_reqs, mut prefill_tokens, mut decode_tokens) =
            (0, 0, 0, 0);
        for (&idx, &tokens) in scheduled.iter().zip(&output.batch.num_scheduled_tokens) {
            if self.requests[idx].num_output_tokens() > 0 {
                decode_reqs += 1;
                decode_tokens += tokens;
            } else {
                prefill_reqs += 1;
                prefill_tokens += tokens;
            }
        }
        let pool = self.kv.pool();
        BatchSummary {
            step_id: output.step,
            ts_start_ns: now_ns,
            running_depth: self.running.len() as u32,
            waiting_depth: self.waiting.len() as u32,
            num_prefill_reqs: prefill_reqs,
            num_decode_reqs: decode_reqs,
            scheduled_tokens: output.total_num_scheduled_tokens,
            prefill_tokens,
            decode_tokens,
            num_finished: output.finished.len() as u32,
            num_preempted: output.preempted.len() as u32,
            kv_usage_ratio: pool.usage(),
            kv_blocks_total: pool.num_usable_blocks(),
            kv_blocks_free: pool.num_free_blocks(),
        }
    }

    fn snapshot(&self, idx: ReqIdx, step: u64) -> RequestSnapshot {
        let request = &self.requests[idx];
        RequestSnapshot {
            step_id: step,
            request_id: request.id.clone(),
            phase: Phase::of_progress(request.num_output_tokens()),
            num_prompt_tokens: request.prompt_len,
            num_computed_tokens: request.num_computed_tokens,
            num_output_tokens: request.num_output_tokens(),
            num_preemptions: request.num_preemptions,
            scheduled_tokens_this_step: if request.scheduled_step == step {
                request.scheduled_tokens
            } else {
                0
            },
            kv_blocks_allocated: request.block_ids.len() as u32,
            kv_blocks_cached: request.num_cached_blocks,
            effective_prompt_len: request
                .num_cached_tokens
                .filter(|&cached| cached < request.prompt_len)
                .map(|cached| request.prompt_len - cached),
        }
    }

    /// Apply the model's results for the step in flight: append tokens, run stop checks, free
    /// finished requests. A rejected output changes nothing and leaves the step in flight.
    pub fn update_from_output(
        &mut self,
        output: &ModelOutput,
        now_ns: u64,
    ) -> Result<EngineOutputs, OutputError> {
        let flight = self.in_flight.take().ok_or(OutputError::NoStepInFlight)?;
        if let Err(error) = self.validate_output(&flight, output) {
            self.in_flight = Some(flight);
            return Err(error);
        }
        let max_model_len = self.config.max_model_len;
        let mut engine = EngineOutputs {
            step: flight.step,
            handles: Vec::with_capacity(flight.entries.len()),
            token_ids: Vec::with_capacity(flight.entries.len()),
            ..EngineOutputs::default()
        };
        let mut stopped_running = false;
        for (&(idx, _), token) in flight.entries.iter().zip(&output.sampled_token_ids) {
            let Some(token) = *token else {
                continue;
            };
            let Some(request) = self.requests.get_mut(idx) else {
                continue;
            };
            request.append_output_token(token, self.kv.block_hasher());
            let finish = request.check_stop(max_model_len);
            if let Some(status) = finish {
                engine.finishes.push(OutputFinish {
                    index: engine.handles.len() as u32,
                    status,
                    stop_reason: request.stop_reason,
                });
            }
            engine.handles.push(request.handle);
            engine.token_ids.push(token);
            let first_token = request.num_output_tokens() == 1
                && self
                    .journey
                    .as_mut()
                    .is_some_and(|journey| journey.take_first_token(idx));
            if first_token {
                engine.journey_events.extend(self.journey_event(
                    idx,
                    JourneyEventType::FirstToken,
                    now_ns,
                    flight.step,
                ));
            }
            if let Some(status) = finish {
                stopped_running |= self.requests[idx].status == RequestStatus::Running;
                if self.requests[idx].status == RequestStatus::Preempted {
                    self.waiting
                        .remove(&RequestView::new(&self.requests[idx], now_ns), Ticket(idx));
                }
                self.finish(idx, status, now_ns, flight.step, &mut engine.journey_events);
            }
        }
        if stopped_running {
            let requests = &self.requests;
            self.running.retain(|&idx| requests.get(idx).is_some());
        }
        Ok(engine)
    }

    fn validate_output(&self, flight: &InFlight, output: &ModelOutput) -> Result<(), OutputError> {
        if output.sampled_token_ids.len() != flight.entries.len() {
            return Err(OutputError::LengthMismatch {
                expected: flight.entries.len(),
                got: output.sampled_token_ids.len(),
            });
        }
        for (&(idx, sample), token) in flight.entries.iter().zip(&output.sampled_token_ids) {
            if token.is_some() && !sample {
                if let Some(request) = self.requests.get(idx) {
                    return Err(OutputError::TokenDuringPrefill {
                        id: request.id.to_string(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Mark a request finished, emit FINISHED and release everything it holds. The caller has
    /// taken it out of the running list or waiting queue (or does so right after).
    fn finish(
        &mut self,
        idx: ReqIdx,
        status: FinishStatus,
        now_ns: u64,
        step: u64,
        events: &mut Vec<JourneyEvent>,
    ) {
        self.requests[idx].status = RequestStatus::Finished(status);
        if let Some(mut event) = self.journey_event(idx, JourneyEventType::Finished, now_ns, step) {
            event.finish_status = Some(status);
            events.push(event);
        }
        if let Some(journey) = &mut self.journey {
            journey.forget(idx);
        }
        if let Some(mut request) = self.requests.remove(idx) {
            self.kv.free(&mut request);
            self.finished_since_schedule.push(request.reference());
        }
    }

    /// Finish requests from outside the step loop (client abort, error). Unknown and already
    /// finished ids are skipped silently.
    pub fn finish_requests<'a>(
        &mut self,
        ids: impl IntoIterator<Item = &'a str>,
        status: FinishStatus,
        now_ns: u64,
    ) -> FinishOutcome {
        let mut outcome = FinishOutcome::default();
        for id in ids {
            let Some(idx) = self.requests.lookup(id) else {
                continue;
            };
            match self.requests[idx].status {
                RequestStatus::Running => self.running.retain(|&running| running != idx),
                _ => {
                    self.waiting
                        .remove(&RequestView::new(&self.requests[idx], now_ns), Ticket(idx));
                }
            }
            outcome.finished_ids.push(self.requests[idx].id.clone());
            self.finish(idx, status, now_ns, self.step, &mut outcome.journey_events);
        }
        outcome
    }

    /// Clear the prefix cache. With `reset_running_requests`, every running request is preempted
    /// first (they return to the waiting queue in running order); otherwise the reset fails while
    /// any block is held.
    pub fn reset_prefix_cache(
        &mut self,
        reset_running_requests: bool,
        now_ns: u64,
    ) -> ResetOutcome {
        let mut outcome = ResetOutcome::default();
        if reset_running_requests {
            while let Some(idx) = self.running.pop() {
                outcome.preempted_ids.push(self.requests[idx].id.clone());
                self.preempt(idx, self.step, now_ns, &mut outcome.journey_events);
            }
            outcome.preempted_ids.reverse();
        }
        outcome.reset = self.kv.reset_prefix_cache();
        outcome.kv_events = self.kv.take_events();
        outcome
    }

    /// Close the open step-tracing window (a host calls this before it stops). Scheduling may
    /// continue afterwards; the next step opens a new window.
    pub fn shutdown(&mut self, _now_ns: u64) -> Vec<StepEvent> {
        let mut events = Vec::new();
        if let Some(tracer) = &mut self.step_tracer {
            tracer.shutdown(self.step, &mut events);
        }
        events
    }
}
