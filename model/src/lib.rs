//! The model runner: a Llama-family decoder written once in burn, computing over the paged KV
//! cache whose block ids the scheduler hands out.
//!
//! One forward pass takes a whole scheduled batch — prefill chunks and decode tokens of many
//! requests flattened together — writes each new token's key and value into its slot
//! (`block id × block size + offset`), lets every request attend over its own block table, and
//! returns logits only for the rows that sample.

pub mod checkpoint;
mod cpu;
mod device;
#[cfg(feature = "wgpu")]
mod gpu;
mod layers;
mod paged;
pub mod sampling;
mod weights;

pub use device::{
    cpu_device, open as open_device, open_async as open_device_async, DeviceChoice, DeviceError,
};
pub use paged::{BatchRequest, PagedBatch, PagedKvCache};
pub use weights::Weights;

pub use burn::tensor::Device;
use burn::tensor::{Int, Tensor, TensorData};

/// The built-in byte-level tokenizer: a token is a UTF-8 byte.
pub fn encode_bytes(text: &str) -> Vec<u32> {
    text.bytes().map(u32::from).collect()
}

/// Text of byte tokens (invalid UTF-8 shows as replacement characters).
pub fn decode_bytes(tokens: &[u32]) -> String {
    let bytes: Vec<u8> = tokens.iter().map(|&t| t.min(255) as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// How text becomes a model's tokens and back.
pub enum Vocabulary {
    /// The built-in byte-level tokenizer.
    Bytes,
    /// A checkpoint's `tokenizer.json`.
    Tokenizer(Box<tokenizers::Tokenizer>),
}

impl Vocabulary {
    /// Tokens of `text` (special tokens such as BOS added as the tokenizer defines them).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        self.encode_with(text, true)
    }

    /// Tokens of `text`, with or without the tokenizer's special tokens.
    pub fn encode_with(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, String> {
        match self {
            Self::Bytes => Ok(encode_bytes(text)),
            Self::Tokenizer(tokenizer) => tokenizer
                .encode(text, add_special_tokens)
                .map(|encoding| encoding.get_ids().to_vec())
                .map_err(|e| e.to_string()),
        }
    }

    /// Each token's own string, as the tokenizer spells it (a byte's text for byte tokens).
    pub fn token_strs(&self, tokens: &[u32]) -> Vec<String> {
        match self {
            Self::Bytes => tokens.iter().map(|&t| decode_bytes(&[t])).collect(),
            Self::Tokenizer(tokenizer) => tokens
                .iter()
                .map(|&t| tokenizer.id_to_token(t).unwrap_or_default())
                .collect(),
        }
    }

    /// Text of `tokens` (special tokens skipped).
    pub fn decode(&self, tokens: &[u32]) -> String {
        match self {
            Self::Bytes => decode_bytes(tokens),
            Self::Tokenizer(tokenizer) => tokenizer.decode(tokens, true).unwrap_or_default(),
        }
    }
}

/// A model with its vocabulary, as `--model` names it.
pub struct LoadedModel {
    /// The model on its device.
    pub model: Model,
    /// How text maps to its tokens.
    pub vocabulary: Vocabulary,
    /// The token that ends a generation, if the model has one.
    pub eos_token_id: Option<u32>,
}

/// Why `--model` could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Neither `tiny` nor a directory.
    #[error("unknown model {0:?}: use `tiny` or a Hugging Face checkpoint directory")]
    Unknown(String),
    /// The device would not open.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// The checkpoint directory is unusable.
    #[error("loading the checkpoint in {dir}: {source}")]
    Checkpoint {
        /// The directory.
        dir: std::path::PathBuf,
        /// What is wrong with it.
        source: checkpoint::CheckpointError,
    },
}

/// Load `tiny` (seeded weights, byte tokens) or a local Hugging Face Llama checkpoint.
pub fn load(name: &str, device: DeviceChoice) -> Result<LoadedModel, LoadError> {
    let dir = std::path::PathBuf::from(name);
    if name != "tiny" && !dir.is_dir() {
        return Err(LoadError::Unknown(name.to_owned()));
    }
    let device = open_device(device)?;
    if name == "tiny" {
        return Ok(tiny(device));
    }
    let checkpoint =
        checkpoint::load(&dir, &device).map_err(|source| LoadError::Checkpoint { dir, source })?;
    Ok(LoadedModel {
        model: Model::new(checkpoint.config, checkpoint.weights, device),
        vocabulary: Vocabulary::Tokenizer(Box::new(checkpoint.tokenizer)),
        eos_token_id: checkpoint.eos_token_id,
    })
}

/// The built-in tiny model on `device`: seeded weights, byte tokens, no end-of-sequence token.
pub fn tiny(device: Device) -> LoadedModel {
    let config = ModelConfig::tiny();
    LoadedModel {
        model: Model::new(config, Weights::random(&config, 0, &device), device),
        vocabulary: Vocabulary::Bytes,
        eos_token_id: None,
    }
}

/// The shape of a Llama-family model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ModelConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the SwiGLU MLP.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than `num_heads`).
    pub num_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Rotary base.
    pub rope_theta: f32,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f32,
    /// Whether the output head reuses the embedding matrix.
    pub tie_word_embeddings: bool,
}

impl ModelConfig {
    /// A Llama-shaped configuration of about 110 M parameters (for benchmarks).
    pub fn llama_110m() -> Self {
        Self {
            vocab_size: 32_000,
            hidden_size: 768,
            intermediate_size: 2048,
            num_layers: 12,
            num_heads: 12,
            num_kv_heads: 4,
            head_dim: 64,
            rope_theta: 10_000.0,
            rms_norm_eps: 1e-5,
            tie_word_embeddings: false,
        }
    }

    /// The shape of Llama 3.2 1B (about 1.2 B parameters, tied embeddings; for GPU benchmarks).
    pub fn llama_1b() -> Self {
        Self {
            vocab_size: 128_256,
            hidden_size: 2048,
            intermediate_size: 8192,
            num_layers: 16,
            num_heads: 32,
            num_kv_heads: 8,
            head_dim: 64,
            rope_theta: 500_000.0,
            rms_norm_eps: 1e-5,
            tie_word_embeddings: true,
        }
    }

    /// Parameters of this configuration.
    pub fn num_parameters(&self) -> usize {
        let (h, i) = (self.hidden_size, self.intermediate_size);
        let attention =
            h * self.num_heads * self.head_dim * 2 + h * self.num_kv_heads * self.head_dim * 2;
        let layer = attention + 3 * h * i + 2 * h;
        let head = if self.tie_word_embeddings {
            0
        } else {
            h * self.vocab_size
        };
        self.vocab_size * h + self.num_layers * layer + h + head
    }

    /// The built-in `tiny` model: byte vocabulary, 2 layers, grouped-query attention.
    pub fn tiny() -> Self {
        Self {
            vocab_size: 256,
            hidden_size: 64,
            intermediate_size: 128,
            num_layers: 2,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 16,
            rope_theta: 10_000.0,
            rms_norm_eps: 1e-5,
            tie_word_embeddings: true,
        }
    }
}

/// A model ready to run: its shape and weights on a device.
pub struct Model {
    config: ModelConfig,
    weights: Weights,
    device: Device,
}

impl Model {
    /// A model from weights already on `device`.
    pub fn new(config: ModelConfig, weights: Weights, device: Device) -> Self {
        Self {
            config,
            weights,
            device,
        }
    }

    /// The model's shape.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The device it runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    fn embed(&self, tokens: &[u32]) -> Tensor<2> {
        let ids: Vec<i64> = tokens.iter().map(|&t| i64::from(t)).collect();
        let ids = Tensor::<1, Int>::from_data(TensorData::new(ids, [tokens.len()]), &self.device);
        self.weights.embedding.clone().select(0, ids)
    }

    fn logits(&self, hidden: Tensor<2>) -> Tensor<2> {
        let hidden = layers::rms_norm(hidden, &self.weights.final_norm, self.config.rms_norm_eps);
        layers::linear(hidden, &self.weights.output_head())
    }

    /// Reference forward of one sequence alone: plain causal attention, no cache. Returns the
    /// logits of every position, `[len, vocab]`.
    pub fn forward_dense(&self, tokens: &[u32]) -> Tensor<2> {
        let positions: Vec<usize> = (0..tokens.len()).collect();
        let rotary = layers::Rotary::new(&positions, &self.config, &self.device);
        let hidden_keys =
            layers::chunk_mask(0, tokens.len(), tokens.len(), &self.config, &self.device);
        let mut hidden = self.embed(tokens);
        for layer in &self.weights.layers {
            hidden = layer.forward(hidden, &rotary, &self.config, |q, k, v| {
                let per_head = |rows: Tensor<3>| {
                    (0..self.config.num_kv_heads)
                        .map(|head| layers::head_of(&rows, head))
                        .collect()
                };
                layers::chunk_attention(
                    q,
                    per_head(k),
                    per_head(v),
                    hidden_keys.clone(),
                    &self.config,
                )
            });
        }
        self.logits(hidden)
    }

    /// Forward one scheduled batch over the paged cache; returns `[rows sampled, vocab]`
    /// logits, in the batch's request order.
    pub fn forward_paged(&self, batch: &PagedBatch, cache: &mut PagedKvCache) -> Tensor<2> {
        paged::forward(self, batch, cache)
    }
}

/// Logits as plain rows, for sampling and tests.
pub fn rows(logits: Tensor<2>) -> Vec<Vec<f32>> {
    let [count, width] = logits.dims();
    split_rows(logits.into_data(), count, width)
}

/// [`rows`] where the device's results can only be awaited (WebGPU in a browser); a lost
/// device is an error here rather than a panic.
pub async fn rows_async(logits: Tensor<2>) -> Result<Vec<Vec<f32>>, String> {
    let [count, width] = logits.dims();
    let data = logits.into_data_async().await.map_err(|e| e.to_string())?;
    Ok(split_rows(data, count, width))
}

/// How far `actual` logits are from `expected`: the largest absolute difference, relative to the
/// largest expected magnitude; infinite when the rows differ in length.
pub fn max_relative_error(actual: &[f32], expected: &[f32]) -> f32 {
    if actual.len() != expected.len() {
        return f32::INFINITY;
    }
    let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    actual
        .iter()
        .zip(expected)
        .map(|(a, e)| (a - e).abs() / scale)
        .fold(0.0, f32::max)
}

fn split_rows(data: TensorData, count: usize, width: usize) -> Vec<Vec<f32>> {
    let values: Vec<f32> = data.try_to_vec::<f32>().unwrap_or_default();
    (0..count)
        .map(|row| values[row * width..(row + 1) * width].to_vec())
        .collect()
}
