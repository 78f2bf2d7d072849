//! Token sampling from logits: greedy, temperature, top-k, top-p, with a per-request seed so a
//! seeded request samples the same tokens every run.

use rand_xoshiro::rand_core::{Rng as _, SeedableRng};
use rand_xoshiro::SplitMix64;

/// How one request picks its tokens.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 is greedy (argmax).
    pub temperature: f32,
    /// Keep the smallest set of tokens whose probability reaches this (1: all).
    pub top_p: f32,
    /// Keep the k most likely tokens (0: all).
    pub top_k: usize,
    /// Seed of the request's sampler.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            seed: 0,
        }
    }
}

/// Pick the token for output position `index` of a request from its logits.
pub fn sample(logits: &[f32], params: &SamplingParams, index: u64) -> u32 {
    let argmax = || {
        logits
            .iter()
            .enumerate()
            .fold((0, f32::NEG_INFINITY), |best, (i, &l)| {
                if l > best.1 {
                    (i, l)
                } else {
                    best
                }
            })
            .0 as u32
    };
    if params.temperature <= 0.0 {
        return argmax();
    }
    let mut candidates: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, l / params.temperature))
        .collect();
    candidates.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if params.top_k > 0 {
        candidates.truncate(params.top_k);
    }
    let max = candidates.first().map_or(0.0, |c| c.1);
    let mut probabilities: Vec<f32> = candidates.iter().map(|c| (c.1 - max).exp()).collect();
    let total: f32 = probabilities.iter().sum();
    probabilities.iter_mut().for_each(|p| *p /= total);
    if params.top_p < 1.0 {
        let mut mass = 0.0;
        let keep = probabilities
            .iter()
            .position(|p| {
                mass += p;
                mass >= params.top_p
            })
            .map_or(probabilities.len(), |i| i + 1);
        candidates.truncate(keep);
        probabilities.truncate(keep);
        let total: f32 = probabilities.iter().sum();
        probabilities.iter_mut().for_each(|p| *p /= total);
    }
    let mut rng =
        SplitMix64::seed_from_u64(params.seed ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let point = (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
    let mut mass = 0.0;
    for (candidate, probability) in candidates.iter().zip(&probabilities) {
        mass += probability;
        if point < mass {
            return candidate.0;
        }
    }
    candidates.last().map_or_else(argmax, |c| c.0)
}
