//! Scheduler configuration and its validation.

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// Which waiting-queue and preemption policy the scheduler uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyKind {
    /// First come, first served; the most recently admitted running request is preempted.
    #[default]
    Fcfs,
    /// Lowest `(priority, arrival, id)` first; the worst `(priority, arrival)` is preempted.
    Priority,
    /// Fair sharing between clients: the client with the least scheduled tokens is admitted
    /// first; the client with the most is preempted first.
    Fair,
}

/// Journey tracing settings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JourneyConfig {
    /// Master switch: when off, no journey state exists and no journey event is produced,
    /// whatever a request's `journey_sampled` flag says.
    pub enabled: bool,
}

/// Step tracing settings (`--step-tracing-*`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepTracingConfig {
    /// Master switch.
    pub enabled: bool,
    /// Fraction of steps that produce a batch summary.
    pub sample_rate: f64,
    /// Fraction of summarised steps that also produce one snapshot per running request.
    pub rich_subsample_rate: f64,
    /// Steps per span window, 10..=10000.
    pub closure_interval: u32,
    /// Seed of the deterministic step sampler.
    pub seed: u64,
}

impl Default for StepTracingConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            sample_rate: 0.01,
            rich_subsample_rate: 0.001,
            closure_interval: 100,
            seed: 0,
        }
    }
}

/// Everything that shapes scheduling. Defaults follow vLLM 0.33's `SchedulerConfig` and
/// `CacheConfig` where a counterpart exists.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SchedulerConfig {
    /// Most requests in the running list.
    pub max_num_seqs: u32,
    /// Token budget of one step.
    pub max_num_batched_tokens: u32,
    /// Longest sequence (prompt plus output) a request may reach.
    pub max_model_len: u32,
    /// Tokens per KV block.
    pub block_size: u32,
    /// KV blocks, block 0 (reserved) included.
    pub num_blocks: u32,
    /// Reuse KV of identical prefixes.
    pub enable_prefix_caching: bool,
    /// Split prompts over several steps when the budget runs out.
    pub enable_chunked_prefill: bool,
    /// Cap on one request's prefill chunk per step (0: no cap).
    pub long_prefill_token_threshold: u32,
    /// Admit a waiting request only when blocks for its whole sequence are free (vLLM 0.33's
    /// `scheduler_reserve_full_isl`, on by default), not just for its first chunk.
    pub reserve_full_prompt: bool,
    /// Report every change to the prefix cache as a [`crate::kv::KvEvent`] (vLLM's
    /// `enable_kv_cache_events`).
    #[serde(default)]
    pub enable_kv_cache_events: bool,
    /// Queue and preemption policy.
    pub policy: PolicyKind,
    /// Journey tracing.
    pub journey: JourneyConfig,
    /// Step tracing.
    pub step_tracing: StepTracingConfig,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            max_num_seqs: 128,
            max_num_batched_tokens: 2048,
            max_model_len: 2048,
            block_size: 16,
            num_blocks: 4096,
            enable_prefix_caching: true,
            enable_chunked_prefill: true,
            long_prefill_token_threshold: 0,
            reserve_full_prompt: true,
            enable_kv_cache_events: false,
            policy: PolicyKind::Fcfs,
            journey: JourneyConfig::default(),
            step_tracing: StepTracingConfig::default(),
        }
    }
}

impl SchedulerConfig {
    /// Check the configuration; every rule here would otherwise stall or break scheduling.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.block_size == 0 {
            return Err(ConfigError::ZeroBlockSize);
        }
        if self.num_blocks < 2 {
            return Err(ConfigError::TooFewBlocks {
                num_blocks: self.num_blocks,
            });
        }
        if self.max_num_seqs == 0 {
            return Err(ConfigError::ZeroMaxNumSeqs);
        }
        if self.max_model_len == 0 {
            return Err(ConfigError::ZeroMaxModelLen);
        }
        if self.max_num_batched_tokens < self.block_size {
            return Err(ConfigError::BudgetBelowBlockSize {
                max_num_batched_tokens: self.max_num_batched_tokens,
                block_size: self.block_size,
            });
        }
        if self.max_num_batched_tokens < self.max_num_seqs {
            return Err(ConfigError::BudgetBelowMaxNumSeqs {
                max_num_batched_tokens: self.max_num_batched_tokens,
                max_num_seqs: self.max_num_seqs,
            });
        }
        if !self.enable_chunked_prefill && self.max_num_batched_tokens < self.max_model_len {
            return Err(ConfigError::BudgetBelowModelLenUnchunked {
                max_num_batched_tokens: self.max_num_batched_tokens,
                max_model_len: self.max_model_len,
            });
        }
        let usable_blocks = self.num_blocks - 1;
        let capacity_tokens = u64::from(usable_blocks) * u64::from(self.block_size);
        if capacity_tokens < u64::from(self.max_model_len) {
            return Err(ConfigError::KvCacheTooSmall {
                capacity_tokens,
                usable_blocks,
                block_size: self.block_size,
                max_model_len: self.max_model_len,
            });
        }
        if self.long_prefill_token_threshold > self.max_model_len {
            return Err(ConfigError::ThresholdAboveModelLen {
                threshold: self.long_prefill_token_threshold,
                max_model_len: self.max_model_len,
            });
        }
        let tracing = &self.step_tracing;
        if !(0.0..=1.0).contains(&tracing.sample_rate) {
            return Err(ConfigError::SampleRateOutOfRange(tracing.sample_rate));
        }
        if !(0.0..=1.0).contains(&tracing.rich_subsample_rate) {
            return Err(ConfigError::RichSubsampleRateOutOfRange(
                tracing.rich_subsample_rate,
            ));
        }
        if !(10..=10_000).contains(&tracing.closure_interval) {
            return Err(ConfigError::ClosureIntervalOutOfRange(
                tracing.closure_interval,
            ));
        }
        Ok(())
    }
}
