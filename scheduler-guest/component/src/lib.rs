//! Waypoint's policy SDK: implement [`Policy`] for a type, and [`export!`] makes it a complete
//! component of the `waypoint:scheduler` `policy` world, with Waypoint's real scheduler (vLLM's
//! continuous batching over a paged KV cache, journeys and step traces) underneath.
//!
//! ```ignore
//! #![no_std]
//! use waypoint_policy::{Enqueue, Fifo, Policy, RequestView, Ticket};
//!
//! #[derive(Default)]
//! pub struct Lifo(Fifo);
//! // impl Policy for Lifo { ... }
//! waypoint_policy::export!(Lifo);
//! ```
//!
//! The component imports nothing: time comes in as `now-ns`, and a panic traps (the host then
//! resubmits the requests in flight to a fresh instance). A policy crate is `no_std` + `alloc`;
//! this crate supplies the allocator and the panic handler of the wasm32 build.
//!
//! The built-in `fcfs`, `priority` and `fair` components are this crate built with the feature
//! of that name; their policies are in [`waypoint_scheduler::policy`], written against the same
//! trait. [`Component`] is public so a component crate can wrap the real scheduler and export
//! through `export_policy!(T with_types_in waypoint_policy)` (the lying test components do).

#![no_std]
// The export glue is only instantiated for wasm32; native builds type-check it.
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

extern crate alloc;
// The export macro names the bindings by crate path, here as in wrapping crates.
extern crate self as waypoint_policy;
#[cfg(not(target_arch = "wasm32"))]
extern crate std;

mod convert;

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::marker::PhantomData;

use waypoint_scheduler::wit::Convert;
use waypoint_scheduler::{FinishStatus, Scheduler};

pub use waypoint_scheduler::policy::{
    ByKey, Enqueue, Fifo, KeyOrder, Ordered, Policy, RequestView, Ticket,
};
/// The built-in policies, for a policy that builds on one.
pub use waypoint_scheduler::policy::{Fair, Fcfs, Priority};

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

/// Export `$policy` (a [`Policy`] + [`Default`] type) as this component's scheduler policy.
/// Invoke it once, at the crate root of a `cdylib`. Outside wasm32 it exports nothing, but
/// still checks that `$policy` is one.
#[macro_export]
macro_rules! export {
    ($policy:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            type WaypointPolicyExports = $crate::Exports<$policy>;
    $crate::export_policy!(WaypointPolicyExports with_types_in $crate);
        };
        #[cfg(not(target_arch = "wasm32"))]
        const _: () = $crate::assert_policy::<$policy>();
    };
}

/// Compiles only for a type [`export!`] can export.
#[doc(hidden)]
pub const fn assert_policy<P: Policy + Default + 'static>() {}

/// The exports of a component whose policy is `P`.
pub struct Exports<P>(PhantomData<P>);

impl<P: Policy + Default + 'static> Guest for Exports<P> {
    type Scheduler = Component<P>;

    fn describe_policy() -> PolicyInfo {
        let policy = P::default();
        PolicyInfo {
            name: String::from(policy.name()),
            version: String::from(policy.version()),
        }
    }
}

/// One scheduler instance with policy `P`; resource methods take `&self`, so the state sits in
/// a `RefCell`.
pub struct Component<P> {
    scheduler: RefCell<Scheduler<P>>,
}

impl<P: Policy + Default + 'static> Component<P> {
    fn wrap(scheduler: Scheduler<P>) -> Self {
        Self {
            scheduler: RefCell::new(scheduler),
        }
    }

    /// A scheduler for `config` with a fresh `P`.
    pub fn new(config: wit::SchedulerConfig) -> Result<Self, wit::ConfigError> {
        Scheduler::with_policy(config.convert(), Box::default())
            .map(Self::wrap)
            .map_err(Convert::convert)
    }

    /// A scheduler continuing from an exported state, with a fresh `P`.
    pub fn from_state(state: &[u8], now_ns: u64) -> Result<Self, wit::StateError> {
        Scheduler::import_state_with(state, Box::default(), now_ns)
            .map(Self::wrap)
            .map_err(Convert::convert)
    }
}

impl<P: Policy + Default + 'static> GuestScheduler for Component<P> {
    fn create(config: wit::SchedulerConfig) -> Result<SchedulerHandle, wit::ConfigError> {
        Self::new(config).map(SchedulerHandle::new)
    }

    fn import_state(state: Vec<u8>, now_ns: u64) -> Result<SchedulerHandle, wit::StateError> {
        Self::from_state(&state, now_ns).map(SchedulerHandle::new)
    }

    fn add_request(
        &self,
        request: wit::NewRequest,
        now_ns: u64,
    ) -> Result<wit::Added, wit::RequestError> {
        self.scheduler
            .borrow_mut()
            .add_request(request.convert(), now_ns)
            .map(Convert::convert)
            .map_err(Convert::convert)
    }

    fn schedule(&self, now_ns: u64) -> wit::SchedulerOutput {
        self.scheduler.borrow_mut().schedule(now_ns).convert()
    }

    fn update_from_output(
        &self,
        output: wit::ModelOutput,
        now_ns: u64,
    ) -> Result<wit::EngineOutputs, wit::OutputError> {
        let output: waypoint_scheduler::ModelOutput = output.convert();
        self.scheduler
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
        self.scheduler
            .borrow_mut()
            .finish_requests(ids.iter().map(String::as_str), status, now_ns)
            .convert()
    }

    fn reset_prefix_cache(&self, reset_running_requests: bool, now_ns: u64) -> wit::ResetOutcome {
        self.scheduler
            .borrow_mut()
            .reset_prefix_cache(reset_running_requests, now_ns)
            .convert()
    }

    fn shutdown(&self, now_ns: u64) -> Vec<wit::StepEvent> {
        self.scheduler.borrow_mut().shutdown(now_ns).convert()
    }

    fn stats(&self, _now_ns: u64) -> wit::SchedulerStats {
        self.scheduler.borrow().stats().convert()
    }

    fn live_requests(&self, _now_ns: u64) -> Vec<wit::LiveRequest> {
        self.scheduler.borrow().live_requests().convert()
    }

    fn export_state(&self, _now_ns: u64) -> Vec<u8> {
        self.scheduler.borrow().export_state()
    }
}

#[cfg(feature = "fcfs")]
export!(Fcfs);
#[cfg(feature = "priority")]
export!(Priority);
#[cfg(feature = "fair")]
export!(Fair);

/// Talc rather than Rust's default dlmalloc: the scheduler allocates and grows small vectors
/// every step, and dlmalloc took about 8 % of a simulation through the component (talc: 6 %).
#[cfg(target_arch = "wasm32")]
#[global_allocator]
static ALLOCATOR: talc::wasm::WasmDynamicTalc = talc::wasm::new_wasm_dynamic_allocator();

/// A panic is a bug: trap, and let the host recover the affected requests and reload.
#[cfg(target_arch = "wasm32")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    core::arch::wasm32::unreachable()
}
