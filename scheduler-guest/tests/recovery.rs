//! A request resubmitted after a fault: it keeps its tokens, is recomputed like a preempted
//! request, and its journey goes on with RECOVERED.

use waypoint_scheduler::{
    JourneyEventType, JourneyValidator, ModelOutput, NewRequest, Recovery, RequestError,
    ScheduleKind, ScheduledKind, Scheduler, SchedulerConfig,
};

fn step(scheduler: &mut Scheduler, now_ns: u64, validator: &mut JourneyValidator) -> u32 {
    let output = scheduler.schedule(now_ns);
    for event in &output.journey_events {
        validator.observe(event).expect("a valid journey");
    }
    let sampled = output
        .batch
        .sample
        .iter()
        .map(|&sample| sample.then_some(7))
        .collect();
    let outputs = scheduler
        .update_from_output(
            &ModelOutput {
                sampled_token_ids: sampled,
            },
            now_ns,
        )
        .expect("an output for the step");
    for event in &outputs.journey_events {
        validator.observe(event).expect("a valid journey");
    }
    output.batch.num_scheduled_tokens.iter().sum()
}

#[test]
fn a_recovered_request_keeps_its_tokens_and_resumes_with_a_valid_journey() {
    let mut config = SchedulerConfig::default();
    config.journey.enabled = true;
    let mut validator = JourneyValidator::new();
    let mut first = Scheduler::new(config).expect("valid config");
    let request = NewRequest {
        max_tokens: 5,
        ..NewRequest::new("r", vec![1, 2, 3, 4])
    };
    let added = first.add_request(request.clone(), 0).expect("accepted");
    for event in &added.journey_events {
        validator.observe(event).expect("a valid journey");
    }
    for now in 1..=3 {
        step(&mut first, now, &mut validator);
    }
    let generated = first
        .request("r")
        .expect("live")
        .output_token_ids()
        .to_vec();
    assert_eq!(generated, [7, 7, 7]);

    // The first scheduler faulted; a fresh one takes the request with what it had.
    let mut fresh = Scheduler::new(config).expect("valid config");
    let recovered = NewRequest {
        recovery: Some(Recovery {
            output_token_ids: generated.clone(),
            num_preemptions: 0,
            was_scheduled: true,
        }),
        ..request.clone()
    };
    let added = fresh.add_request(recovered, 10).expect("accepted");
    let event = &added.journey_events[0];
    assert_eq!(event.event_type, JourneyEventType::Recovered);
    assert_eq!(event.decode_done_tokens, 3);
    validator
        .observe(event)
        .expect("RECOVERED continues the journey");

    let output = fresh.schedule(11);
    let entry = output.batch.entries().next().expect("resumed");
    assert_eq!(entry.kind, ScheduledKind::Resumed);
    assert_eq!(entry.num_computed_tokens, 0);
    assert_eq!(
        entry.num_scheduled_tokens, 7,
        "prompt and outputs recomputed"
    );
    let scheduled = &output.journey_events[0];
    assert_eq!(scheduled.schedule_kind, Some(ScheduleKind::Resume));
    validator
        .observe(scheduled)
        .expect("SCHEDULED(RESUME) after RECOVERED");
    let outputs = fresh
        .update_from_output(
            &ModelOutput {
                sampled_token_ids: vec![Some(8)],
            },
            11,
        )
        .expect("an output");
    for event in &outputs.journey_events {
        assert_ne!(event.event_type, JourneyEventType::FirstToken, "not twice");
        validator.observe(event).expect("a valid journey");
    }
    step(&mut fresh, 12, &mut validator);
    assert_eq!(fresh.num_unfinished(), 0, "5 tokens in all, then length");
    assert_eq!(validator.num_open(), 0);

    let done = NewRequest {
        recovery: Some(Recovery {
            output_token_ids: vec![7; 5],
            ..Recovery::default()
        }),
        ..request
    };
    assert!(matches!(
        fresh.add_request(done, 13),
        Err(RequestError::NothingToRecover { .. })
    ));
}
