//! Seeded random workloads for contract tests: prefix sharing, preemption pressure, aborts,
//! EOS, cache resets, tracing on and off. The same seed gives the same operations, and the
//! driver samples tokens from the seed too, so two backends see identical inputs.

use serde::Serialize;
use waypoint_scheduler::{
    FinishStatus, JourneyConfig, JourneyEvent, JourneyValidator, ModelOutput, NewRequest,
    SchedulerConfig, StepTracingConfig,
};

use crate::backend::{BackendError, SchedulerBackend};
pub use waypoint_sim::rng::Rng;

/// Why a workload run stopped.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum RunError {
    /// A backend call failed (a guest fault, or an error the run did not expect).
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// Requests were still left after the drain bound.
    #[error("requests were still unfinished after {steps} steps")]
    NotDrained {
        /// The bound.
        steps: u64,
    },
}

/// The end-of-sequence token of generated requests.
pub const EOS: u32 = 2;

/// One operation of a workload.
#[derive(Clone, Debug, Serialize)]
pub enum Op {
    /// Submit a request.
    Add(NewRequest),
    /// One engine step: schedule, then sample tokens (EOS with the given chance in percent).
    Step {
        /// Chance of EOS per sampled token.
        eos_percent: u64,
    },
    /// Abort a request by id (it may have finished already).
    Abort(String),
    /// Reset the prefix cache, preempting running requests or not.
    Reset {
        /// Whether running requests are preempted first.
        running_too: bool,
    },
}

/// A configuration and its operations.
#[derive(Clone, Debug)]
pub struct Workload {
    /// The scheduler configuration (its policy field is the backend's business).
    pub config: SchedulerConfig,
    /// The operations, followed by steps until every request finished.
    pub ops: Vec<Op>,
    /// The seed tokens are sampled from.
    pub seed: u64,
}

impl Workload {
    /// A random workload for `seed`.
    pub fn random(seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let block_size = [4, 8, 16][rng.below(3) as usize];
        let max_model_len = 192;
        let chunked = rng.chance(75);
        let config = SchedulerConfig {
            max_num_seqs: 1 + rng.below(10) as u32,
            max_num_batched_tokens: if chunked {
                32 + rng.below(96) as u32
            } else {
                max_model_len
            },
            max_model_len,
            block_size,
            num_blocks: max_model_len / block_size + 2 + rng.below(24) as u32,
            enable_prefix_caching: rng.chance(70),
            enable_chunked_prefill: chunked,
            long_prefill_token_threshold: [0, 0, 16, 48][rng.below(4) as usize],
            reserve_full_prompt: rng.chance(80),
            // From the seed, not the generator, so the workloads of every seed stay as they were.
            enable_kv_cache_events: seed % 2 == 0,
            journey: JourneyConfig {
                enabled: rng.chance(80),
            },
            step_tracing: StepTracingConfig {
                enabled: rng.chance(40),
                sample_rate: [1.0, 0.5, 0.1][rng.below(3) as usize],
                rich_subsample_rate: [1.0, 0.3, 0.0][rng.below(3) as usize],
                closure_interval: 10,
                seed,
            },
            ..SchedulerConfig::default()
        };
        let mut ops = Vec::new();
        let mut added = 0;
        for _ in 0..20 + rng.below(100) {
            match rng.below(10) {
                0..=3 => {
                    let group = rng.below(3) as u32;
                    let mut prompt =
                        vec![100 + group; (rng.below(4) * u64::from(block_size)) as usize];
                    prompt.extend(
                        (0..1 + rng.below(60)).map(|t| 1000 + (t as u32 * 7 + added) % 5000),
                    );
                    prompt.truncate(150);
                    let max_tokens = 1 + rng.below(30) as u32;
                    ops.push(Op::Add(NewRequest {
                        client_index: rng.below(3) as u32,
                        max_tokens,
                        min_tokens: if rng.chance(10) {
                            rng.below(u64::from(max_tokens)) as u32
                        } else {
                            0
                        },
                        eos_token_id: (!rng.chance(10)).then_some(EOS),
                        stop_token_ids: if rng.chance(10) {
                            vec![1000 + rng.below(50) as u32]
                        } else {
                            Vec::new()
                        },
                        priority: rng.below(4) as i32 - 1,
                        arrival_ns: 0,
                        journey_sampled: rng.chance(85),
                        cache_salt: rng.chance(10).then(|| format!("tenant-{}", rng.below(2))),
                        ..NewRequest::new(format!("req-{added}"), prompt)
                    }));
                    added += 1;
                }
                4..=8 => ops.push(Op::Step {
                    eos_percent: rng.below(15),
                }),
                _ if rng.chance(70) && added > 0 => {
                    ops.push(Op::Abort(format!("req-{}", rng.below(u64::from(added)))))
                }
                _ => ops.push(Op::Reset {
                    running_too: rng.chance(50),
                }),
            }
        }
        Self { config, ops, seed }
    }
}

/// Everything a run produced, in order, as canonical JSON lines, plus the journey events.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Transcript {
    /// One line per call result (errors included).
    pub lines: Vec<String>,
    /// Every journey event, in emission order.
    pub journeys: Vec<JourneyEvent>,
    /// Engine steps taken.
    pub steps: u64,
}

impl Transcript {
    fn record<T: Serialize>(&mut self, call: &str, value: &T) {
        let json = serde_json::to_string(value).expect("scheduler records serialize");
        self.lines.push(format!("{call} {json}"));
    }

    fn journeys(&mut self, events: &[JourneyEvent]) {
        self.journeys.extend_from_slice(events);
    }

    /// Check every journey in the transcript against the journey grammar; all must have ended.
    pub fn check_journeys(&self) -> Result<(), String> {
        let mut validator = JourneyValidator::new();
        for event in &self.journeys {
            validator.observe(event).map_err(|e| e.to_string())?;
        }
        match validator.num_open() {
            0 => Ok(()),
            open => Err(format!("{open} journeys did not end with FINISHED")),
        }
    }
}

/// Steps allowed for draining after the operations.
const DRAIN_STEPS: u64 = 20_000;

/// Drives a backend through a workload, recording every result.
pub struct Driver<'a> {
    backend: &'a mut dyn SchedulerBackend,
    rng: Rng,
    now_ns: u64,
    /// What the run produced so far.
    pub transcript: Transcript,
}

impl<'a> Driver<'a> {
    /// A driver sampling tokens from `seed`.
    pub fn new(backend: &'a mut dyn SchedulerBackend, seed: u64) -> Self {
        Self {
            backend,
            rng: Rng::new(seed ^ 0x5eed),
            now_ns: 0,
            transcript: Transcript::default(),
        }
    }

    /// Continue a clock that an earlier driver advanced to `now_ns` (timestamps never go back).
    pub fn starting_at(self, now_ns: u64) -> Self {
        Self { now_ns, ..self }
    }

    /// The driver's clock.
    pub fn now_ns(&self) -> u64 {
        self.now_ns
    }

    /// The backend being driven.
    pub fn backend_mut(&mut self) -> &mut dyn SchedulerBackend {
        self.backend
    }

    fn tick(&mut self) -> u64 {
        self.now_ns += 1_000;
        self.now_ns
    }

    /// Apply one operation. Request and output errors are recorded, not raised; a guest fault
    /// is raised.
    pub fn apply(&mut self, op: &Op) -> Result<(), BackendError> {
        let now = self.tick();
        match op {
            Op::Add(request) => {
                let request = NewRequest {
                    arrival_ns: now,
                    ..request.clone()
                };
                match self.backend.add_request(request, now) {
                    Ok(added) => {
                        self.transcript.record("add", &added);
                        self.transcript.journeys(&added.journey_events);
                    }
                    Err(BackendError::Request(error)) => {
                        self.transcript.record("add-error", &format!("{error:?}"))
                    }
                    Err(error) => return Err(error),
                }
            }
            Op::Step { eos_percent } => self.step(*eos_percent)?,
            Op::Abort(id) => {
                let outcome = self.backend.finish_requests(
                    std::slice::from_ref(id),
                    FinishStatus::Aborted,
                    now,
                )?;
                self.transcript.record("finish", &outcome);
                self.transcript.journeys(&outcome.journey_events);
            }
            Op::Reset { running_too } => {
                let outcome = self.backend.reset_prefix_cache(*running_too, now)?;
                self.transcript.record("reset", &outcome);
                self.transcript.journeys(&outcome.journey_events);
            }
        }
        Ok(())
    }

    /// One engine step with sampled tokens.
    pub fn step(&mut self, eos_percent: u64) -> Result<(), BackendError> {
        let now = self.tick();
        let output = self.backend.schedule(now)?;
        self.transcript.record("schedule", &output);
        self.transcript.journeys(&output.journey_events);
        let sampled = output
            .batch
            .sample
            .iter()
            .map(|&sample| {
                sample.then(|| {
                    if self.rng.chance(eos_percent) {
                        EOS
                    } else {
                        1000 + self.rng.below(60) as u32
                    }
                })
            })
            .collect();
        let now = self.tick();
        let engine = self.backend.update_from_output(
            &ModelOutput {
                sampled_token_ids: sampled,
            },
            now,
        )?;
        self.transcript.record("update", &engine);
        self.transcript.journeys(&engine.journey_events);
        self.transcript.steps += 1;
        Ok(())
    }

    /// Step until no request is left; fails if that takes more than a bound of steps.
    pub fn drain(&mut self) -> Result<(), RunError> {
        for _ in 0..DRAIN_STEPS {
            let stats = self.backend.stats(self.now_ns)?;
            if stats.num_running + stats.num_waiting == 0 {
                let now = self.tick();
                let last = self.backend.schedule(now)?;
                self.transcript.record("schedule", &last);
                let closed = self.backend.shutdown(now)?;
                self.transcript.record("shutdown", &closed);
                let stats = self.backend.stats(now)?;
                self.transcript.record("stats", &stats);
                return Ok(());
            }
            self.step(5)?;
        }
        Err(RunError::NotDrained { steps: DRAIN_STEPS })
    }

    /// Apply every operation, then drain.
    pub fn run(&mut self, workload: &Workload) -> Result<(), RunError> {
        for op in &workload.ops {
            self.apply(op)?;
        }
        self.drain()
    }
}

/// Run a whole workload on a backend and return its transcript.
pub fn run_workload(
    backend: &mut dyn SchedulerBackend,
    workload: &Workload,
) -> Result<Transcript, RunError> {
    let mut driver = Driver::new(backend, workload.seed);
    driver.run(workload)?;
    Ok(driver.transcript)
}
