//! A tiny random Llama checkpoint written by Hugging Face transformers
//! (`tests/fixtures/tiny-llama/`, made by its `make_fixture.py`) loads and reproduces the
//! logits transformers computed; broken checkpoints fail with errors that say why.

use std::path::{Path, PathBuf};

mod common;

use common::{max_relative_error, test_device};
use tempfile::TempDir;
use waypoint::model::checkpoint::{load, CheckpointError};
use waypoint::model::{rows, BatchRequest, Model, PagedBatch, PagedKvCache};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-llama")
}

#[derive(serde::Deserialize)]
struct Reference {
    prompts: Vec<Vec<u32>>,
    logits: Vec<Vec<Vec<f32>>>,
}

#[test]
fn the_transformers_checkpoint_reproduces_its_reference_logits() {
    let device = test_device();
    let checkpoint = load(&fixture(), &device).expect("the fixture loads");
    assert_eq!(checkpoint.eos_token_id, Some(2));
    let reference: Reference =
        serde_json::from_slice(&std::fs::read(fixture().join("reference.json")).unwrap()).unwrap();
    let encoding = checkpoint
        .tokenizer
        .encode("w5 w9 w120", false)
        .expect("encodes");
    assert_eq!(encoding.get_ids(), [5, 9, 120]);
    let config = checkpoint.config;
    let model = Model::new(config, checkpoint.weights, device.clone());
    for (prompt, expected) in reference.prompts.iter().zip(&reference.logits) {
        let dense = rows(model.forward_dense(prompt));
        let error = max_relative_error(&dense.concat(), &expected.concat());
        assert!(
            error < 1e-4,
            "dense logits of {prompt:?}: relative error {error}"
        );
        let mut cache = PagedKvCache::new(&config, 8, 4, &device);
        let batch = PagedBatch {
            requests: vec![BatchRequest {
                tokens: prompt.clone(),
                start_position: 0,
                block_table: vec![3, 1, 6],
                sample: true,
            }],
        };
        let paged = rows(model.forward_paged(&batch, &mut cache));
        let error = max_relative_error(&paged.concat(), &expected[prompt.len() - 1..].concat());
        assert!(
            error < 1e-4,
            "paged logits of {prompt:?}: relative error {error}"
        );
        // The same prompt as a prefill of all but its last token, then that token decoded: one
        // row through the checkpoint's transposed weights, attending over the cache it wrote.
        let (last, head) = prompt.split_last().expect("prompts are not empty");
        let mut cache = PagedKvCache::new(&config, 8, 4, &device);
        let step = |tokens: &[u32], start_position: usize, cache: &mut PagedKvCache| {
            let batch = PagedBatch {
                requests: vec![BatchRequest {
                    tokens: tokens.to_vec(),
                    start_position,
                    block_table: vec![3, 1, 6],
                    sample: true,
                }],
            };
            rows(model.forward_paged(&batch, cache))
        };
        step(head, 0, &mut cache);
        let decoded = step(&[*last], head.len(), &mut cache);
        let error = max_relative_error(&decoded.concat(), &expected[prompt.len() - 1..].concat());
        assert!(
            error < 1e-4,
            "decoded logits of {prompt:?}: relative error {error}"
        );
    }
}

/// A copy of the fixture checkpoint with one thing broken, removed when dropped.
fn broken_copy(name: &str, edit: impl FnOnce(&Path)) -> TempDir {
    let dir = tempfile::Builder::new()
        .prefix(&format!("waypoint-ckpt-{name}-"))
        .tempdir()
        .unwrap();
    for file in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixture().join(file), dir.path().join(file)).unwrap();
    }
    edit(dir.path());
    dir
}

fn edit_config(dir: &Path, from: &str, to: &str) {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).unwrap().replace(from, to);
    std::fs::write(path, text).unwrap();
}

#[test]
fn broken_checkpoints_fail_with_the_reason() {
    let device = test_device();
    let missing = broken_copy("missing", |dir| {
        std::fs::remove_file(dir.join("tokenizer.json")).unwrap()
    });
    assert!(
        matches!(load(missing.path(), &device), Err(CheckpointError::MissingFile(p)) if p.ends_with("tokenizer.json"))
    );
    let no_weights = broken_copy("no-weights", |dir| {
        std::fs::remove_file(dir.join("model.safetensors")).unwrap()
    });
    assert!(matches!(
        load(no_weights.path(), &device),
        Err(CheckpointError::MissingFile(_))
    ));
    let other = broken_copy("qwen", |dir| {
        edit_config(
            dir,
            "\"model_type\": \"llama\"",
            "\"model_type\": \"qwen2\"",
        );
        edit_config(dir, "LlamaForCausalLM", "Qwen2ForCausalLM");
    });
    assert!(matches!(
        load(other.path(), &device),
        Err(CheckpointError::Unsupported(_))
    ));
    let wrong = broken_copy("shape", |dir| {
        edit_config(
            dir,
            "\"intermediate_size\": 64",
            "\"intermediate_size\": 96",
        )
    });
    match load(wrong.path(), &device) {
        Err(error @ CheckpointError::ShapeMismatch { .. }) => {
            assert!(error.to_string().contains("gate_proj"), "{error}");
        }
        other => panic!("expected a shape mismatch, got {:?}", other.err()),
    }
    let garbage = broken_copy("garbage", |dir| {
        std::fs::write(dir.join("model.safetensors"), b"not safetensors").unwrap()
    });
    assert!(matches!(
        load(garbage.path(), &device),
        Err(CheckpointError::Safetensors { .. })
    ));
}
