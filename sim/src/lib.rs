//! `waypoint simulate`: discrete-event simulation in virtual time. The same scheduler calls the
//! server makes, through any backend, with a latency model standing in for the model runner.
//! The same inputs give byte-identical outputs — natively, and in the browser demo, which
//! builds this crate for wasm32.

pub mod arrivals;
pub mod latency;
pub mod report;
pub mod rng;
pub mod settings;
pub mod trace;

use std::io::{self, Write};

use rustc_hash::FxHashMap;
use thiserror::Error;
use waypoint_scheduler::{
    HandleMap, JourneyEvent, JourneyEventType, ModelOutput, NewRequest, RequestHandle, RequestId,
    ScheduledKind,
};

use arrivals::{sampled_token, Arrival, ArrivalQueue, ArrivalTime, WorkloadError, EOS};
use latency::{BatchShape, LatencyModel};
use report::{ms, Metrics, Report, ReportHeader, Slo};
use trace::ChromeTrace;
use waypoint_engine::backend::{BackendError, SchedulerBackend};

/// Why a simulation stopped.
#[derive(Debug, Error)]
pub enum SimError {
    /// The workload is malformed.
    #[error(transparent)]
    Workload(#[from] WorkloadError),
    /// The scheduler rejected something or failed.
    #[error("scheduler: {0}")]
    Backend(#[from] BackendError),
    /// An output could not be written.
    #[error("writing output: {0}")]
    Io(#[from] io::Error),
}

/// What a simulation writes besides its report.
#[derive(Default)]
pub struct Outputs<'a> {
    /// Canonical journey JSON Lines.
    pub journey_log: Option<&'a mut dyn Write>,
    /// Chrome/Perfetto trace.
    pub chrome_trace: Option<ChromeTrace<&'a mut dyn Write>>,
    /// Called with the number of finished requests after every step.
    pub progress: Option<&'a dyn Fn(u64)>,
    /// Called with the scheduler's load after every step (the browser demo's charts).
    pub steps: Option<&'a mut dyn FnMut(&StepSample)>,
}

/// The scheduler's load after one step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepSample {
    /// Virtual time after the step.
    pub now_ns: u64,
    /// Fraction of KV blocks in use.
    pub kv_cache_usage: f64,
    /// Requests running.
    pub num_running: u32,
    /// Requests waiting.
    pub num_waiting: u32,
    /// Tokens the step computed.
    pub scheduled_tokens: u32,
}

/// Simulation settings.
#[derive(Clone, Copy, Debug, Default)]
pub struct Settings {
    /// The model runner's step time.
    pub latency: LatencyModel,
    /// Objectives for goodput.
    pub slo: Slo,
}

/// A live request's simulation state.
struct Live {
    output_len: u32,
    produced: u32,
    arrival_ns: u64,
    deadline_ns: Option<u64>,
    first_token_ns: Option<u64>,
    last_token_ns: u64,
    scheduled: bool,
    tid: u64,
}

struct Run<'o, 'w> {
    backend: &'o mut dyn SchedulerBackend,
    settings: Settings,
    outputs: &'o mut Outputs<'w>,
    live: HandleMap<Live>,
    /// Live requests' handles by id, for journey events.
    handles: FxHashMap<RequestId, RequestHandle>,
    metrics: Metrics,
    now: u64,
    iteration: u64,
    requests: u64,
    finished: u64,
    first_arrival: Option<u64>,
}

impl Run<'_, '_> {
    fn journeys(&mut self, events: &[JourneyEvent]) -> Result<(), SimError> {
        for event in events {
            if let Some(log) = self.outputs.journey_log.as_mut() {
                log.write_all(event.to_json_line().as_bytes())?;
                log.write_all(b"\n")?;
            }
            let Some(&handle) = self.handles.get(&event.request_id) else {
                continue;
            };
            let Some(live) = self.live.get_mut(&handle) else {
                continue;
            };
            if let Some(trace) = self.outputs.chrome_trace.as_mut() {
                trace.journey(live.tid, event)?;
            }
            let since_arrival = ms(event.ts_monotonic_ns.saturating_sub(live.arrival_ns));
            match event.event_type {
                JourneyEventType::Scheduled if !live.scheduled => {
                    live.scheduled = true;
                    self.metrics.queue.push(since_arrival);
                }
                JourneyEventType::FirstToken => self.metrics.ttft.push(since_arrival),
                JourneyEventType::Preempted => self.metrics.preemptions += 1,
                JourneyEventType::Finished => {
                    self.metrics.e2e.push(since_arrival);
                    let ttft = live.first_token_ns.map(|t| ms(t - live.arrival_ns));
                    let tpot = (event.decode_done_tokens > 1).then(|| {
                        ms(event.ts_monotonic_ns
                            - live.first_token_ns.unwrap_or(event.ts_monotonic_ns))
                            / f64::from(event.decode_done_tokens - 1)
                    });
                    if let Some(tpot) = tpot {
                        self.metrics.tpot.push(tpot);
                    }
                    let slo = self.settings.slo;
                    let meets = |value: Option<f64>, limit: Option<f64>| match (value, limit) {
                        (_, None) => true,
                        (Some(value), Some(limit)) => value <= limit,
                        (None, Some(_)) => true,
                    };
                    if meets(ttft, slo.ttft_ms) && meets(tpot, slo.tpot_ms) {
                        self.metrics.good += 1;
                    }
                    if let Some(deadline) = live.deadline_ns {
                        self.metrics.deadline_requests += 1;
                        self.metrics.deadlines_met += u64::from(event.ts_monotonic_ns <= deadline);
                    }
                    self.finished += 1;
                    self.live.remove(&handle);
                    self.handles.remove(&event.request_id);
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn add(&mut self, arrival: Arrival, at_ns: u64) -> Result<(), SimError> {
        let index = self.requests;
        self.requests += 1;
        self.first_arrival.get_or_insert(at_ns);
        let deadline_ns = arrival
            .deadline_after_ns
            .map(|after| at_ns.saturating_add(after));
        let request = NewRequest {
            client_index: arrival.client,
            max_tokens: arrival.max_tokens,
            eos_token_id: Some(EOS),
            priority: arrival.priority,
            arrival_ns: at_ns,
            deadline_ns,
            journey_sampled: true,
            ..NewRequest::new(arrival.id.clone(), arrival.prompt.token_ids(index))
        };
        let added = self.backend.add_request(request, at_ns)?;
        self.handles
            .insert(arrival.id.as_str().into(), added.handle);
        self.live.insert(
            added.handle,
            Live {
                output_len: arrival.output_len,
                produced: 0,
                arrival_ns: at_ns,
                deadline_ns,
                first_token_ns: None,
                last_token_ns: at_ns,
                scheduled: false,
                tid: index + 1,
            },
        );
        self.journeys(&added.journey_events)
    }

    fn step(&mut self) -> Result<(), SimError> {
        let output = self.backend.schedule(self.now)?;
        self.journeys(&output.journey_events)?;
        let mut batch = BatchShape::default();
        let mut sampled = Vec::with_capacity(output.batch.len());
        for entry in output.batch.entries() {
            let live = self.live.get(&entry.handle);
            let produced = live.map_or(0, |l| l.produced);
            let decoding = entry.kind == ScheduledKind::Running
                && entry.num_scheduled_tokens == 1
                && produced > 0;
            if decoding {
                batch.decode_requests += 1;
            } else {
                batch.prefill_tokens += u64::from(entry.num_scheduled_tokens);
            }
            batch.context_tokens +=
                u64::from(entry.num_computed_tokens + entry.num_scheduled_tokens);
            sampled.push(
                entry.sample.then(|| {
                    live.map_or(EOS, |live| sampled_token(live.produced, live.output_len))
                }),
            );
        }
        self.now += self.settings.latency.step_ns(batch);
        let engine = self.backend.update_from_output(
            &ModelOutput {
                sampled_token_ids: sampled,
            },
            self.now,
        )?;
        // The tokens of one step mostly share their gap: recorded as runs of equal gaps, found
        // in whole nanoseconds so a token costs no float division.
        let mut gaps = (0, 0);
        for handle in &engine.handles {
            let Some(live) = self.live.get_mut(handle) else {
                continue;
            };
            if live.produced > 0 {
                let gap = self.now - live.last_token_ns;
                if gaps.1 > 0 && gap == gaps.0 {
                    gaps.1 += 1;
                } else {
                    self.metrics.itl.record(ms(gaps.0), gaps.1);
                    gaps = (gap, 1);
                }
            } else {
                live.first_token_ns = Some(self.now);
            }
            live.produced += 1;
            live.last_token_ns = self.now;
            self.metrics.output_tokens += 1;
        }
        self.metrics.itl.record(ms(gaps.0), gaps.1);
        self.journeys(&engine.journey_events)?;
        let stats = self.backend.stats(self.now)?;
        let seconds = self.now.saturating_sub(self.first_arrival.unwrap_or(0)) as f64 / 1e9;
        self.metrics.kv_sample(seconds, stats.kv_cache_usage);
        let sample = StepSample {
            now_ns: self.now,
            kv_cache_usage: stats.kv_cache_usage,
            num_running: stats.num_running,
            num_waiting: stats.num_waiting,
            scheduled_tokens: output.total_num_scheduled_tokens,
        };
        if let Some(trace) = self.outputs.chrome_trace.as_mut() {
            trace.step(&sample)?;
        }
        if let Some(observe) = self.outputs.steps.as_mut() {
            observe(&sample);
        }
        self.iteration += 1;
        if let Some(progress) = self.outputs.progress {
            progress(self.finished);
        }
        Ok(())
    }

    /// Add every arrival due now.
    fn admit<I: Iterator<Item = Result<Arrival, WorkloadError>>>(
        &mut self,
        arrivals: &mut ArrivalQueue<I>,
    ) -> Result<(), SimError> {
        while let Some((arrival, at)) = arrivals.next_due(self.now, self.iteration)? {
            self.add(arrival, at)?;
        }
        Ok(())
    }
}

/// Run a workload to completion on `backend`.
pub fn simulate(
    backend: &mut dyn SchedulerBackend,
    arrivals: impl Iterator<Item = Result<Arrival, WorkloadError>>,
    settings: Settings,
    outputs: &mut Outputs<'_>,
) -> Result<Report, SimError> {
    let mut run = Run {
        backend,
        settings,
        outputs,
        live: HandleMap::default(),
        handles: FxHashMap::default(),
        metrics: Metrics::default(),
        now: 0,
        iteration: 0,
        requests: 0,
        finished: 0,
        first_arrival: None,
    };
    let mut arrivals = ArrivalQueue::new(arrivals);
    loop {
        run.admit(&mut arrivals)?;
        if run.live.is_empty() {
            match arrivals.next_at() {
                None => break,
                Some(ArrivalTime::Ns(t)) => run.now = run.now.max(t),
                Some(ArrivalTime::Step(k)) => run.iteration = run.iteration.max(k),
            }
            continue;
        }
        run.step()?;
    }
    let stats = run.backend.stats(run.now)?;
    let cache = stats.prefix_cache;
    let queries = cache.queries + cache.preempted_queries;
    let header = ReportHeader {
        scheduler: run.backend.policy().to_string(),
        requests: run.requests,
        steps: run.iteration,
        duration_s: run.now.saturating_sub(run.first_arrival.unwrap_or(0)) as f64 / 1e9,
        slo: settings.slo,
        prefix_cache_hit_rate: if queries == 0 {
            0.0
        } else {
            (cache.hits + cache.preempted_hits) as f64 / queries as f64
        },
    };
    if let Some(log) = run.outputs.journey_log.as_mut() {
        log.flush()?;
    }
    if let Some(trace) = run.outputs.chrome_trace.take() {
        trace.finish()?;
    }
    Ok(run.metrics.report(header))
}
