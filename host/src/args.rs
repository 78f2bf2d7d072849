//! Engine flags shared by the commands that run a scheduler (vLLM's names where they exist).

use clap::Args;
use waypoint_scheduler::{JourneyConfig, SchedulerConfig};

/// Scheduler and KV cache settings.
#[derive(Args, Clone, Debug)]
pub struct EngineArgs {
    /// Most requests running at once.
    #[arg(long, default_value_t = 128)]
    pub max_num_seqs: u32,
    /// Token budget of one engine step.
    #[arg(long, default_value_t = 2048)]
    pub max_num_batched_tokens: u32,
    /// Longest sequence (prompt and output) a request may reach.
    #[arg(long, default_value_t = 4096)]
    pub max_model_len: u32,
    /// KV cache blocks (block 0 is reserved).
    #[arg(long, alias = "num-gpu-blocks-override", default_value_t = 8192)]
    pub num_blocks: u32,
    /// Tokens per KV block.
    #[arg(long, default_value_t = 16)]
    pub block_size: u32,
    /// Reuse the KV of identical prompt prefixes (on by default).
    #[arg(long, overrides_with = "no_enable_prefix_caching")]
    pub enable_prefix_caching: bool,
    /// Turn prefix caching off.
    #[arg(long)]
    pub no_enable_prefix_caching: bool,
    /// Turn chunked prefill off (a prompt must then fit one step's budget).
    #[arg(long)]
    pub no_enable_chunked_prefill: bool,
    /// Cap on one request's prefill chunk per step (0: none).
    #[arg(long, default_value_t = 0)]
    pub long_prefill_token_threshold: u32,
}

impl EngineArgs {
    /// The scheduler configuration these flags describe, with journey tracing as given.
    pub fn config(&self, journey: bool) -> SchedulerConfig {
        SchedulerConfig {
            max_num_seqs: self.max_num_seqs,
            max_num_batched_tokens: self.max_num_batched_tokens,
            max_model_len: self.max_model_len,
            num_blocks: self.num_blocks,
            block_size: self.block_size,
            enable_prefix_caching: !self.no_enable_prefix_caching,
            enable_chunked_prefill: !self.no_enable_chunked_prefill,
            long_prefill_token_threshold: self.long_prefill_token_threshold,
            journey: JourneyConfig { enabled: journey },
            ..SchedulerConfig::default()
        }
    }
}
