//! The paged KV cache and the batched forward over it.

use std::ops::Range;

use burn::tensor::{Bool, Device, IndexingUpdateOp, Int, Tensor, TensorData};

use super::cpu::{self, SingleQuery};
use super::layers::{chunk_attention, chunk_mask, grouped_attention, head_of, Rotary};
use super::{Model, ModelConfig};

/// Keys and values of every layer, `num_blocks × block_size` token slots each, one
/// `[slots, head_dim]` matrix per key/value head: a request's context is then rows of that
/// matrix, and a run of consecutive blocks is read in one contiguous copy.
pub struct PagedKvCache {
    /// `[layer][kv head]`.
    keys: Vec<Vec<Tensor<2>>>,
    values: Vec<Vec<Tensor<2>>>,
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
        let shape = [num_blocks * block_size, config.head_dim];
        let zeros = || {
            (0..config.num_layers)
                .map(|_| {
                    (0..config.num_kv_heads)
                        .map(|_| Tensor::<2>::zeros(shape, device))
                        .collect()
                })
                .collect()
        };
        Self {
            keys: zeros(),
            values: zeros(),
            block_size,
        }
    }

    /// Write `rows` (`[rows, kv_heads, head_dim]`) into `slots` of one layer's keys or values, in
    /// place, and return handles on the layer's whole matrices for the step's reads.
    fn write(
        &mut self,
        half: Half,
        layer: usize,
        slots: &Tensor<1, Int>,
        rows: Tensor<3>,
    ) -> Vec<Tensor<2>> {
        let matrices = match half {
            Half::Keys => &mut self.keys[layer],
            Half::Values => &mut self.values[layer],
        };
        let head_dim = rows.dims()[2];
        matrices
            .iter_mut()
            .enumerate()
            .map(|(head, matrix)| {
                // Taken, not cloned, so it is the only handle on its memory and the backend
                // writes the step's slots in place.
                let placeholder = Tensor::empty([0, head_dim], &rows.device());
                let whole = std::mem::replace(matrix, placeholder);
                *matrix = whole.select_assign(
                    0,
                    slots.clone(),
                    head_of(&rows, head),
                    IndexingUpdateOp::Assign,
                );
                matrix.clone()
            })
            .collect()
    }

    /// The slot of absolute position `position` of a request with this block table.
    fn slot(&self, block_table: &[u32], position: usize) -> i64 {
        let block = block_table[position / self.block_size] as usize;
        (block * self.block_size + position % self.block_size) as i64
    }

    /// Blocks needed to hold `context` positions.
    fn blocks_for(&self, context: usize) -> usize {
        context.div_ceil(self.block_size)
    }

    /// The slots of the first `count` blocks of `block_table`, as runs of consecutive slots: a
    /// table that was allocated in order is one run, read in one contiguous copy.
    fn runs(&self, block_table: &[u32], count: usize, runs: &mut Vec<Range<usize>>) {
        for &block in &block_table[..count] {
            let start = block as usize * self.block_size;
            match runs.last_mut() {
                Some(run) if run.end == start => run.end += self.block_size,
                _ => runs.push(start..start + self.block_size),
            }
        }
    }

    /// One head's keys or values (`[slots, head_dim]`) at `runs` of slots, in order.
    fn gather(matrix: &Tensor<2>, runs: &[Range<usize>]) -> Tensor<2> {
        let mut parts: Vec<Tensor<2>> = runs
            .iter()
            .map(|run| matrix.clone().narrow(0, run.start, run.len()))
            .collect();
        match parts.len() {
            1 => parts.remove(0),
            _ => Tensor::cat(parts, 0),
        }
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

/// The single-token entries of a step (decodes, and one-token chunks).
enum SingleRows {
    /// On the CPU: each entry's own slots, read from the cache in place.
    InPlace(Vec<SingleQuery>),
    /// Elsewhere: attended together in one batched attention per layer.
    Padded(Box<PaddedSingles>),
}

/// Single-token entries attended together over their block tables padded to the longest.
struct PaddedSingles {
    /// Each entry's row in the step.
    rows: Tensor<1, Int>,
    /// Each entry's slots, padded to `width` blocks, entry after entry.
    runs: Vec<Range<usize>>,
    count: usize,
    width: usize,
    /// The slots each entry must not see: its padding past its context
    /// (`[count, group, width × block_size]`, the same for every key/value head); none when
    /// nothing is padded.
    hidden: Option<Tensor<3, Bool>>,
}

impl PaddedSingles {
    fn new(
        singles: &[(usize, usize, &BatchRequest)],
        cache: &PagedKvCache,
        config: &ModelConfig,
        device: &Device,
    ) -> Self {
        let count = singles.len();
        let width = singles
            .iter()
            .map(|&(_, context, _)| cache.blocks_for(context))
            .max()
            .unwrap_or(0);
        let padded_context = width * cache.block_size;
        let mut runs = Vec::new();
        for &(_, context, request) in singles {
            let used = cache.blocks_for(context);
            cache.runs(&request.block_table, used, &mut runs);
            // Padding reads any slots: it is masked.
            if used < width {
                runs.push(0..(width - used) * cache.block_size);
            }
        }
        let padded = singles
            .iter()
            .any(|&(_, context, _)| context < padded_context);
        let hidden = padded.then(|| {
            let group = config.num_heads / config.num_kv_heads;
            let shape = [count, group, padded_context];
            let contexts: Vec<i64> = singles.iter().map(|&(_, c, _)| c as i64).collect();
            let contexts = Tensor::<1, Int>::from_data(TensorData::new(contexts, [count]), device)
                .reshape([count, 1, 1])
                .expand(shape);
            Tensor::<1, Int>::arange(0..padded_context as i64, device)
                .reshape([1, 1, padded_context])
                .expand(shape)
                .greater_equal(contexts)
        });
        Self {
            rows: indices(
                singles.iter().map(|&(row, _, _)| row as i64).collect(),
                device,
            ),
            runs,
            count,
            width,
            hidden,
        }
    }

    /// One layer's attention of these entries' rows of `q` (`[rows, heads, head_dim]`).
    fn attend(
        &self,
        q: &Tensor<3>,
        keys: &[Tensor<2>],
        values: &[Tensor<2>],
        block_size: usize,
        config: &ModelConfig,
    ) -> Tensor<2> {
        let [_, heads, head_dim] = q.dims();
        let group = heads / keys.len();
        let (count, width) = (self.count, self.width);
        let per_entry = |matrix: &Tensor<2>| {
            PagedKvCache::gather(matrix, &self.runs).reshape([count, width * block_size, head_dim])
        };
        let q = q.clone().select(0, self.rows.clone());
        let per_head: Vec<Tensor<3>> = keys
            .iter()
            .zip(values)
            .enumerate()
            .map(|(head, (k, v))| {
                grouped_attention(
                    q.clone().narrow(1, head * group, group),
                    per_entry(k),
                    per_entry(v),
                    self.hidden.clone(),
                    config,
                )
            })
            .collect();
        Tensor::cat(per_head, 1).reshape([count, heads * head_dim])
    }
}

/// A multi-token entry (a prefill chunk), attended on its own.
struct Chunk {
    /// Its first row in the step.
    offset: usize,
    rows: usize,
    /// The slots of the blocks covering its context.
    runs: Vec<Range<usize>>,
    /// Causal mask over its blocks' slots.
    hidden: Option<Tensor<2, Bool>>,
}

/// What a step reads and writes of the cache, prepared once for all layers: the cost is in the
/// step's new tokens and its requests' block counts, never in the cache's size.
struct StepPlan {
    /// The rotary tables of the step's rows, at their absolute positions.
    rotary: Rotary,
    /// The slot each new row's key and value is written to.
    slots: Tensor<1, Int>,
    singles: Option<SingleRows>,
    chunks: Vec<Chunk>,
    /// Row `i` of the step is row `order[i]` of the single rows followed by the chunks' rows;
    /// none when that is already the step's order.
    order: Option<Tensor<1, Int>>,
}

impl StepPlan {
    fn new(
        batch: &PagedBatch,
        cache: &PagedKvCache,
        config: &ModelConfig,
        device: &Device,
    ) -> Self {
        let mut positions = Vec::new();
        let mut slots = Vec::new();
        let mut singles = Vec::new();
        let mut chunks = Vec::new();
        let mut offset = 0;
        for request in &batch.requests {
            let rows = request.tokens.len();
            let context = request.start_position + rows;
            positions.extend(request.start_position..context);
            slots.extend(
                (request.start_position..context).map(|p| cache.slot(&request.block_table, p)),
            );
            if rows == 1 {
                singles.push((offset, context, request));
            } else {
                let count = cache.blocks_for(context);
                let mut runs = Vec::new();
                cache.runs(&request.block_table, count, &mut runs);
                chunks.push(Chunk {
                    offset,
                    rows,
                    runs,
                    hidden: chunk_mask(
                        request.start_position,
                        rows,
                        count * cache.block_size,
                        config,
                        device,
                    ),
                });
            }
            offset += rows;
        }
        // Where each step row lands in [single rows…, chunk rows…].
        let mut destination = vec![0i64; offset];
        for (index, &(row, _, _)) in singles.iter().enumerate() {
            destination[row] = index as i64;
        }
        let mut next = singles.len() as i64;
        for chunk in &chunks {
            for slot in &mut destination[chunk.offset..chunk.offset + chunk.rows] {
                *slot = next;
                next += 1;
            }
        }
        let in_order = destination.iter().enumerate().all(|(i, &d)| d == i as i64);
        let singles = if singles.is_empty() {
            None
        } else if cpu::runs_on(device) {
            Some(SingleRows::InPlace(
                singles
                    .iter()
                    .map(|&(row, context, request)| {
                        let blocks = cache.blocks_for(context);
                        let mut slots = Vec::new();
                        cache.runs(&request.block_table, blocks, &mut slots);
                        // The last block's slots past the context are not the entry's.
                        if let Some(last) = slots.last_mut() {
                            last.end -= blocks * cache.block_size - context;
                        }
                        SingleQuery { row, slots }
                    })
                    .collect(),
            ))
        } else {
            Some(SingleRows::Padded(Box::new(PaddedSingles::new(
                &singles, cache, config, device,
            ))))
        };
        Self {
            rotary: Rotary::new(&positions, config, device),
            slots: indices(slots, device),
            singles,
            chunks,
            order: (!in_order).then(|| indices(destination, device)),
        }
    }

    /// One layer's attention for the whole step over that layer's `keys` and `values` (one
    /// matrix per key/value head, already holding this step's rows); `q` is
    /// `[rows, heads, head_dim]`.
    fn attend(
        &self,
        q: Tensor<3>,
        keys: &[Tensor<2>],
        values: &[Tensor<2>],
        block_size: usize,
        config: &ModelConfig,
    ) -> Tensor<2> {
        let mut outputs = Vec::with_capacity(1 + self.chunks.len());
        match &self.singles {
            Some(SingleRows::InPlace(entries)) => outputs.push(
                cpu::single_query_attention(&q, keys, values, entries)
                    .expect("a CPU plan's tensors are on the CPU and its slots inside the cache"),
            ),
            Some(SingleRows::Padded(singles)) => {
                outputs.push(singles.attend(&q, keys, values, block_size, config));
            }
            None => {}
        }
        for chunk in &self.chunks {
            let context = |matrices: &[Tensor<2>]| {
                matrices
                    .iter()
                    .map(|matrix| PagedKvCache::gather(matrix, &chunk.runs))
                    .collect()
            };
            outputs.push(chunk_attention(
                q.clone().narrow(0, chunk.offset, chunk.rows),
                context(keys),
                context(values),
                chunk.hidden.clone(),
                config,
            ));
        }
        let output = Tensor::cat(outputs, 0);
        match &self.order {
            Some(order) => output.select(0, order.clone()),
            None => output,
        }
    }
}

pub(super) fn forward(model: &Model, batch: &PagedBatch, cache: &mut PagedKvCache) -> Tensor<2> {
    let device = model.device().clone();
    if batch.requests.is_empty() {
        return Tensor::<2>::zeros([0, model.config.vocab_size], &device);
    }
    let tokens: Vec<u32> = batch
        .requests
        .iter()
        .flat_map(|r| r.tokens.iter().copied())
        .collect();
    let plan = StepPlan::new(batch, cache, &model.config, &device);
    let mut hidden = model.embed(&tokens);
    for (index, layer) in model.weights.layers.iter().enumerate() {
        hidden = layer.forward(hidden, &plan.rotary, &model.config, |q, k, v| {
            let keys = cache.write(Half::Keys, index, &plan.slots, k);
            let values = cache.write(Half::Values, index, &plan.slots, v);
            plan.attend(q, &keys, &values, cache.block_size, &model.config)
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
