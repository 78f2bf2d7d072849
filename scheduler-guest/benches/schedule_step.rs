//! `schedule_step`: time of one `schedule` + `update_from_output` cycle.
//!
//! - `decode/N`: steady decode with N running requests (no admissions, no preemption);
//! - `mixed/256`: about 256 running requests while 4 new 128-token prompts arrive every cycle
//!   and requests finish after 64 tokens (prefill chunks, decodes, admissions and frees);
//! - `tracing/<workload>/<mode>`: the same at 256 with tracing off, journey tracing on with every
//!   request sampled, and journey plus step tracing at rate 1.0 and rich rate 1.0.
//!
//! Run: `cargo bench -p waypoint-scheduler --bench schedule_step`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use waypoint_scheduler::{
    JourneyConfig, ModelOutput, NewRequest, Scheduler, SchedulerConfig, StepTracingConfig,
};

const PROMPT: u32 = 32;
/// Cycles between rebuilds of a decode scheduler, so sequences stay short.
const DECODE_RUN: u64 = 512;

#[derive(Clone, Copy, Debug)]
enum Tracing {
    Off,
    Journey,
    JourneyAndSteps,
}

impl Tracing {
    fn name(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Journey => "journey",
            Self::JourneyAndSteps => "journey+steps",
        }
    }

    fn apply(self, config: &mut SchedulerConfig) {
        config.journey = JourneyConfig {
            enabled: !matches!(self, Self::Off),
        };
        if matches!(self, Self::JourneyAndSteps) {
            config.step_tracing = StepTracingConfig {
                enabled: true,
                sample_rate: 1.0,
                rich_subsample_rate: 1.0,
                closure_interval: 100,
                seed: 0,
            };
        }
    }
}

fn sample(output: &waypoint_scheduler::SchedulerOutput) -> ModelOutput {
    ModelOutput {
        sampled_token_ids: output
            .batch
            .sample
            .iter()
            .map(|&sample| sample.then_some(7))
            .collect(),
    }
}

/// N requests past their prefill, ready for `DECODE_RUN` decode cycles.
fn decode_scheduler(running: u32, tracing: Tracing) -> (Scheduler, ModelOutput) {
    let blocks_per_request = (PROMPT + DECODE_RUN as u32 + 16).div_ceil(16) + 1;
    let mut config = SchedulerConfig {
        max_num_seqs: running,
        max_num_batched_tokens: (running * PROMPT).max(2048),
        max_model_len: 2048,
        num_blocks: running * blocks_per_request + 256,
        ..SchedulerConfig::default()
    };
    tracing.apply(&mut config);
    let mut scheduler = Scheduler::new(config).expect("valid bench config");
    for i in 0..running {
        let request = NewRequest {
            max_tokens: 1500,
            ..NewRequest::new(
                format!("r{i}"),
                (0..PROMPT).map(|t| t + i * PROMPT).collect(),
            )
        };
        let _ = scheduler.add_request(request, 0).expect("valid request");
    }
    let output = scheduler.schedule(0);
    assert_eq!(output.batch.len(), running as usize);
    let model_output = sample(&output);
    let _ = scheduler
        .update_from_output(&model_output, 0)
        .expect("prefill output");
    (scheduler, model_output)
}

fn decode_cycles(running: u32, tracing: Tracing, iters: u64) -> Duration {
    let mut total = Duration::ZERO;
    let mut done = 0;
    while done < iters {
        let (mut scheduler, model_output) = decode_scheduler(running, tracing);
        let cycles = DECODE_RUN.min(iters - done);
        let start = Instant::now();
        for cycle in 0..cycles {
            let now = cycle * 1_000 + 1_000;
            let output = scheduler.schedule(now);
            let engine = scheduler.update_from_output(&model_output, now + 500);
            let _ = black_box((output, engine.expect("decode output")));
        }
        total += start.elapsed();
        done += cycles;
    }
    total
}

/// A scheduler in the steady state of the mixed workload.
struct Mixed {
    scheduler: Scheduler,
    next_id: u64,
    now: u64,
}

impl Mixed {
    fn new(tracing: Tracing) -> Self {
        let mut config = SchedulerConfig {
            max_num_seqs: 512,
            num_blocks: 8192,
            ..SchedulerConfig::default()
        };
        tracing.apply(&mut config);
        let mut mixed = Self {
            scheduler: Scheduler::new(config).expect("valid bench config"),
            next_id: 0,
            now: 0,
        };
        for _ in 0..200 {
            mixed.cycle();
        }
        mixed
    }

    fn cycle(&mut self) {
        self.now += 1_000;
        for _ in 0..4 {
            let id = self.next_id;
            self.next_id += 1;
            let prompt = (0..128).map(|t| (t + id as u32 * 131) % 50_000).collect();
            let request = NewRequest {
                max_tokens: 64,
                arrival_ns: self.now,
                ..NewRequest::new(id.to_string(), prompt)
            };
            black_box(
                self.scheduler
                    .add_request(request, self.now)
                    .expect("valid request"),
            );
        }
        let output = self.scheduler.schedule(self.now);
        let engine = self
            .scheduler
            .update_from_output(&sample(&output), self.now + 500);
        let _ = black_box((output, engine.expect("mixed output")));
    }
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("schedule_step");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for running in [16u32, 64, 256, 1024] {
        group.bench_with_input(BenchmarkId::new("decode", running), &running, |b, &n| {
            b.iter_custom(|iters| decode_cycles(n, Tracing::Off, iters));
        });
    }
    group.bench_function("mixed/256", |b| {
        let mut mixed = Mixed::new(Tracing::Off);
        b.iter(|| mixed.cycle());
    });
    for tracing in [Tracing::Off, Tracing::Journey, Tracing::JourneyAndSteps] {
        group.bench_function(format!("tracing/decode256/{}", tracing.name()), |b| {
            b.iter_custom(|iters| decode_cycles(256, tracing, iters));
        });
        group.bench_function(format!("tracing/mixed256/{}", tracing.name()), |b| {
            let mut mixed = Mixed::new(tracing);
            b.iter(|| mixed.cycle());
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
