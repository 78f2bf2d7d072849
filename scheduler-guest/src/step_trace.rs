//! Step tracing: a deterministic step sampler, batch summaries, per-request snapshots and the
//! span-window records a host turns into `scheduler_steps_<n>` spans.
//!
//! A pure guest cannot time itself, so a batch summary carries `ts_start_ns` (the `now_ns` given
//! to `schedule`) and the host supplies the end time when it renders the attributes: that is
//! where `step.ts_end_ns` and `step.duration_us` come from (see [`BatchSummary::attributes`]).

use alloc::vec::Vec;

use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};

use crate::config::StepTracingConfig;
use crate::journey::Phase;
use crate::request::RequestId;

/// Decides which steps are traced: `SHA-1("{seed}:{step}")` (the reference system's
/// deterministic sampler; `"{seed}:{step}:rich"` for the rich stage), first 8 bytes big-endian,
/// divided by 2^64, sampled when below the rate. The same seed and step always agree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepSampler {
    seed: u64,
}

fn decimal(mut value: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut start = buf.len();
    loop {
        start -= 1;
        buf[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            return &buf[start..];
        }
    }
}

impl StepSampler {
    /// A sampler with this seed.
    pub fn new(seed: u64) -> Self {
        Self { seed }
    }

    fn draw(&self, step: u64, suffix: &[u8]) -> f64 {
        let mut digits = [0u8; 20];
        let mut hasher = Sha1::new();
        hasher.update(decimal(self.seed, &mut digits));
        hasher.update(b":");
        hasher.update(decimal(step, &mut digits));
        hasher.update(suffix);
        let digest = hasher.finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_be_bytes(first) as f64 / 18_446_744_073_709_551_616.0
    }

    /// Whether `step` gets a batch summary at `rate`.
    pub fn sample_summary(&self, step: u64, rate: f64) -> bool {
        rate > 0.0 && self.draw(step, b"") < rate
    }

    /// Whether a summarised `step` also gets request snapshots at `rate`.
    pub fn sample_rich(&self, step: u64, rate: f64) -> bool {
        rate > 0.0 && self.draw(step, b":rich") < rate
    }
}

/// One step's batch composition (`step.BATCH_SUMMARY`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchSummary {
    /// `step.id`.
    pub step_id: u64,
    /// `step.ts_start_ns`: the `now_ns` given to `schedule`.
    pub ts_start_ns: u64,
    /// `queue.running_depth` after scheduling.
    pub running_depth: u32,
    /// `queue.waiting_depth` after scheduling.
    pub waiting_depth: u32,
    /// `batch.num_prefill_reqs`: scheduled requests with no output token yet.
    pub num_prefill_reqs: u32,
    /// `batch.num_decode_reqs`: scheduled requests with output tokens.
    pub num_decode_reqs: u32,
    /// `batch.scheduled_tokens`.
    pub scheduled_tokens: u32,
    /// `batch.prefill_tokens`.
    pub prefill_tokens: u32,
    /// `batch.decode_tokens`.
    pub decode_tokens: u32,
    /// `batch.num_finished`: requests finished since the previous `schedule`.
    pub num_finished: u32,
    /// `batch.num_preempted`: preemptions reported in this step's output.
    pub num_preempted: u32,
    /// `kv.usage_gpu_ratio`.
    pub kv_usage_ratio: f64,
    /// `kv.blocks_total_gpu`: usable blocks.
    pub kv_blocks_total: u32,
    /// `kv.blocks_free_gpu`.
    pub kv_blocks_free: u32,
}

/// A span or span-event attribute value.
#[derive(Clone, Debug, PartialEq)]
pub enum AttributeValue {
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string.
    Str(RequestId),
}

/// Attribute keys with their values, in the reference system's order.
pub type Attributes = Vec<(&'static str, AttributeValue)>;

fn int(value: impl Into<i64>) -> AttributeValue {
    AttributeValue::Int(value.into())
}

fn saturating_i64(value: u64) -> AttributeValue {
    AttributeValue::Int(i64::try_from(value).unwrap_or(i64::MAX))
}

impl BatchSummary {
    /// All 16 attributes of `step.BATCH_SUMMARY`, with `step.ts_end_ns` and `step.duration_us`
    /// from the end time the host measured after `schedule` returned.
    pub fn attributes(&self, ts_end_ns: u64) -> Attributes {
        let duration_us = ts_end_ns.saturating_sub(self.ts_start_ns) / 1000;
        alloc::vec![
            ("step.id", saturating_i64(self.step_id)),
            ("step.ts_start_ns", saturating_i64(self.ts_start_ns)),
            ("step.ts_end_ns", saturating_i64(ts_end_ns)),
            ("step.duration_us", saturating_i64(duration_us)),
            ("queue.running_depth", int(self.running_depth)),
            ("queue.waiting_depth", int(self.waiting_depth)),
            ("batch.num_prefill_reqs", int(self.num_prefill_reqs)),
            ("batch.num_decode_reqs", int(self.num_decode_reqs)),
            ("batch.scheduled_tokens", int(self.scheduled_tokens)),
            ("batch.prefill_tokens", int(self.prefill_tokens)),
            ("batch.decode_tokens", int(self.decode_tokens)),
            ("batch.num_finished", int(self.num_finished)),
            ("batch.num_preempted", int(self.num_preempted)),
            (
                "kv.usage_gpu_ratio",
                AttributeValue::Float(self.kv_usage_ratio)
            ),
            ("kv.blocks_total_gpu", int(self.kv_blocks_total)),
            ("kv.blocks_free_gpu", int(self.kv_blocks_free)),
        ]
    }
}

/// One running request's state in a traced step (`step.REQUEST_SNAPSHOT`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestSnapshot {
    /// `step.id`.
    pub step_id: u64,
    /// `request.id`.
    pub request_id: RequestId,
    /// `request.phase`: PREFILL or DECODE.
    pub phase: Phase,
    /// `request.num_prompt_tokens`.
    pub num_prompt_tokens: u32,
    /// `request.num_computed_tokens`, before this step's advance.
    pub num_computed_tokens: u32,
    /// `request.num_output_tokens`.
    pub num_output_tokens: u32,
    /// `request.num_preemptions`.
    pub num_preemptions: u32,
    /// `request.scheduled_tokens_this_step` (0 for a running request that got no tokens).
    pub scheduled_tokens_this_step: u32,
    /// `kv.blocks_allocated_gpu`: length of the block table.
    pub kv_blocks_allocated: u32,
    /// `kv.blocks_cached_gpu`: leading blocks of the table that are in the prefix cache.
    pub kv_blocks_cached: u32,
    /// `request.effective_prompt_len`: prompt minus prefix hit, when the hit was partial.
    pub effective_prompt_len: Option<u32>,
}

impl RequestSnapshot {
    /// The attributes of `step.REQUEST_SNAPSHOT` (`request.effective_prompt_len` only when set).
    pub fn attributes(&self) -> Attributes {
        let mut attributes = alloc::vec![
            ("step.id", saturating_i64(self.step_id)),
            ("request.id", AttributeValue::Str(self.request_id.clone())),
            (
                "request.phase",
                AttributeValue::Str(self.phase.as_str().into())
            ),
            ("request.num_prompt_tokens", int(self.num_prompt_tokens)),
            ("request.num_computed_tokens", int(self.num_computed_tokens)),
            ("request.num_output_tokens", int(self.num_output_tokens)),
            ("request.num_preemptions", int(self.num_preemptions)),
            (
                "request.scheduled_tokens_this_step",
                int(self.scheduled_tokens_this_step),
            ),
            ("kv.blocks_allocated_gpu", int(self.kv_blocks_allocated)),
            ("kv.blocks_cached_gpu", int(self.kv_blocks_cached)),
        ];
        if let Some(effective) = self.effective_prompt_len {
            attributes.push(("request.effective_prompt_len", int(effective)));
        }
        attributes
    }
}

/// A step-tracing record, returned by `schedule` (and `shutdown`) in emission order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum StepEvent {
    /// Open span `scheduler_steps_<sequence>` (attributes `scheduler.span_sequence`,
    /// `scheduler.step_range_start`, `scheduler.closure_interval`).
    WindowOpened {
        /// Span sequence number, from 1.
        sequence: u64,
        /// First step the window covers.
        step_range_start: u64,
        /// The configured closure interval.
        closure_interval: u32,
    },
    /// A `step.BATCH_SUMMARY` event on the open window's span.
    BatchSummary(BatchSummary),
    /// A `step.REQUEST_SNAPSHOT` event on the open window's span.
    RequestSnapshot(RequestSnapshot),
    /// End span `scheduler_steps_<sequence>` after setting `scheduler.step_range_end`.
    WindowClosed {
        /// Span sequence number.
        sequence: u64,
        /// First step the window covered.
        step_range_start: u64,
        /// Last step it covered.
        step_range_end: u64,
    },
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct Window {
    sequence: u64,
    step_range_start: u64,
}

/// Window bookkeeping and sampling decisions; exists only while step tracing is enabled.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct StepTracer {
    config: StepTracingConfig,
    sampler: StepSampler,
    window: Option<Window>,
    last_sequence: u64,
    steps_since_closure: u32,
    emitted_since_closure: bool,
}

impl StepTracer {
    pub(crate) fn new(config: StepTracingConfig) -> Self {
        Self {
            config,
            sampler: StepSampler::new(config.seed),
            window: None,
            last_sequence: 0,
            steps_since_closure: 0,
            emitted_since_closure: false,
        }
    }

    /// Continue an imported tracer's windows under the importer's validated settings.
    pub(crate) fn resume(self, config: StepTracingConfig) -> Self {
        Self {
            config,
            sampler: StepSampler::new(config.seed),
            ..self
        }
    }

    fn open(&mut self, step_range_start: u64, events: &mut Vec<StepEvent>) {
        self.last_sequence += 1;
        self.window = Some(Window {
            sequence: self.last_sequence,
            step_range_start,
        });
        events.push(StepEvent::WindowOpened {
            sequence: self.last_sequence,
            step_range_start,
            closure_interval: self.config.closure_interval,
        });
    }

    fn close(&mut self, step_range_end: u64, events: &mut Vec<StepEvent>) {
        if let Some(window) = self.window.take() {
            events.push(StepEvent::WindowClosed {
                sequence: window.sequence,
                step_range_start: window.step_range_start,
                step_range_end,
            });
        }
    }

    /// Open the first window (or the one after a shutdown) at the step being scheduled.
    pub(crate) fn begin_step(&mut self, step: u64, events: &mut Vec<StepEvent>) {
        if self.window.is_none() {
            self.open(step, events);
        }
    }

    /// Whether this step gets a summary.
    pub(crate) fn sample_summary(&self, step: u64) -> bool {
        self.sampler.sample_summary(step, self.config.sample_rate)
    }

    /// Whether this summarised step also gets snapshots.
    pub(crate) fn sample_rich(&self, step: u64) -> bool {
        self.sampler
            .sample_rich(step, self.config.rich_subsample_rate)
    }

    pub(crate) fn mark_emitted(&mut self) {
        self.emitted_since_closure = true;
    }

    /// Periodic closure after a step's emissions: every `closure_interval` steps, rotate the
    /// window if it received events; the counters reset either way.
    pub(crate) fn end_step(&mut self, step: u64, events: &mut Vec<StepEvent>) {
        self.steps_since_closure += 1;
        if self.steps_since_closure >= self.config.closure_interval {
            if self.emitted_since_closure {
                self.close(step, events);
                self.open(step + 1, events);
            }
            self.steps_since_closure = 0;
            self.emitted_since_closure = false;
        }
    }

    /// Close the open window at shutdown, events or not.
    pub(crate) fn shutdown(&mut self, step: u64, events: &mut Vec<StepEvent>) {
        self.close(step, events);
        self.steps_since_closure = 0;
        self.emitted_since_closure = false;
    }
}
