//! The GPU's paged attention: one CubeCL kernel per layer that reads each row's keys and values
//! through its request's block table, where they lie in the cache, for a whole step — prefill
//! chunks and decodes alike. Nothing is gathered, padded or masked on the way.
//!
//! A cube computes one (row, query head). Its units split the row's context between them, each
//! keeping a running softmax (maximum, sum, weighted values) over the keys it read; the units'
//! partial results are then combined through shared memory. The causal bound is the row's
//! absolute position: row `p` of a request sees its keys `0..=p`, which this step has already
//! written.

use burn::backend::cubecl::dtype_to_storage_type;
use burn::backend::wgpu::CubeTensor;
use burn::backend::{DispatchDevice, Wgpu};
use burn::tensor::kind::Basic;
use burn::tensor::{BackendPrimitive, Device, Int, Tensor, TensorData};
use cubecl::prelude::{CubeCount, CubeDim};

use super::paged::BatchRequest;

/// Stands in for −∞ as the running maximum before any key is read: WGSL has no infinity
/// literal. `exp(NO_SCORE − score)` is 0 for any score a model produces.
const NO_SCORE: f32 = -1.0e30;

/// Shared memory the kernel may use for its units' partial results, in floats: 8 KiB, half of
/// the least WebGPU guarantees a workgroup.
const SHARED_FLOATS: usize = 2048;

/// The most units a cube has; each strides through the context by this many keys.
const MAX_UNITS: usize = 32;

/// Whether `device` is one the kernel runs on.
pub(crate) fn runs_on(device: &Device) -> bool {
    matches!(device.as_dispatch(), DispatchDevice::Cube(_))
}

/// The kernel, in CubeCL's language (whose `Tensor` is a kernel argument, not burn's).
mod kernel {
    use cubecl::prelude::*;

    use super::NO_SCORE;

    #[cube(launch)]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn paged_attention_kernel<F: Float, I: Numeric>(
        queries: &Tensor<F>,
        keys: &Tensor<F>,
        values: &Tensor<F>,
        block_tables: &Tensor<I>,
        row_requests: &Tensor<I>,
        row_positions: &Tensor<I>,
        output: &mut Tensor<F>,
        scale: f32,
        block_size: u32,
        #[comptime] head_dim: usize,
        #[comptime] units: usize,
        #[define(F, I)] _dtypes: [ElemType; 2],
    ) {
        let rows = queries.shape(0);
        let heads = queries.shape(1);
        let cube = (CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X) as usize;
        if cube >= rows * heads {
            terminate!();
        }
        let row = cube / heads;
        let head = cube % heads;
        let kv_head = head / (heads / keys.shape(1));
        let request = u32::cast_from(row_requests[row]) as usize;
        let position = u32::cast_from(row_positions[row]) as usize;
        let block_size = block_size as usize;
        let unit = UNIT_POS_X as usize;

        let query_at = row * queries.stride(0) + head * queries.stride(1);
        let mut query = Array::<F>::new(head_dim);
        let mut weighted = Array::<F>::new(head_dim);
        for d in 0..head_dim {
            query[d] = queries[query_at + d * queries.stride(2)] * F::cast_from(scale);
            weighted[d] = F::new(0.0);
        }
        let mut max = F::new(NO_SCORE);
        let mut sum = F::new(0.0);
        let table_at = request * block_tables.stride(0);
        let mut key = unit;
        while key <= position {
            let block = u32::cast_from(
                block_tables[table_at + (key / block_size) * block_tables.stride(1)],
            ) as usize;
            let slot = block * block_size + key % block_size;
            let key_at = slot * keys.stride(0) + kv_head * keys.stride(1);
            let value_at = slot * values.stride(0) + kv_head * values.stride(1);
            let mut score = F::new(0.0);
            for d in 0..head_dim {
                score += query[d] * keys[key_at + d * keys.stride(2)];
            }
            let mut new_max = max;
            if score > max {
                new_max = score;
            }
            let correction = (max - new_max).exp();
            let weight = (score - new_max).exp();
            sum = sum * correction + weight;
            for d in 0..head_dim {
                weighted[d] =
                    weighted[d] * correction + weight * values[value_at + d * values.stride(2)];
            }
            max = new_max;
            key += units;
        }

        let mut maxima = Shared::<[F]>::new_slice(units);
        let mut sums = Shared::<[F]>::new_slice(units);
        let mut partials = Shared::<[F]>::new_slice(units * head_dim);
        maxima[unit] = max;
        sums[unit] = sum;
        for d in 0..head_dim {
            partials[unit * head_dim + d] = weighted[d];
        }
        sync_cube();

        let mut overall = F::new(NO_SCORE);
        for u in 0..units {
            if maxima[u] > overall {
                overall = maxima[u];
            }
        }
        let mut total = F::new(0.0);
        for u in 0..units {
            total += sums[u] * (maxima[u] - overall).exp();
        }
        let output_at = row * output.stride(0) + head * output.stride(1);
        let output_step = output.stride(2);
        let mut d = unit;
        while d < head_dim {
            let mut value = F::new(0.0);
            for u in 0..units {
                value += partials[u * head_dim + d] * (maxima[u] - overall).exp();
            }
            output[output_at + d * output_step] = value / total;
            d += units;
        }
    }
}

/// What the kernel needs of a step besides the cache, prepared once for all layers.
pub(crate) struct PagedRows {
    /// `[requests, blocks]`: each request's block table, padded with block 0 past its end
    /// (never read: a row reads no further than its own position).
    block_tables: Tensor<2, Int>,
    /// For each row of the step, the index of its request.
    row_requests: Tensor<1, Int>,
    /// For each row, its absolute position: the last key it sees.
    row_positions: Tensor<1, Int>,
    block_size: usize,
}

impl PagedRows {
    /// The kernel's view of a step whose rows are at absolute `positions`, request after
    /// request.
    pub(crate) fn new(
        requests: &[BatchRequest],
        positions: &[usize],
        block_size: usize,
        device: &Device,
    ) -> Self {
        let blocks = |request: &BatchRequest| {
            (request.start_position + request.tokens.len()).div_ceil(block_size)
        };
        let width = requests.iter().map(blocks).max().unwrap_or(0).max(1);
        let mut tables = vec![0i64; requests.len() * width];
        let mut row_requests = Vec::with_capacity(positions.len());
        for (index, request) in requests.iter().enumerate() {
            for (slot, &block) in tables[index * width..]
                .iter_mut()
                .zip(&request.block_table[..blocks(request)])
            {
                *slot = i64::from(block);
            }
            row_requests.extend(std::iter::repeat_n(index as i64, request.tokens.len()));
        }
        let rows = positions.len();
        let row_positions: Vec<i64> = positions.iter().map(|&p| p as i64).collect();
        Self {
            block_tables: Tensor::from_data(
                TensorData::new(tables, [requests.len(), width]),
                device,
            ),
            row_requests: Tensor::from_data(TensorData::new(row_requests, [rows]), device),
            row_positions: Tensor::from_data(TensorData::new(row_positions, [rows]), device),
            block_size,
        }
    }

    /// One layer's attention of every row of the step: `q` is `[rows, heads, head_dim]`, `keys`
    /// and `values` the layer's `[slots, kv_heads, head_dim]` cache, already holding this step's
    /// rows. Returns `[rows, heads × head_dim]`.
    pub(crate) fn attend(&self, q: Tensor<3>, keys: &Tensor<3>, values: &Tensor<3>) -> Tensor<2> {
        let [rows, heads, head_dim] = q.dims();
        let output = Tensor::<3>::empty([rows, heads, head_dim], &q.device());
        if rows == 0 {
            return output.reshape([rows, heads * head_dim]);
        }
        let queries = on_gpu(q);
        let result = on_gpu(output);
        let tables = on_gpu(self.block_tables.clone());
        let client = queries.client.clone();
        let units = MAX_UNITS
            .min(SHARED_FLOATS / head_dim)
            .min(client.properties().hardware.max_units_per_cube as usize)
            .max(1);
        let cubes = rows * heads;
        let across = cubes.min(u16::MAX as usize);
        let count = CubeCount::Static(across as u32, cubes.div_ceil(across) as u32, 1);
        let dtypes = [
            dtype_to_storage_type(queries.dtype),
            dtype_to_storage_type(tables.dtype),
        ];
        kernel::paged_attention_kernel::launch(
            &client,
            count,
            CubeDim::new_1d(units as u32),
            queries.into_tensor_arg(),
            on_gpu(keys.clone()).into_tensor_arg(),
            on_gpu(values.clone()).into_tensor_arg(),
            tables.into_tensor_arg(),
            on_gpu(self.row_requests.clone()).into_tensor_arg(),
            on_gpu(self.row_positions.clone()).into_tensor_arg(),
            result.clone().into_tensor_arg(),
            (head_dim as f32).sqrt().recip(),
            self.block_size as u32,
            head_dim,
            units,
            dtypes,
        );
        Tensor::<3>::from_primitive::<Wgpu>(result).reshape([rows, heads * head_dim])
    }
}

/// The CubeCL tensor under `tensor`, which a GPU plan only ever holds.
fn on_gpu<const D: usize, K>(tensor: Tensor<D, K>) -> CubeTensor
where
    K: Basic + BackendPrimitive<Wgpu, Primitive = CubeTensor>,
{
    tensor
        .try_into_primitive::<Wgpu>()
        .expect("a GPU plan's tensors are on the GPU")
}
