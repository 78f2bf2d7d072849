//! Waypoint's scheduler core: vLLM v1 continuous batching over a paged KV cache with prefix
//! caching, plus the journey recorder and step tracer, as a sans-IO state machine.
//!
//! The crate does no I/O, reads no clock and draws no random numbers: time comes in as `now_ns`
//! on every call, the step sampler is a seeded hash, and every event a call produces is in its
//! return value. Given the same inputs, a native build and a `wasm32-unknown-unknown` build give
//! identical outputs. It is `no_std` + `alloc` so it builds for the browser and wasmtime alike.
//!
//! Start at [`Scheduler`]; its module docs give the calling protocol and the algorithm.
//!
//! ```
//! use waypoint_scheduler::{ModelOutput, NewRequest, Scheduler, SchedulerConfig};
//!
//! let mut scheduler = Scheduler::new(SchedulerConfig::default())?;
//! let added = scheduler.add_request(NewRequest { max_tokens: 2, ..NewRequest::new("req-1", vec![1, 2, 3]) }, 0)?;
//! let mut now_ns = 0;
//! while scheduler.num_unfinished() > 0 {
//!     now_ns += 1_000_000;
//!     let step = scheduler.schedule(now_ns);
//!     // The model computes `num_scheduled_tokens` per request into the listed KV blocks and
//!     // samples one token wherever `sample` is set.
//!     let sampled = step.batch.sample.iter().map(|&sample| sample.then_some(42)).collect();
//!     let outputs = scheduler.update_from_output(&ModelOutput { sampled_token_ids: sampled }, now_ns)?;
//!     assert!(outputs.handles.iter().all(|&handle| handle == added.handle));
//! }
//! assert_eq!(scheduler.step(), 2);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub, clippy::std_instead_of_core)]

extern crate alloc;

pub mod config;
pub mod error;
pub mod journey;
pub mod kv;
mod map;
pub mod output;
pub mod policy;
pub mod request;
pub mod scheduler;
pub mod state;
pub mod step_trace;
pub mod table;
pub mod wit;

pub use config::{JourneyConfig, PolicyKind, SchedulerConfig, StepTracingConfig};
pub use error::{ConfigError, OutputError, RequestError, StateError};
pub use journey::{
    JourneyEvent, JourneyEventType, JourneyValidator, JourneyViolation, Phase, ScheduleKind,
};
pub use output::{
    Added, EngineOutputs, FinishOutcome, HandleMap, LiveRequest, ModelOutput, OutputFinish,
    RequestHandle, RequestRef, ResetOutcome, ScheduledBatch, ScheduledDetail, ScheduledEntry,
    ScheduledKind, SchedulerOutput, SchedulerStats,
};
pub use policy::{ByKey, Enqueue, KeyOrder, Policy, RequestView, Ticket};
pub use request::{FinishStatus, NewRequest, Recovery, Request, RequestId, RequestStatus};
pub use scheduler::Scheduler;
pub use step_trace::StepEvent;
