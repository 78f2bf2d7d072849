//! Live mode: the model runner of `waypoint serve` — the built-in tiny model, on WebGPU —
//! computing every step a policy component decides over the paged KV cache. The workload is a
//! simulation's; the clock advances by each step's measured time.

use std::cell::RefCell;

use serde::Serialize;
use waypoint_engine::backend::{BackendError, SchedulerBackend};
use waypoint_engine::step::{Engine, EngineRequest, StepError};
use waypoint_model::sampling::SamplingParams;
use waypoint_model::{open_device_async, Device, DeviceChoice, DeviceError};
use waypoint_scheduler::{JourneyEvent, NewRequest};
use waypoint_sim::arrivals::{ArrivalQueue, ArrivalTime, WorkloadError};
use waypoint_sim::StepSample;

use crate::run::{RunError, SimulationSpec, StepSeries};

/// Why a live run stopped.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    /// WebGPU gave no device.
    #[error("WebGPU: {0}")]
    Device(#[from] DeviceError),
    /// The settings are malformed.
    #[error(transparent)]
    Settings(#[from] RunError),
    /// The workload is malformed.
    #[error(transparent)]
    Workload(#[from] WorkloadError),
    /// The scheduler rejected something or failed.
    #[error("scheduler: {0}")]
    Backend(#[from] BackendError),
    /// A step failed.
    #[error(transparent)]
    Step(#[from] StepError),
    /// WebGPU's results could not be read back.
    #[error("reading results back from WebGPU: {0}")]
    Readback(String),
}

/// What the model did in a live run.
#[derive(Debug, Default, Serialize)]
pub struct Generated {
    /// Tokens sampled.
    pub tokens: u64,
    /// Engine steps.
    pub steps: u64,
    /// Time spent in steps, ms (the clock's advance).
    pub model_ms: f64,
}

/// What a live run gives the page: journeys and load, as a simulation's, and the model's work.
#[derive(Debug, Serialize)]
pub struct LiveResult {
    /// The canonical journey JSON Lines.
    pub journeys: String,
    /// The load after every step.
    pub steps: StepSeries,
    /// What the model computed.
    pub generated: Generated,
}

thread_local! {
    // WebGPU opens once per page; burn's runtime cannot be initialised twice.
    static DEVICE: RefCell<Option<Device>> = const { RefCell::new(None) };
}

async fn webgpu() -> Result<Device, DeviceError> {
    if let Some(device) = DEVICE.with(|slot| slot.borrow().clone()) {
        return Ok(device);
    }
    let device = open_device_async(DeviceChoice::Wgpu).await?;
    DEVICE.with(|slot| *slot.borrow_mut() = Some(device.clone()));
    Ok(device)
}

fn write(journeys: &mut String, events: &[JourneyEvent]) {
    for event in events {
        journeys.push_str(&event.to_json_line());
        journeys.push('\n');
    }
}

/// Run `spec`'s workload on `backend` with the tiny model on WebGPU. `elapsed_ms` reads a
/// monotonic clock; `progress` hears the number of finished requests after every step.
pub async fn run<B: SchedulerBackend + 'static>(
    backend: B,
    spec: &SimulationSpec,
    elapsed_ms: &dyn Fn() -> f64,
    progress: &dyn Fn(u64),
) -> Result<LiveResult, LiveError> {
    let loaded = waypoint_model::tiny(webgpu().await?);
    let vocab_size = loaded.model.config().vocab_size as u32;
    let mut engine = Engine::new(Box::new(backend), loaded.model, &spec.config());
    let mut arrivals = ArrivalQueue::new(spec.arrivals()?.into_iter());
    let mut journeys = String::new();
    let mut steps = StepSeries::default();
    let mut generated = Generated::default();
    let mut now = 0u64;
    let mut finished = 0u64;
    let mut index = 0u64;
    loop {
        while let Some((arrival, at)) = arrivals.next_due(now, generated.steps)? {
            // The simulator's token ids, folded into the tiny model's byte vocabulary.
            let prompt = arrival
                .prompt
                .token_ids(index)
                .into_iter()
                .map(|token| token % vocab_size)
                .collect();
            index += 1;
            let request = NewRequest {
                client_index: arrival.client,
                max_tokens: arrival.max_tokens,
                priority: arrival.priority,
                arrival_ns: at,
                journey_sampled: true,
                ..NewRequest::new(arrival.id, prompt)
            };
            let sampling = SamplingParams::default();
            let queued = engine
                .add(EngineRequest { request, sampling }, (), at)
                .map_err(|refused| refused.error)?;
            write(&mut journeys, &queued);
        }
        if engine.num_unfinished() == 0 {
            match arrivals.next_at() {
                None => break,
                Some(ArrivalTime::Ns(t)) => now = now.max(t),
                Some(ArrivalTime::Step(k)) => generated.steps = generated.steps.max(k),
            }
            continue;
        }
        let started = elapsed_ms();
        let step_started_ns = now;
        let result = engine
            .step_async(now, || {
                step_started_ns + ((elapsed_ms() - started).max(0.0) * 1e6) as u64
            })
            .await?;
        generated.model_ms += (result.tokens_ns - step_started_ns) as f64 / 1e6;
        now = result.tokens_ns;
        generated.tokens += result.tokens.len() as u64;
        generated.steps += 1;
        finished += result.finished.len() as u64;
        write(&mut journeys, &result.journey_events);
        let stats = engine.stats(now)?;
        steps.push(&StepSample {
            now_ns: now,
            kv_cache_usage: stats.kv_cache_usage,
            num_running: stats.num_running,
            num_waiting: stats.num_waiting,
            scheduled_tokens: result.scheduled_tokens,
        });
        progress(finished);
    }
    Ok(LiveResult {
        journeys,
        steps,
        generated,
    })
}

/// How far the paged forward on WebGPU (the paged-attention kernel) is from the dense
/// reference forward, for the page's self-check.
#[derive(Debug, Serialize)]
pub struct ModelCheck {
    /// Logit rows compared.
    pub rows: usize,
    /// The largest difference of a logit from the reference, relative to the reference row's
    /// largest magnitude.
    pub max_relative_error: f32,
}

/// Run the tiny model over the paged cache on WebGPU — a prefill chunk beside a whole prompt,
/// then the chunk's rest beside a decode, on block tables in no order — and compare every
/// sampled row with the dense forward of the same sequence.
pub async fn check_model() -> Result<ModelCheck, LiveError> {
    use waypoint_model::{rows_async, BatchRequest, PagedBatch, PagedKvCache};

    let model = waypoint_model::tiny(webgpu().await?).model;
    let device = model.device().clone();
    let mut cache = PagedKvCache::new(model.config(), 32, 4, &device);
    let long: Vec<u32> = (0..45).map(|t| (t * 37 + 1) % 256).collect();
    let short: Vec<u32> = (0..11).map(|t| (t * 13 + 7) % 256).collect();
    let (long_table, short_table) = (
        vec![30, 2, 17, 9, 25, 4, 12, 21, 6, 28, 14, 1],
        vec![19, 8, 27],
    );
    let request = |tokens: &[u32], start_position: usize, table: &[u32]| BatchRequest {
        tokens: tokens.to_vec(),
        start_position,
        block_table: table.to_vec(),
        sample: true,
    };
    let first = PagedBatch {
        requests: vec![
            request(&long[..20], 0, &long_table),
            request(&short[..10], 0, &short_table),
        ],
    };
    let second = PagedBatch {
        requests: vec![
            request(&short[10..], 10, &short_table),
            request(&long[20..], 20, &long_table),
        ],
    };
    let read = |logits| async { rows_async(logits).await.map_err(LiveError::Readback) };
    let mut paged = read(model.forward_paged(&first, &mut cache)).await?;
    paged.extend(read(model.forward_paged(&second, &mut cache)).await?);
    let dense_long = read(model.forward_dense(&long)).await?;
    let dense_short = read(model.forward_dense(&short)).await?;
    let expected = [
        &dense_long[19],
        &dense_short[9],
        &dense_short[10],
        &dense_long[44],
    ];
    let max_relative_error = paged
        .iter()
        .zip(expected)
        .map(|(actual, expected)| waypoint_model::max_relative_error(actual, expected))
        .fold(0.0, f32::max);
    Ok(ModelCheck {
        rows: paged.len(),
        max_relative_error,
    })
}
