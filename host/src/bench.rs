//! `waypoint bench`: scheduler cycle latency natively and through a policy component, measured
//! side by side on the same steady-decode workload.

use std::time::{Duration, Instant};

use waypoint_scheduler::{ModelOutput, NewRequest, SchedulerConfig};

use crate::backend::{BackendError, SchedulerBackend};

/// Prompt length of the benchmark's requests.
const PROMPT: u32 = 32;

/// Latency figures of one backend at one batch size.
#[derive(Clone, Copy, Debug)]
pub struct Figures {
    /// Median time of one schedule + update cycle.
    pub median: Duration,
    /// 99th percentile.
    pub p99: Duration,
}

/// A configuration with room for `running` requests to decode `cycles` tokens each.
pub fn decode_config(running: u32, cycles: u32) -> SchedulerConfig {
    let blocks_per_request = (PROMPT + cycles + 16).div_ceil(16) + 1;
    SchedulerConfig {
        max_num_seqs: running,
        max_num_batched_tokens: (running * PROMPT).max(2048),
        max_model_len: 4096,
        num_blocks: running * blocks_per_request + 256,
        ..SchedulerConfig::default()
    }
}

/// Fill a backend with `running` requests and run their prefill, leaving them in steady decode.
fn prefill(
    backend: &mut dyn SchedulerBackend,
    running: u32,
    cycles: u32,
) -> Result<(), BackendError> {
    for i in 0..running {
        let request = NewRequest {
            max_tokens: cycles + 16,
            ..NewRequest::new(
                format!("r{i}"),
                (0..PROMPT).map(|t| t + i * PROMPT).collect(),
            )
        };
        backend.add_request(request, 0)?;
    }
    let output = backend.schedule(0)?;
    let sampled = output
        .scheduled
        .iter()
        .map(|e| e.sample.then_some(7))
        .collect();
    let _ = backend.update_from_output(
        &ModelOutput {
            sampled_token_ids: sampled,
        },
        0,
    )?;
    Ok(())
}

/// Time `cycles` steady-decode cycles after `warmup` untimed ones.
pub fn measure(
    backend: &mut dyn SchedulerBackend,
    running: u32,
    warmup: u32,
    cycles: u32,
) -> Result<Figures, BackendError> {
    prefill(backend, running, warmup + cycles)?;
    let sampled = ModelOutput {
        sampled_token_ids: vec![Some(7); running as usize],
    };
    let mut samples = Vec::with_capacity(cycles as usize);
    for cycle in 0..warmup + cycles {
        let now = u64::from(cycle + 1) * 1_000_000;
        let start = Instant::now();
        let output = backend.schedule(now)?;
        let engine = backend.update_from_output(&sampled, now + 1)?;
        let elapsed = start.elapsed();
        debug_assert_eq!(output.scheduled.len(), running as usize);
        drop((output, engine));
        if cycle >= warmup {
            samples.push(elapsed);
        }
    }
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    Ok(Figures {
        median: at(0.5),
        p99: at(0.99),
    })
}
