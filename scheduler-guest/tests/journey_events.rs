//! Journey events: the reference scenarios of §8.A, §8.C and §8.F (engine side) adapted to
//! returned events, per-request sampling, cleanup on every path, and the JSON Lines form.

mod common;

use common::*;
use waypoint_scheduler::{
    FinishStatus, JourneyConfig, JourneyEvent, JourneyEventType, JourneyValidator, ModelOutput,
    NewRequest, Phase, ScheduleKind, Scheduler, SchedulerConfig,
};

fn traced() -> SchedulerConfig {
    SchedulerConfig {
        journey: JourneyConfig { enabled: true },
        ..harness_config()
    }
}

fn of_type(events: &[JourneyEvent], kind: JourneyEventType) -> Vec<&JourneyEvent> {
    events.iter().filter(|e| e.event_type == kind).collect()
}

fn long_prompt_config() -> SchedulerConfig {
    SchedulerConfig {
        max_num_batched_tokens: 512,
        max_model_len: 2048,
        max_num_seqs: 10,
        long_prefill_token_threshold: 256,
        ..traced()
    }
}

#[test]
fn a1_first_admission_is_scheduled_first_at_step_one() {
    let mut s = scheduler(traced());
    add_all(&mut s, requests(1, 10, 10));
    let output = s.schedule(1);
    let scheduled = of_type(&output.journey_events, JourneyEventType::Scheduled);
    assert_eq!(scheduled[0].schedule_kind, Some(ScheduleKind::First));
    assert_eq!(scheduled[0].scheduler_step, 1);
    assert_eq!(scheduled[0].num_preemptions_so_far, 0);
}

#[test]
fn a2_queued_carries_step_zero_and_scheduled_step_one() {
    let mut s = scheduler(traced());
    let queued = s
        .add_request(requests(1, 10, 10).remove(0), 5)
        .unwrap()
        .journey_events;
    assert_eq!(queued.len(), 1);
    assert_eq!(
        (queued[0].event_type, queued[0].scheduler_step),
        (JourneyEventType::Queued, 0)
    );
    let output = s.schedule(6);
    assert_eq!(output.journey_events.len(), 1);
    assert_eq!(output.journey_events[0].scheduler_step, 1);
}

#[test]
fn a3_scheduled_first_reports_zero_prefill_and_the_mark_rises_after_schedule() {
    let mut s = scheduler(traced());
    add_all(&mut s, requests(1, 100, 10));
    let output = s.schedule(1);
    let event = &output.journey_events[0];
    assert_eq!(
        (event.prefill_done_tokens, event.prefill_total_tokens),
        (0, 100)
    );
    assert_eq!((event.decode_done_tokens, event.decode_max_tokens), (0, 10));
    assert_eq!(event.phase, Phase::Prefill);
    assert_eq!(s.journey_prefill_high_water("0"), Some(100));
}

#[test]
fn a4_one_schedule_emits_events_only_for_admitted_requests() {
    let mut s = scheduler(traced());
    add_all(&mut s, requests(1000, 50, 20));
    let output = s.schedule(1);
    let scheduled = of_type(&output.journey_events, JourneyEventType::Scheduled);
    assert!((1..=49).contains(&scheduled.len()));
    assert_eq!(scheduled.len(), 16, "max_num_seqs caps admission");
    let admitted: Vec<_> = output
        .batch
        .handles
        .iter()
        .map(|&handle| id_of(&s, handle))
        .collect();
    assert!(scheduled
        .iter()
        .all(|e| admitted.contains(&e.request_id.to_string())));
}

#[test]
fn a5_explicit_finish_reports_each_status_string() {
    let cases = [
        (FinishStatus::Stopped, "stopped"),
        (FinishStatus::LengthCapped, "length"),
        (FinishStatus::Aborted, "aborted"),
        (FinishStatus::Error, "error"),
        (FinishStatus::Ignored, "ignored"),
    ];
    for (status, name) in cases {
        let mut s = scheduler(traced());
        add_all(&mut s, requests(1, 10, 10));
        let _ = s.schedule(1);
        let outcome = s.finish_requests(["0"], status, 2);
        let finished = of_type(&outcome.journey_events, JourneyEventType::Finished);
        assert_eq!(finished.len(), 1);
        assert_eq!(
            finished[0].finish_status.map(FinishStatus::as_str),
            Some(name)
        );
        assert_eq!(
            finished[0].scheduler_step, 1,
            "external finish carries the counter"
        );
    }
}

#[test]
fn a6_disabled_tracing_has_no_journey_state_and_no_events() {
    let mut s = scheduler(harness_config());
    assert!(!s.has_journey_state());
    assert!(s
        .add_request(requests(1, 10, 10).remove(0), 0)
        .unwrap()
        .journey_events
        .is_empty());
    let (output, engine) = step(&mut s, 3);
    assert!(output.journey_events.is_empty() && engine.journey_events.is_empty());
    assert_eq!(s.journey_state_len(), 0);
    assert_eq!(s.journey_prefill_high_water("0"), None);
}

#[test]
fn a7_queued_is_labelled_waiting_with_no_preemptions() {
    let mut s = scheduler(traced());
    let events = s
        .add_request(requests(1, 10, 10).remove(0), 9)
        .unwrap()
        .journey_events;
    let event = &events[0];
    assert_eq!(&*event.request_id, "0");
    assert_eq!(
        (
            event.scheduler_step,
            event.phase,
            event.num_preemptions_so_far
        ),
        (0, Phase::Waiting, 0)
    );
    assert_eq!(event.ts_monotonic_ns, 9);
}

#[test]
fn a8_finishing_removes_the_journey_state() {
    let mut s = scheduler(traced());
    add_all(&mut s, requests(1, 10, 10));
    let _ = s.schedule(1);
    assert_eq!(s.journey_state_len(), 1);
    let _ = s.finish_requests(["0"], FinishStatus::Stopped, 2);
    assert_eq!(s.journey_state_len(), 0);
}

#[test]
fn a9_prefill_high_water_never_decreases_across_chunks() {
    let mut s = scheduler(long_prompt_config());
    add_all(&mut s, requests(1, 1000, 100));
    let mut last = 0;
    let mut iterations = 0;
    for now in 0..10 {
        let output = s.schedule(now);
        let _ = s.update_from_output(
            &ModelOutput {
                sampled_token_ids: vec![None; output.batch.len()],
            },
            now,
        );
        let mark = s.journey_prefill_high_water("0").unwrap();
        let computed = s.request("0").unwrap().num_computed_tokens();
        assert!(mark >= last && mark >= computed.min(1000));
        last = mark;
        iterations += 1;
    }
    assert!(iterations >= 3 && last >= 900);
}

#[test]
fn a10_a11_preemption_keeps_the_high_water_mark_and_reports_it() {
    let mut s = scheduler(long_prompt_config());
    // A second waiting request keeps the 256-token threshold active (0.33 skips it for a lone
    // request), so the prompt advances in chunks.
    add_all(&mut s, requests(2, 1000, 100));
    for now in 0..3 {
        let output = s.schedule(now);
        let _ = s.update_from_output(
            &ModelOutput {
                sampled_token_ids: vec![None; output.batch.len()],
            },
            now,
        );
    }
    let computed_before = s.request("0").unwrap().num_computed_tokens();
    assert!(computed_before >= 512);
    let mark_before = s.journey_prefill_high_water("0").unwrap();
    let outcome = s.reset_prefix_cache(true, 10);
    let preempted = outcome
        .journey_events
        .iter()
        .find(|e| &*e.request_id == "0")
        .unwrap();
    assert_eq!(preempted.event_type, JourneyEventType::Preempted);
    assert!(f64::from(preempted.prefill_done_tokens) >= 0.95 * f64::from(computed_before));
    assert_eq!(
        (preempted.prefill_total_tokens, preempted.phase),
        (1000, Phase::Prefill)
    );
    assert_eq!(preempted.num_preemptions_so_far, 1);
    assert_eq!(
        preempted.scheduler_step, 3,
        "reset preemption carries the counter"
    );
    assert_eq!(s.request("0").unwrap().num_computed_tokens(), 0);
    assert_eq!(s.journey_prefill_high_water("0"), Some(mark_before));
    let resumed = s.schedule(11);
    let event = resumed
        .journey_events
        .iter()
        .find(|e| &*e.request_id == "0")
        .unwrap();
    assert_eq!(event.schedule_kind, Some(ScheduleKind::Resume));
    assert_eq!(
        event.prefill_done_tokens, mark_before,
        "RESUME reports the preserved mark"
    );
}

#[test]
fn a13_event_timestamp_is_the_now_passed_in() {
    let mut s = scheduler(traced());
    let queued = s
        .add_request(requests(1, 10, 1).remove(0), 1_234)
        .unwrap()
        .journey_events;
    assert_eq!(queued[0].ts_monotonic_ns, 1_234);
    let output = s.schedule(5_000);
    assert_eq!(output.journey_events[0].ts_monotonic_ns, 5_000);
    let engine = s
        .update_from_output(&sample_all(&output, 7), 6_000)
        .unwrap();
    assert!(engine
        .journey_events
        .iter()
        .all(|e| e.ts_monotonic_ns == 6_000));
}

#[test]
fn c_only_sampled_requests_produce_events_and_state() {
    let mut s = scheduler(traced());
    for (i, sampled) in [true, false, true].into_iter().enumerate() {
        let request = NewRequest {
            journey_sampled: sampled,
            ..NewRequest::new(i.to_string(), vec![1; 8])
        };
        let events = s.add_request(request, 0).unwrap().journey_events;
        assert_eq!(events.len(), usize::from(sampled));
    }
    assert_eq!(s.journey_state_len(), 2);
    let output = s.schedule(1);
    let ids: Vec<String> = output
        .journey_events
        .iter()
        .map(|e| e.request_id.to_string())
        .collect();
    assert_eq!(ids, ["0", "2"]);
}

#[test]
fn c8_master_switch_off_ignores_the_sampled_flag() {
    let mut s = scheduler(harness_config());
    let request = NewRequest {
        journey_sampled: true,
        ..NewRequest::new("x", vec![1; 8])
    };
    assert!(s.add_request(request, 0).unwrap().journey_events.is_empty());
    assert!(!s.has_journey_state());
}

#[test]
fn f1_step_counter_increments_on_every_schedule_and_survives_reset() {
    let mut s = scheduler(traced());
    assert_eq!([s.schedule(0).step, s.schedule(0).step], [1, 2]);
    add_all(&mut s, requests(2, 10, 10));
    assert_eq!([s.schedule(0).step, s.schedule(0).step], [3, 4]);
    let _ = s.reset_prefix_cache(true, 0);
    assert_eq!(
        [s.schedule(0).step, s.schedule(0).step, s.schedule(0).step],
        [5, 6, 7]
    );
}

#[test]
fn f9_disabled_tracing_keeps_no_state_through_aborts() {
    let mut s = scheduler(harness_config());
    add_all(&mut s, requests(5, 10, 10));
    let _ = s.schedule(1);
    let outcome = s.finish_requests(["0", "1"], FinishStatus::Aborted, 2);
    assert!(outcome.journey_events.is_empty());
    assert_eq!(s.journey_state_len(), 0);
}

#[test]
fn f14_f19_f20_natural_finish_emits_first_token_once_then_finished_and_cleans_up() {
    let mut s = scheduler(traced());
    add_all(&mut s, requests(1, 10, 3));
    let mut all = Vec::new();
    while s.num_unfinished() > 0 {
        let (output, engine) = step(&mut s, 7);
        all.extend(output.journey_events);
        all.extend(engine.journey_events);
    }
    let types: Vec<_> = all.iter().map(|e| e.event_type).collect();
    use JourneyEventType::*;
    assert_eq!(types, [Scheduled, FirstToken, Finished]);
    let finished = all.last().unwrap();
    assert_eq!(
        (finished.finish_status, finished.decode_done_tokens),
        (Some(FinishStatus::LengthCapped), 3)
    );
    assert_eq!(finished.phase, Phase::Decode);
    assert_eq!(s.journey_state_len(), 0);
}

#[test]
fn max_tokens_one_emits_first_token_then_finished_in_the_same_call_and_step() {
    let mut s = scheduler(traced());
    add_all(&mut s, requests(1, 10, 1));
    let (output, engine) = step(&mut s, 7);
    let types: Vec<_> = engine.journey_events.iter().map(|e| e.event_type).collect();
    assert_eq!(
        types,
        [JourneyEventType::FirstToken, JourneyEventType::Finished]
    );
    assert!(engine
        .journey_events
        .iter()
        .all(|e| e.scheduler_step == output.step));
}

#[test]
fn f22_preemption_in_schedule_emits_one_preempted_with_the_step() {
    let mut s = scheduler(SchedulerConfig {
        num_blocks: 11,
        max_num_batched_tokens: 100,
        max_model_len: 100,
        ..traced()
    });
    add_all(&mut s, requests(2, 80, 16));
    let _ = step(&mut s, 1);
    let output = s.schedule(10);
    let preempted = of_type(&output.journey_events, JourneyEventType::Preempted);
    assert_eq!(preempted.len(), 1);
    assert_eq!(
        (&*preempted[0].request_id, preempted[0].scheduler_step),
        ("1", 2)
    );
    assert!(
        of_type(&output.journey_events, JourneyEventType::Scheduled).is_empty(),
        "no admission in a step that preempted"
    );
}

#[test]
fn journey_state_is_empty_after_ten_thousand_requests_through_every_exit() {
    let mut s = scheduler(SchedulerConfig {
        num_blocks: 64,
        max_num_batched_tokens: 256,
        max_model_len: 256,
        enable_prefix_caching: true,
        ..traced()
    });
    let mut validator = JourneyValidator::new();
    let mut observe =
        |events: &[JourneyEvent]| events.iter().for_each(|e| validator.observe(e).unwrap());
    let mut next = 0usize;
    let mut now = 0u64;
    while next < 10_000 || s.num_unfinished() > 0 {
        now += 1;
        for _ in 0..8 {
            if next < 10_000 {
                let request = NewRequest {
                    max_tokens: 1 + (next % 7) as u32,
                    eos_token_id: Some(EOS),
                    ..NewRequest::new(next.to_string(), vec![(next % 13) as u32; 20 + next % 50])
                };
                observe(&s.add_request(request, now).unwrap().journey_events);
                next += 1;
            }
        }
        match now % 11 {
            3 => observe(
                &s.finish_requests(
                    [(next - 1).to_string().as_str()],
                    FinishStatus::Aborted,
                    now,
                )
                .journey_events,
            ),
            5 => observe(
                &s.finish_requests([(next - 5).to_string().as_str()], FinishStatus::Error, now)
                    .journey_events,
            ),
            7 => observe(&s.reset_prefix_cache(true, now).journey_events),
            _ => {}
        }
        let output = s.schedule(now);
        observe(&output.journey_events);
        let token = if now % 5 == 0 { EOS } else { 3 };
        let engine = s
            .update_from_output(&sample_all(&output, token), now)
            .unwrap();
        observe(&engine.journey_events);
    }
    assert_eq!(s.journey_state_len(), 0);
    assert!(s.requests().is_empty());
    assert_eq!(s.num_running() + s.num_waiting(), 0);
    assert!(s.stats().num_preemptions_total > 0);
    assert_eq!(validator.num_open(), 0, "every journey ended with FINISHED");
}

#[test]
fn journey_json_lines_use_the_reference_field_names_in_order() {
    let mut s = scheduler(traced());
    let queued = s
        .add_request(
            NewRequest {
                client_index: 3,
                max_tokens: 4,
                ..NewRequest::new("req-1", vec![1; 5])
            },
            42,
        )
        .unwrap()
        .journey_events;
    assert_eq!(
        queued[0].to_json_line(),
        concat!(
            r#"{"request_id":"req-1","event_type":"QUEUED","ts_monotonic_ns":42,"scheduler_step":0,"#,
            r#""prefill_done_tokens":0,"prefill_total_tokens":5,"decode_done_tokens":0,"decode_max_tokens":4,"#,
            r#""phase":"WAITING","num_preemptions_so_far":0,"schedule_kind":null,"finish_status":null,"client_index":3}"#
        )
    );
    let outcome = s.finish_requests(["req-1"], FinishStatus::LengthCapped, 50);
    let line = outcome.journey_events[0].to_json_line();
    assert!(line.contains(r#""finish_status":"length""#), "{line}");
    assert_eq!(
        JourneyEvent::from_json_line(&line).unwrap(),
        outcome.journey_events[0]
    );
    let scheduled_line = {
        let mut s = scheduler(traced());
        add_all(&mut s, requests(1, 4, 4));
        s.schedule(1).journey_events[0].to_json_line()
    };
    assert!(
        scheduled_line.contains(r#""schedule_kind":"FIRST""#),
        "{scheduled_line}"
    );
}

#[test]
fn validator_rejects_broken_journeys() {
    let mut s = scheduler(traced());
    let queued = s
        .add_request(NewRequest::new("a", vec![1; 4]), 0)
        .unwrap()
        .journey_events
        .remove(0);
    let mut v = JourneyValidator::new();
    v.observe(&queued).unwrap();
    assert!(v.observe(&queued).is_err(), "QUEUED twice");
    let mut first_token = queued.clone();
    first_token.event_type = JourneyEventType::FirstToken;
    first_token.phase = Phase::Decode;
    first_token.decode_done_tokens = 1;
    let error = v.observe(&first_token).unwrap_err();
    assert_eq!(error.reason, "event out of order");
    let mut backwards = JourneyValidator::new();
    let mut later = queued.clone();
    later.ts_monotonic_ns = 10;
    backwards.observe(&later).unwrap();
    let mut scheduled = queued;
    scheduled.event_type = JourneyEventType::Scheduled;
    scheduled.phase = Phase::Prefill;
    scheduled.schedule_kind = Some(ScheduleKind::First);
    assert_eq!(
        backwards.observe(&scheduled).unwrap_err().reason,
        "step or timestamp decreased"
    );
}

#[test]
fn scheduler_is_usable_without_any_tracing() {
    let mut s: Scheduler = scheduler(harness_config());
    add_all(&mut s, requests(3, 10, 2));
    while s.num_unfinished() > 0 {
        let _ = step(&mut s, 1);
    }
}
