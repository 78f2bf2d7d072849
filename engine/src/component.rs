//! One backend for every policy component, whatever carries its calls. A [`Transport`] (wasmtime
//! in the host, jco in the browser) only moves records; [`ComponentBackend`] owns fault
//! poisoning, the host's mirror of the live requests, and the check of every result against that
//! mirror before anything uses it.
//!
//! The guest is untrusted: a result that breaks a rule of the contract is a
//! [`ContractViolation`] naming the rule, and poisons the instance like a trap does, so that a
//! lying component can neither panic the host nor steer the model runner outside the cache.

use rustc_hash::FxHashMap;
use slab::Slab;
use waypoint_scheduler::kv::KvEvent;
use waypoint_scheduler::output::{
    Added, EngineOutputs, FinishOutcome, RequestRef, ResetOutcome, SchedulerOutput,
};
use waypoint_scheduler::{
    FinishStatus, HandleMap, JourneyEvent, LiveRequest, ModelOutput, NewRequest, RequestError,
    RequestHandle, RequestId, ScheduledKind, SchedulerConfig, SchedulerStats, StepEvent,
};

use crate::backend::{BackendError, PolicyDescription, SchedulerBackend};
use crate::fault::{Call, ContractViolation, GuestFault};

/// The calls of the `waypoint:scheduler` world as one binding makes them. A transport converts
/// its binding's types to the scheduler crate's records and reports traps, timeouts and
/// malformed records as [`GuestFault`]s; it checks nothing else.
pub trait Transport {
    /// Replace the scheduler with a fresh one for `config` in a fresh instance.
    fn create(&mut self, config: &SchedulerConfig) -> Result<(), BackendError>;
    /// Replace the scheduler with one continuing from `state`, in a fresh instance.
    fn import_state(&mut self, state: &[u8], now_ns: u64) -> Result<(), BackendError>;
    /// `add-request`.
    fn add_request(&mut self, request: &NewRequest, now_ns: u64) -> Result<Added, BackendError>;
    /// `schedule`.
    fn schedule(&mut self, now_ns: u64) -> Result<SchedulerOutput, BackendError>;
    /// `update-from-output`: a token per entry and the entries that have none.
    fn update_from_output(
        &mut self,
        output: &ModelOutput,
        now_ns: u64,
    ) -> Result<EngineOutputs, BackendError>;
    /// `finish-requests`.
    fn finish_requests(
        &mut self,
        ids: &[String],
        status: FinishStatus,
        now_ns: u64,
    ) -> Result<FinishOutcome, BackendError>;
    /// `reset-prefix-cache`.
    fn reset_prefix_cache(
        &mut self,
        reset_running_requests: bool,
        now_ns: u64,
    ) -> Result<ResetOutcome, BackendError>;
    /// `shutdown`.
    fn shutdown(&mut self, now_ns: u64) -> Result<Vec<StepEvent>, BackendError>;
    /// `stats`.
    fn stats(&mut self, now_ns: u64) -> Result<SchedulerStats, BackendError>;
    /// `live-requests`.
    fn live_requests(&mut self, now_ns: u64) -> Result<Vec<LiveRequest>, BackendError>;
    /// `export-state`.
    fn export_state(&mut self, now_ns: u64) -> Result<Vec<u8>, BackendError>;
}

/// What the host knows of one request inside the component.
#[derive(Clone, Debug)]
struct Live {
    handle: RequestHandle,
    id: RequestId,
    /// Prompt and generated tokens.
    known_tokens: u32,
    /// KV blocks the guest has given it.
    blocks: u32,
    /// Finished; it leaves the mirror when the next `schedule` reports it.
    finished: bool,
    /// The mirror's step stamp when it was last scheduled (repeated handles).
    scheduled_stamp: u64,
}

/// The host's view of the live requests, built from what it sent and what the checked results
/// said, and the step in flight.
///
/// Records sit in a slab, and the step in flight keeps each entry's slot: a batch usually names
/// the requests of the batch before in the same order, so its checks read the slab in order
/// instead of hashing every handle.
#[derive(Debug, Default)]
struct Mirror {
    live: Slab<Live>,
    by_handle: HandleMap<usize>,
    by_id: FxHashMap<RequestId, RequestHandle>,
    /// Requests not finished.
    unfinished: usize,
    /// The in-flight step's handles, in batch order, with their slots in `live`.
    in_flight: Vec<(RequestHandle, usize)>,
    /// Counts `schedule` calls; stamps scheduled entries.
    stamp: u64,
}

impl Mirror {
    fn clear(&mut self) {
        *self = Self::default();
    }

    fn contains(&self, handle: RequestHandle) -> bool {
        self.by_handle.contains_key(&handle)
    }

    fn insert(&mut self, live: Live) {
        self.unfinished += usize::from(!live.finished);
        let handle = live.handle;
        self.by_id.insert(live.id.clone(), handle);
        let slot = self.live.insert(live);
        if let Some(replaced) = self.by_handle.insert(handle, slot) {
            let replaced = self.live.remove(replaced);
            self.unfinished -= usize::from(!replaced.finished);
        }
    }

    fn remove(&mut self, handle: RequestHandle) {
        let Some(slot) = self.by_handle.remove(&handle) else {
            return;
        };
        let live = self.live.remove(slot);
        self.unfinished -= usize::from(!live.finished);
        if self.by_id.get(&live.id) == Some(&handle) {
            self.by_id.remove(&live.id);
        }
    }

    fn mark_finished(live: &mut Live, unfinished: &mut usize) {
        if !live.finished {
            live.finished = true;
            *unfinished -= 1;
        }
    }

    /// The slot of `handle`: `hint` when it holds that handle, else the index's.
    #[inline]
    fn slot(&self, handle: RequestHandle, hint: Option<usize>) -> Option<usize> {
        hint.filter(|&slot| {
            self.live
                .get(slot)
                .is_some_and(|live| live.handle == handle)
        })
        .or_else(|| self.by_handle.get(&handle).copied())
    }

    fn unfinished_id(&self, id: &str) -> bool {
        self.by_id
            .get(id)
            .and_then(|&handle| self.slot(handle, None))
            .is_some_and(|slot| !self.live[slot].finished)
    }

    /// The slot of the unfinished request with this id.
    fn unfinished_by_id(&self, call: Call, id: &str) -> Result<usize, ContractViolation> {
        self.by_id
            .get(id)
            .and_then(|&handle| self.slot(handle, None))
            .filter(|&slot| !self.live[slot].finished)
            .ok_or_else(|| ContractViolation::UnknownRequestId {
                call,
                id: id.to_string(),
            })
    }

    /// The slot and record of the unfinished request with this handle. Inlined: it runs for
    /// every entry of every step, and left to itself the optimiser called it out of line.
    #[inline]
    fn unfinished(
        &mut self,
        call: Call,
        handle: RequestHandle,
        hint: Option<usize>,
    ) -> Result<(usize, &mut Live), ContractViolation> {
        // A match, not `ok_or`: an error built for every entry and dropped showed in the check.
        match self
            .slot(handle, hint)
            .and_then(|slot| self.live.get_mut(slot).map(|live| (slot, live)))
        {
            Some((slot, live)) if !live.finished => Ok((slot, live)),
            _ => Err(ContractViolation::UnknownHandle { call, handle }),
        }
    }

    /// The request a reference names, if its id is that handle's.
    fn referenced(
        &mut self,
        call: Call,
        reference: &RequestRef,
    ) -> Result<&mut Live, ContractViolation> {
        let handle = reference.handle;
        let slot = self
            .slot(handle, None)
            .ok_or(ContractViolation::UnknownHandle { call, handle })?;
        let live = &mut self.live[slot];
        if live.id != reference.id {
            return Err(ContractViolation::MismatchedReference {
                call,
                handle,
                id: reference.id.to_string(),
            });
        }
        Ok(live)
    }

    /// Every event names a request the mirror holds (finished ones included: their FINISHED
    /// event comes before the next `schedule` reports them).
    fn check_events(&self, call: Call, events: &[JourneyEvent]) -> Result<(), ContractViolation> {
        match events
            .iter()
            .find(|event| !self.by_id.contains_key(&*event.request_id))
        {
            Some(event) => Err(ContractViolation::UnknownRequestId {
                call,
                id: event.request_id.to_string(),
            }),
            None => Ok(()),
        }
    }

    /// Check a step against the mirror and the configuration; the requests it reports
    /// finished leave the mirror.
    fn check_schedule(
        &mut self,
        output: &SchedulerOutput,
        config: &SchedulerConfig,
    ) -> Result<(), ContractViolation> {
        const CALL: Call = Call::Schedule;
        let batch = &output.batch;
        if !batch.is_well_formed() {
            return Err(ContractViolation::Malformed {
                call: CALL,
                what: "the batch's parallel lists differ in length, or its details are out of \
                       order or range"
                    .into(),
            });
        }
        let count = batch.len();
        if count > config.max_num_seqs as usize {
            return Err(ContractViolation::TooManyEntries {
                entries: count,
                max_num_seqs: config.max_num_seqs,
            });
        }
        // A request preempted by a cache reset may have been finished since.
        for reference in &output.preempted {
            self.referenced(CALL, reference)?.blocks = 0;
        }
        // Three passes, each a short loop: the requests, then the entries' new blocks, then
        // every entry's range against its request's tokens and blocks.
        self.stamp += 1;
        let stamp = self.stamp;
        let mut in_flight = Vec::with_capacity(count);
        for (position, &handle) in batch.handles.iter().enumerate() {
            let hint = self
                .in_flight
                .get(position)
                .filter(|&&(previous, _)| previous == handle)
                .map(|&(_, slot)| slot);
            let (slot, live) = self.unfinished(CALL, handle, hint)?;
            if live.scheduled_stamp == stamp {
                return Err(ContractViolation::RepeatedHandle { call: CALL, handle });
            }
            live.scheduled_stamp = stamp;
            in_flight.push((handle, slot));
        }
        for (detail, block_ids) in batch.detail_blocks() {
            if let Some(live) = in_flight
                .get(detail.index as usize)
                .and_then(|&(_, slot)| self.live.get_mut(slot))
            {
                check_blocks(live, detail.kind, block_ids, config)?;
            }
        }
        let block_size = u64::from(config.block_size);
        let mut sum: u64 = 0;
        let ranges = batch
            .num_computed_tokens
            .iter()
            .zip(&batch.num_scheduled_tokens)
            .zip(&batch.sample);
        for (&(_, slot), ((&computed, &scheduled), &sample)) in in_flight.iter().zip(ranges) {
            if let Some(live) = self.live.get(slot) {
                check_range(live, computed, scheduled, sample, block_size)?;
            }
            sum += u64::from(scheduled);
        }
        if sum > u64::from(config.max_num_batched_tokens) {
            return Err(ContractViolation::OverTokenBudget {
                total: sum,
                budget: config.max_num_batched_tokens,
            });
        }
        if u64::from(output.total_num_scheduled_tokens) != sum {
            return Err(ContractViolation::TotalMismatch {
                stated: output.total_num_scheduled_tokens,
                sum,
            });
        }
        self.check_events(CALL, &output.journey_events)?;
        check_kv_events(CALL, &output.kv_events, config, false)?;
        for reference in &output.finished {
            self.referenced(CALL, reference)?;
        }
        for reference in &output.finished {
            self.remove(reference.handle);
        }
        self.in_flight = in_flight;
        Ok(())
    }

    /// Check new tokens against the step in flight and the tokens the model gave.
    fn check_outputs(
        &mut self,
        outputs: &EngineOutputs,
        given: &ModelOutput,
    ) -> Result<(), ContractViolation> {
        const CALL: Call = Call::UpdateFromOutput;
        let count = outputs.handles.len();
        if outputs.token_ids.len() != count {
            return Err(ContractViolation::Malformed {
                call: CALL,
                what: "output handles and tokens differ in length".into(),
            });
        }
        let mut next_finish = 0;
        for finish in &outputs.finishes {
            let index = finish.index as usize;
            if index < next_finish || index >= count {
                return Err(ContractViolation::Malformed {
                    call: CALL,
                    what: format!("finish for output {index} of {count}, out of order or range"),
                });
            }
            next_finish = index + 1;
        }
        let mut cursor = 0;
        for (&handle, &token_id) in outputs.handles.iter().zip(&outputs.token_ids) {
            // Outputs follow the batch's order, skipping requests finished in between.
            let sampled = self.in_flight[cursor..]
                .iter()
                .position(|&(entry, _)| entry == handle)
                .map(|offset| cursor + offset);
            let hint = sampled.map(|position| self.in_flight[position].1);
            let (_, live) = self.unfinished(CALL, handle, hint)?;
            let given_token = sampled.and_then(|position| given.sampled_token_ids.get(position));
            if given_token.copied().flatten() != Some(token_id) {
                return Err(ContractViolation::UnsampledOutput {
                    id: live.id.to_string(),
                    token: token_id,
                });
            }
            cursor = sampled.map_or(cursor, |position| position + 1);
            live.known_tokens = live.known_tokens.saturating_add(1);
        }
        for finish in &outputs.finishes {
            let handle = outputs.handles[finish.index as usize];
            if let Some(slot) = self.slot(handle, None) {
                Self::mark_finished(&mut self.live[slot], &mut self.unfinished);
            }
        }
        self.check_events(CALL, &outputs.journey_events)
    }

    /// Every id finished was asked for and live; they are marked finished.
    fn finish_outcome(
        &mut self,
        outcome: &FinishOutcome,
        asked: &[String],
    ) -> Result<(), ContractViolation> {
        for id in &outcome.finished_ids {
            if !asked.iter().any(|asked| **asked == **id) {
                return Err(ContractViolation::UnaskedFinish { id: id.to_string() });
            }
            let call = Call::FinishRequests;
            let slot = self.unfinished_by_id(call, id)?;
            Self::mark_finished(&mut self.live[slot], &mut self.unfinished);
        }
        self.check_events(Call::FinishRequests, &outcome.journey_events)
    }

    /// Every preempted id is a live request; preempted requests hold no blocks.
    fn reset_outcome(
        &mut self,
        outcome: &ResetOutcome,
        config: &SchedulerConfig,
    ) -> Result<(), ContractViolation> {
        const CALL: Call = Call::ResetPrefixCache;
        for id in &outcome.preempted_ids {
            let slot = self.unfinished_by_id(CALL, id)?;
            self.live[slot].blocks = 0;
        }
        self.check_events(CALL, &outcome.journey_events)?;
        check_kv_events(CALL, &outcome.kv_events, config, outcome.reset)
    }

    /// The mirror after an import: every request the component says it holds.
    fn rebuild(&mut self, requests: Vec<LiveRequest>) -> Result<(), ContractViolation> {
        self.clear();
        for request in requests {
            if self.contains(request.handle) {
                return Err(ContractViolation::RepeatedHandle {
                    call: Call::LiveRequests,
                    handle: request.handle,
                });
            }
            self.insert(Live {
                handle: request.handle,
                id: request.request_id,
                known_tokens: request.num_tokens,
                blocks: request.num_blocks,
                finished: request.finished,
                scheduled_stamp: 0,
            });
        }
        Ok(())
    }

    /// Statistics within the bounds the configuration and the mirror set.
    fn check_stats(
        &self,
        stats: &SchedulerStats,
        config: &SchedulerConfig,
    ) -> Result<(), ContractViolation> {
        let unfinished = self.unfinished;
        let cache = &stats.prefix_cache;
        let breach = if stats.num_usable_blocks != config.num_blocks.saturating_sub(1) {
            Some(format!(
                "{} usable blocks in a cache of {}",
                stats.num_usable_blocks, config.num_blocks
            ))
        } else if stats.num_free_blocks > stats.num_usable_blocks {
            Some(format!(
                "{} free blocks of {} usable",
                stats.num_free_blocks, stats.num_usable_blocks
            ))
        } else if !(0.0..=1.0).contains(&stats.kv_cache_usage) {
            Some(format!("KV cache usage {}", stats.kv_cache_usage))
        } else if stats.num_running > config.max_num_seqs {
            Some(format!(
                "{} running over max_num_seqs {}",
                stats.num_running, config.max_num_seqs
            ))
        } else if u64::from(stats.num_running) + u64::from(stats.num_waiting) > unfinished as u64 {
            Some(format!(
                "{} running and {} waiting, but {unfinished} requests are live",
                stats.num_running, stats.num_waiting
            ))
        } else if cache.hits > cache.queries || cache.preempted_hits > cache.preempted_queries {
            Some("more prefix-cache hits than queries".into())
        } else {
            None
        };
        breach.map_or(Ok(()), |what| {
            Err(ContractViolation::StatsOutOfBounds(what))
        })
    }
}

/// KV events within what one call can do to the configured cache: none with events off; each
/// stored block with `block_size` tokens; no more blocks stored, or removed, than the cache
/// holds; a clear only from a reset that cleared.
fn check_kv_events(
    call: Call,
    events: &[KvEvent],
    config: &SchedulerConfig,
    may_clear: bool,
) -> Result<(), ContractViolation> {
    let impossible = |what: String| Err(ContractViolation::ImpossibleKvEvents { call, what });
    if events.is_empty() {
        return Ok(());
    }
    if !config.enable_kv_cache_events {
        return impossible(format!("{} events with KV events off", events.len()));
    }
    let usable = u64::from(config.num_blocks.saturating_sub(1));
    let (mut stored, mut removed) = (0u64, 0u64);
    for event in events {
        match event {
            KvEvent::BlockStored(event) => {
                let blocks = event.block_hashes.len() as u64;
                if blocks == 0
                    || event.token_ids.len() as u64 != blocks * u64::from(config.block_size)
                {
                    return impossible(format!(
                        "{blocks} stored blocks with {} tokens (block size {})",
                        event.token_ids.len(),
                        config.block_size
                    ));
                }
                stored += blocks;
            }
            KvEvent::BlockRemoved(event) => removed += event.block_hashes.len() as u64,
            KvEvent::AllBlocksCleared if !may_clear => {
                return impossible("a clear outside a successful reset".into())
            }
            KvEvent::AllBlocksCleared => {}
        }
    }
    if stored > usable || removed > usable {
        return impossible(format!(
            "{stored} blocks stored and {removed} removed in one call, over the {usable} usable"
        ));
    }
    Ok(())
}

/// An entry's new blocks: within the cache; its request's block count follows them.
fn check_blocks(
    live: &mut Live,
    kind: ScheduledKind,
    block_ids: &[u32],
    config: &SchedulerConfig,
) -> Result<(), ContractViolation> {
    if let Some(&block) = block_ids
        .iter()
        .find(|&&block| block == 0 || block >= config.num_blocks)
    {
        return Err(ContractViolation::BlockOutOfRange {
            id: live.id.to_string(),
            block,
            num_blocks: config.num_blocks,
        });
    }
    let added = u32::try_from(block_ids.len()).unwrap_or(u32::MAX);
    live.blocks = match kind {
        ScheduledKind::New | ScheduledKind::Resumed => added,
        ScheduledKind::Running => live.blocks.saturating_add(added),
    };
    Ok(())
}

/// An entry's range and sampling against what the host knows of its request's tokens and
/// blocks.
fn check_range(
    live: &Live,
    computed: u32,
    scheduled: u32,
    sample: bool,
    block_size: u64,
) -> Result<(), ContractViolation> {
    if scheduled == 0 {
        return Err(ContractViolation::EmptyEntry {
            id: live.id.to_string(),
        });
    }
    let end = u64::from(computed) + u64::from(scheduled);
    if end > u64::from(live.known_tokens) {
        return Err(ContractViolation::RangePastKnownTokens {
            id: live.id.to_string(),
            computed,
            scheduled,
            known: live.known_tokens,
        });
    }
    // Compared by multiplying: a division per entry showed in the component's step time.
    if end > u64::from(live.blocks) * block_size {
        return Err(ContractViolation::TooFewBlocks {
            id: live.id.to_string(),
            needed: u32::try_from(end.div_ceil(block_size)).unwrap_or(u32::MAX),
            have: live.blocks,
        });
    }
    if sample && end != u64::from(live.known_tokens) {
        return Err(ContractViolation::SampleBeforeEnd {
            id: live.id.to_string(),
        });
    }
    Ok(())
}

/// A scheduler in a policy component, reached through `T`.
pub struct ComponentBackend<T> {
    transport: T,
    description: PolicyDescription,
    config: SchedulerConfig,
    /// False after a fault: every call but `reload` and `import_state` fails until one succeeds.
    usable: bool,
    mirror: Mirror,
}

impl<T: Transport> ComponentBackend<T> {
    /// A backend over `transport` with a fresh scheduler for `config`.
    pub fn new(
        transport: T,
        description: PolicyDescription,
        config: SchedulerConfig,
    ) -> Result<Self, BackendError> {
        let mut backend = Self {
            transport,
            description,
            config,
            usable: false,
            mirror: Mirror::default(),
        };
        backend.reload()?;
        Ok(backend)
    }

    /// The transport (a test scripts its results through it).
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    /// Make a call; a fault poisons the instance.
    fn call<R>(
        &mut self,
        f: impl FnOnce(&mut T) -> Result<R, BackendError>,
    ) -> Result<R, BackendError> {
        if !self.usable {
            return Err(GuestFault::Unavailable.into());
        }
        let result = f(&mut self.transport);
        if matches!(result, Err(BackendError::Guest(_))) {
            self.usable = false;
        }
        result
    }

    /// A broken rule poisons the instance like a trap does.
    fn checked<R>(&mut self, result: Result<R, ContractViolation>) -> Result<R, BackendError> {
        result.map_err(|violation| {
            self.usable = false;
            GuestFault::Contract(violation).into()
        })
    }
}

impl<T: Transport> SchedulerBackend for ComponentBackend<T> {
    fn policy(&self) -> &PolicyDescription {
        &self.description
    }

    fn add_request(&mut self, request: NewRequest, now_ns: u64) -> Result<Added, BackendError> {
        if self.mirror.unfinished_id(&request.id) {
            return Err(RequestError::DuplicateId { id: request.id }.into());
        }
        let added = self.call(|transport| transport.add_request(&request, now_ns))?;
        let live = Live {
            handle: added.handle,
            id: request.id.as_str().into(),
            known_tokens: u32::try_from(
                request.prompt_token_ids.len()
                    + request
                        .recovery
                        .as_ref()
                        .map_or(0, |recovery| recovery.output_token_ids.len()),
            )
            .unwrap_or(u32::MAX),
            blocks: 0,
            finished: false,
            scheduled_stamp: 0,
        };
        if self.mirror.contains(added.handle) {
            return self.checked(Err(ContractViolation::HandleReused {
                handle: added.handle,
            }));
        }
        self.mirror.insert(live);
        let events = self
            .mirror
            .check_events(Call::AddRequest, &added.journey_events);
        self.checked(events)?;
        Ok(added)
    }

    fn schedule(&mut self, now_ns: u64) -> Result<SchedulerOutput, BackendError> {
        let output = self.call(|transport| transport.schedule(now_ns))?;
        let checked = self.mirror.check_schedule(&output, &self.config);
        self.checked(checked)?;
        Ok(output)
    }

    fn update_from_output(
        &mut self,
        output: &ModelOutput,
        now_ns: u64,
    ) -> Result<EngineOutputs, BackendError> {
        let outputs = self.call(|transport| transport.update_from_output(output, now_ns))?;
        let checked = self.mirror.check_outputs(&outputs, output);
        self.checked(checked)?;
        Ok(outputs)
    }

    fn finish_requests(
        &mut self,
        ids: &[String],
        status: FinishStatus,
        now_ns: u64,
    ) -> Result<FinishOutcome, BackendError> {
        let outcome = self.call(|transport| transport.finish_requests(ids, status, now_ns))?;
        let checked = self.mirror.finish_outcome(&outcome, ids);
        self.checked(checked)?;
        Ok(outcome)
    }

    fn reset_prefix_cache(
        &mut self,
        reset_running_requests: bool,
        now_ns: u64,
    ) -> Result<ResetOutcome, BackendError> {
        let outcome =
            self.call(|transport| transport.reset_prefix_cache(reset_running_requests, now_ns))?;
        let checked = self.mirror.reset_outcome(&outcome, &self.config);
        self.checked(checked)?;
        Ok(outcome)
    }

    fn shutdown(&mut self, now_ns: u64) -> Result<Vec<StepEvent>, BackendError> {
        self.call(|transport| transport.shutdown(now_ns))
    }

    fn stats(&mut self, now_ns: u64) -> Result<SchedulerStats, BackendError> {
        let stats = self.call(|transport| transport.stats(now_ns))?;
        let checked = self.mirror.check_stats(&stats, &self.config);
        self.checked(checked)?;
        Ok(stats)
    }

    fn export_state(&mut self, now_ns: u64) -> Result<Vec<u8>, BackendError> {
        self.call(|transport| transport.export_state(now_ns))
    }

    fn import_state(&mut self, state: &[u8], now_ns: u64) -> Result<(), BackendError> {
        self.usable = false;
        self.mirror.clear();
        self.transport.import_state(state, now_ns)?;
        self.usable = true;
        let requests = self.call(|transport| transport.live_requests(now_ns))?;
        let rebuilt = self.mirror.rebuild(requests);
        self.checked(rebuilt)
    }

    fn reload(&mut self) -> Result<(), BackendError> {
        self.usable = false;
        self.mirror.clear();
        self.transport.create(&self.config)?;
        self.usable = true;
        Ok(())
    }
}
