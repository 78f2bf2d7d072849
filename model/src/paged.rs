//! The paged KV cache and the batched forward over it.

use burn::tensor::{Device, IndexingUpdateOp, Int, Tensor, TensorData};

use super::layers::causal_attention;
use super::{Model, ModelConfig};

/// Keys and values of every layer, `num_blocks × block_size` token slots each (stored as
/// `[slots, kv_heads, head_dim]`, the same memory as `[blocks, block_size, kv_heads, head_dim]`).
pub struct PagedKvCache {
    keys: Vec<Tensor<3>>,
    values: Vec<Tensor<3>>,
    block_size: usize,
}

impl PagedKvCache {
    /// A zeroed cache of `num_blocks` blocks of `block_size` tokens for `config`.
    pub fn new(
        config: &ModelConfig,
        num_blocks: usize,
        block_size: usize,
        device: &Device,
    ) -> Self {
        let shape = [
            num_blocks * block_size,
            config.num_kv_heads,
            config.head_dim,
        ];
        let zeros = || {
            (0..config.num_layers)
                .map(|_| Tensor::<3>::zeros(shape, device))
                .collect()
        };
        Self {
            keys: zeros(),
            values: zeros(),
            block_size,
        }
    }

    /// Write `rows` into `slots` of one layer's keys or values, in place, and return a handle on
    /// the layer's whole tensor for the step's reads.
    fn write(
        &mut self,
        half: Half,
        layer: usize,
        slots: &Tensor<1, Int>,
        rows: Tensor<3>,
    ) -> Tensor<3> {
        let tensors = match half {
            Half::Keys => &mut self.keys,
            Half::Values => &mut self.values,
        };
        let placeholder = Tensor::empty([0, rows.dims()[1], rows.dims()[2]], &rows.device());
        let whole = std::mem::replace(&mut tensors[layer], placeholder);
        tensors[layer] = whole.select_assign(0, slots.clone(), rows, IndexingUpdateOp::Assign);
        tensors[layer].clone()
    }

    /// The slot of absolute position `position` of a request with this block table.
    fn slot(&self, block_table: &[u32], position: usize) -> i64 {
        let block = block_table[position / self.block_size] as usize;
        (block * self.block_size + position % self.block_size) as i64
    }
}

/// Which of a layer's two cache tensors.
#[derive(Clone, Copy)]
enum Half {
    Keys,
    Values,
}

/// One request's part of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchRequest {
    /// The tokens computed this step (a prefill chunk, or one decode token).
    pub tokens: Vec<u32>,
    /// Position of the first of them (the request's computed tokens before this step).
    pub start_position: usize,
    /// The request's block table: it must cover every position up to the last token.
    pub block_table: Vec<u32>,
    /// Whether logits are returned for its last token.
    pub sample: bool,
}

/// A scheduled batch, flattened by [`forward`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PagedBatch {
    /// The batch's requests, in scheduling order.
    pub requests: Vec<BatchRequest>,
}

fn indices(values: Vec<i64>, device: &Device) -> Tensor<1, Int> {
    let len = values.len();
    Tensor::<1, Int>::from_data(TensorData::new(values, [len]), device)
}

pub(super) fn forward(model: &Model, batch: &PagedBatch, cache: &mut PagedKvCache) -> Tensor<2> {
    let device = model.device().clone();
    let tokens: Vec<u32> = batch
        .requests
        .iter()
        .flat_map(|r| r.tokens.iter().copied())
        .collect();
    let positions: Vec<usize> = batch
        .requests
        .iter()
        .flat_map(|r| r.start_position..r.start_position + r.tokens.len())
        .collect();
    let slots: Vec<i64> = batch
        .requests
        .iter()
        .flat_map(|r| {
            (r.start_position..r.start_position + r.tokens.len())
                .map(|p| cache.slot(&r.block_table, p))
        })
        .collect();
    let slots = indices(slots, &device);
    let mut hidden = model.embed(&tokens);
    for (index, layer) in model.weights.layers.iter().enumerate() {
        hidden = layer.forward(hidden, &positions, &model.config, &device, |q, k, v| {
            // The cache's tensors are taken, not cloned, so each is the only handle on its
            // memory and the backend writes the step's slots in place.
            let keys = cache.write(Half::Keys, index, &slots, k);
            let values = cache.write(Half::Values, index, &slots, v);
            let mut offset = 0;
            let mut outputs = Vec::with_capacity(batch.requests.len());
            for request in &batch.requests {
                let count = request.tokens.len();
                let context = request.start_position + count;
                let context_slots: Vec<i64> = (0..context)
                    .map(|p| cache.slot(&request.block_table, p))
                    .collect();
                let context_slots = indices(context_slots, &device);
                let query_positions: Vec<usize> = (request.start_position..context).collect();
                let key_positions: Vec<usize> = (0..context).collect();
                outputs.push(causal_attention(
                    q.clone().narrow(0, offset, count),
                    keys.clone().select(0, context_slots.clone()),
                    values.clone().select(0, context_slots),
                    &query_positions,
                    &key_positions,
                    &model.config,
                ));
                offset += count;
            }
            Tensor::cat(outputs, 0)
        });
    }
    let mut offset = 0;
    let mut sampled_rows = Vec::new();
    for request in &batch.requests {
        offset += request.tokens.len();
        if request.sample {
            sampled_rows.push((offset - 1) as i64);
        }
    }
    if sampled_rows.is_empty() {
        return Tensor::<2>::zeros([0, model.config.vocab_size], &device);
    }
    model.logits(hidden.select(0, indices(sampled_rows, &device)))
}
