//! A simulation's settings by `waypoint simulate`'s flag names, as the command line and the
//! browser demo both give them, turned into the scheduler configuration and the generator.

use serde::Deserialize;
use waypoint_scheduler::{JourneyConfig, SchedulerConfig};

use crate::arrivals::{Lengths, Mix, Synthetic};

/// The engine flags `waypoint simulate`, `generate` and `serve` share.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSettings {
    /// `--max-num-seqs`.
    pub max_num_seqs: u32,
    /// `--max-num-batched-tokens`.
    pub max_num_batched_tokens: u32,
    /// `--max-model-len`.
    pub max_model_len: u32,
    /// `--num-blocks`.
    pub num_blocks: u32,
    /// `--block-size`.
    pub block_size: u32,
    /// Off with `--no-enable-prefix-caching`.
    pub enable_prefix_caching: bool,
    /// Off with `--no-enable-chunked-prefill`.
    pub enable_chunked_prefill: bool,
    /// `--long-prefill-token-threshold`.
    pub long_prefill_token_threshold: u32,
}

impl EngineSettings {
    /// The scheduler configuration, with journey recording as given.
    pub fn config(&self, journey: bool) -> SchedulerConfig {
        SchedulerConfig {
            max_num_seqs: self.max_num_seqs,
            max_num_batched_tokens: self.max_num_batched_tokens,
            max_model_len: self.max_model_len,
            num_blocks: self.num_blocks,
            block_size: self.block_size,
            enable_prefix_caching: self.enable_prefix_caching,
            enable_chunked_prefill: self.enable_chunked_prefill,
            long_prefill_token_threshold: self.long_prefill_token_threshold,
            journey: JourneyConfig { enabled: journey },
            ..SchedulerConfig::default()
        }
    }
}

/// The synthetic generator's flags, in their command-line forms.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyntheticSettings {
    /// `--num-requests`.
    pub num_requests: u64,
    /// `--request-rate`; absent means `inf`, all at once (JSON has no infinity).
    #[serde(default)]
    pub request_rate: Option<f64>,
    /// `--burstiness`.
    pub burstiness: f64,
    /// `--prompt-lengths`.
    pub prompt_lengths: String,
    /// `--output-lengths`.
    pub output_lengths: String,
    /// `--prefix-fraction`.
    pub prefix_fraction: f64,
    /// `--prefix-groups`.
    pub prefix_groups: u32,
    /// `--prefix-len`.
    pub prefix_len: u32,
    /// `--priorities`.
    pub priorities: String,
    /// `--clients`.
    pub clients: String,
    /// `--seed`.
    pub seed: u64,
}

impl SyntheticSettings {
    /// The generator for a scheduler whose longest sequence is `max_model_len`, or what is
    /// wrong with a distribution or mix. `sharegpt` prompts are cut to fit, as `vllm bench`
    /// filters its dataset; a fixed or uniform length that cannot fit is an error.
    pub fn synthetic(&self, max_model_len: u32) -> Result<Synthetic, String> {
        let prompt_lengths =
            Lengths::parse(&self.prompt_lengths, true)?.fitted(max_model_len.saturating_sub(1));
        let shared_len = if self.prefix_fraction > 0.0 {
            self.prefix_len.saturating_add(1)
        } else {
            0
        };
        let longest = prompt_lengths.largest().max(shared_len);
        if longest >= max_model_len {
            return Err(format!(
                "prompts of up to {longest} tokens (--prompt-lengths {}, --prefix-len {}) do not \
                 fit --max-model-len {max_model_len}",
                self.prompt_lengths, self.prefix_len
            ));
        }
        Ok(Synthetic {
            num_requests: self.num_requests,
            request_rate: self.request_rate.unwrap_or(f64::INFINITY),
            burstiness: self.burstiness,
            prompt_lengths,
            output_lengths: Lengths::parse(&self.output_lengths, false)?,
            prefix_fraction: self.prefix_fraction,
            prefix_groups: self.prefix_groups,
            prefix_len: self.prefix_len,
            priorities: Mix::parse(&self.priorities)?,
            clients: Mix::parse(&self.clients)?,
            seed: self.seed,
        })
    }
}
