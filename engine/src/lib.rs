//! The engine boundary: everything between a scheduler and the model runner, in one place.
//!
//! - [`backend`]: the one scheduler interface ([`SchedulerBackend`]) and the native backend;
//! - [`component`]: the one backend for policy components, generic over the [`Transport`] that
//!   carries its calls (wasmtime in the host, jco in the browser); it owns fault poisoning, the
//!   host's mirror of live requests and the check of every result ([`ContractViolation`]);
//! - `step` (feature `model`): the step loop that joins a backend with the model runner.
//!
//! The simulator builds on this crate without the `model` feature, so it needs no burn.

pub mod backend;
pub mod component;
pub mod fault;
#[cfg(feature = "model")]
pub mod step;

pub use backend::{BackendError, NativeBackend, PolicyDescription, SchedulerBackend};
pub use component::{ComponentBackend, Transport};
pub use fault::{Call, ContractViolation, GuestFault, NamedRequest};
