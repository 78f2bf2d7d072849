//! A scheduler policy component: `waypoint-scheduler` behind the `waypoint:scheduler` WIT world.
//!
//! One crate builds every built-in policy; the cargo feature picks which (`fair` over
//! `priority` over `fcfs`, the default), and each build is componentized into its own file.
//! The component imports nothing: time comes in as `now-ns`, and a panic traps.

#![no_std]
// The export glue is only instantiated for wasm32; native builds type-check it.
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

extern crate alloc;
#[cfg(not(target_arch = "wasm32"))]
extern crate std;

mod convert;

use alloc::string::String;
use alloc::vec::Vec;
use core::cell::RefCell;

use waypoint_scheduler::{FinishStatus, PolicyKind, Scheduler};

wit_bindgen::generate!({
    world: "policy",
    path: "../../wit",
});

use exports::waypoint::scheduler::scheduler::{
    Guest, GuestScheduler, PolicyInfo, Scheduler as SchedulerHandle,
};
use exports::waypoint::scheduler::types as wit;

/// The policy this build implements.
const POLICY: PolicyKind = if cfg!(feature = "fair") {
    PolicyKind::Fair
} else if cfg!(feature = "priority") {
    PolicyKind::Priority
} else {
    PolicyKind::Fcfs
};

struct Policy;

impl Guest for Policy {
    type Scheduler = Component;

    fn describe_policy() -> PolicyInfo {
        let name = match POLICY {
            PolicyKind::Fcfs => "fcfs",
            PolicyKind::Priority => "priority",
            PolicyKind::Fair => "fair",
        };
        PolicyInfo {
            name: String::from(name),
            version: String::from(env!("CARGO_PKG_VERSION")),
        }
    }
}

/// One scheduler instance; resource methods take `&self`, so the state sits in a `RefCell`.
struct Component(RefCell<Scheduler>);

impl Component {
    fn handle(scheduler: Scheduler) -> SchedulerHandle {
        SchedulerHandle::new(Self(RefCell::new(scheduler)))
    }
}

impl GuestScheduler for Component {
    fn create(config: wit::SchedulerConfig) -> Result<SchedulerHandle, wit::ConfigError> {
        let config = convert::config(config, POLICY);
        Scheduler::new(config)
            .map(Self::handle)
            .map_err(convert::config_error)
    }

    fn import_state(state: Vec<u8>, _now_ns: u64) -> Result<SchedulerHandle, wit::StateError> {
        Scheduler::import_state(&state, POLICY)
            .map(Self::handle)
            .map_err(convert::state_error)
    }

    fn add_request(
        &self,
        request: wit::NewRequest,
        now_ns: u64,
    ) -> Result<wit::Added, wit::RequestError> {
        let mut scheduler = self.0.borrow_mut();
        let id = request.id.clone();
        let events = scheduler
            .add_request(convert::new_request(request), now_ns)
            .map_err(convert::request_error)?;
        let handle = scheduler
            .request(&id)
            .map(|request| request.handle())
            .expect("an accepted request is live");
        Ok(wit::Added {
            handle,
            journey_events: convert::journey_events(events),
        })
    }

    fn schedule(&self, now_ns: u64) -> wit::SchedulerOutput {
        convert::scheduler_output(self.0.borrow_mut().schedule(now_ns))
    }

    fn update_from_output(
        &self,
        output: wit::ModelOutput,
        now_ns: u64,
    ) -> Result<wit::EngineOutputs, wit::OutputError> {
        let output = convert::model_output(output);
        self.0
            .borrow_mut()
            .update_from_output(&output, now_ns)
            .map(convert::engine_outputs)
            .map_err(convert::output_error)
    }

    fn finish_requests(
        &self,
        ids: Vec<String>,
        status: wit::FinishStatus,
        now_ns: u64,
    ) -> wit::FinishOutcome {
        let status: FinishStatus = convert::finish_status_in(status);
        let outcome =
            self.0
                .borrow_mut()
                .finish_requests(ids.iter().map(String::as_str), status, now_ns);
        convert::finish_outcome(outcome)
    }

    fn reset_prefix_cache(&self, reset_running_requests: bool, now_ns: u64) -> wit::ResetOutcome {
        convert::reset_outcome(
            self.0
                .borrow_mut()
                .reset_prefix_cache(reset_running_requests, now_ns),
        )
    }

    fn shutdown(&self, now_ns: u64) -> Vec<wit::StepEvent> {
        self.0
            .borrow_mut()
            .shutdown(now_ns)
            .into_iter()
            .map(convert::step_event)
            .collect()
    }

    fn stats(&self, _now_ns: u64) -> wit::SchedulerStats {
        convert::stats(self.0.borrow().stats())
    }

    fn live_requests(&self, _now_ns: u64) -> Vec<wit::RequestRef> {
        let scheduler = self.0.borrow();
        let live = scheduler
            .requests()
            .iter()
            .map(|request| request.reference());
        let finished = scheduler.pending_finished().iter().cloned();
        live.chain(finished)
            .map(|reference| wit::RequestRef {
                handle: reference.handle,
                request_id: String::from(&*reference.id),
                client_index: reference.client_index,
            })
            .collect()
    }

    fn export_state(&self, _now_ns: u64) -> Vec<u8> {
        self.0.borrow().export_state()
    }
}

#[cfg(target_arch = "wasm32")]
export!(Policy);

#[cfg(target_arch = "wasm32")]
#[global_allocator]
static ALLOCATOR: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

/// A panic is a bug: trap, and let the host fail the affected requests and reload.
#[cfg(target_arch = "wasm32")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    core::arch::wasm32::unreachable()
}
