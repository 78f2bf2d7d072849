//! The engine: the model crate's scheduler-and-model step loop, and the thread that runs it for
//! the server.

pub mod worker;

pub use waypoint_model::engine::{
    Completion, Engine, EngineRequest, Finished, NewToken, StepResult,
};
