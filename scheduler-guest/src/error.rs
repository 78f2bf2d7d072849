//! Typed errors of the scheduler: bad configuration, bad requests, bad model output.

use alloc::string::String;

use thiserror::Error;

/// The free queue had fewer blocks than asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[error("no free blocks available")]
pub struct NoFreeBlocks;

/// A [`crate::SchedulerConfig`] that cannot work.
#[derive(Clone, Debug, PartialEq, Error)]
pub enum ConfigError {
    /// `block_size` is 0.
    #[error("block_size must be at least 1")]
    ZeroBlockSize,
    /// Fewer than two blocks: block 0 is reserved, so nothing would be usable.
    #[error("num_blocks must be at least 2 (block 0 is reserved), got {num_blocks}")]
    TooFewBlocks {
        /// The configured value.
        num_blocks: u32,
    },
    /// `max_num_seqs` is 0.
    #[error("max_num_seqs must be at least 1")]
    ZeroMaxNumSeqs,
    /// `max_model_len` is 0.
    #[error("max_model_len must be at least 1")]
    ZeroMaxModelLen,
    /// The token budget cannot hold one block.
    #[error("max_num_batched_tokens ({max_num_batched_tokens}) is smaller than block_size ({block_size})")]
    BudgetBelowBlockSize {
        /// The configured budget.
        max_num_batched_tokens: u32,
        /// The configured block size.
        block_size: u32,
    },
    /// The token budget is smaller than the number of sequences it must serve.
    #[error("max_num_batched_tokens ({max_num_batched_tokens}) is smaller than max_num_seqs ({max_num_seqs})")]
    BudgetBelowMaxNumSeqs {
        /// The configured budget.
        max_num_batched_tokens: u32,
        /// The configured sequence cap.
        max_num_seqs: u32,
    },
    /// Without chunked prefill a whole prompt must fit in one step's budget.
    #[error("without chunked prefill, max_num_batched_tokens ({max_num_batched_tokens}) must be at least max_model_len ({max_model_len})")]
    BudgetBelowModelLenUnchunked {
        /// The configured budget.
        max_num_batched_tokens: u32,
        /// The configured model length.
        max_model_len: u32,
    },
    /// The KV cache cannot hold one sequence of `max_model_len` tokens.
    #[error("the KV cache holds {capacity_tokens} tokens ({usable_blocks} usable blocks of {block_size}), fewer than max_model_len ({max_model_len})")]
    KvCacheTooSmall {
        /// `(num_blocks - 1) * block_size`.
        capacity_tokens: u64,
        /// `num_blocks - 1`.
        usable_blocks: u32,
        /// The configured block size.
        block_size: u32,
        /// The configured model length.
        max_model_len: u32,
    },
    /// `long_prefill_token_threshold` exceeds `max_model_len`.
    #[error("long_prefill_token_threshold ({threshold}) exceeds max_model_len ({max_model_len})")]
    ThresholdAboveModelLen {
        /// The configured threshold.
        threshold: u32,
        /// The configured model length.
        max_model_len: u32,
    },
    /// `step_tracing.sample_rate` outside `[0, 1]`.
    #[error("step_tracing.sample_rate must be within [0, 1], got {0}")]
    SampleRateOutOfRange(f64),
    /// `step_tracing.rich_subsample_rate` outside `[0, 1]`.
    #[error("step_tracing.rich_subsample_rate must be within [0, 1], got {0}")]
    RichSubsampleRateOutOfRange(f64),
    /// `step_tracing.closure_interval` outside `[10, 10000]`.
    #[error("step tracing closure_interval must be within [10, 10000], got {0}")]
    ClosureIntervalOutOfRange(u32),
}

/// A submission [`crate::Scheduler::add_request`] rejected; nothing was changed.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum RequestError {
    /// An unfinished request already has this id.
    #[error("request id {id:?} is already in use")]
    DuplicateId {
        /// The id.
        id: String,
    },
    /// The prompt has no tokens.
    #[error("request {id:?} has an empty prompt")]
    EmptyPrompt {
        /// The id.
        id: String,
    },
    /// The prompt leaves no room for output (it is not shorter than `max_model_len`).
    #[error(
        "request {id:?} has {prompt_len} prompt tokens; a prompt must be shorter than max_model_len ({max_model_len}) to leave room for output"
    )]
    PromptTooLong {
        /// The id.
        id: String,
        /// Its prompt length.
        prompt_len: u32,
        /// The limit.
        max_model_len: u32,
    },
    /// `max_tokens` is 0.
    #[error("request {id:?} asks for max_tokens = 0")]
    ZeroMaxTokens {
        /// The id.
        id: String,
    },
    /// `min_tokens` exceeds `max_tokens`.
    #[error("request {id:?} has min_tokens ({min_tokens}) above max_tokens ({max_tokens})")]
    MinTokensAboveMaxTokens {
        /// The id.
        id: String,
        /// Requested minimum.
        min_tokens: u32,
        /// Requested maximum.
        max_tokens: u32,
    },
    /// A recovered request that already has all its output tokens, or no room for another.
    #[error("recovered request {id:?} has no output left to generate")]
    NothingToRecover {
        /// The id.
        id: String,
    },
}

/// A model output [`crate::Scheduler::update_from_output`] rejected; nothing was changed.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum OutputError {
    /// No `schedule()` output is waiting for its model results.
    #[error("no scheduled step is waiting for model output")]
    NoStepInFlight,
    /// One entry per scheduled request is required.
    #[error("model output has {got} entries, the step scheduled {expected} requests")]
    LengthMismatch {
        /// Requests scheduled.
        expected: usize,
        /// Entries given.
        got: usize,
    },
    /// A token for a request whose prompt was not complete after the step.
    #[error("request {id:?} got a token while still in prefill")]
    TokenDuringPrefill {
        /// The request.
        id: String,
    },
}

/// A state [`crate::Scheduler::import_state`] rejected.
#[derive(Clone, Debug, PartialEq, Error)]
pub enum StateError {
    /// The bytes do not start with the state header.
    #[error("not a Waypoint scheduler state")]
    NotAState,
    /// Written by an incompatible version of the state format.
    #[error("unsupported scheduler state version {0}")]
    UnsupportedVersion(u32),
    /// Truncated or not decodable.
    #[error("malformed scheduler state: {0}")]
    Malformed(String),
    /// Decodable, but its parts contradict each other.
    #[error("inconsistent scheduler state: {0}")]
    Inconsistent(String),
    /// Its configuration is invalid.
    #[error("scheduler state has an invalid configuration: {0}")]
    Config(#[from] ConfigError),
}
