//! The simulated model runner's step time, from the batch composition.

use serde::{Deserialize, Serialize};

/// Per-step time = `fixed_us` + `prefill_token_us` × prefill tokens + `decode_request_us` ×
/// decoding requests + `context_token_us` × tokens attended over (the context of every
/// scheduled request). Loaded from JSON with these four fields; `waypoint calibrate` is meant
/// to fit them by timing the real model runner.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyModel {
    /// Cost of any step (launches, sampling, scheduling).
    pub fixed_us: f64,
    /// Cost per prompt token computed.
    pub prefill_token_us: f64,
    /// Cost per request decoding one token.
    pub decode_request_us: f64,
    /// Cost per context token read by attention.
    pub context_token_us: f64,
}

impl Default for LatencyModel {
    /// Roughly a 7–8 B model in 16-bit on one A100-class GPU: 8 ms per step, 0.1 ms per prefill
    /// token, 0.15 ms per decoding request, 0.5 µs per context token. Calibrate for real use.
    fn default() -> Self {
        Self {
            fixed_us: 8000.0,
            prefill_token_us: 100.0,
            decode_request_us: 150.0,
            context_token_us: 0.5,
        }
    }
}

/// What a step computes, for the latency model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchShape {
    /// Prompt (or recomputed) tokens.
    pub prefill_tokens: u64,
    /// Requests decoding one token.
    pub decode_requests: u64,
    /// Tokens attended over.
    pub context_tokens: u64,
}

impl LatencyModel {
    /// Read a latency model from JSON.
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// Step time in nanoseconds (at least 1).
    pub fn step_ns(&self, batch: BatchShape) -> u64 {
        let us = self.fixed_us
            + self.prefill_token_us * batch.prefill_tokens as f64
            + self.decode_request_us * batch.decode_requests as f64
            + self.context_token_us * batch.context_tokens as f64;
        ((us * 1000.0).round() as u64).max(1)
    }
}
