//! Requests: what a caller submits, and the scheduler's record of one request's progress and status.

use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use crate::kv::hash::{BlockHash, BlockHasher};
use crate::output::{RequestHandle, RequestRef};

/// A request id, shared cheaply between the scheduler's tables and its outputs.
pub type RequestId = Arc<str>;

/// A request as a caller submits it to [`crate::Scheduler::add_request`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewRequest {
    /// Unique among the scheduler's unfinished requests.
    pub id: String,
    /// The front end or tenant the request came from; events and outputs carry it for routing.
    pub client_index: u32,
    /// Prompt token ids; must not be empty and not longer than `max_model_len`.
    pub prompt_token_ids: Vec<u32>,
    /// Most output tokens to generate; at least 1.
    pub max_tokens: u32,
    /// EOS and stop tokens do not stop the request before it has this many output tokens.
    pub min_tokens: u32,
    /// The end-of-sequence token, or `None` to ignore EOS (`ignore_eos`).
    pub eos_token_id: Option<u32>,
    /// Further token ids that stop the request.
    pub stop_token_ids: Vec<u32>,
    /// Priority for the priority policy: lower values are served first.
    pub priority: i32,
    /// Arrival time in the caller's monotonic nanoseconds; orders requests of equal priority.
    pub arrival_ns: u64,
    /// When the request should have finished, on the same clock (deadline-aware policies).
    pub deadline_ns: Option<u64>,
    /// Whether this request records journey events (decided once by the caller).
    pub journey_sampled: bool,
    /// Isolates this request's prefix-cache entries from requests with another salt.
    pub cache_salt: Option<String>,
    /// Set when the request is resubmitted after the scheduler that held it faulted.
    pub recovery: Option<Recovery>,
}

/// What a request had when the scheduler holding it faulted. It is resubmitted with this and
/// recomputed like a preempted request, so its client sees a pause; its journey goes on with
/// RECOVERED instead of a second QUEUED.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recovery {
    /// The tokens it had generated; it keeps them.
    pub output_token_ids: Vec<u32>,
    /// Its preemptions so far.
    pub num_preemptions: u32,
    /// Whether it had been scheduled: its next scheduling is then a resume.
    pub was_scheduled: bool,
}

impl NewRequest {
    /// A request with the given id and prompt and defaults for everything else: 16 output tokens,
    /// no EOS, priority 0, client 0, arrival 0, no deadline, journey sampled.
    pub fn new(id: impl Into<String>, prompt_token_ids: Vec<u32>) -> Self {
        Self {
            id: id.into(),
            client_index: 0,
            prompt_token_ids,
            max_tokens: 16,
            min_tokens: 0,
            eos_token_id: None,
            stop_token_ids: Vec::new(),
            priority: 0,
            arrival_ns: 0,
            deadline_ns: None,
            journey_sampled: true,
            cache_salt: None,
            recovery: None,
        }
    }
}

/// Why a request finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishStatus {
    /// EOS or a stop token (or the caller finished it as stopped, e.g. on a stop string).
    Stopped,
    /// `max_tokens` or `max_model_len` reached.
    #[serde(rename = "length")]
    LengthCapped,
    /// Aborted by the caller (client went away, shutdown).
    Aborted,
    /// Rejected without running (kept for callers that report over-long prompts this way).
    Ignored,
    /// Failed (guest trap, model error).
    Error,
}

impl FinishStatus {
    /// The journey `finish_status` string: `stopped`, `length`, `aborted`, `ignored` or `error`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stopped => "stopped",
            Self::LengthCapped => "length",
            Self::Aborted => "aborted",
            Self::Ignored => "ignored",
            Self::Error => "error",
        }
    }

    /// The OpenAI `finish_reason`: `stop`, `length`, `abort` or `error` (ignored maps to length).
    pub fn finish_reason(self) -> &'static str {
        match self {
            Self::Stopped => "stop",
            Self::LengthCapped | Self::Ignored => "length",
            Self::Aborted => "abort",
            Self::Error => "error",
        }
    }
}

/// Where a request is in its life: WAITING → RUNNING ⇄ PREEMPTED → … → FINISHED_*.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestStatus {
    /// In the waiting queue, never scheduled.
    Waiting,
    /// Admitted: holds KV blocks and is in the running list.
    Running,
    /// Preempted by recompute: back in the waiting queue with no blocks.
    Preempted,
    /// Terminal.
    Finished(FinishStatus),
}

impl RequestStatus {
    /// Whether the status is terminal.
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Finished(_))
    }
}

/// The scheduler's record of one request.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Request {
    pub(crate) id: RequestId,
    /// Dense numeric name the scheduler gave the request at submission (1, 2, 3, ...): what the
    /// WIT contract uses in per-step records instead of the id string.
    pub(crate) handle: RequestHandle,
    pub(crate) client_index: u32,
    pub(crate) status: RequestStatus,
    pub(crate) priority: i32,
    pub(crate) arrival_ns: u64,
    pub(crate) deadline_ns: Option<u64>,
    pub(crate) token_ids: Vec<u32>,
    pub(crate) prompt_len: u32,
    pub(crate) max_tokens: u32,
    pub(crate) min_tokens: u32,
    pub(crate) eos_token_id: Option<u32>,
    pub(crate) stop_token_ids: Vec<u32>,
    pub(crate) num_computed_tokens: u32,
    pub(crate) num_cached_tokens: Option<u32>,
    pub(crate) num_preemptions: u32,
    pub(crate) journey_sampled: bool,
    pub(crate) cache_salt: Option<String>,
    pub(crate) stop_reason: Option<u32>,
    /// Hashes of every full block of `token_ids` (kept only with prefix caching on); derived
    /// from the tokens, so a state import recomputes them.
    #[serde(skip)]
    pub(crate) block_hashes: Vec<BlockHash>,
    /// The request's block table: KV block ids in sequence order.
    pub(crate) block_ids: Vec<u32>,
    /// How many leading blocks of `block_ids` are in the prefix-cache table.
    pub(crate) num_cached_blocks: u32,
    /// Tokens scheduled for this request in step `scheduled_step` (for step snapshots).
    pub(crate) scheduled_step: u64,
    pub(crate) scheduled_tokens: u32,
}

impl Request {
    /// Build the record for a validated submission. `hash_block_size` is the block size when
    /// prefix caching is on (block hashes are then kept), `None` otherwise.
    pub fn new(new: NewRequest, handle: RequestHandle, hash_block_size: Option<u32>) -> Self {
        let prompt_len = new.prompt_token_ids.len() as u32;
        let recovery = new.recovery.unwrap_or_default();
        let mut token_ids = new.prompt_token_ids;
        token_ids.extend_from_slice(&recovery.output_token_ids);
        let mut request = Self {
            id: Arc::from(new.id),
            handle,
            client_index: new.client_index,
            status: if recovery.was_scheduled {
                RequestStatus::Preempted
            } else {
                RequestStatus::Waiting
            },
            priority: new.priority,
            arrival_ns: new.arrival_ns,
            deadline_ns: new.deadline_ns,
            token_ids,
            prompt_len,
            max_tokens: new.max_tokens,
            min_tokens: new.min_tokens,
            eos_token_id: new.eos_token_id,
            stop_token_ids: new.stop_token_ids,
            num_computed_tokens: 0,
            num_cached_tokens: None,
            num_preemptions: recovery.num_preemptions,
            journey_sampled: new.journey_sampled,
            cache_salt: new.cache_salt,
            stop_reason: None,
            block_hashes: Vec::new(),
            block_ids: Vec::new(),
            num_cached_blocks: 0,
            scheduled_step: 0,
            scheduled_tokens: 0,
        };
        if let Some(block_size) = hash_block_size {
            request.update_block_hashes(&mut BlockHasher::new(block_size));
        }
        request
    }

    pub(crate) fn update_block_hashes(&mut self, hasher: &mut BlockHasher) {
        hasher.extend(
            &mut self.block_hashes,
            &self.token_ids,
            self.cache_salt.as_deref(),
        );
    }

    /// The request id.
    pub fn id(&self) -> &RequestId {
        &self.id
    }
    /// The scheduler-assigned handle.
    pub fn handle(&self) -> RequestHandle {
        self.handle
    }
    /// The request's id and handle.
    pub fn reference(&self) -> RequestRef {
        RequestRef {
            id: self.id.clone(),
            handle: self.handle,
            client_index: self.client_index,
        }
    }
    /// The client (tenant) index.
    pub fn client_index(&self) -> u32 {
        self.client_index
    }
    /// Current status.
    pub fn status(&self) -> RequestStatus {
        self.status
    }
    /// Priority (lower first under the priority policy).
    pub fn priority(&self) -> i32 {
        self.priority
    }
    /// Arrival time, caller's monotonic ns.
    pub fn arrival_ns(&self) -> u64 {
        self.arrival_ns
    }
    /// Prompt and output tokens.
    pub fn all_token_ids(&self) -> &[u32] {
        &self.token_ids
    }
    /// Prompt tokens.
    pub fn prompt_token_ids(&self) -> &[u32] {
        &self.token_ids[..self.prompt_len as usize]
    }
    /// Output tokens so far.
    pub fn output_token_ids(&self) -> &[u32] {
        &self.token_ids[self.prompt_len as usize..]
    }
    /// Prompt length.
    pub fn num_prompt_tokens(&self) -> u32 {
        self.prompt_len
    }
    /// Prompt plus output length.
    pub fn num_tokens(&self) -> u32 {
        self.token_ids.len() as u32
    }
    /// Output tokens so far (survives preemption).
    pub fn num_output_tokens(&self) -> u32 {
        self.num_tokens() - self.prompt_len
    }
    /// Tokens whose KV is computed or scheduled in the step in flight.
    pub fn num_computed_tokens(&self) -> u32 {
        self.num_computed_tokens
    }
    /// Prefix-cache hit length at the first admission (`None` before it).
    pub fn num_cached_tokens(&self) -> Option<u32> {
        self.num_cached_tokens
    }
    /// How often the request was preempted.
    pub fn num_preemptions(&self) -> u32 {
        self.num_preemptions
    }
    /// `max_tokens`.
    pub fn max_tokens(&self) -> u32 {
        self.max_tokens
    }
    /// Whether the request records journey events.
    pub fn journey_sampled(&self) -> bool {
        self.journey_sampled
    }
    /// The stop token that finished the request, if one did.
    pub fn stop_reason(&self) -> Option<u32> {
        self.stop_reason
    }
    /// The block table.
    pub fn block_ids(&self) -> &[u32] {
        &self.block_ids
    }
    /// Leading blocks of the block table that are in the prefix-cache table.
    pub fn num_cached_blocks(&self) -> u32 {
        self.num_cached_blocks
    }
    /// Hashes of the request's full blocks.
    pub fn block_hashes(&self) -> &[BlockHash] {
        &self.block_hashes
    }

    /// Append one generated token (and the hash of a block it fills).
    #[inline]
    pub(crate) fn append_output_token(&mut self, token: u32, hasher: Option<&mut BlockHasher>) {
        self.token_ids.push(token);
        let Some(hasher) = hasher else {
            return;
        };
        // One token in `block_size` fills a block; the others skip the call and its division.
        let next_full = (self.block_hashes.len() as u64 + 1) * u64::from(hasher.block_size());
        if self.token_ids.len() as u64 >= next_full {
            self.update_block_hashes(hasher);
        }
    }

    /// The stop check after a token was appended: EOS and stop tokens (both held back until
    /// `min_tokens` is reached), then `max_tokens` and `max_model_len`.
    #[inline]
    pub(crate) fn check_stop(&mut self, max_model_len: u32) -> Option<FinishStatus> {
        let last = *self.token_ids.last()?;
        if self.num_output_tokens() >= self.min_tokens {
            if self.eos_token_id == Some(last) {
                return Some(FinishStatus::Stopped);
            }
            if self.stop_token_ids.contains(&last) {
                self.stop_reason = Some(last);
                return Some(FinishStatus::Stopped);
            }
        }
        if self.num_tokens() >= max_model_len || self.num_output_tokens() >= self.max_tokens {
            return Some(FinishStatus::LengthCapped);
        }
        None
    }
}
