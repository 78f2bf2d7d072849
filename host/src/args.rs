//! Engine flags shared by the commands that run a scheduler (vLLM's names where they exist).

use std::fmt;

use clap::Args;
use waypoint_scheduler::SchedulerConfig;
use waypoint_sim::settings::EngineSettings;

/// Scheduler and KV cache settings.
#[derive(Args, Clone, Debug)]
pub struct EngineArgs {
    #[command(flatten)]
    pub capacity: CapacityArgs,
    #[command(flatten)]
    pub sequence: SequenceArgs,
}

/// KV cache blocks of `serve`, `simulate` and `bench-model` unless told otherwise.
pub const DEFAULT_NUM_BLOCKS: u32 = 8192;

/// The settings that size an engine: batch and cache (the ones `waypoint sweep` varies).
#[derive(Args, Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapacityArgs {
    /// Most requests running at once.
    #[arg(long, default_value_t = 128)]
    pub max_num_seqs: u32,
    /// Token budget of one engine step.
    #[arg(long, default_value_t = 2048)]
    pub max_num_batched_tokens: u32,
    /// KV cache blocks (block 0 is reserved).
    #[arg(long, alias = "num-gpu-blocks-override", default_value_t = DEFAULT_NUM_BLOCKS)]
    pub num_blocks: u32,
}

impl fmt::Display for CapacityArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seqs {} · tokens {} · blocks {}",
            self.max_num_seqs, self.max_num_batched_tokens, self.num_blocks
        )
    }
}

/// Sequence, block and prefill settings.
#[derive(Args, Clone, Debug)]
pub struct SequenceArgs {
    /// Longest sequence (prompt and output) a request may reach.
    #[arg(long, default_value_t = 4096)]
    pub max_model_len: u32,
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

impl SequenceArgs {
    /// The engine settings with this batch and cache size.
    pub fn settings(&self, capacity: &CapacityArgs) -> EngineSettings {
        EngineSettings {
            max_num_seqs: capacity.max_num_seqs,
            max_num_batched_tokens: capacity.max_num_batched_tokens,
            max_model_len: self.max_model_len,
            num_blocks: capacity.num_blocks,
            block_size: self.block_size,
            enable_prefix_caching: !self.no_enable_prefix_caching,
            enable_chunked_prefill: !self.no_enable_chunked_prefill,
            long_prefill_token_threshold: self.long_prefill_token_threshold,
        }
    }
}

impl EngineArgs {
    /// The scheduler configuration these flags describe, with journey tracing as given.
    pub fn config(&self, journey: bool) -> SchedulerConfig {
        self.sequence.settings(&self.capacity).config(journey)
    }
}

/// Journey and step tracing settings (vLLM's flag names).
#[derive(Args, Clone, Debug)]
pub struct TracingArgs {
    /// Where to export spans over OTLP (else the standard OTEL_EXPORTER_OTLP_* variables).
    /// The protocol comes from OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: grpc (default) or
    /// http/protobuf.
    #[arg(long)]
    pub otlp_traces_endpoint: Option<String>,
    /// Record request journeys: `llm_request` and `llm_core` spans.
    #[arg(long)]
    pub enable_journey_tracing: bool,
    /// Fraction of requests whose journey is recorded, decided once per request.
    #[arg(long, default_value_t = 1.0)]
    pub journey_tracing_sample_rate: f64,
    /// Record scheduler steps on `scheduler_steps_<n>` spans.
    #[arg(long)]
    pub step_tracing_enabled: bool,
    /// Fraction of steps that get a batch summary.
    #[arg(long, default_value_t = 0.01)]
    pub step_tracing_sample_rate: f64,
    /// Fraction of summarised steps that also get per-request snapshots.
    #[arg(long, default_value_t = 0.001)]
    pub step_tracing_rich_subsample_rate: f64,
    /// Steps per `scheduler_steps_<n>` span.
    #[arg(long, default_value_t = 100)]
    pub step_tracing_closure_interval: u32,
}

impl TracingArgs {
    /// Apply the step-tracing settings to a scheduler configuration.
    pub fn apply(&self, config: &mut SchedulerConfig) {
        config.step_tracing.enabled = self.step_tracing_enabled;
        config.step_tracing.sample_rate = self.step_tracing_sample_rate;
        config.step_tracing.rich_subsample_rate = self.step_tracing_rich_subsample_rate;
        config.step_tracing.closure_interval = self.step_tracing_closure_interval;
    }

    /// The OTLP endpoint, from the flag or the standard variables.
    pub fn endpoint(&self) -> Option<String> {
        self.otlp_traces_endpoint.clone().or_else(|| {
            [
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            ]
            .iter()
            .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
        })
    }
}
