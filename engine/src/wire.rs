//! What crosses the boundary besides the scheduler crate's own records: the live requests a
//! component reports after an import, and a model output in the flat shape the WIT carries.

use waypoint_scheduler::{ModelOutput, RequestHandle, RequestId};

/// A request a component holds, as `live-requests` reports it after an import.
#[derive(Clone, Debug)]
pub struct LiveRequest {
    /// Its handle.
    pub handle: RequestHandle,
    /// Its id.
    pub id: RequestId,
    /// Its client.
    pub client_index: u32,
    /// Prompt and generated tokens.
    pub num_tokens: u32,
    /// KV blocks it holds.
    pub num_blocks: u32,
    /// Finished since the last `schedule` (the next one reports it).
    pub finished: bool,
}

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
