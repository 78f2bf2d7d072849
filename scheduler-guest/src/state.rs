//! Export and import of the whole scheduler state, so a host can move live traffic to another
//! policy (or a fresh instance of the same one) without recomputing anything.
//!
//! Format: the 4 bytes `WPST`, a little-endian `u32` version, then a postcard-encoded
//! [`StateV2`]. Block hashes are not stored (they follow from the tokens). An import checks
//! every cross-reference before building anything, so a corrupt state is an error, never a
//! panic.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use crate::config::{PolicyKind, SchedulerConfig};
use crate::error::StateError;
use crate::journey::JourneyRecorder;
use crate::kv::{BlockHash, BlockPool, KvCacheManager, PrefixCacheStats, NULL_BLOCK};
use crate::map::FxHashMap;
use crate::output::RequestRef;
use crate::policy::{new_policy, Enqueue, Policy, RequestView, Ticket};
use crate::request::{Request, RequestStatus};
use crate::scheduler::{InFlight, Scheduler};
use crate::step_trace::StepTracer;
use crate::table::{ReqIdx, RequestTable};

const MAGIC: &[u8; 4] = b"WPST";
/// The state format this build writes and reads.
pub const STATE_VERSION: u32 = 2;

/// The step in flight: its number and, per scheduled entry, the request (None if it has left
/// since) and whether a token is due.
type InFlightState = (u64, Vec<(Option<u32>, bool)>);

/// Version 2 of the exported state (version 1 had no deadlines and no policy name). Requests are referred to by their index in `requests`.
#[derive(Serialize, Deserialize)]
struct StateV2 {
    config: SchedulerConfig,
    step: u64,
    num_preemptions_total: u64,
    next_handle: u64,
    requests: Vec<Request>,
    running: Vec<u32>,
    /// Waiting requests in the exporting policy's admission order.
    waiting: Vec<u32>,
    finished_since_schedule: Vec<RequestRef>,
    preempted_since_schedule: Vec<RequestRef>,
    in_flight: Option<InFlightState>,
    free_blocks: Vec<u32>,
    cached_blocks: Vec<(u32, BlockHash)>,
    prefix_cache_stats: PrefixCacheStats,
    /// `(request, prefill high-water mark, FIRST_TOKEN emitted)` per tracked request.
    journey: Option<Vec<(u32, u32, bool)>>,
    step_tracer: Option<StepTracer>,
    /// The exporting policy's name and its own accounting ([`Policy::export_state`]).
    policy: (String, Vec<u8>),
}

fn inconsistent(message: String) -> StateError {
    StateError::Inconsistent(message)
}

impl<P: Policy + ?Sized> Scheduler<P> {
    /// The whole state as bytes for [`Scheduler::import_state`].
    pub fn export_state(&self) -> Vec<u8> {
        // Requests in id order: the same state gives the same bytes, whatever slots it used.
        let mut handles = self.requests.handles();
        handles.sort_by(|&a, &b| self.requests[a].id.cmp(&self.requests[b].id));
        let mut index_of: FxHashMap<ReqIdx, u32> = FxHashMap::default();
        for (index, &idx) in handles.iter().enumerate() {
            index_of.insert(idx, index as u32);
        }
        let indexes = |list: &[ReqIdx]| list.iter().map(|idx| index_of[idx]).collect();
        let state = StateV2 {
            config: self.config,
            step: self.step,
            num_preemptions_total: self.num_preemptions_total,
            next_handle: self.next_handle,
            requests: handles
                .iter()
                .map(|&idx| self.requests[idx].clone())
                .collect(),
            running: indexes(&self.running),
            waiting: self
                .waiting
                .order()
                .iter()
                .map(|ticket| index_of[&ticket.0])
                .collect(),
            finished_since_schedule: self.finished_since_schedule.clone(),
            preempted_since_schedule: self.preempted_since_schedule.clone(),
            in_flight: self.in_flight.as_ref().map(|flight| {
                let entries = flight
                    .entries
                    .iter()
                    .map(|(idx, sample)| (index_of.get(idx).copied(), *sample))
                    .collect();
                (flight.step, entries)
            }),
            free_blocks: self.kv.pool().free_block_ids(),
            cached_blocks: self.kv.pool().cached_blocks(),
            prefix_cache_stats: self.kv.prefix_cache_stats(),
            journey: self.journey.as_ref().map(|journey| {
                handles
                    .iter()
                    .enumerate()
                    .filter_map(|(index, &idx)| {
                        let (hiwater, first) = journey.progress_of(idx)?;
                        Some((index as u32, hiwater, first))
                    })
                    .collect()
            }),
            step_tracer: self.step_tracer.clone(),
            policy: (self.waiting.name().into(), self.waiting.export_state()),
        };
        let mut bytes = Vec::from(&MAGIC[..]);
        bytes.extend_from_slice(&STATE_VERSION.to_le_bytes());
        postcard::to_extend(&state, bytes).expect("writing to a Vec cannot fail")
    }

    /// A scheduler with `policy` continuing from an exported state (of any policy): the same
    /// requests, block tables, prefix cache, journey state and step counter. The policy takes
    /// over the exporter's accounting where it can, then the waiting queue is enqueued into it
    /// in the exporter's admission order.
    pub fn import_state_with(
        bytes: &[u8],
        policy: Box<P>,
        now_ns: u64,
    ) -> Result<Self, StateError> {
        let state = decode(bytes)?;
        let config = state.config;
        config.validate()?;
        let ref_counts = check(&state, &config)?;
        build(state, config, ref_counts, policy, now_ns)
    }
}

impl Scheduler {
    /// A scheduler with the built-in `policy` continuing from an exported state (of any
    /// policy); see [`Scheduler::import_state_with`].
    pub fn import_state(bytes: &[u8], policy: PolicyKind, now_ns: u64) -> Result<Self, StateError> {
        let mut scheduler = Self::import_state_with(bytes, new_policy(policy), now_ns)?;
        scheduler.config.policy = policy;
        Ok(scheduler)
    }
}

fn decode(bytes: &[u8]) -> Result<StateV2, StateError> {
    let body = bytes
        .strip_prefix(&MAGIC[..])
        .ok_or(StateError::NotAState)?;
    let (version, body) = body
        .split_first_chunk::<4>()
        .ok_or_else(|| StateError::Malformed("truncated header".into()))?;
    let version = u32::from_le_bytes(*version);
    if version != STATE_VERSION {
        return Err(StateError::UnsupportedVersion(version));
    }
    postcard::from_bytes(body).map_err(|e| StateError::Malformed(format!("{e}")))
}

/// The prefix cache of an exported state: every cached block with its hash, by block id (what
/// a KV-event consumer's index of the scheduler should hold).
pub fn cached_blocks(bytes: &[u8]) -> Result<Vec<(u32, BlockHash)>, StateError> {
    Ok(decode(bytes)?.cached_blocks)
}

/// Check every cross-reference of a decoded state; returns the block reference counts.
fn check(state: &StateV2, config: &SchedulerConfig) -> Result<Vec<u32>, StateError> {
    let count = state.requests.len();
    let num_blocks = config.num_blocks as usize;
    let mut ids = FxHashMap::default();
    let mut ref_counts = alloc::vec![0u32; num_blocks];
    let mut handles = FxHashMap::default();
    for (index, request) in state.requests.iter().enumerate() {
        if ids.insert(request.id.clone(), index).is_some() {
            return Err(inconsistent(format!(
                "request {:?} appears twice",
                request.id
            )));
        }
        if request.handle.0 == 0
            || request.handle.0 >= state.next_handle
            || handles.insert(request.handle, index).is_some()
        {
            return Err(inconsistent(format!(
                "request {:?}: bad handle",
                request.id
            )));
        }
        let tokens = request.token_ids.len();
        if request.prompt_len == 0 || request.prompt_len as usize > tokens {
            return Err(inconsistent(format!(
                "request {:?}: bad prompt length",
                request.id
            )));
        }
        if request.num_computed_tokens as usize > tokens {
            return Err(inconsistent(format!(
                "request {:?}: computed beyond its tokens",
                request.id
            )));
        }
        if request.status.is_finished() {
            return Err(inconsistent(format!(
                "request {:?} is finished",
                request.id
            )));
        }
        let full_blocks = tokens / config.block_size as usize;
        if config.enable_prefix_caching && request.num_cached_blocks as usize > full_blocks {
            return Err(inconsistent(format!(
                "request {:?}: more cached blocks than full ones",
                request.id
            )));
        }
        let needed = (request.num_computed_tokens as usize).div_ceil(config.block_size as usize);
        if request.block_ids.len() < needed
            || request.num_cached_blocks as usize > request.block_ids.len()
        {
            return Err(inconsistent(format!(
                "request {:?}: block table too short",
                request.id
            )));
        }
        if request.status != RequestStatus::Running && !request.block_ids.is_empty() {
            return Err(inconsistent(format!(
                "request {:?} holds blocks while queued",
                request.id
            )));
        }
        for &block in &request.block_ids {
            if block == NULL_BLOCK || block as usize >= num_blocks {
                return Err(inconsistent(format!(
                    "request {:?}: block {block} out of range",
                    request.id
                )));
            }
            ref_counts[block as usize] += 1;
        }
    }
    let mut placed = alloc::vec![false; count];
    for (list, running) in [(&state.running, true), (&state.waiting, false)] {
        for &index in list {
            let request = state
                .requests
                .get(index as usize)
                .ok_or_else(|| inconsistent(format!("queue entry {index} out of range")))?;
            if core::mem::replace(&mut placed[index as usize], true) {
                return Err(inconsistent(format!(
                    "request {:?} queued twice",
                    request.id
                )));
            }
            if (request.status == RequestStatus::Running) != running {
                return Err(inconsistent(format!(
                    "request {:?}: status does not match its queue",
                    request.id
                )));
            }
        }
    }
    if placed.iter().any(|placed| !placed) {
        return Err(inconsistent("a request is in neither queue".into()));
    }
    if state.running.len() > config.max_num_seqs as usize {
        return Err(inconsistent(
            "more running requests than max_num_seqs".into(),
        ));
    }
    let mut free = alloc::vec![false; num_blocks];
    for &block in &state.free_blocks {
        let slot = free
            .get_mut(block as usize)
            .ok_or_else(|| inconsistent(format!("free block {block} out of range")))?;
        if block == NULL_BLOCK || *slot || ref_counts[block as usize] > 0 {
            return Err(inconsistent(format!("block {block} cannot be free")));
        }
        *slot = true;
    }
    if (1..num_blocks).any(|block| !free[block] && ref_counts[block] == 0) {
        return Err(inconsistent("a block is neither free nor held".into()));
    }
    if !config.enable_prefix_caching && !state.cached_blocks.is_empty() {
        return Err(inconsistent("cached blocks without prefix caching".into()));
    }
    let mut cached = alloc::vec![false; num_blocks];
    for &(block, _) in &state.cached_blocks {
        match cached.get_mut(block as usize) {
            Some(seen) if block != NULL_BLOCK && !*seen => *seen = true,
            _ => return Err(inconsistent(format!("cached block {block} is invalid"))),
        }
    }
    if let Some((_, entries)) = &state.in_flight {
        if entries
            .iter()
            .any(|(index, _)| index.is_some_and(|i| i as usize >= count))
        {
            return Err(inconsistent(
                "step in flight names an unknown request".into(),
            ));
        }
    }
    if let Some(journey) = &state.journey {
        if !config.journey.enabled || journey.iter().any(|&(index, _, _)| index as usize >= count) {
            return Err(inconsistent(
                "journey state does not match the requests".into(),
            ));
        }
    }
    Ok(ref_counts)
}

/// Build the scheduler; the last check needs the recomputed block hashes: every block a request
/// counts as cached must be cached under that request's own hash.
fn build<P: Policy + ?Sized>(
    state: StateV2,
    config: SchedulerConfig,
    ref_counts: Vec<u32>,
    mut waiting: Box<P>,
    now_ns: u64,
) -> Result<Scheduler<P>, StateError> {
    let pool = BlockPool::restore(ref_counts, &state.free_blocks, &state.cached_blocks);
    let mut kv = KvCacheManager::from_parts(
        pool,
        config.block_size,
        config.max_model_len,
        config.enable_prefix_caching,
        state.prefix_cache_stats,
    );
    if config.enable_kv_cache_events {
        kv.enable_events();
    }
    let mut requests = RequestTable::default();
    let handles: Vec<ReqIdx> = state
        .requests
        .into_iter()
        .map(|mut request| {
            if let Some(hasher) = kv.block_hasher() {
                request.update_block_hashes(hasher);
            }
            requests.insert(request)
        })
        .collect();
    for &idx in &handles {
        let request = &requests[idx];
        let (cached, uncached) = request
            .block_ids
            .split_at(request.num_cached_blocks as usize);
        if uncached
            .iter()
            .any(|&block| kv.pool().block_hash(block).is_some())
        {
            return Err(inconsistent(format!(
                "request {:?}: a block past its cached prefix is cached",
                request.id
            )));
        }
        for (&block, hash) in cached.iter().zip(&request.block_hashes) {
            if kv.pool().block_hash(block) != Some(*hash) {
                return Err(inconsistent(format!(
                    "request {:?}: block {block} is not cached under its hash",
                    request.id
                )));
            }
        }
    }
    let (exporter, accounting) = &state.policy;
    waiting.import_state(exporter, accounting);
    for &index in &state.waiting {
        let idx = handles[index as usize];
        waiting.enqueue(
            &RequestView::new(&requests[idx], now_ns),
            Ticket(idx),
            Enqueue::Imported,
        );
    }
    let journey = config.journey.enabled.then(|| {
        let mut recorder = JourneyRecorder::default();
        for &(index, hiwater, first) in state.journey.iter().flatten() {
            recorder.restore(handles[index as usize], hiwater, first);
        }
        recorder
    });
    Ok(Scheduler {
        config,
        kv,
        running: state.running.iter().map(|&i| handles[i as usize]).collect(),
        waiting,
        finished_since_schedule: state.finished_since_schedule,
        preempted_since_schedule: state.preempted_since_schedule,
        step: state.step,
        in_flight: state.in_flight.map(|(step, entries)| InFlight {
            step,
            entries: entries
                .into_iter()
                .filter_map(|(index, sample)| Some((handles[index? as usize], sample)))
                .collect(),
        }),
        journey,
        step_tracer: config
            .step_tracing
            .enabled
            .then(|| match state.step_tracer {
                Some(tracer) => tracer.resume(config.step_tracing),
                None => StepTracer::new(config.step_tracing),
            }),
        num_preemptions_total: state.num_preemptions_total,
        next_handle: state.next_handle,
        requests,
    })
}
