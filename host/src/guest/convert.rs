//! The wasmtime binding's conversions to and from the scheduler crate's records, derived from
//! the crate's one description of them.

use super::wit;

waypoint_scheduler::wit_conversions!(wit);
