//! Lying policy components: the real fcfs scheduler, whose results are corrupted from step 3 on
//! in the one way this build's feature names. Each lie breaks one rule the host checks before
//! it uses a result: an unknown or repeated handle, a range past the request's tokens, a block
//! outside the cache, too few blocks, a step over the token budget or over `max_num_seqs`, a
//! sample before the prompt is computed, an unknown preempted handle, an event for a request
//! that does not exist, a KV event the cache cannot have made, or statistics out of bounds.

#![no_std]
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;
use core::cell::Cell;

use waypoint_policy::exports::waypoint::scheduler::scheduler::{
    Guest, GuestScheduler, PolicyInfo, Scheduler as SchedulerHandle,
};
use waypoint_policy::Fcfs;
use waypoint_policy::{wit, Component};

/// The first step whose output is corrupted.
const FIRST_LIE: u64 = 3;

/// The rule this build breaks.
const RULE: &str = if cfg!(feature = "repeated-handle") {
    "repeated-handle"
} else if cfg!(feature = "range") {
    "range"
} else if cfg!(feature = "block-id") {
    "block-id"
} else if cfg!(feature = "too-few-blocks") {
    "too-few-blocks"
} else if cfg!(feature = "over-budget") {
    "over-budget"
} else if cfg!(feature = "too-many-entries") {
    "too-many-entries"
} else if cfg!(feature = "early-sample") {
    "early-sample"
} else if cfg!(feature = "unknown-preempted") {
    "unknown-preempted"
} else if cfg!(feature = "unknown-event-id") {
    "unknown-event-id"
} else if cfg!(feature = "stats") {
    "stats"
} else if cfg!(feature = "kv-events") {
    "kv-events"
} else {
    "unknown-handle"
};

/// A handle and an id no request has.
const GHOST_HANDLE: u64 = 0xdead_beef;
const GHOST_ID: &str = "ghost";

struct Liar;

impl Guest for Liar {
    type Scheduler = Lying;

    fn describe_policy() -> PolicyInfo {
        PolicyInfo {
            name: alloc::format!("lie-{RULE}"),
            version: String::from(env!("CARGO_PKG_VERSION")),
        }
    }
}

/// The real scheduler and what the lies need to know of its configuration.
struct Lying {
    inner: Component<Fcfs>,
    num_blocks: u32,
    max_num_seqs: u32,
    /// `schedule` calls so far.
    steps: Cell<u64>,
}

impl Lying {
    fn lying(&self) -> bool {
        self.steps.get() >= FIRST_LIE
    }
}

/// Entry 0 copied to the end of the batch.
fn repeat_first(batch: &mut wit::ScheduledBatch) {
    batch.handles.push(batch.handles[0]);
    batch.num_computed_tokens.push(batch.num_computed_tokens[0]);
    batch
        .num_scheduled_tokens
        .push(batch.num_scheduled_tokens[0]);
    batch.sample.push(batch.sample[0]);
}

/// Entry 0's detail, made if it has none. Its blocks lead the batch's block list.
fn first_detail(batch: &mut wit::ScheduledBatch) -> &mut wit::ScheduledDetail {
    if batch.details.first().is_none_or(|detail| detail.index != 0) {
        batch.details.insert(
            0,
            wit::ScheduledDetail {
                index: 0,
                kind: wit::ScheduledKind::Running,
                num_blocks: 0,
            },
        );
    }
    &mut batch.details[0]
}

impl Lying {
    fn corrupt(&self, output: &mut wit::SchedulerOutput) {
        let batch = &mut output.batch;
        match RULE {
            "unknown-preempted" => output.preempted.push(wit::RequestRef {
                id: GHOST_ID.into(),
                handle: GHOST_HANDLE,
                client_index: 0,
            }),
            "unknown-event-id" => output.journey_events.push(ghost_event(output.step)),
            "kv-events" => output
                .kv_events
                .push(wit::KvEvent::BlockStored(wit::BlockStored {
                    block_hashes: alloc::vec![1],
                    parent_block_hash: None,
                    token_ids: Vec::new(),
                    cache_salt: None,
                })),
            // The other lies are about the batch's entries.
            _ if batch.handles.is_empty() => {}
            "unknown-handle" => batch.handles[0] = GHOST_HANDLE,
            "repeated-handle" => {
                repeat_first(batch);
                output.total_num_scheduled_tokens += batch.num_scheduled_tokens[0];
            }
            "range" => {
                batch.num_scheduled_tokens[0] += 1000;
                output.total_num_scheduled_tokens += 1000;
            }
            "block-id" => {
                first_detail(batch).num_blocks += 1;
                batch.block_ids.insert(0, self.num_blocks + 7);
            }
            "too-few-blocks" => {
                let detail = first_detail(batch);
                detail.kind = wit::ScheduledKind::Resumed;
                let blocks = core::mem::take(&mut detail.num_blocks);
                batch.block_ids.drain(..blocks as usize);
            }
            "over-budget" => {
                // Recompute every entry from its first token: each range is still valid.
                for index in 0..batch.handles.len() {
                    let end = batch.num_computed_tokens[index] + batch.num_scheduled_tokens[index];
                    batch.num_computed_tokens[index] = 0;
                    batch.num_scheduled_tokens[index] = end;
                }
                output.total_num_scheduled_tokens = batch.num_scheduled_tokens.iter().sum();
            }
            "too-many-entries" => {
                while batch.handles.len() <= self.max_num_seqs as usize {
                    repeat_first(batch);
                }
            }
            "early-sample" => {
                if let Some(index) = batch
                    .num_computed_tokens
                    .iter()
                    .position(|&computed| computed > 0)
                {
                    batch.num_computed_tokens[index] -= 1;
                    batch.sample[index] = true;
                }
            }
            _ => {}
        }
    }
}

fn ghost_event(step: u64) -> wit::JourneyEvent {
    wit::JourneyEvent {
        request_id: String::from(GHOST_ID),
        event_type: wit::JourneyEventType::Scheduled,
        ts_monotonic_ns: 0,
        scheduler_step: step,
        prefill_done_tokens: 0,
        prefill_total_tokens: 1,
        decode_done_tokens: 0,
        decode_max_tokens: 1,
        phase: wit::Phase::Prefill,
        num_preemptions_so_far: 0,
        schedule_kind: Some(wit::ScheduleKind::First),
        finish_status: None,
        client_index: 0,
    }
}

impl GuestScheduler for Lying {
    fn create(config: wit::SchedulerConfig) -> Result<SchedulerHandle, wit::ConfigError> {
        let (num_blocks, max_num_seqs) = (config.num_blocks, config.max_num_seqs);
        Ok(SchedulerHandle::new(Self {
            inner: Component::new(config)?,
            num_blocks,
            max_num_seqs,
            steps: Cell::new(0),
        }))
    }

    fn import_state(state: Vec<u8>, now_ns: u64) -> Result<SchedulerHandle, wit::StateError> {
        Ok(SchedulerHandle::new(Self {
            inner: Component::from_state(&state, now_ns)?,
            num_blocks: 0,
            max_num_seqs: 0,
            steps: Cell::new(0),
        }))
    }

    fn add_request(
        &self,
        request: wit::NewRequest,
        now_ns: u64,
    ) -> Result<wit::Added, wit::RequestError> {
        self.inner.add_request(request, now_ns)
    }

    fn schedule(&self, now_ns: u64) -> wit::SchedulerOutput {
        self.steps.set(self.steps.get() + 1);
        let mut output = self.inner.schedule(now_ns);
        if self.lying() {
            self.corrupt(&mut output);
        }
        output
    }

    fn update_from_output(
        &self,
        output: wit::ModelOutput,
        now_ns: u64,
    ) -> Result<wit::EngineOutputs, wit::OutputError> {
        self.inner.update_from_output(output, now_ns)
    }

    fn finish_requests(
        &self,
        ids: Vec<String>,
        status: wit::FinishStatus,
        now_ns: u64,
    ) -> wit::FinishOutcome {
        self.inner.finish_requests(ids, status, now_ns)
    }

    fn reset_prefix_cache(&self, reset_running_requests: bool, now_ns: u64) -> wit::ResetOutcome {
        self.inner
            .reset_prefix_cache(reset_running_requests, now_ns)
    }

    fn shutdown(&self, now_ns: u64) -> Vec<wit::StepEvent> {
        self.inner.shutdown(now_ns)
    }

    fn stats(&self, now_ns: u64) -> wit::SchedulerStats {
        let mut stats = self.inner.stats(now_ns);
        if RULE == "stats" && self.lying() {
            stats.kv_cache_usage = 2.0;
        }
        stats
    }

    fn live_requests(&self, now_ns: u64) -> Vec<wit::LiveRequest> {
        self.inner.live_requests(now_ns)
    }

    fn export_state(&self, now_ns: u64) -> Vec<u8> {
        self.inner.export_state(now_ns)
    }
}

#[cfg(target_arch = "wasm32")]
waypoint_policy::export_policy!(Liar with_types_in waypoint_policy);
