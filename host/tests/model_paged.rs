//! The paged forward over a mixed batch equals the dense reference forward of each sequence
//! alone (same weights, plain causal attention, no cache).

mod common;

use common::{max_relative_error, test_device};
use waypoint::model::{rows, BatchRequest, Model, ModelConfig, PagedBatch, PagedKvCache, Weights};

#[test]
fn paged_forward_over_a_mixed_batch_matches_the_dense_reference() {
    let device = test_device();
    let config = ModelConfig::tiny();
    let model = Model::new(config, Weights::random(&config, 7, &device), device.clone());
    let block_size = 4;
    let mut cache = PagedKvCache::new(&config, 16, block_size, &device);
    let a: Vec<u32> = (0..13).map(|t| (t * 17 + 3) % 256).collect();
    let b: Vec<u32> = (0..7).map(|t| (t * 29 + 11) % 256).collect();
    // Non-contiguous, interleaved block tables, as a scheduler hands them out.
    let (table_a, table_b) = (vec![5, 1, 9, 3], vec![2, 7, 12]);
    let dense_a = rows(model.forward_dense(&a));
    let dense_b = rows(model.forward_dense(&b));

    // Step 1: a chunk of A's prompt (no sample) beside all of B's prompt (sample).
    let step1 = PagedBatch {
        requests: vec![
            BatchRequest {
                tokens: a[..8].to_vec(),
                start_position: 0,
                block_table: table_a.clone(),
                sample: false,
            },
            BatchRequest {
                tokens: b.clone(),
                start_position: 0,
                block_table: table_b.clone(),
                sample: true,
            },
        ],
    };
    let logits = rows(model.forward_paged(&step1, &mut cache));
    assert_eq!(logits.len(), 1);
    let error = max_relative_error(&logits[0], &dense_b[6]);
    assert!(error < 1e-4, "B's prefill logits: relative error {error}");

    // Step 2: the rest of A's prompt beside one decode token of B (its next token, position 7).
    let mut b_next = b.clone();
    b_next.push(42);
    let dense_b_next = rows(model.forward_dense(&b_next));
    let step2 = PagedBatch {
        requests: vec![
            BatchRequest {
                tokens: a[8..].to_vec(),
                start_position: 8,
                block_table: table_a,
                sample: true,
            },
            BatchRequest {
                tokens: vec![42],
                start_position: 7,
                block_table: table_b,
                sample: true,
            },
        ],
    };
    let logits = rows(model.forward_paged(&step2, &mut cache));
    assert_eq!(logits.len(), 2);
    let error_a = max_relative_error(&logits[0], &dense_a[12]);
    let error_b = max_relative_error(&logits[1], &dense_b_next[7]);
    assert!(
        error_a < 1e-4,
        "A's chunked prefill: relative error {error_a}"
    );
    assert!(
        error_b < 1e-4,
        "B's decode over its cached prompt: relative error {error_b}"
    );

    // Step 3: two decodes of different context lengths attended together (B's padded to A's).
    let (mut a_next, mut b_next_next) = (a.clone(), b_next.clone());
    a_next.push(99);
    b_next_next.push(7);
    let step3 = PagedBatch {
        requests: vec![
            BatchRequest {
                tokens: vec![7],
                start_position: 8,
                block_table: vec![2, 7, 12],
                sample: true,
            },
            BatchRequest {
                tokens: vec![99],
                start_position: 13,
                block_table: vec![5, 1, 9, 3],
                sample: true,
            },
        ],
    };
    let logits = rows(model.forward_paged(&step3, &mut cache));
    let error_b = max_relative_error(&logits[0], &rows(model.forward_dense(&b_next_next))[8]);
    let error_a = max_relative_error(&logits[1], &rows(model.forward_dense(&a_next))[13]);
    assert!(
        error_a < 1e-4,
        "A's decode beside B's: relative error {error_a}"
    );
    assert!(
        error_b < 1e-4,
        "B's padded decode beside A's: relative error {error_b}"
    );
}

#[test]
fn a_prefix_hit_reads_kv_another_request_wrote() {
    let device = test_device();
    let config = ModelConfig::tiny();
    let model = Model::new(
        config,
        Weights::random(&config, 11, &device),
        device.clone(),
    );
    let mut cache = PagedKvCache::new(&config, 8, 4, &device);
    let prompt: Vec<u32> = (0..10).map(|t| (t * 31 + 5) % 256).collect();
    let first = PagedBatch {
        requests: vec![BatchRequest {
            tokens: prompt.clone(),
            start_position: 0,
            block_table: vec![1, 2, 3],
            sample: true,
        }],
    };
    let _ = model.forward_paged(&first, &mut cache);
    // A second request shares the first two blocks (8 tokens) and computes only the rest.
    let second = PagedBatch {
        requests: vec![BatchRequest {
            tokens: prompt[8..].to_vec(),
            start_position: 8,
            block_table: vec![1, 2, 6],
            sample: true,
        }],
    };
    let logits = rows(model.forward_paged(&second, &mut cache));
    let dense = rows(model.forward_dense(&prompt));
    let error = max_relative_error(&logits[0], &dense[9]);
    assert!(error < 1e-4, "relative error {error}");
}

#[test]
fn long_contexts_over_scattered_blocks_at_the_110m_head_width_match_the_dense_reference() {
    // The 110m model's head width and a query group of three, with contexts several times longer
    // than the GPU kernel's units, so each unit reads many keys across many blocks.
    let config = ModelConfig {
        hidden_size: 96,
        intermediate_size: 192,
        num_heads: 6,
        num_kv_heads: 2,
        head_dim: 64,
        ..ModelConfig::tiny()
    };
    let device = test_device();
    let model = Model::new(config, Weights::random(&config, 5, &device), device.clone());
    let block_size = 16;
    let mut cache = PagedKvCache::new(&config, 48, block_size, &device);
    let long: Vec<u32> = (0..150).map(|t| (t * 37 + 1) % 256).collect();
    let short: Vec<u32> = (0..40).map(|t| (t * 13 + 7) % 256).collect();
    // Tables in no order, the long one interleaved with the short one's.
    let long_table: Vec<u32> = vec![40, 3, 17, 29, 8, 44, 1, 35, 12, 22];
    let short_table: Vec<u32> = vec![19, 6, 31];
    let request =
        |tokens: &[u32], start_position: usize, table: &[u32], sample: bool| BatchRequest {
            tokens: tokens.to_vec(),
            start_position,
            block_table: table.to_vec(),
            sample,
        };

    let first = PagedBatch {
        requests: vec![
            request(&long[..61], 0, &long_table, false),
            request(&short, 0, &short_table, true),
        ],
    };
    let logits = rows(model.forward_paged(&first, &mut cache));
    let error = max_relative_error(&logits[0], &rows(model.forward_dense(&short))[39]);
    assert!(error < 1e-4, "the short prompt: relative error {error}");

    // A decode of the short request beside the rest of the long prompt, listed first.
    let mut short_next = short.clone();
    short_next.push(200);
    let second = PagedBatch {
        requests: vec![
            request(&[200], 40, &short_table, true),
            request(&long[61..], 61, &long_table, true),
        ],
    };
    let logits = rows(model.forward_paged(&second, &mut cache));
    let error_short = max_relative_error(&logits[0], &rows(model.forward_dense(&short_next))[40]);
    let dense_long = rows(model.forward_dense(&long));
    let error_long = max_relative_error(&logits[1], &dense_long[149]);
    assert!(
        error_short < 1e-4,
        "the short decode: relative error {error_short}"
    );
    assert!(
        error_long < 1e-4,
        "the long chunk: relative error {error_long}"
    );

    // A decode over all 150 cached positions of the long prompt.
    let mut long_next = long.clone();
    long_next.push(9);
    let third = PagedBatch {
        requests: vec![request(&[9], 150, &long_table, true)],
    };
    let logits = rows(model.forward_paged(&third, &mut cache));
    let error = max_relative_error(&logits[0], &rows(model.forward_dense(&long_next))[150]);
    assert!(error < 1e-4, "the long decode: relative error {error}");
}
