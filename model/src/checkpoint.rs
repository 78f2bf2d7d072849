//! Loading a local Hugging Face checkpoint of the Llama architecture: `config.json`,
//! `*.safetensors` and `tokenizer.json`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;
use thiserror::Error;
use tokenizers::Tokenizer;

use super::weights::{LayerWeights, Weights};
use super::ModelConfig;

/// Why a checkpoint could not be loaded.
#[derive(Debug, Error)]
pub enum CheckpointError {
    /// A required file is not in the directory.
    #[error("{} is missing", .0.display())]
    MissingFile(PathBuf),
    /// A file could not be read.
    #[error("reading {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `config.json` is not valid.
    #[error("config.json: {0}")]
    Config(String),
    /// The checkpoint is not a Llama-architecture model this runner supports.
    #[error("unsupported model: {0}")]
    Unsupported(String),
    /// A weight file is not valid safetensors.
    #[error("{}: {message}", path.display())]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// A tensor the architecture needs is absent.
    #[error("tensor {0} is missing from the checkpoint")]
    MissingTensor(String),
    /// A tensor has the wrong shape for the configuration.
    #[error("tensor {name} has shape {actual:?}, the configuration needs {expected:?}")]
    ShapeMismatch {
        /// The tensor.
        name: String,
        /// What the configuration implies.
        expected: Vec<usize>,
        /// What the file holds.
        actual: Vec<usize>,
    },
    /// A tensor's element type is not F32, F16 or BF16.
    #[error("tensor {name} has unsupported element type {dtype:?}")]
    UnsupportedDtype {
        /// The tensor.
        name: String,
        /// Its type.
        dtype: Dtype,
    },
    /// `tokenizer.json` could not be loaded.
    #[error("tokenizer.json: {0}")]
    Tokenizer(String),
}

#[derive(Deserialize)]
struct HfConfig {
    model_type: Option<String>,
    architectures: Option<Vec<String>>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    #[serde(default = "default_eps")]
    rms_norm_eps: f32,
    #[serde(default = "default_theta")]
    rope_theta: f32,
    #[serde(default)]
    tie_word_embeddings: bool,
    rope_scaling: Option<serde_json::Value>,
    /// transformers ≥ 5 writes the rotary settings here.
    rope_parameters: Option<RopeParameters>,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    eos_token_id: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct RopeParameters {
    rope_theta: Option<f32>,
    rope_type: Option<String>,
}

fn default_eps() -> f32 {
    1e-6
}

fn default_theta() -> f32 {
    10_000.0
}

/// A loaded checkpoint.
pub struct Checkpoint {
    /// The model's shape.
    pub config: ModelConfig,
    /// Its weights on the device.
    pub weights: Weights,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
    /// The end-of-sequence token, if the configuration names one.
    pub eos_token_id: Option<u32>,
}

fn read(path: &Path) -> Result<Vec<u8>, CheckpointError> {
    if !path.exists() {
        return Err(CheckpointError::MissingFile(path.to_path_buf()));
    }
    std::fs::read(path).map_err(|source| CheckpointError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn model_config(hf: &HfConfig) -> Result<ModelConfig, CheckpointError> {
    let is_llama = hf.model_type.as_deref() == Some("llama")
        || hf
            .architectures
            .iter()
            .flatten()
            .any(|a| a == "LlamaForCausalLM");
    if !is_llama {
        return Err(CheckpointError::Unsupported(format!(
            "architecture {:?} / model_type {:?}; only Llama checkpoints load",
            hf.architectures, hf.model_type
        )));
    }
    if hf.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
        return Err(CheckpointError::Unsupported(
            "rope_scaling is not supported".into(),
        ));
    }
    let rope = hf.rope_parameters.as_ref();
    if let Some(kind) = rope
        .and_then(|r| r.rope_type.as_deref())
        .filter(|&kind| kind != "default")
    {
        return Err(CheckpointError::Unsupported(format!(
            "rope_type {kind:?} is not supported"
        )));
    }
    let rope_theta = rope.and_then(|r| r.rope_theta).unwrap_or(hf.rope_theta);
    if hf.attention_bias || hf.mlp_bias {
        return Err(CheckpointError::Unsupported(
            "attention or MLP biases are not supported".into(),
        ));
    }
    if hf.num_attention_heads == 0 || hf.hidden_size % hf.num_attention_heads != 0 {
        return Err(CheckpointError::Config(
            "hidden_size must divide into num_attention_heads".into(),
        ));
    }
    let num_kv_heads = hf.num_key_value_heads.unwrap_or(hf.num_attention_heads);
    if num_kv_heads == 0 || hf.num_attention_heads % num_kv_heads != 0 {
        return Err(CheckpointError::Config(
            "num_attention_heads must be a multiple of num_key_value_heads".into(),
        ));
    }
    Ok(ModelConfig {
        vocab_size: hf.vocab_size,
        hidden_size: hf.hidden_size,
        intermediate_size: hf.intermediate_size,
        num_layers: hf.num_hidden_layers,
        num_heads: hf.num_attention_heads,
        num_kv_heads,
        head_dim: hf
            .head_dim
            .unwrap_or(hf.hidden_size / hf.num_attention_heads),
        rope_theta,
        rms_norm_eps: hf.rms_norm_eps,
        tie_word_embeddings: hf.tie_word_embeddings,
    })
}

/// Tensors by name: shape and f32 values.
type RawTensors = HashMap<String, (Vec<usize>, Vec<f32>)>;

/// Every tensor of the checkpoint's safetensors files, as f32 with its shape.
fn read_tensors(dir: &Path) -> Result<RawTensors, CheckpointError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| CheckpointError::Read {
            path: dir.to_path_buf(),
            source,
        })?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(CheckpointError::MissingFile(dir.join("*.safetensors")));
    }
    let mut tensors = HashMap::new();
    for path in files {
        let bytes = read(&path)?;
        let file = SafeTensors::deserialize(&bytes).map_err(|e| CheckpointError::Safetensors {
            path: path.clone(),
            message: e.to_string(),
        })?;
        for (name, view) in file.tensors() {
            let data = view.data();
            let values: Vec<f32> = match view.dtype() {
                Dtype::F32 => data
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
                Dtype::F16 => data
                    .chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect(),
                Dtype::BF16 => data
                    .chunks_exact(2)
                    .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect(),
                dtype => return Err(CheckpointError::UnsupportedDtype { name, dtype }),
            };
            tensors.insert(name, (view.shape().to_vec(), values));
        }
    }
    Ok(tensors)
}

struct Tensors<'a> {
    all: RawTensors,
    device: &'a Device,
}

impl Tensors<'_> {
    fn take(&mut self, name: &str, expected: &[usize]) -> Result<Vec<f32>, CheckpointError> {
        let (shape, values) = self
            .all
            .remove(name)
            .ok_or_else(|| CheckpointError::MissingTensor(name.into()))?;
        if shape != expected {
            return Err(CheckpointError::ShapeMismatch {
                name: name.into(),
                expected: expected.to_vec(),
                actual: shape,
            });
        }
        Ok(values)
    }

    fn vector(&mut self, name: &str, width: usize) -> Result<Tensor<1>, CheckpointError> {
        let values = self.take(name, &[width])?;
        Ok(Tensor::<1>::from_data(
            TensorData::new(values, [width]),
            self.device,
        ))
    }

    /// A `[out, in]` Linear weight, as the `[in, out]` matrix the model multiplies by.
    fn linear(
        &mut self,
        name: &str,
        inputs: usize,
        outputs: usize,
    ) -> Result<Tensor<2>, CheckpointError> {
        let values = self.take(name, &[outputs, inputs])?;
        Ok(
            Tensor::<2>::from_data(TensorData::new(values, [outputs, inputs]), self.device)
                .transpose(),
        )
    }
}

/// Load a Llama checkpoint directory onto `device`.
pub fn load(dir: &Path, device: &Device) -> Result<Checkpoint, CheckpointError> {
    let config_bytes = read(&dir.join("config.json"))?;
    let hf: HfConfig = serde_json::from_slice(&config_bytes)
        .map_err(|e| CheckpointError::Config(e.to_string()))?;
    let config = model_config(&hf)?;
    let tokenizer_path = dir.join("tokenizer.json");
    if !tokenizer_path.exists() {
        return Err(CheckpointError::MissingFile(tokenizer_path));
    }
    let tokenizer = Tokenizer::from_file(&tokenizer_path)
        .map_err(|e| CheckpointError::Tokenizer(e.to_string()))?;
    let mut tensors = Tensors {
        all: read_tensors(dir)?,
        device,
    };
    let (hidden, q_width) = (config.hidden_size, config.num_heads * config.head_dim);
    let kv_width = config.num_kv_heads * config.head_dim;
    let embedding_values =
        tensors.take("model.embed_tokens.weight", &[config.vocab_size, hidden])?;
    let embedding = Tensor::<2>::from_data(
        TensorData::new(embedding_values, [config.vocab_size, hidden]),
        device,
    );
    let mut layers = Vec::with_capacity(config.num_layers);
    for i in 0..config.num_layers {
        let p = format!("model.layers.{i}");
        layers.push(LayerWeights {
            attention_norm: tensors.vector(&format!("{p}.input_layernorm.weight"), hidden)?,
            wq: tensors.linear(&format!("{p}.self_attn.q_proj.weight"), hidden, q_width)?,
            wk: tensors.linear(&format!("{p}.self_attn.k_proj.weight"), hidden, kv_width)?,
            wv: tensors.linear(&format!("{p}.self_attn.v_proj.weight"), hidden, kv_width)?,
            wo: tensors.linear(&format!("{p}.self_attn.o_proj.weight"), q_width, hidden)?,
            mlp_norm: tensors.vector(&format!("{p}.post_attention_layernorm.weight"), hidden)?,
            gate: tensors.linear(
                &format!("{p}.mlp.gate_proj.weight"),
                hidden,
                config.intermediate_size,
            )?,
            up: tensors.linear(
                &format!("{p}.mlp.up_proj.weight"),
                hidden,
                config.intermediate_size,
            )?,
            down: tensors.linear(
                &format!("{p}.mlp.down_proj.weight"),
                config.intermediate_size,
                hidden,
            )?,
        });
    }
    let final_norm = tensors.vector("model.norm.weight", hidden)?;
    let lm_head = if config.tie_word_embeddings {
        None
    } else {
        Some(tensors.linear("lm_head.weight", hidden, config.vocab_size)?)
    };
    let eos_token_id = match hf.eos_token_id {
        Some(serde_json::Value::Number(n)) => n.as_u64().map(|n| n as u32),
        Some(serde_json::Value::Array(ids)) => {
            ids.first().and_then(|n| n.as_u64()).map(|n| n as u32)
        }
        _ => None,
    };
    Ok(Checkpoint {
        config,
        weights: Weights {
            embedding,
            layers,
            final_norm,
            lm_head,
        },
        tokenizer,
        eos_token_id,
    })
}
