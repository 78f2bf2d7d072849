//! The paged KV cache and the batched forward over it.

use std::ops::Range;

use burn::tensor::{Bool, Device, IndexingUpdateOp, Int, Tensor, TensorData};

use super::cpu::{self, SingleQuery};
#[cfg(feature = "wgpu")]
use super::gpu;
use super::layers::{chunk_attention, chunk_mask, head_of, Rotary};
use super::{Model, ModelConfig};

/// Keys and values of every layer, `num_blocks × block_size` token slots each, laid out for the
/// device that reads them.
pub struct PagedKvCache {
    /// `[layer]`.
    keys: Vec<Slots>,
    values: Vec<Slots>,
    block_size: usize,
}

/// One layer's keys or values.
enum Slots {
    /// On the CPU: one `[slots, head_dim]` matrix per key/value head. A request's context in one
    /// head is then rows of one matrix, and a run of consecutive blocks one contiguous slice.
    PerHead(Vec<Tensor<2>>),
    /// On a GPU: `[slots, kv_heads, head_dim]`, vLLM's layout, which the paged-attention kernel
    /// reads for every head of a layer in one launch.
    #[cfg(feature = "wgpu")]
    Interleaved(Box<Tensor<3>>),
}

impl Slots {
    fn zeroed(config: &ModelConfig, slots: usize, device: &Device) -> Self {
        #[cfg(feature = "wgpu")]
        if gpu::runs_on(device) {
            let shape = [slots, config.num_kv_heads, config.head_dim];
            return Self::Interleaved(Box::new(Tensor::zeros(shape, device)));
        }
        Self::PerHead(
            (0..config.num_kv_heads)
                .map(|_| Tensor::zeros([slots, config.head_dim], device))
                .collect(),
        )
    }

    /// Write `rows` (`[rows, kv_heads, head_dim]`) into `slots`, in place.
    fn write(&mut self, slots: &Tensor<1, Int>, rows: Tensor<3>) {
        match self {
            Self::PerHead(matrices) => {
                for (head, matrix) in matrices.iter_mut().enumerate() {
                    in_place(matrix, |whole| {
                        let rows = head_of(&rows, head);
                        whole.select_assign(0, slots.clone(), rows, IndexingUpdateOp::Assign)
                    });
                }
            }
            #[cfg(feature = "wgpu")]
            Self::Interleaved(tensor) => in_place(tensor, |whole| {
                whole.select_assign(0, slots.clone(), rows, IndexingUpdateOp::Assign)
            }),
        }
    }
}

/// Replace `tensor` by `update` of it, taking it rather than cloning it, so that it is the only
/// handle on its memory and the backend updates it in place.
fn in_place<const D: usize>(tensor: &mut Tensor<D>, update: impl FnOnce(Tensor<D>) -> Tensor<D>) {
    let placeholder = Tensor::empty([0; D], &tensor.device());
    let whole = std::mem::replace(tensor, placeholder);
    *tensor = update(whole);
}

impl PagedKvCache {
    /// A zeroed cache of `num_blocks` blocks of `block_size` tokens for `config`.
    pub fn new(
        config: &ModelConfig,
        num_blocks: usize,
        block_size: usize,
        device: &Device,
    ) -> Self {
        let layers = || {
            (0..config.num_layers).map(|_| Slots::zeroed(config, num_blocks * block_size, device))
        };
        Self {
            keys: layers().collect(),
            values: layers().collect(),
            block_size,
        }
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

/// A multi-token entry (a prefill chunk) on the CPU, attended on its own.
struct Chunk {
    /// Its first row in the step.
    offset: usize,
    rows: usize,
    /// The slots of the blocks covering its context.
    runs: Vec<Range<usize>>,
    /// Causal mask over its blocks' slots.
    hidden: Option<Tensor<2, Bool>>,
}

/// How a step's rows read the cache on the CPU: single-token entries (decodes, one-token chunks)
/// over their own slots where they lie, each chunk through burn's ops over its gathered context.
struct CpuReads {
    singles: Vec<SingleQuery>,
    chunks: Vec<Chunk>,
    /// Row `i` of the step is row `order[i]` of the single rows followed by the chunks' rows;
    /// none when that is already the step's order.
    order: Option<Tensor<1, Int>>,
}

impl CpuReads {
    fn new(
        batch: &PagedBatch,
        cache: &PagedKvCache,
        config: &ModelConfig,
        device: &Device,
    ) -> Self {
        let mut singles = Vec::new();
        let mut chunks = Vec::new();
        let mut offset = 0;
        for request in &batch.requests {
            let rows = request.tokens.len();
            let context = request.start_position + rows;
            let blocks = cache.blocks_for(context);
            let mut runs = Vec::new();
            cache.runs(&request.block_table, blocks, &mut runs);
            if rows == 1 {
                // The last block's slots past the context are not the entry's.
                if let Some(last) = runs.last_mut() {
                    last.end -= blocks * cache.block_size - context;
                }
                singles.push(SingleQuery {
                    row: offset,
                    slots: runs,
                });
            } else {
                chunks.push(Chunk {
                    offset,
                    rows,
                    runs,
                    hidden: chunk_mask(
                        request.start_position,
                        rows,
                        blocks * cache.block_size,
                        config,
                        device,
                    ),
                });
            }
            offset += rows;
        }
        // Where each step row lands in [single rows…, chunk rows…].
        let mut destination = vec![0i64; offset];
        for (index, single) in singles.iter().enumerate() {
            destination[single.row] = index as i64;
        }
        let mut next = singles.len() as i64;
        for chunk in &chunks {
            for slot in &mut destination[chunk.offset..chunk.offset + chunk.rows] {
                *slot = next;
                next += 1;
            }
        }
        let in_order = destination.iter().enumerate().all(|(i, &d)| d == i as i64);
        Self {
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
        config: &ModelConfig,
    ) -> Tensor<2> {
        let mut outputs = Vec::with_capacity(1 + self.chunks.len());
        if !self.singles.is_empty() {
            outputs.push(
                cpu::single_query_attention(&q, keys, values, &self.singles)
                    .expect("a CPU plan's tensors are on the CPU and its slots inside the cache"),
            );
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

/// How a step's rows read the cache, by the cache's layout.
enum Reads {
    Cpu(Box<CpuReads>),
    /// One paged-attention kernel launch per layer.
    #[cfg(feature = "wgpu")]
    Kernel(Box<gpu::PagedRows>),
}

/// What a step reads and writes of the cache, prepared once for all layers: the cost is in the
/// step's new tokens and its requests' block counts, never in the cache's size.
struct StepPlan {
    /// The rotary tables of the step's rows, at their absolute positions.
    rotary: Rotary,
    /// The slot each new row's key and value is written to.
    slots: Tensor<1, Int>,
    reads: Reads,
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
        for request in &batch.requests {
            let range = request.start_position..request.start_position + request.tokens.len();
            positions.extend(range.clone());
            slots.extend(range.map(|p| cache.slot(&request.block_table, p)));
        }
        let reads = match cache.keys.first() {
            #[cfg(feature = "wgpu")]
            Some(Slots::Interleaved(_)) => Reads::Kernel(Box::new(gpu::PagedRows::new(
                &batch.requests,
                &positions,
                cache.block_size,
                device,
            ))),
            _ => Reads::Cpu(Box::new(CpuReads::new(batch, cache, config, device))),
        };
        Self {
            rotary: Rotary::new(&positions, config, device),
            slots: indices(slots, device),
            reads,
        }
    }

    /// One layer's attention for the whole step over that layer's `keys` and `values`, already
    /// holding this step's rows; `q` is `[rows, heads, head_dim]`.
    fn attend(
        &self,
        q: Tensor<3>,
        keys: &Slots,
        values: &Slots,
        config: &ModelConfig,
    ) -> Tensor<2> {
        match (&self.reads, keys, values) {
            (Reads::Cpu(reads), Slots::PerHead(keys), Slots::PerHead(values)) => {
                reads.attend(q, keys, values, config)
            }
            #[cfg(feature = "wgpu")]
            (Reads::Kernel(rows), Slots::Interleaved(keys), Slots::Interleaved(values)) => {
                rows.attend(q, keys, values)
            }
            #[cfg(feature = "wgpu")]
            _ => unreachable!("a step's reads are planned for its cache's layout"),
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
            cache.keys[index].write(&plan.slots, k);
            cache.values[index].write(&plan.slots, v);
            plan.attend(q, &cache.keys[index], &cache.values[index], &model.config)
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
