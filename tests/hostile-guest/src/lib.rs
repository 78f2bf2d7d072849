//! Hostile policy components for the host's sandbox tests. Each exports the scheduler world and
//! answers with empty, well-formed results until it misbehaves:
//! `trap` traps on the 5th call into an instance, `spin` loops forever in `schedule`, `grow`
//! allocates without bound in `schedule`.

#![no_std]
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

extern crate alloc;
#[cfg(not(target_arch = "wasm32"))]
extern crate std;

use alloc::string::String;
use alloc::vec::Vec;
use core::cell::Cell;

wit_bindgen::generate!({
    world: "policy",
    path: "../../wit",
});

use exports::waypoint::scheduler::scheduler::{
    Guest, GuestScheduler, PolicyInfo, Scheduler as SchedulerHandle,
};
use exports::waypoint::scheduler::types as wit;

/// The call on which the `trap` build traps.
const TRAP_ON_CALL: u32 = 5;

struct Hostile;

impl Guest for Hostile {
    type Scheduler = Instance;

    fn describe_policy() -> PolicyInfo {
        PolicyInfo {
            name: String::from("hostile"),
            version: String::from(env!("CARGO_PKG_VERSION")),
        }
    }
}

struct Instance {
    calls: Cell<u32>,
    step: Cell<u64>,
    /// Reported in `stats`, which the host checks against its configuration.
    usable_blocks: u32,
}

impl Instance {
    fn handle(usable_blocks: u32) -> SchedulerHandle {
        SchedulerHandle::new(Self {
            calls: Cell::new(0),
            step: Cell::new(0),
            usable_blocks,
        })
    }

    /// Count a call; the `trap` build traps on the configured one.
    fn call(&self) {
        let calls = self.calls.get() + 1;
        self.calls.set(calls);
        if cfg!(feature = "trap") && calls == TRAP_ON_CALL {
            panic!("hostile guest traps on call {calls}");
        }
    }

    fn misbehave_in_schedule(&self) {
        if cfg!(feature = "spin") {
            let mut spins = 0u64;
            while core::hint::black_box(spins) != u64::MAX {
                spins = spins.wrapping_add(1) % (u64::MAX - 1);
            }
        }
        if cfg!(feature = "grow") {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(alloc::vec![1; 1 << 20]);
                core::hint::black_box(&hoard);
            }
        }
    }
}

impl GuestScheduler for Instance {
    fn create(config: wit::SchedulerConfig) -> Result<SchedulerHandle, wit::ConfigError> {
        Ok(Self::handle(config.num_blocks.saturating_sub(1)))
    }

    fn import_state(_state: Vec<u8>, _now_ns: u64) -> Result<SchedulerHandle, wit::StateError> {
        Ok(Self::handle(0))
    }

    fn add_request(
        &self,
        _request: wit::NewRequest,
        _now_ns: u64,
    ) -> Result<wit::Added, wit::RequestError> {
        self.call();
        Ok(wit::Added {
            handle: u64::from(self.calls.get()),
            journey_events: Vec::new(),
        })
    }

    fn schedule(&self, _now_ns: u64) -> wit::SchedulerOutput {
        self.call();
        self.misbehave_in_schedule();
        self.step.set(self.step.get() + 1);
        wit::SchedulerOutput {
            step: self.step.get(),
            batch: wit::ScheduledBatch {
                handles: Vec::new(),
                num_computed_tokens: Vec::new(),
                num_scheduled_tokens: Vec::new(),
                sample: Vec::new(),
                details: Vec::new(),
                block_ids: Vec::new(),
            },
            total_num_scheduled_tokens: 0,
            preempted: Vec::new(),
            finished: Vec::new(),
            journey_events: Vec::new(),
            step_events: Vec::new(),
            kv_events: Vec::new(),
        }
    }

    fn update_from_output(
        &self,
        _output: wit::ModelOutput,
        _now_ns: u64,
    ) -> Result<wit::EngineOutputs, wit::OutputError> {
        self.call();
        Ok(wit::EngineOutputs {
            step: self.step.get(),
            handles: Vec::new(),
            token_ids: Vec::new(),
            finishes: Vec::new(),
            journey_events: Vec::new(),
        })
    }

    fn finish_requests(
        &self,
        _ids: Vec<String>,
        _status: wit::FinishStatus,
        _now_ns: u64,
    ) -> wit::FinishOutcome {
        self.call();
        wit::FinishOutcome {
            finished_ids: Vec::new(),
            journey_events: Vec::new(),
        }
    }

    fn reset_prefix_cache(&self, _reset_running_requests: bool, _now_ns: u64) -> wit::ResetOutcome {
        self.call();
        wit::ResetOutcome {
            reset: true,
            preempted_ids: Vec::new(),
            journey_events: Vec::new(),
            kv_events: Vec::new(),
        }
    }

    fn shutdown(&self, _now_ns: u64) -> Vec<wit::StepEvent> {
        self.call();
        Vec::new()
    }

    fn stats(&self, _now_ns: u64) -> wit::SchedulerStats {
        self.call();
        wit::SchedulerStats {
            step: self.step.get(),
            num_running: 0,
            num_waiting: 0,
            kv_cache_usage: 0.0,
            num_free_blocks: self.usable_blocks,
            num_usable_blocks: self.usable_blocks,
            prefix_cache: wit::PrefixCacheStats {
                requests: 0,
                queries: 0,
                hits: 0,
                preempted_requests: 0,
                preempted_queries: 0,
                preempted_hits: 0,
                resets: 0,
            },
            num_preemptions_total: 0,
        }
    }

    fn live_requests(&self, _now_ns: u64) -> Vec<wit::LiveRequest> {
        self.call();
        Vec::new()
    }

    fn export_state(&self, _now_ns: u64) -> Vec<u8> {
        self.call();
        Vec::new()
    }
}

#[cfg(target_arch = "wasm32")]
export!(Hostile);

#[cfg(target_arch = "wasm32")]
#[global_allocator]
static ALLOCATOR: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

#[cfg(target_arch = "wasm32")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    core::arch::wasm32::unreachable()
}
