//! The guest's conversions to the WIT types: [`waypoint_scheduler::wit_conversions!`].

use crate::wit;

waypoint_scheduler::wit_conversions!(wit);
