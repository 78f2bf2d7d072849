//! Waypoint's native host: the scheduler (native or as a policy component under wasmtime)
//! behind one backend interface, and the commands built on it.

pub mod args;
pub mod bench;
pub mod builtin;
pub mod conformance;
pub mod engine;
pub mod guest;
pub mod policy_crate;
pub mod server;
pub mod spec;
pub mod sweep;
pub mod telemetry;
pub mod workload;

pub use waypoint_engine::backend;
pub use waypoint_model as model;
pub use waypoint_sim as sim;
