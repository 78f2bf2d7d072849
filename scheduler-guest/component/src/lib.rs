//! A scheduler policy component: `waypoint-scheduler` behind the `waypoint:scheduler` WIT world.
//!
//! One crate builds every built-in policy; the cargo feature picks which (`fair` over
//! `priority` over `fcfs`, the default), and each build is componentized into its own file.
//! The component imports nothing: time comes in as `now-ns`, and a panic traps.
//!
//! Built without a policy feature, the crate exports nothing itself: another component crate
//! (the lying test components) wraps [`Component`] and exports through
//! `export_policy!(T with_types_in waypoint_policy)`.

#![no_std]
// The export glue is only instantiated for wasm32; native builds type-check it.
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

extern crate alloc;
// The export macro names the bindings by crate path, here as in wrapping crates.
extern crate self as waypoint_policy;
#[cfg(not(target_arch = "wasm32"))]
extern crate std;

mod convert;

use alloc::string::String;
use alloc::vec::Vec;
use core::cell::RefCell;

use waypoint_scheduler::wit::Convert;
use waypoint_scheduler::{FinishStatus, PolicyKind, Scheduler};

wit_bindgen::generate!({
    world: "policy",
    path: "../../wit",
    default_bindings_module: "waypoint_policy",
    pub_export_macro: true,
    export_macro_name: "export_policy",
});

use exports::waypoint::scheduler::scheduler::{
    Guest, GuestScheduler, PolicyInfo, Scheduler as SchedulerHandle,
};
pub use exports::waypoint::scheduler::types as wit;

/// The policy this build implements.
const POLICY: PolicyKind = if cfg!(feature = "fair") {
    PolicyKind::Fair
} else if cfg!(feature = "priority") {
    PolicyKind::Priority
} else {
    PolicyKind::Fcfs
};

/// The built-in policy's exports.
pub struct Policy;

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
pub struct Component(RefCell<Scheduler>);

impl Component {
    /// A scheduler for `config`, with this build's policy.
    pub fn new(config: wit::SchedulerConfig) -> Result<Self, wit::ConfigError> {
        Scheduler::new(convert::config(config, POLICY))
            .map(|scheduler| Self(RefCell::new(scheduler)))
            .map_err(Convert::convert)
    }

    /// A scheduler continuing from an exported state, with this build's policy.
    pub fn from_state(state: &[u8]) -> Result<Self, wit::StateError> {
        Scheduler::import_state(state, POLICY)
            .map(|scheduler| Self(RefCell::new(scheduler)))
            .map_err(Convert::convert)
    }
}

impl GuestScheduler for Component {
    fn create(config: wit::SchedulerConfig) -> Result<SchedulerHandle, wit::ConfigError> {
        Self::new(config).map(SchedulerHandle::new)
    }

    fn import_state(state: Vec<u8>, _now_ns: u64) -> Result<SchedulerHandle, wit::StateError> {
        Self::from_state(&state).map(SchedulerHandle::new)
    }

    fn add_request(
        &self,
        request: wit::NewRequest,
        now_ns: u64,
    ) -> Result<wit::Added, wit::RequestError> {
        self.0
            .borrow_mut()
            .add_request(request.convert(), now_ns)
            .map(Convert::convert)
            .map_err(Convert::convert)
    }

    fn schedule(&self, now_ns: u64) -> wit::SchedulerOutput {
        self.0.borrow_mut().schedule(now_ns).convert()
    }

    fn update_from_output(
        &self,
        output: wit::ModelOutput,
        now_ns: u64,
    ) -> Result<wit::EngineOutputs, wit::OutputError> {
        let output: waypoint_scheduler::ModelOutput = output.convert();
        self.0
            .borrow_mut()
            .update_from_output(&output, now_ns)
            .map(Convert::convert)
            .map_err(Convert::convert)
    }

    fn finish_requests(
        &self,
        ids: Vec<String>,
        status: wit::FinishStatus,
        now_ns: u64,
    ) -> wit::FinishOutcome {
        let status: FinishStatus = status.convert();
        self.0
            .borrow_mut()
            .finish_requests(ids.iter().map(String::as_str), status, now_ns)
            .convert()
    }

    fn reset_prefix_cache(&self, reset_running_requests: bool, now_ns: u64) -> wit::ResetOutcome {
        self.0
            .borrow_mut()
            .reset_prefix_cache(reset_running_requests, now_ns)
            .convert()
    }

    fn shutdown(&self, now_ns: u64) -> Vec<wit::StepEvent> {
        self.0.borrow_mut().shutdown(now_ns).convert()
    }

    fn stats(&self, _now_ns: u64) -> wit::SchedulerStats {
        self.0.borrow().stats().convert()
    }

    fn live_requests(&self, _now_ns: u64) -> Vec<wit::LiveRequest> {
        self.0.borrow().live_requests().convert()
    }

    fn export_state(&self, _now_ns: u64) -> Vec<u8> {
        self.0.borrow().export_state()
    }
}

#[cfg(all(target_arch = "wasm32", feature = "export"))]
export_policy!(Policy);

#[cfg(target_arch = "wasm32")]
#[global_allocator]
static ALLOCATOR: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

/// A panic is a bug: trap, and let the host fail the affected requests and reload.
#[cfg(target_arch = "wasm32")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    core::arch::wasm32::unreachable()
}
