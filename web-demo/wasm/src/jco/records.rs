//! The contract's records as wit-bindgen generates them from `wit/scheduler.wit`, deriving serde
//! (which [`super::format`] maps to jco's shape), and their conversions to the scheduler crate's
//! records, derived from the crate's one description of them.

wit_bindgen::generate!({
    world: "records",
    path: "../../wit",
    additional_derives: [serde::Serialize, serde::Deserialize],
});

pub use waypoint::scheduler::types as wit;

waypoint_scheduler::wit_conversions!(wit);
