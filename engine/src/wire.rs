//! The one record whose WIT shape differs from the scheduler crate's: a model output, sent as
//! a token per entry and the entries that have none.

use waypoint_scheduler::ModelOutput;

/// A model output as sent: a token per scheduled entry (0 where none) and the entries that
/// have none.
pub fn model_output(output: &ModelOutput) -> (Vec<u32>, Vec<u32>) {
    let sampled = &output.sampled_token_ids;
    let token_ids = sampled.iter().map(|token| token.unwrap_or(0)).collect();
    let missing = (0..sampled.len() as u32)
        .filter(|&index| sampled[index as usize].is_none())
        .collect();
    (token_ids, missing)
}
