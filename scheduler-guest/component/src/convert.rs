//! The guest's conversions to the WIT types: [`waypoint_scheduler::wit_conversions!`], plus the
//! configuration with this build's policy.

use waypoint_scheduler::wit::Convert;
use waypoint_scheduler::{PolicyKind, SchedulerConfig};

use crate::wit;

waypoint_scheduler::wit_conversions!(wit);

pub(crate) fn config(config: wit::SchedulerConfig, policy: PolicyKind) -> SchedulerConfig {
    SchedulerConfig {
        policy,
        ..config.convert()
    }
}
