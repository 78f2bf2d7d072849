//! Faults of a policy component: what went wrong inside it, and which rule of the contract a
//! result it returned breaks.

use thiserror::Error;
use waypoint_scheduler::RequestHandle;

/// A fault of a guest component, as opposed to an error the scheduler reported.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum GuestFault {
    /// The guest trapped (a panic, an out-of-bounds access, an allocation failure, ...).
    #[error("the scheduler guest trapped: {0}")]
    Trap(String),
    /// A call ran past the per-call CPU limit.
    #[error("the scheduler guest ran past its {limit_ms} ms limit per call")]
    Timeout {
        /// The limit.
        limit_ms: u64,
    },
    /// The guest tried to grow its memory past the limit.
    #[error("the scheduler guest exceeded its memory limit of {limit_bytes} bytes")]
    MemoryLimit {
        /// The limit.
        limit_bytes: usize,
    },
    /// An earlier fault left the instance unusable until it is reloaded.
    #[error("the scheduler guest is unavailable after an earlier fault; it must be reloaded")]
    Unavailable,
    /// The guest returned something the contract rules out.
    #[error("the scheduler guest broke the contract: {0}")]
    Contract(#[from] ContractViolation),
    /// The file is not a policy component of this host's contract.
    #[error("not a waypoint:scheduler policy component: {0}")]
    Incompatible(String),
}

/// Which call a violation was found in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// `add-request`.
    AddRequest,
    /// `schedule`.
    Schedule,
    /// `update-from-output`.
    UpdateFromOutput,
    /// `finish-requests`.
    FinishRequests,
    /// `reset-prefix-cache`.
    ResetPrefixCache,
    /// `live-requests` (after an import).
    LiveRequests,
    /// Any call: the binding could not read the record it returned.
    Transport,
}

impl std::fmt::Display for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::AddRequest => "add-request",
            Self::Schedule => "schedule",
            Self::UpdateFromOutput => "update-from-output",
            Self::FinishRequests => "finish-requests",
            Self::ResetPrefixCache => "reset-prefix-cache",
            Self::LiveRequests => "live-requests",
            Self::Transport => "reading a result",
        })
    }
}

/// A result that breaks a rule of the contract, checked against the host's own view of the
/// live requests before anything uses it. Each variant is one rule.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ContractViolation {
    /// The record does not have the contract's shape (parallel lists of different lengths, an
    /// index past its list, a field of the wrong type).
    #[error("{call}: malformed result: {what}")]
    Malformed {
        /// The call.
        call: Call,
        /// What is wrong with it.
        what: String,
    },
    /// A handle the guest never returned from `add-request`, or of a finished request.
    #[error("{call}: unknown request handle {handle}")]
    UnknownHandle {
        /// The call.
        call: Call,
        /// The handle.
        handle: RequestHandle,
    },
    /// A handle named twice in one step's batch, or twice among one call's outputs.
    #[error("{call}: request handle {handle} is named twice")]
    RepeatedHandle {
        /// The call.
        call: Call,
        /// The handle.
        handle: RequestHandle,
    },
    /// A preempted or finished reference whose id is not its handle's request.
    #[error("{call}: request handle {handle} belongs to another request than {id:?}")]
    MismatchedReference {
        /// The call.
        call: Call,
        /// The handle.
        handle: RequestHandle,
        /// The id the guest paired with it.
        id: String,
    },
    /// `add-request` returned a handle that a live request already has.
    #[error("add-request: handle {handle} already belongs to a live request")]
    HandleReused {
        /// The handle.
        handle: RequestHandle,
    },
    /// An entry's range runs past the tokens the request has (computed + scheduled ≤ prompt +
    /// generated).
    #[error("schedule: request {id} has {known} tokens, but {computed} computed + {scheduled} scheduled were named")]
    RangePastKnownTokens {
        /// The request.
        id: String,
        /// Tokens the entry says are computed.
        computed: u32,
        /// Tokens it schedules.
        scheduled: u32,
        /// Tokens the request has.
        known: u32,
    },
    /// An entry with nothing to compute.
    #[error("schedule: request {id} is scheduled with no tokens")]
    EmptyEntry {
        /// The request.
        id: String,
    },
    /// A block id outside the cache (`1..num_blocks`; block 0 is reserved).
    #[error("schedule: block {block} of request {id} is outside 1..{num_blocks}")]
    BlockOutOfRange {
        /// The request.
        id: String,
        /// The block id.
        block: u32,
        /// Blocks in the cache.
        num_blocks: u32,
    },
    /// Fewer blocks than the entry's range needs.
    #[error("schedule: request {id} needs {needed} blocks for its range but has {have}")]
    TooFewBlocks {
        /// The request.
        id: String,
        /// Blocks its range needs.
        needed: u32,
        /// Blocks it has.
        have: u32,
    },
    /// The step schedules more tokens than `max_num_batched_tokens`.
    #[error("schedule: {total} tokens scheduled, over the budget of {budget}")]
    OverTokenBudget {
        /// Tokens scheduled.
        total: u64,
        /// The budget.
        budget: u32,
    },
    /// The step's stated total is not the sum of its entries.
    #[error("schedule: the step states {stated} tokens but its entries sum to {sum}")]
    TotalMismatch {
        /// The stated total.
        stated: u32,
        /// The sum.
        sum: u64,
    },
    /// The step schedules more requests than `max_num_seqs`.
    #[error("schedule: {entries} requests scheduled, over max_num_seqs {max_num_seqs}")]
    TooManyEntries {
        /// Entries in the batch.
        entries: usize,
        /// The limit.
        max_num_seqs: u32,
    },
    /// A token is sampled for a request whose known tokens are not all computed.
    #[error("schedule: request {id} samples before its last known token is computed")]
    SampleBeforeEnd {
        /// The request.
        id: String,
    },
    /// An output for a request that was not sampled in the step, or with another token than the
    /// model sampled.
    #[error("update-from-output: request {id} got token {token}, which the model did not sample for it in this step")]
    UnsampledOutput {
        /// The request.
        id: String,
        /// The token.
        token: u32,
    },
    /// An event or a list of ids names a request that is not live.
    #[error("{call}: request id {id:?} is not a live request")]
    UnknownRequestId {
        /// The call.
        call: Call,
        /// The id.
        id: String,
    },
    /// `finish-requests` reports a request it was not asked to finish.
    #[error("finish-requests: request {id:?} was not asked to finish")]
    UnaskedFinish {
        /// The id.
        id: String,
    },
    /// Statistics outside their bounds.
    #[error("stats: {0}")]
    StatsOutOfBounds(String),
    /// KV events that could not come from the configured cache: events with events off, a
    /// stored block without `block_size` tokens, more blocks than the cache has, a clear
    /// outside a reset.
    #[error("{call}: impossible KV events: {what}")]
    ImpossibleKvEvents {
        /// The call.
        call: Call,
        /// What is impossible about them.
        what: String,
    },
}

/// The request a violation is about, by its id or by its handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NamedRequest<'a> {
    /// By id.
    Id(&'a str),
    /// By the handle the guest gave it.
    Handle(RequestHandle),
}

impl ContractViolation {
    /// The live request this violation is about, if it names one. A recovery counts it against
    /// that request, which fails only when faults keep naming it.
    pub fn named_request(&self) -> Option<NamedRequest<'_>> {
        match self {
            Self::RepeatedHandle { handle, .. } | Self::MismatchedReference { handle, .. } => {
                Some(NamedRequest::Handle(*handle))
            }
            Self::RangePastKnownTokens { id, .. }
            | Self::EmptyEntry { id, .. }
            | Self::BlockOutOfRange { id, .. }
            | Self::TooFewBlocks { id, .. }
            | Self::SampleBeforeEnd { id, .. }
            | Self::UnsampledOutput { id, .. }
            | Self::UnaskedFinish { id, .. } => Some(NamedRequest::Id(id)),
            _ => None,
        }
    }
}
