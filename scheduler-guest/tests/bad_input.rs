//! Bad configuration, bad submissions and bad model output come back as typed errors and leave
//! the scheduler unchanged.

mod common;

use common::*;
use waypoint_scheduler::{
    ConfigError, FinishStatus, ModelOutput, NewRequest, OutputError, RequestError, Scheduler,
    SchedulerConfig,
};

fn rejected(config: SchedulerConfig) -> ConfigError {
    Scheduler::new(config).expect_err("config must be rejected")
}

#[test]
fn invalid_configurations_are_rejected_with_the_broken_rule() {
    let base = harness_config();
    assert_eq!(
        rejected(SchedulerConfig {
            block_size: 0,
            ..base
        }),
        ConfigError::ZeroBlockSize
    );
    assert_eq!(
        rejected(SchedulerConfig {
            num_blocks: 1,
            ..base
        }),
        ConfigError::TooFewBlocks { num_blocks: 1 }
    );
    assert_eq!(
        rejected(SchedulerConfig {
            max_num_seqs: 0,
            ..base
        }),
        ConfigError::ZeroMaxNumSeqs
    );
    assert_eq!(
        rejected(SchedulerConfig {
            max_model_len: 0,
            ..base
        }),
        ConfigError::ZeroMaxModelLen
    );
    assert!(matches!(
        rejected(SchedulerConfig {
            max_num_batched_tokens: 8,
            ..base
        }),
        ConfigError::BudgetBelowBlockSize { .. }
    ));
    assert!(matches!(
        rejected(SchedulerConfig {
            max_num_batched_tokens: 32,
            max_num_seqs: 64,
            ..base
        }),
        ConfigError::BudgetBelowMaxNumSeqs { .. }
    ));
    assert!(matches!(
        rejected(SchedulerConfig {
            enable_chunked_prefill: false,
            max_num_batched_tokens: 1024,
            ..base
        }),
        ConfigError::BudgetBelowModelLenUnchunked { .. }
    ));
    assert!(matches!(
        rejected(SchedulerConfig {
            num_blocks: 100,
            ..base
        }),
        ConfigError::KvCacheTooSmall {
            capacity_tokens: 1584,
            ..
        }
    ));
    assert!(matches!(
        rejected(SchedulerConfig {
            long_prefill_token_threshold: 9000,
            ..base
        }),
        ConfigError::ThresholdAboveModelLen { .. }
    ));
    let mut tracing = base;
    tracing.step_tracing.sample_rate = 1.5;
    assert_eq!(rejected(tracing), ConfigError::SampleRateOutOfRange(1.5));
    let mut tracing = base;
    tracing.step_tracing.rich_subsample_rate = -0.1;
    assert_eq!(
        rejected(tracing),
        ConfigError::RichSubsampleRateOutOfRange(-0.1)
    );
    let mut tracing = base;
    tracing.step_tracing.closure_interval = 5;
    assert_eq!(rejected(tracing), ConfigError::ClosureIntervalOutOfRange(5));
    let message = rejected(SchedulerConfig {
        num_blocks: 100,
        ..base
    })
    .to_string();
    assert!(message.contains("fewer than max_model_len"), "{message}");
}

#[test]
fn invalid_requests_are_rejected_and_change_nothing() {
    let mut s = scheduler(harness_config());
    s.add_request(NewRequest::new("a", vec![1; 10]), 0).unwrap();
    let cases = [
        (NewRequest::new("a", vec![1; 10]), "DuplicateId"),
        (NewRequest::new("e", vec![]), "EmptyPrompt"),
        (NewRequest::new("l", vec![1; 8192]), "PromptTooLong"),
        (
            NewRequest {
                max_tokens: 0,
                ..NewRequest::new("z", vec![1])
            },
            "ZeroMaxTokens",
        ),
        (
            NewRequest {
                min_tokens: 20,
                ..NewRequest::new("m", vec![1])
            },
            "MinTokensAboveMaxTokens",
        ),
    ];
    for (request, kind) in cases {
        let error = s.add_request(request, 0).unwrap_err();
        assert!(format!("{error:?}").starts_with(kind), "{error:?}");
    }
    assert_eq!(s.num_waiting(), 1);
    assert_eq!(
        s.add_request(NewRequest::new("a", vec![2]), 0).unwrap_err(),
        RequestError::DuplicateId { id: "a".into() }
    );
    let _ = step(&mut s, 1);
    let _ = s.finish_requests(["a"], FinishStatus::Aborted, 0);
    s.add_request(NewRequest::new("a", vec![3]), 0)
        .expect("an id is free again once finished");
}

#[test]
fn unknown_and_repeated_ids_are_ignored_on_finish() {
    let mut s = scheduler(harness_config());
    add_all(&mut s, requests(2, 10, 4));
    let outcome = s.finish_requests(["nope", "0", "0"], FinishStatus::Aborted, 0);
    assert_eq!(strings(&outcome.finished_ids), ["0"]);
    assert_eq!(s.num_unfinished(), 1);
}

#[test]
fn malformed_model_output_is_rejected_and_the_step_stays_in_flight() {
    let mut s = scheduler(SchedulerConfig {
        long_prefill_token_threshold: 32,
        ..harness_config()
    });
    assert_eq!(
        s.update_from_output(&ModelOutput::default(), 0)
            .unwrap_err(),
        OutputError::NoStepInFlight
    );
    add_all(&mut s, requests(1, 60, 4));
    add_all(&mut s, vec![NewRequest::new("short", vec![5; 3])]);
    let output = s.schedule(1);
    assert_eq!(output.batch.len(), 2);
    assert!(
        !output.batch.sample[0],
        "the 60-token prompt is capped at 32"
    );
    let wrong_length = ModelOutput {
        sampled_token_ids: vec![Some(1)],
    };
    assert!(matches!(
        s.update_from_output(&wrong_length, 2),
        Err(OutputError::LengthMismatch {
            expected: 2,
            got: 1
        })
    ));
    let during_prefill = ModelOutput {
        sampled_token_ids: vec![Some(1), Some(2)],
    };
    assert_eq!(
        s.update_from_output(&during_prefill, 2).unwrap_err(),
        OutputError::TokenDuringPrefill { id: "0".into() }
    );
    let good = sample_all(&output, 9);
    let engine = s
        .update_from_output(&good, 3)
        .expect("the step is still in flight");
    assert_eq!(engine.handles.len(), 1);
    assert_eq!(s.request("short").unwrap().output_token_ids(), [9]);
    assert_eq!(
        s.update_from_output(&good, 4).unwrap_err(),
        OutputError::NoStepInFlight
    );
}

#[test]
fn output_for_a_request_aborted_during_the_step_is_discarded() {
    let mut s = scheduler(harness_config());
    let names = add_all(&mut s, requests(2, 10, 4));
    let output = s.schedule(1);
    let _ = s.finish_requests(["0"], FinishStatus::Aborted, 2);
    s.add_request(NewRequest::new("new", vec![1; 4]), 3)
        .unwrap();
    let engine = s.update_from_output(&sample_all(&output, 5), 4).unwrap();
    assert_eq!(engine.handles, [names[1].0]);
    assert!(
        s.request("new").unwrap().output_token_ids().is_empty(),
        "the new request reused the slot"
    );
}
