//! The guest's conversions to the WIT types: [`waypoint_scheduler::wit_conversions!`], plus the
//! configuration with this build's policy and the model output's flat encoding.

use alloc::vec::Vec;

use waypoint_scheduler::wit::Convert;
use waypoint_scheduler::{ModelOutput, PolicyKind, SchedulerConfig};

use crate::wit;

waypoint_scheduler::wit_conversions!(wit);

pub(crate) fn config(config: wit::SchedulerConfig, policy: PolicyKind) -> SchedulerConfig {
    SchedulerConfig {
        policy,
        ..config.convert()
    }
}

/// Positions listed in `missing` (out-of-range ones are ignored) get no token.
pub(crate) fn model_output(output: wit::ModelOutput) -> ModelOutput {
    let mut sampled: Vec<Option<u32>> = output.token_ids.into_iter().map(Some).collect();
    for index in output.missing {
        if let Some(entry) = sampled.get_mut(index as usize) {
            *entry = None;
        }
    }
    ModelOutput {
        sampled_token_ids: sampled,
    }
}
