//! Step tracing: the reference scenarios of §8.B adapted to returned records — sampling,
//! batch summaries, request snapshots and span-window rotation.

mod common;

use common::*;
use waypoint_scheduler::step_trace::{AttributeValue, BatchSummary, StepSampler};
use waypoint_scheduler::{Scheduler, SchedulerConfig, StepEvent, StepTracingConfig};

fn tracing(sample_rate: f64, rich_subsample_rate: f64, closure_interval: u32) -> SchedulerConfig {
    SchedulerConfig {
        step_tracing: StepTracingConfig {
            enabled: true,
            sample_rate,
            rich_subsample_rate,
            closure_interval,
            seed: 42,
        },
        ..harness_config()
    }
}

#[derive(Default, Debug)]
struct Seen {
    summaries: Vec<BatchSummary>,
    snapshots: usize,
    opened: Vec<(u64, u64, u32)>,
    closed: Vec<(u64, u64, u64)>,
    events_per_window: Vec<usize>,
}

fn collect(events: &[StepEvent], seen: &mut Seen) {
    for event in events {
        match event {
            StepEvent::WindowOpened {
                sequence,
                step_range_start,
                closure_interval,
            } => {
                seen.opened
                    .push((*sequence, *step_range_start, *closure_interval));
                seen.events_per_window.push(0);
            }
            StepEvent::BatchSummary(summary) => {
                seen.summaries.push(summary.clone());
                *seen.events_per_window.last_mut().unwrap() += 1;
            }
            StepEvent::RequestSnapshot(_) => {
                seen.snapshots += 1;
                *seen.events_per_window.last_mut().unwrap() += 1;
            }
            StepEvent::WindowClosed {
                sequence,
                step_range_start,
                step_range_end,
            } => {
                seen.closed
                    .push((*sequence, *step_range_start, *step_range_end));
            }
        }
    }
}

fn run(config: SchedulerConfig, num_requests: usize, steps: usize) -> (Scheduler, Seen) {
    let mut s = scheduler(config);
    add_all(&mut s, requests(num_requests, 10, 100));
    let mut seen = Seen::default();
    for _ in 0..steps {
        let (output, _) = step(&mut s, 5);
        collect(&output.step_events, &mut seen);
    }
    (s, seen)
}

#[test]
fn b1_disabled_step_tracing_emits_nothing() {
    let mut s = scheduler(harness_config());
    add_all(&mut s, requests(2, 10, 10));
    let output = s.schedule(1);
    assert_eq!(output.step, 1);
    assert!(output.step_events.is_empty());
    assert!(s.shutdown(2).is_empty());
}

#[test]
fn b3_a_sampler_that_never_fires_emits_no_summary() {
    let (_, seen) = run(tracing(0.0, 1.0, 100), 2, 5);
    assert!(seen.summaries.is_empty() && seen.snapshots == 0);
    assert_eq!(seen.opened.len(), 1, "the first window is still opened");
}

#[test]
fn b4_rate_one_summarises_every_step() {
    let (_, seen) = run(tracing(1.0, 0.0, 100), 2, 3);
    let steps: Vec<u64> = seen.summaries.iter().map(|s| s.step_id).collect();
    assert_eq!(steps, [1, 2, 3]);
}

#[test]
fn b5_deterministic_sampler_picks_exactly_the_predicted_steps() {
    let (_, seen) = run(tracing(0.5, 0.0, 100), 2, 10);
    let steps: Vec<u64> = seen.summaries.iter().map(|s| s.step_id).collect();
    let predicted: Vec<u64> = (1..=10)
        .filter(|&i| StepSampler::new(42).sample_summary(i, 0.5))
        .collect();
    assert_eq!(steps, predicted);
    // SHA-1("42:<step>") as the reference sampler computes it (checked with Python's hashlib).
    assert_eq!(steps, [5, 6, 7, 8]);
}

#[test]
fn b6_b14_an_empty_step_still_gets_an_all_zero_summary_and_no_snapshot() {
    let mut s = scheduler(tracing(1.0, 1.0, 100));
    let output = s.schedule(7);
    let mut seen = Seen::default();
    collect(&output.step_events, &mut seen);
    let summary = &seen.summaries[0];
    assert_eq!(summary.step_id, 1);
    assert_eq!(
        (
            summary.running_depth,
            summary.waiting_depth,
            summary.num_prefill_reqs,
            summary.num_decode_reqs
        ),
        (0, 0, 0, 0)
    );
    assert_eq!(
        (
            summary.scheduled_tokens,
            summary.prefill_tokens,
            summary.decode_tokens,
            summary.num_finished,
            summary.num_preempted
        ),
        (0, 0, 0, 0, 0)
    );
    assert_eq!(seen.snapshots, 0);
}

#[test]
fn b7_b8_summary_has_all_sixteen_attributes_with_consistent_values() {
    let mut s = scheduler(tracing(1.0, 0.0, 100));
    add_all(&mut s, requests(5, 10, 10));
    let output = s.schedule(1_000);
    let StepEvent::BatchSummary(summary) = &output.step_events[1] else {
        panic!("window then summary expected: {:?}", output.step_events);
    };
    let attributes = summary.attributes(4_500);
    let keys: Vec<&str> = attributes.iter().map(|(k, _)| *k).collect();
    assert_eq!(
        keys,
        [
            "step.id",
            "step.ts_start_ns",
            "step.ts_end_ns",
            "step.duration_us",
            "queue.running_depth",
            "queue.waiting_depth",
            "batch.num_prefill_reqs",
            "batch.num_decode_reqs",
            "batch.scheduled_tokens",
            "batch.prefill_tokens",
            "batch.decode_tokens",
            "batch.num_finished",
            "batch.num_preempted",
            "kv.usage_gpu_ratio",
            "kv.blocks_total_gpu",
            "kv.blocks_free_gpu",
        ]
    );
    for (key, value) in &attributes {
        match (key, value) {
            (&"kv.usage_gpu_ratio", AttributeValue::Float(ratio)) => {
                assert!((0.0..=1.0).contains(ratio))
            }
            (_, AttributeValue::Int(v)) => assert!(*v >= 0, "{key}"),
            _ => panic!("{key} has the wrong type"),
        }
    }
    assert!(attributes.contains(&("step.duration_us", AttributeValue::Int(3))));
    assert_eq!(summary.num_prefill_reqs + summary.num_decode_reqs, 5);
    assert!(summary.num_prefill_reqs + summary.num_decode_reqs <= summary.running_depth);
    assert_eq!(
        summary.prefill_tokens + summary.decode_tokens,
        summary.scheduled_tokens
    );
    assert!(summary.kv_blocks_free <= summary.kv_blocks_total);
    let derived = 1.0 - f64::from(summary.kv_blocks_free) / f64::from(summary.kv_blocks_total);
    assert!((summary.kv_usage_ratio - derived).abs() < 1e-12);
}

#[test]
fn b10_b11_b12_snapshots_need_both_samplers() {
    let (_, seen) = run(tracing(1.0, 0.0, 100), 3, 1);
    assert_eq!((seen.summaries.len(), seen.snapshots), (1, 0));
    let (_, seen) = run(tracing(0.0, 1.0, 100), 3, 1);
    assert_eq!((seen.summaries.len(), seen.snapshots), (0, 0));
    let mut s = scheduler(tracing(1.0, 1.0, 100));
    add_all(&mut s, requests(4, 10, 10));
    let output = s.schedule(1);
    let snapshots: Vec<_> = output
        .step_events
        .iter()
        .filter_map(|e| match e {
            StepEvent::RequestSnapshot(snapshot) => Some(snapshot),
            _ => None,
        })
        .collect();
    assert_eq!(snapshots.len(), 4);
    for snapshot in snapshots {
        assert_eq!(snapshot.step_id, 1);
        assert_eq!(
            (
                snapshot.num_computed_tokens,
                snapshot.scheduled_tokens_this_step
            ),
            (0, 10),
            "before the advance"
        );
        assert_eq!(
            (snapshot.kv_blocks_allocated, snapshot.kv_blocks_cached),
            (1, 0)
        );
        assert_eq!(snapshot.effective_prompt_len, Some(10));
        let keys: Vec<&str> = snapshot.attributes().iter().map(|(k, _)| *k).collect();
        assert_eq!(keys.len(), 11);
        assert!(keys.contains(&"request.scheduled_tokens_this_step"));
    }
}

#[test]
fn b13_rich_steps_snapshot_every_running_request() {
    let (_, seen) = run(tracing(0.5, 0.5, 100), 2, 5);
    assert!(!seen.summaries.is_empty());
    assert_eq!(seen.snapshots % 2, 0);
}

#[test]
fn b17_b18_b20_windows_rotate_every_interval_when_they_had_events() {
    let (_, seen) = run(tracing(1.0, 0.0, 10), 2, 25);
    assert_eq!(seen.opened, [(1, 1, 10), (2, 11, 10), (3, 21, 10)]);
    assert_eq!(seen.closed, [(1, 1, 10), (2, 11, 20)]);
}

#[test]
fn b19_windows_without_events_are_not_closed() {
    let (_, seen) = run(tracing(0.0, 0.0, 10), 2, 25);
    assert_eq!(seen.opened.len(), 1);
    assert!(seen.closed.is_empty());
}

#[test]
fn b21_shutdown_closes_the_open_window_at_the_current_step() {
    let (mut s, seen) = run(tracing(1.0, 0.0, 100), 2, 15);
    assert!(seen.closed.is_empty());
    let events = s.shutdown(0);
    assert_eq!(
        events,
        [StepEvent::WindowClosed {
            sequence: 1,
            step_range_start: 1,
            step_range_end: 15
        }]
    );
    assert!(s.shutdown(0).is_empty(), "nothing is left open");
    let reopened = s.schedule(1);
    assert!(matches!(
        reopened.step_events[0],
        StepEvent::WindowOpened {
            sequence: 2,
            step_range_start: 16,
            ..
        }
    ));
}

#[test]
fn b24_b25_window_counts_over_longer_runs() {
    let (_, seen) = run(tracing(1.0, 0.0, 10), 2, 35);
    assert_eq!((seen.opened.len(), seen.closed.len()), (4, 3));
    assert!(seen.events_per_window[..3].iter().all(|&n| n >= 10));
    let (_, seen) = run(tracing(1.0, 0.0, 10_000), 2, 100);
    assert_eq!((seen.opened.len(), seen.closed.len()), (1, 0));
}

#[test]
fn summaries_count_finishes_since_the_previous_step_and_this_steps_preemptions() {
    let mut config = tracing(1.0, 0.0, 100);
    config.num_blocks = 11;
    config.max_num_batched_tokens = 100;
    config.max_model_len = 100;
    let mut s = scheduler(config);
    add_all(&mut s, requests(2, 80, 16));
    let _ = step(&mut s, 1);
    let output = s.schedule(10);
    let summary = output.step_events.iter().find_map(|e| match e {
        StepEvent::BatchSummary(summary) => Some(summary.clone()),
        _ => None,
    });
    assert_eq!(summary.unwrap().num_preempted, 1);
    let _ = s.update_from_output(&sample_all(&output, 1), 11);
    let _ = s.finish_requests(["0"], waypoint_scheduler::FinishStatus::Aborted, 12);
    let next = s.schedule(13);
    let StepEvent::BatchSummary(summary) = &next.step_events[0] else {
        panic!()
    };
    assert_eq!(summary.num_finished, 1);
}
