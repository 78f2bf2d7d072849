//! Model weights: seeded random ones for the built-in model.

use burn::tensor::{Device, Tensor, TensorData};

use super::ModelConfig;
use rand_xoshiro::rand_core::{Rng as _, SeedableRng};
use rand_xoshiro::SplitMix64;

/// One decoder layer's weights; matrices are stored `[in, out]` so `x.matmul(w)` applies them.
pub struct LayerWeights {
    pub(crate) attention_norm: Tensor<1>,
    pub(crate) wq: Tensor<2>,
    pub(crate) wk: Tensor<2>,
    pub(crate) wv: Tensor<2>,
    pub(crate) wo: Tensor<2>,
    pub(crate) mlp_norm: Tensor<1>,
    pub(crate) gate: Tensor<2>,
    pub(crate) up: Tensor<2>,
    pub(crate) down: Tensor<2>,
}

/// All weights of a model.
pub struct Weights {
    pub(crate) embedding: Tensor<2>,
    pub(crate) layers: Vec<LayerWeights>,
    pub(crate) final_norm: Tensor<1>,
    /// `None` when the output head is the embedding (tied).
    pub(crate) lm_head: Option<Tensor<2>>,
}

impl Weights {
    /// Seeded random weights (scaled like a fresh initialisation) for `config`.
    pub fn random(config: &ModelConfig, seed: u64, device: &Device) -> Self {
        let mut rng = SplitMix64::seed_from_u64(seed);
        let mut matrix = |rows: usize, cols: usize| {
            let scale = 1.0 / (rows as f32).sqrt();
            let values: Vec<f32> = (0..rows * cols)
                .map(|_| {
                    ((rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale * 1.7
                })
                .collect();
            Tensor::<2>::from_data(TensorData::new(values, [rows, cols]), device)
        };
        let ones = |width: usize| Tensor::<1>::ones([width], device);
        let (hidden, kv_width) = (config.hidden_size, config.num_kv_heads * config.head_dim);
        let q_width = config.num_heads * config.head_dim;
        let embedding = matrix(config.vocab_size, hidden);
        let layers = (0..config.num_layers)
            .map(|_| LayerWeights {
                attention_norm: ones(hidden),
                wq: matrix(hidden, q_width),
                wk: matrix(hidden, kv_width),
                wv: matrix(hidden, kv_width),
                wo: matrix(q_width, hidden),
                mlp_norm: ones(hidden),
                gate: matrix(hidden, config.intermediate_size),
                up: matrix(hidden, config.intermediate_size),
                down: matrix(config.intermediate_size, hidden),
            })
            .collect();
        let lm_head = (!config.tie_word_embeddings).then(|| matrix(hidden, config.vocab_size));
        Self {
            embedding,
            layers,
            final_norm: ones(hidden),
            lm_head,
        }
    }

    /// `[hidden, vocab]`: the output head, or the transposed embedding when tied.
    pub(crate) fn output_head(&self) -> Tensor<2> {
        match &self.lm_head {
            Some(head) => head.clone(),
            None => self.embedding.clone().transpose(),
        }
    }
}
