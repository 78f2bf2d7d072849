//! The records the scheduler exchanges with its caller: what one step computes, what the model
//! sampled, and what each call reports back.

use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use crate::journey::JourneyEvent;
use crate::kv::{KvEvent, PrefixCacheStats};
use crate::request::{FinishStatus, RequestId};
use crate::step_trace::StepEvent;

/// The name the scheduler gives a request when it accepts it. Every per-step record names
/// requests by handle; a handle is never reused, so a stale one names nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RequestHandle(pub u64);

impl core::fmt::Display for RequestHandle {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Hashes request handles for maps keyed by them. Handles are issued in arrival order, so a
/// step's requests have neighbouring handles; this keeps them in neighbouring buckets of a map
/// (the Fx hash scatters them over it, and in a long queue every lookup then misses the cache),
/// while the high bits, which a map's control bytes compare, still differ between neighbours.
#[derive(Clone, Copy, Debug, Default)]
pub struct HandleHasher(u64);

impl core::hash::Hasher for HandleHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    /// A handle reaches only `write_u64`; other keys fold their bytes through it.
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(self.0.rotate_left(8) ^ u64::from(byte));
        }
    }

    fn write_u64(&mut self, handle: u64) {
        self.0 = handle ^ (handle << 25) ^ (handle << 57);
    }
}

/// Builds [`HandleHasher`]s, for maps keyed by [`RequestHandle`].
pub type BuildHandleHasher = core::hash::BuildHasherDefault<HandleHasher>;

/// A map keyed by request handle, neighbouring handles in neighbouring buckets: what every
/// per-request table of the scheduler, the engine and the simulator is keyed by.
pub type HandleMap<V> = hashbrown::HashMap<RequestHandle, V, BuildHandleHasher>;

/// What `add_request` reports: the request's handle and its QUEUED event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Added {
    /// The handle later records name the request by.
    pub handle: RequestHandle,
    /// The QUEUED event, if the request is sampled.
    pub journey_events: Vec<JourneyEvent>,
}

/// A request named by both its id and its handle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRef {
    /// The request id.
    pub id: RequestId,
    /// The scheduler-assigned handle.
    pub handle: RequestHandle,
    /// The request's client index.
    pub client_index: u32,
}

/// How a scheduled request relates to the previous step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduledKind {
    /// Admitted for the first time: `block_ids` is the whole block table.
    New,
    /// Admitted again after preemption: `block_ids` is the whole block table, and every token
    /// so far (prompt and output) is computed again.
    Resumed,
    /// Already running: `block_ids` holds only blocks added this step.
    Running,
}

/// The record of a batch entry that is new, resumed, or a running request given blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduledDetail {
    /// The entry's position in the batch.
    pub index: u32,
    /// New, resumed or running.
    pub kind: ScheduledKind,
    /// How many of [`ScheduledBatch::block_ids`] are this entry's: all of its blocks for new and
    /// resumed requests, only the added ones for running requests.
    pub num_blocks: u32,
}

/// One step's work as parallel lists, one position per scheduled request in scheduling order
/// (the shape of vLLM's `CachedRequestData`): a decode step is a few flat arrays, and a
/// position carries a [`ScheduledDetail`] only when it has blocks to tell. The details' blocks
/// share one list, so a step's blocks cross the boundary as one array however many entries
/// have some.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduledBatch {
    /// The requests.
    pub handles: Vec<RequestHandle>,
    /// Tokens with KV already in the cache before this step (prefix hit for new requests).
    pub num_computed_tokens: Vec<u32>,
    /// Tokens to compute this step, from position `num_computed_tokens` on.
    pub num_scheduled_tokens: Vec<u32>,
    /// Whether the step completes the request's known tokens, so one token is sampled for it.
    pub sample: Vec<bool>,
    /// Details of the positions that have any, in position order; every other position is a
    /// running request with no new blocks.
    pub details: Vec<ScheduledDetail>,
    /// The details' blocks, in detail order: each detail's `num_blocks` follow those of the
    /// details before it.
    pub block_ids: Vec<u32>,
}

/// One position of a [`ScheduledBatch`], its detail filled in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScheduledEntry<'a> {
    /// The request.
    pub handle: RequestHandle,
    /// New, resumed or running.
    pub kind: ScheduledKind,
    /// Tokens computed before this step.
    pub num_computed_tokens: u32,
    /// Tokens to compute this step.
    pub num_scheduled_tokens: u32,
    /// Blocks given this step (see [`ScheduledDetail::num_blocks`]).
    pub block_ids: &'a [u32],
    /// Whether one token is sampled.
    pub sample: bool,
}

impl ScheduledBatch {
    /// An empty batch with room for `capacity` entries.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            handles: Vec::with_capacity(capacity),
            num_computed_tokens: Vec::with_capacity(capacity),
            num_scheduled_tokens: Vec::with_capacity(capacity),
            sample: Vec::with_capacity(capacity),
            details: Vec::new(),
            block_ids: Vec::new(),
        }
    }

    /// Scheduled requests.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Whether nothing is scheduled.
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// Whether every parallel list has one value per handle, the details are in order within
    /// the batch and their blocks add up to the block list; a batch from an untrusted scheduler
    /// is checked with this first.
    pub fn is_well_formed(&self) -> bool {
        let count = self.handles.len();
        let lists = [
            self.num_computed_tokens.len(),
            self.num_scheduled_tokens.len(),
            self.sample.len(),
        ];
        let mut next = 0;
        let mut num_blocks: u64 = 0;
        lists.iter().all(|&len| len == count)
            && self.details.iter().all(|detail| {
                let index = detail.index as usize;
                let in_order = index >= next && index < count;
                next = index + 1;
                num_blocks += u64::from(detail.num_blocks);
                in_order
            })
            && num_blocks == self.block_ids.len() as u64
    }

    /// Append an entry: a running request given no new blocks, unless
    /// [`Self::set_last_detail`] says otherwise.
    #[inline]
    pub fn push(
        &mut self,
        handle: RequestHandle,
        num_computed_tokens: u32,
        num_scheduled_tokens: u32,
        sample: bool,
    ) {
        self.handles.push(handle);
        self.num_computed_tokens.push(num_computed_tokens);
        self.num_scheduled_tokens.push(num_scheduled_tokens);
        self.sample.push(sample);
    }

    /// Give the entry pushed last its kind and blocks.
    pub fn set_last_detail(&mut self, kind: ScheduledKind, block_ids: &[u32]) {
        self.details.push(ScheduledDetail {
            index: self.handles.len().saturating_sub(1) as u32,
            kind,
            num_blocks: block_ids.len() as u32,
        });
        self.block_ids.extend_from_slice(block_ids);
    }

    /// Remove the entry at `index`, shifting later ones (and their details) down.
    pub fn remove(&mut self, index: usize) {
        self.handles.remove(index);
        self.num_computed_tokens.remove(index);
        self.num_scheduled_tokens.remove(index);
        self.sample.remove(index);
        let index = index as u32;
        let mut first_block = 0;
        for detail in &self.details {
            if detail.index >= index {
                if detail.index == index {
                    let blocks = first_block..first_block + detail.num_blocks as usize;
                    self.block_ids.drain(blocks);
                }
                break;
            }
            first_block += detail.num_blocks as usize;
        }
        self.details.retain(|detail| detail.index != index);
        for detail in &mut self.details {
            if detail.index > index {
                detail.index -= 1;
            }
        }
    }

    /// Each detail with its share of [`Self::block_ids`], in order. For a well-formed batch (in
    /// a malformed one, a detail past the list's end gets what is left).
    pub fn detail_blocks(&self) -> impl Iterator<Item = (&ScheduledDetail, &[u32])> + '_ {
        let mut blocks = self.block_ids.as_slice();
        self.details.iter().map(move |detail| {
            let (these, rest) = blocks
                .split_at_checked(detail.num_blocks as usize)
                .unwrap_or((blocks, &[]));
            blocks = rest;
            (detail, these)
        })
    }

    /// The entries in order, details filled in. For a well-formed batch (a malformed one ends
    /// at its shortest list).
    pub fn entries(&self) -> impl Iterator<Item = ScheduledEntry<'_>> + '_ {
        let mut details = self.detail_blocks().peekable();
        let lists = self
            .handles
            .iter()
            .zip(&self.num_computed_tokens)
            .zip(&self.num_scheduled_tokens)
            .zip(&self.sample);
        lists.enumerate().map(
            move |(index, (((&handle, &num_computed_tokens), &num_scheduled_tokens), &sample))| {
                let detail = details.next_if(|(detail, _)| detail.index as usize == index);
                ScheduledEntry {
                    handle,
                    kind: detail.map_or(ScheduledKind::Running, |(detail, _)| detail.kind),
                    num_computed_tokens,
                    num_scheduled_tokens,
                    block_ids: detail.map_or(&[], |(_, blocks)| blocks),
                    sample,
                }
            },
        )
    }
}

/// What `schedule` decided for one step.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[must_use = "the step's work and events are only here"]
pub struct SchedulerOutput {
    /// This step's number (the counter after its increment; the first step is 1).
    pub step: u64,
    /// Scheduled requests: running ones first, then admissions, in scheduling order.
    pub batch: ScheduledBatch,
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
    /// Changes to the prefix cache in this call, in order (with KV events on).
    pub kv_events: Vec<KvEvent>,
}

/// What the model produced for the step in flight: one entry per batch position, in the same
/// order; `Some(token)` exactly where a token was sampled.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelOutput {
    /// The sampled token of each scheduled request.
    pub sampled_token_ids: Vec<Option<u32>>,
}

/// A request that finished with the token at position `index` of the step's outputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputFinish {
    /// Position in [`EngineOutputs::handles`].
    pub index: u32,
    /// Why it finished.
    pub status: FinishStatus,
    /// The stop token id that finished it, if one did.
    pub stop_reason: Option<u32>,
}

/// What `update_from_output` reports: new tokens as parallel lists, `token_ids[i]` appended to
/// request `handles[i]`, in scheduling order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[must_use = "new tokens, finishes and events are only here"]
pub struct EngineOutputs {
    /// The step these outputs belong to.
    pub step: u64,
    /// Requests that gained a token.
    pub handles: Vec<RequestHandle>,
    /// The token each gained.
    pub token_ids: Vec<u32>,
    /// Positions whose token finished their request, in position order.
    pub finishes: Vec<OutputFinish>,
    /// Journey events of this call, in emission order.
    pub journey_events: Vec<JourneyEvent>,
}

impl EngineOutputs {
    /// Each new token with its request and, where the token ended it, the finish.
    pub fn tokens(&self) -> impl Iterator<Item = (RequestHandle, u32, Option<&OutputFinish>)> + '_ {
        let mut finishes = self.finishes.iter().peekable();
        self.handles.iter().zip(&self.token_ids).enumerate().map(
            move |(index, (&handle, &token))| {
                let finish = finishes.next_if(|finish| finish.index as usize == index);
                (handle, token, finish)
            },
        )
    }
}

/// A request the scheduler holds, as a host needs to know it to check later results (after a
/// state import, say).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveRequest {
    /// Its handle.
    pub handle: RequestHandle,
    /// Its id.
    pub request_id: RequestId,
    /// Its client.
    pub client_index: u32,
    /// Prompt and generated tokens.
    pub num_tokens: u32,
    /// KV blocks it holds.
    pub num_blocks: u32,
    /// Finished since the last `schedule`, which will report it.
    pub finished: bool,
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
    /// `AllBlocksCleared` when the cache was cleared (with KV events on).
    pub kv_events: Vec<KvEvent>,
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

#[cfg(test)]
mod tests {
    use core::hash::BuildHasher;

    use alloc::vec::Vec;

    use super::{BuildHandleHasher, RequestHandle, ScheduledBatch, ScheduledKind};

    #[test]
    fn removing_an_entry_takes_its_blocks_and_leaves_the_others_with_theirs() {
        let mut batch = ScheduledBatch::with_capacity(4);
        batch.push(RequestHandle(1), 0, 32, true);
        batch.set_last_detail(ScheduledKind::New, &[3, 4]);
        batch.push(RequestHandle(2), 15, 1, true);
        batch.push(RequestHandle(3), 16, 1, true);
        batch.set_last_detail(ScheduledKind::Running, &[7]);
        batch.push(RequestHandle(4), 0, 20, true);
        batch.set_last_detail(ScheduledKind::Resumed, &[8, 9]);
        assert!(batch.is_well_formed());
        batch.remove(2);
        assert!(batch.is_well_formed());
        let blocks: Vec<(u64, &[u32])> = batch
            .entries()
            .map(|entry| (entry.handle.0, entry.block_ids))
            .collect();
        assert_eq!(blocks, [(1, &[3, 4][..]), (2, &[][..]), (4, &[8, 9][..])]);
        batch.remove(0);
        assert_eq!(batch.block_ids, [8, 9]);
        assert_eq!(batch.details[0].index, 1);
        batch.details[0].num_blocks = 1;
        assert!(!batch.is_well_formed(), "a block no detail counts");
    }

    #[test]
    fn neighbouring_handles_hash_to_neighbouring_buckets_with_different_control_bytes() {
        let hash = |handle: u64| BuildHandleHasher::default().hash_one(RequestHandle(handle));
        let bucket_mask = (1u64 << 20) - 1;
        for first in [0, 1 << 20, u64::MAX - 200] {
            for handle in first..first.saturating_add(128) {
                let next = handle.wrapping_add(1);
                assert_eq!(
                    (hash(next) & bucket_mask).wrapping_sub(hash(handle) & bucket_mask)
                        & bucket_mask,
                    1,
                    "handle {handle}"
                );
                // A hashbrown map tells entries apart by the top 7 bits of the hash, of the low
                // 32 bits where `usize` is 32 bits wide (the wasm32 guest).
                assert_ne!(hash(handle) >> 57, hash(next) >> 57, "handle {handle}");
                assert_ne!(
                    (hash(handle) as u32) >> 25,
                    (hash(next) as u32) >> 25,
                    "handle {handle}"
                );
            }
        }
    }
}
