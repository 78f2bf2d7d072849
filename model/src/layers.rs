//! The building blocks of a decoder layer: RMSNorm, rotary positions, grouped-query causal
//! attention, SwiGLU.

use burn::tensor::activation::{silu, softmax};
use burn::tensor::{Bool, Device, Tensor, TensorData};

use super::weights::LayerWeights;
use super::ModelConfig;

/// `x / rms(x) * weight`, row by row.
pub(crate) fn rms_norm(x: Tensor<2>, weight: &Tensor<1>, eps: f32) -> Tensor<2> {
    let [rows, width] = x.dims();
    let inverse_rms = (x.clone().powf_scalar(2.0).mean_dim(1) + eps)
        .sqrt()
        .recip();
    x * inverse_rms.expand([rows, width]) * weight.clone().reshape([1, width]).expand([rows, width])
}

/// Rotary embedding (the "rotate half" layout of Llama checkpoints) of `[rows, heads, head_dim]`
/// at the given absolute positions.
fn rotary(x: Tensor<3>, positions: &[usize], theta: f32, device: &Device) -> Tensor<3> {
    let [rows, heads, head_dim] = x.dims();
    let half = head_dim / 2;
    let mut cos = Vec::with_capacity(rows * head_dim);
    let mut sin = Vec::with_capacity(rows * head_dim);
    for &position in positions {
        for i in 0..head_dim {
            let frequency = theta.powf(-2.0 * (i % half) as f32 / head_dim as f32);
            let angle = position as f32 * frequency;
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    let table = |values: Vec<f32>| {
        Tensor::<3>::from_data(TensorData::new(values, [rows, 1, head_dim]), device)
            .expand([rows, heads, head_dim])
    };
    let (cos, sin) = (table(cos), table(sin));
    let first = x.clone().narrow(2, 0, half);
    let second = x.clone().narrow(2, half, half);
    let rotated = Tensor::cat(vec![second.neg(), first], 2);
    x * cos + rotated * sin
}

/// Causal attention of queries at `query_positions` over keys and values at `key_positions`
/// (each query sees keys at its own position and before). `q`: `[n, heads, head_dim]`, `k` and
/// `v`: `[ctx, kv_heads, head_dim]`; returns `[n, heads × head_dim]`.
pub(crate) fn causal_attention(
    q: Tensor<3>,
    k: Tensor<3>,
    v: Tensor<3>,
    query_positions: &[usize],
    key_positions: &[usize],
    config: &ModelConfig,
) -> Tensor<2> {
    let [n, heads, head_dim] = q.dims();
    let [ctx, kv_heads, _] = k.dims();
    let group = heads / kv_heads;
    let widen = |t: Tensor<3>| {
        t.reshape([ctx, kv_heads, 1, head_dim])
            .expand([ctx, kv_heads, group, head_dim])
            .reshape([ctx, heads, head_dim])
            .swap_dims(0, 1)
    };
    let (k, v) = (widen(k), widen(v));
    let scores = q.swap_dims(0, 1).matmul(k.transpose()) / (config.head_dim as f32).sqrt();
    let hidden: Vec<bool> = (0..heads)
        .flat_map(|_| {
            query_positions
                .iter()
                .flat_map(|&qp| key_positions.iter().map(move |&kp| kp > qp))
        })
        .collect();
    let mask =
        Tensor::<3, Bool>::from_data(TensorData::new(hidden, [heads, n, ctx]), &scores.device());
    let probabilities = softmax(scores.mask_fill(mask, f32::NEG_INFINITY), 2);
    probabilities
        .matmul(v)
        .swap_dims(0, 1)
        .reshape([n, heads * head_dim])
}

impl LayerWeights {
    /// One decoder layer over rows at `positions`; `attend` turns rotated queries, keys and
    /// values into the attention output (densely, or over the paged cache).
    pub(crate) fn forward(
        &self,
        hidden: Tensor<2>,
        positions: &[usize],
        config: &ModelConfig,
        device: &Device,
        attend: impl FnOnce(Tensor<3>, Tensor<3>, Tensor<3>) -> Tensor<2>,
    ) -> Tensor<2> {
        let rows = positions.len();
        let (heads, kv_heads, head_dim) = (config.num_heads, config.num_kv_heads, config.head_dim);
        let normed = rms_norm(hidden.clone(), &self.attention_norm, config.rms_norm_eps);
        let q = normed
            .clone()
            .matmul(self.wq.clone())
            .reshape([rows, heads, head_dim]);
        let k = normed
            .clone()
            .matmul(self.wk.clone())
            .reshape([rows, kv_heads, head_dim]);
        let v = normed
            .matmul(self.wv.clone())
            .reshape([rows, kv_heads, head_dim]);
        let q = rotary(q, positions, config.rope_theta, device);
        let k = rotary(k, positions, config.rope_theta, device);
        let attention = attend(q, k, v).matmul(self.wo.clone());
        let hidden = hidden + attention;
        let normed = rms_norm(hidden.clone(), &self.mlp_norm, config.rms_norm_eps);
        let gated = silu(normed.clone().matmul(self.gate.clone())) * normed.matmul(self.up.clone());
        hidden + gated.matmul(self.down.clone())
    }
}
