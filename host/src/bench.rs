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
    /// Median time of the cycle's `schedule` call alone.
    pub schedule_median: Duration,
    /// Median time of the cycle's `update_from_output` call alone.
    pub update_median: Duration,
}

/// One cycle's times: whole, `schedule`, `update_from_output`.
#[derive(Clone)]
struct Sample {
    cycle: Duration,
    schedule: Duration,
    update: Duration,
}

/// The `q` quantile of one part of the samples.
fn quantile(samples: &[Sample], part: fn(&Sample) -> Duration, q: f64) -> Duration {
    let mut times: Vec<Duration> = samples.iter().map(part).collect();
    times.sort_unstable();
    times[((times.len() - 1) as f64 * q).round() as usize]
}

/// A configuration with room for `running` requests to decode `cycles` tokens each.
pub fn decode_config(running: u32, cycles: u32) -> SchedulerConfig {
    let sequence_len = PROMPT + cycles + 16;
    let blocks_per_request = sequence_len.div_ceil(16) + 1;
    SchedulerConfig {
        max_num_seqs: running,
        max_num_batched_tokens: (running * PROMPT).max(2048),
        max_model_len: sequence_len.max(4096),
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
        .batch
        .sample
        .iter()
        .map(|&sample| sample.then_some(7))
        .collect();
    let _ = backend.update_from_output(
        &ModelOutput {
            sampled_token_ids: sampled,
        },
        0,
    )?;
    Ok(())
}

/// Cycles a backend runs before the next takes its turn: enough to keep its caches warm, few
/// enough that a busy spell of a shared machine falls on every backend alike.
const TURN: u32 = 50;

/// Time `cycles` steady-decode cycles of each backend after `warmup` untimed ones, the backends
/// taking turns of [`TURN`] cycles.
pub fn measure_side_by_side(
    backends: &mut [&mut dyn SchedulerBackend],
    running: u32,
    warmup: u32,
    cycles: u32,
) -> Result<Vec<Figures>, BackendError> {
    for backend in backends.iter_mut() {
        prefill(*backend, running, warmup + cycles)?;
    }
    let sampled = ModelOutput {
        sampled_token_ids: vec![Some(7); running as usize],
    };
    let mut samples = vec![Vec::with_capacity(cycles as usize); backends.len()];
    let total = warmup + cycles;
    for turn_start in (0..total).step_by(TURN as usize) {
        for (backend, samples) in backends.iter_mut().zip(&mut samples) {
            for cycle in turn_start..total.min(turn_start + TURN) {
                let now = u64::from(cycle + 1) * 1_000_000;
                let start = Instant::now();
                let output = backend.schedule(now)?;
                let scheduled = Instant::now();
                let engine = backend.update_from_output(&sampled, now + 1)?;
                let end = Instant::now();
                debug_assert_eq!(output.batch.len(), running as usize);
                drop((output, engine));
                if cycle >= warmup {
                    samples.push(Sample {
                        cycle: end - start,
                        schedule: scheduled - start,
                        update: end - scheduled,
                    });
                }
            }
        }
    }
    Ok(samples
        .into_iter()
        .map(|samples| Figures {
            median: quantile(&samples, |sample| sample.cycle, 0.5),
            p99: quantile(&samples, |sample| sample.cycle, 0.99),
            schedule_median: quantile(&samples, |sample| sample.schedule, 0.5),
            update_median: quantile(&samples, |sample| sample.update, 0.5),
        })
        .collect())
}

/// One row of `bench-model`: `batch` requests whose prompts are `prompt_len` tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelRow {
    pub batch: usize,
    pub prompt_len: usize,
}

/// Prefill and decode throughput of the model runner alone (no scheduler).
#[derive(Clone, Copy, Debug)]
pub struct ModelFigures {
    /// Prompt tokens per second, `batch` prompts computed in one forward pass.
    pub prefill_tokens_per_s: f64,
    /// Generated tokens per second, one token for each of `batch` requests per forward pass,
    /// from the median step: one slow step on a shared machine does not move it.
    pub decode_tokens_per_s: f64,
}

/// Time each row's prefill, then `decode_steps` decode steps of every row, the rows' steps taken
/// in turn so that each sees the same machine: rows are compared side by side, not one busy
/// minute against a quiet one. All rows share one cache of at least `num_blocks` blocks (more
/// when they need it); its size is returned with the figures, one per row.
pub fn measure_model(
    model: &crate::model::Model,
    rows: &[ModelRow],
    decode_steps: usize,
    num_blocks: usize,
) -> (usize, Vec<ModelFigures>) {
    use crate::model::{BatchRequest, PagedBatch, PagedKvCache};
    let block_size = 16;
    let vocab = model.config().vocab_size as u32;
    // Each row's requests' block tables, consecutive blocks after the null block 0.
    let mut next_block = 1;
    let tables: Vec<Vec<Vec<u32>>> = rows
        .iter()
        .map(|row| {
            let blocks = (row.prompt_len + decode_steps).div_ceil(block_size);
            (0..row.batch)
                .map(|_| {
                    let table = (next_block..next_block + blocks)
                        .map(|b| b as u32)
                        .collect();
                    next_block += blocks;
                    table
                })
                .collect()
        })
        .collect();
    let num_blocks = num_blocks.max(next_block);
    let mut cache = PagedKvCache::new(model.config(), num_blocks, block_size, model.device());
    let prefill_s: Vec<f64> = rows
        .iter()
        .zip(&tables)
        .map(|(row, tables)| {
            let prefill = PagedBatch {
                requests: tables
                    .iter()
                    .enumerate()
                    .map(|(r, table)| BatchRequest {
                        tokens: (0..row.prompt_len)
                            .map(|t| ((t * 7 + r * 13) as u32) % vocab)
                            .collect(),
                        start_position: 0,
                        block_table: table.clone(),
                        sample: true,
                    })
                    .collect(),
            };
            let start = Instant::now();
            let _ = crate::model::rows(model.forward_paged(&prefill, &mut cache));
            start.elapsed().as_secs_f64()
        })
        .collect();
    let mut step_times = vec![Vec::with_capacity(decode_steps); rows.len()];
    for step in 0..decode_steps {
        for ((row, tables), times) in rows.iter().zip(&tables).zip(&mut step_times) {
            let decode = PagedBatch {
                requests: tables
                    .iter()
                    .map(|table| BatchRequest {
                        tokens: vec![(step as u32 * 3) % vocab],
                        start_position: row.prompt_len + step,
                        block_table: table.clone(),
                        sample: true,
                    })
                    .collect(),
            };
            let start = Instant::now();
            let _ = crate::model::rows(model.forward_paged(&decode, &mut cache));
            times.push(start.elapsed());
        }
    }
    let figures = rows
        .iter()
        .zip(prefill_s)
        .zip(&mut step_times)
        .map(|((row, prefill_s), times)| {
            times.sort_unstable();
            let median_step_s = times
                .get(times.len() / 2)
                .map_or(f64::NAN, Duration::as_secs_f64);
            ModelFigures {
                prefill_tokens_per_s: (row.batch * row.prompt_len) as f64 / prefill_s,
                decode_tokens_per_s: row.batch as f64 / median_step_s,
            }
        })
        .collect();
    (num_blocks, figures)
}
