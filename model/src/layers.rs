//! The building blocks of a decoder layer: RMSNorm, rotary positions, grouped-query causal
//! attention, SwiGLU.

use burn::tensor::activation::silu;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

use super::weights::LayerWeights;
use super::{cpu, ModelConfig};

/// `x · w`: the CPU's own loop for a few rows, burn's product otherwise.
pub(crate) fn linear(x: Tensor<2>, w: &Tensor<2>) -> Tensor<2> {
    cpu::few_rows_product(&x, w).unwrap_or_else(|| x.matmul(w.clone()))
}

/// `x / rms(x) * weight`, row by row.
pub(crate) fn rms_norm(x: Tensor<2>, weight: &Tensor<1>, eps: f32) -> Tensor<2> {
    let [rows, width] = x.dims();
    let inverse_rms = (x.clone().powf_scalar(2.0).mean_dim(1) + eps)
        .sqrt()
        .recip();
    x * inverse_rms.expand([rows, width]) * weight.clone().reshape([1, width]).expand([rows, width])
}

/// Rotary tables (the "rotate half" layout of Llama checkpoints) for the rows of one forward
/// pass, computed once and shared by every layer.
pub(crate) struct Rotary {
    cos: Tensor<3>,
    sin: Tensor<3>,
}

impl Rotary {
    /// Tables for rows at the given absolute positions.
    pub(crate) fn new(positions: &[usize], config: &ModelConfig, device: &Device) -> Self {
        let (rows, head_dim) = (positions.len(), config.head_dim);
        let half = head_dim / 2;
        let frequencies: Vec<f32> = (0..head_dim)
            .map(|i| {
                config
                    .rope_theta
                    .powf(-2.0 * (i % half) as f32 / head_dim as f32)
            })
            .collect();
        let mut cos = Vec::with_capacity(rows * head_dim);
        let mut sin = Vec::with_capacity(rows * head_dim);
        for &position in positions {
            for frequency in &frequencies {
                let angle = position as f32 * frequency;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        let table = |values: Vec<f32>| {
            Tensor::<3>::from_data(TensorData::new(values, [rows, 1, head_dim]), device)
        };
        Self {
            cos: table(cos),
            sin: table(sin),
        }
    }

    /// `x` (`[rows, heads, head_dim]`) rotated to its rows' positions.
    fn apply(&self, x: Tensor<3>) -> Tensor<3> {
        let [rows, heads, head_dim] = x.dims();
        let half = head_dim / 2;
        let first = x.clone().narrow(2, 0, half);
        let second = x.clone().narrow(2, half, half);
        let rotated = Tensor::cat(vec![second.neg(), first], 2);
        let shape = [rows, heads, head_dim];
        x * self.cos.clone().expand(shape) + rotated * self.sin.clone().expand(shape)
    }
}

/// Which keys each query of a chunk may not see, built on the device: the chunk's `rows`
/// queries start at absolute position `start` and see keys `0..=start + row` of `context`.
/// `[rows, context]`.
fn causal_mask(start: usize, rows: usize, context: usize, device: &Device) -> Tensor<2, Bool> {
    let shape = [rows, context];
    let keys = Tensor::<1, Int>::arange(0..context as i64, device)
        .reshape([1, context])
        .expand(shape);
    let queries = Tensor::<1, Int>::arange(start as i64..(start + rows) as i64, device)
        .reshape([rows, 1])
        .expand(shape);
    keys.greater(queries)
}

/// Grouped-query attention over `k` and `v` (`[…, context, head_dim]`, one matrix per key/value
/// head) of `q` (`[…, queries, head_dim]`, the query heads of each key/value head side by
/// side), with `hidden` (`[…, queries, context]`) masking what a query may not see. Keys and
/// values are never copied per query head.
pub(crate) fn grouped_attention<const D: usize>(
    q: Tensor<D>,
    k: Tensor<D>,
    v: Tensor<D>,
    hidden: Option<Tensor<D, Bool>>,
    config: &ModelConfig,
) -> Tensor<D> {
    let queries = q.dims()[D - 2];
    // A few queries over a long context (decodes): the scores are computed keys first, so the
    // keys are read as stored instead of copied transposed, and the small result is transposed.
    let scores = if queries < config.head_dim {
        k.matmul(q.transpose()).transpose()
    } else {
        q.matmul(k.transpose())
    } / (config.head_dim as f32).sqrt();
    let scores = match hidden {
        Some(hidden) => scores.mask_fill(hidden, f32::NEG_INFINITY),
        None => scores,
    };
    // The softmax's normalisation is applied to the output rather than to every score, and its
    // sums are a product with ones: the backend's sum along a long last axis walks it one
    // element at a time.
    let shape = scores.dims();
    let weights = (scores.clone() - scores.max_dim(D - 1).expand(shape)).exp();
    let mut ones_shape = shape;
    ones_shape[D - 2] = shape[D - 1];
    ones_shape[D - 1] = 1;
    let sums = weights
        .clone()
        .matmul(Tensor::ones(ones_shape, &weights.device()));
    let output = weights.matmul(v);
    let output_shape = output.dims();
    output / sums.expand(output_shape)
}

/// What the `rows` queries of a chunk starting at absolute position `start` may not see of
/// `context` keys (any past the chunk's last position are hidden too), in [`chunk_attention`]'s
/// layout (`[group × rows, context]`, the same for every key/value head); none when a single
/// query sees every key.
pub(crate) fn chunk_mask(
    start: usize,
    rows: usize,
    context: usize,
    config: &ModelConfig,
    device: &Device,
) -> Option<Tensor<2, Bool>> {
    let group = config.num_heads / config.num_kv_heads;
    (rows > 1 || context > start + rows).then(|| {
        causal_mask(start, rows, context, device)
            .reshape([1, rows, context])
            .expand([group, rows, context])
            .reshape([group * rows, context])
    })
}

/// Causal attention of one chunk of queries (`q`: `[rows, heads, head_dim]`) over the keys and
/// values of its context, one `[context, head_dim]` matrix per key/value head, `hidden` from
/// [`chunk_mask`]; returns `[rows, heads × head_dim]`.
pub(crate) fn chunk_attention(
    q: Tensor<3>,
    keys: Vec<Tensor<2>>,
    values: Vec<Tensor<2>>,
    hidden: Option<Tensor<2, Bool>>,
    config: &ModelConfig,
) -> Tensor<2> {
    let [rows, heads, head_dim] = q.dims();
    let group = heads / keys.len();
    let outputs = keys
        .into_iter()
        .zip(values)
        .enumerate()
        .map(|(head, (k, v))| {
            let q = q
                .clone()
                .narrow(1, head * group, group)
                .swap_dims(0, 1)
                .reshape([group * rows, head_dim]);
            grouped_attention(q, k, v, hidden.clone(), config).reshape([group, rows, head_dim])
        })
        .collect();
    Tensor::cat(outputs, 0)
        .swap_dims(0, 1)
        .reshape([rows, heads * head_dim])
}

/// One key/value head's `[context, head_dim]` matrix of `[context, kv_heads, head_dim]` rows.
pub(crate) fn head_of(rows: &Tensor<3>, head: usize) -> Tensor<2> {
    let [context, _, head_dim] = rows.dims();
    rows.clone().narrow(1, head, 1).reshape([context, head_dim])
}

impl LayerWeights {
    /// One decoder layer over rows rotated by `rotary`; `attend` turns rotated queries, keys and
    /// values into the attention output (densely, or over the paged cache).
    pub(crate) fn forward(
        &self,
        hidden: Tensor<2>,
        rotary: &Rotary,
        config: &ModelConfig,
        attend: impl FnOnce(Tensor<3>, Tensor<3>, Tensor<3>) -> Tensor<2>,
    ) -> Tensor<2> {
        let [rows, _] = hidden.dims();
        let (heads, kv_heads, head_dim) = (config.num_heads, config.num_kv_heads, config.head_dim);
        let normed = rms_norm(hidden.clone(), &self.attention_norm, config.rms_norm_eps);
        let q = linear(normed.clone(), &self.wq).reshape([rows, heads, head_dim]);
        let k = linear(normed.clone(), &self.wk).reshape([rows, kv_heads, head_dim]);
        let v = linear(normed, &self.wv).reshape([rows, kv_heads, head_dim]);
        let q = rotary.apply(q);
        let k = rotary.apply(k);
        let attention = linear(attend(q, k, v), &self.wo);
        let hidden = hidden + attention;
        let normed = rms_norm(hidden.clone(), &self.mlp_norm, config.rms_norm_eps);
        let gated = silu(linear(normed.clone(), &self.gate)) * linear(normed, &self.up);
        hidden + linear(gated, &self.down)
    }
}
