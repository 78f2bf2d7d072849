//! The engine: the engine crate's scheduler-and-model step loop, and the thread that runs it for
//! the server.

mod text;
pub mod worker;

pub use waypoint_engine::step::{
    Completion, Engine, EngineRequest, Finished, NewToken, Recovered, Refused, Reloaded, StepResult,
};
