//! Upstream scheduler scenarios (test_scheduler.py, "S" in the reference notes), with the same
//! numbers. Where our choice differs from upstream, the test says so in one comment.

mod common;

use common::*;
use waypoint_scheduler::{
    FinishStatus, ModelOutput, NewRequest, PolicyKind, RequestStatus, ScheduledKind,
    SchedulerConfig,
};

fn priority_config(max_num_seqs: u32, budget: u32) -> SchedulerConfig {
    SchedulerConfig {
        policy: PolicyKind::Priority,
        max_num_seqs,
        max_num_batched_tokens: budget,
        max_model_len: budget,
        ..harness_config()
    }
}

fn priority_requests(
    priorities: &[i32],
    arrivals: Option<&[u64]>,
    tokens: usize,
) -> Vec<NewRequest> {
    priorities
        .iter()
        .enumerate()
        .map(|(i, &priority)| NewRequest {
            priority,
            arrival_ns: arrivals.map_or(i as u64, |a| a[i]),
            eos_token_id: Some(EOS),
            ..NewRequest::new(i.to_string(), vec![i as u32; tokens])
        })
        .collect()
}

#[test]
fn s1_added_requests_are_registered_and_queued_in_order() {
    let mut s = scheduler(harness_config());
    for (i, request) in requests(10, 10, 16).into_iter().enumerate() {
        s.add_request(request, 0).unwrap();
        assert!(s.request(&i.to_string()).is_some());
        assert_eq!(s.num_waiting(), i + 1);
    }
}

#[test]
fn s2_aborting_a_waiting_request_removes_it_everywhere() {
    let mut s = scheduler(harness_config());
    add_all(&mut s, requests(10, 10, 16));
    for i in 0..10 {
        let id = i.to_string();
        let outcome = s.finish_requests([id.as_str()], FinishStatus::Aborted, 0);
        assert_eq!(strings(&outcome.finished_ids), vec![id.clone()]);
        assert!(s.request(&id).is_none());
        assert_eq!(s.num_waiting(), 9 - i);
    }
}

#[test]
fn s3_unfinished_count_drops_with_each_finish() {
    let mut s = scheduler(harness_config());
    add_all(&mut s, requests(10, 10, 16));
    for i in 0..10 {
        let _ = s.finish_requests([i.to_string().as_str()], FinishStatus::Stopped, 0);
        assert_eq!(s.num_unfinished(), 10 - i - 1);
    }
}

#[test]
fn s4_one_step_schedules_every_small_request_as_new_in_arrival_order() {
    for caching in [false, true] {
        let mut s = scheduler(SchedulerConfig {
            enable_prefix_caching: caching,
            ..harness_config()
        });
        add_all(&mut s, requests(10, 10, 16));
        let output = s.schedule(1);
        assert_eq!(ids_of_kind(&s, &output, ScheduledKind::New).len(), 10);
        assert!(ids_of_kind(&s, &output, ScheduledKind::Running).is_empty());
        assert!(output.finished.is_empty());
        assert!(output.batch.num_scheduled_tokens.iter().all(|&n| n == 10));
        assert_eq!(s.num_waiting(), 0);
        let expected: Vec<String> = (0..10).map(|i| i.to_string()).collect();
        assert_eq!(strings(&s.running_ids()), expected);
    }
}

#[test]
fn s5_long_prefills_are_capped_by_threshold_and_share_the_budget() {
    let mut s = scheduler(SchedulerConfig {
        max_num_batched_tokens: 1024,
        max_model_len: 1024,
        long_prefill_token_threshold: 400,
        ..harness_config()
    });
    add_all(&mut s, requests(3, 800, 16));
    let first = s.schedule(1);
    assert_eq!(ids_of_kind(&s, &first, ScheduledKind::New).len(), 3);
    let counts: Vec<u32> = first.batch.num_scheduled_tokens.clone();
    assert_eq!(counts, [400, 400, 224]);
    let _ = s.update_from_output(&sample_all(&first, 7), 2).unwrap();

    let second = s.schedule(3);
    assert_eq!(ids_of_kind(&s, &second, ScheduledKind::Running).len(), 3);
    let counts: Vec<u32> = second.batch.num_scheduled_tokens.clone();
    assert_eq!(counts, [400, 400, 224]);
    let engine = s.update_from_output(&sample_all(&second, 7), 4).unwrap();
    assert_eq!(
        engine.handles.len(),
        2,
        "requests 0 and 1 finished their prompts"
    );

    let third = s.schedule(5);
    let counts: Vec<u32> = third.batch.num_scheduled_tokens.clone();
    assert_eq!(counts, [1, 1, 352]);
}

/// Drives requests whose prompts are scheduled, feeding chosen tokens step by step.
struct Driver {
    s: waypoint_scheduler::Scheduler,
    pending: waypoint_scheduler::SchedulerOutput,
}

impl Driver {
    /// Add the requests and schedule their prompts; each later `feed` samples one token each.
    fn start(config: SchedulerConfig, new: Vec<NewRequest>) -> Self {
        let mut s = scheduler(config);
        add_all(&mut s, new);
        let pending = s.schedule(1);
        assert!(pending.batch.sample.iter().all(|&sample| sample));
        Self { s, pending }
    }

    /// Report one token per listed request for the step in flight, then schedule the next.
    fn feed(&mut self, tokens: &[(&str, u32)]) -> waypoint_scheduler::EngineOutputs {
        let sampled = self
            .pending
            .batch
            .handles
            .iter()
            .map(|&handle| {
                let scheduled = id_of(&self.s, handle);
                tokens
                    .iter()
                    .find(|(id, _)| *id == scheduled)
                    .map(|&(_, t)| t)
            })
            .collect();
        let engine = self
            .s
            .update_from_output(
                &ModelOutput {
                    sampled_token_ids: sampled,
                },
                10,
            )
            .unwrap();
        self.pending = self.s.schedule(11);
        engine
    }
}

#[test]
fn s8_eos_stops_a_request_and_others_keep_running() {
    // Upstream feeds [10, 11] to r1 in one step through a draft; we sample one token per step.
    let mut d = Driver::start(harness_config(), requests(2, 10, 16));
    let engine = d.feed(&[("0", EOS), ("1", 10)]);
    assert_eq!(finish_at(&engine, 0).0, Some(FinishStatus::Stopped));
    assert_eq!(refs(&d.pending.finished), ["0"]);
    assert_eq!(strings(&d.s.running_ids()), ["1"]);
    let _ = d.feed(&[("1", 11)]);
    assert_eq!(d.s.request("1").unwrap().output_token_ids(), [10, 11]);
    assert_eq!(d.s.request("1").unwrap().status(), RequestStatus::Running);
}

#[test]
fn s9_stop_token_stops_with_its_stop_reason() {
    // Upstream cuts [10, 42, 12] at 42 in one step; we sample one token per step.
    let mut new = requests(2, 10, 16);
    new.iter_mut().for_each(|r| r.stop_token_ids = vec![42, 43]);
    let mut d = Driver::start(harness_config(), new);
    let _ = d.feed(&[("0", 10), ("1", 13)]);
    let engine = d.feed(&[("0", 42), ("1", 14)]);
    assert_eq!(
        finish_at(&engine, 0),
        (Some(FinishStatus::Stopped), Some(42))
    );
    assert!(d.s.request("0").is_none());
    assert_eq!(d.s.request("1").unwrap().output_token_ids(), [13, 14]);
}

#[test]
fn s10_max_tokens_caps_the_output_length() {
    let mut d = Driver::start(harness_config(), requests(2, 10, 2));
    let _ = d.feed(&[("0", 10), ("1", 13)]);
    let engine = d.feed(&[("0", 11)]);
    assert_eq!(finish_at(&engine, 0).0, Some(FinishStatus::LengthCapped));
    assert_eq!(d.s.request("1").unwrap().output_token_ids(), [13]);
    assert_eq!(d.s.request("1").unwrap().status(), RequestStatus::Running);
}

#[test]
fn s11_ignored_eos_does_not_stop() {
    let mut new = requests(1, 10, 16);
    new[0].eos_token_id = None;
    let mut d = Driver::start(harness_config(), new);
    for token in [EOS, 10, 11] {
        let engine = d.feed(&[("0", token)]);
        assert_eq!(finish_at(&engine, 0).0, None);
    }
    assert_eq!(d.s.request("0").unwrap().output_token_ids(), [EOS, 10, 11]);
}

#[test]
fn s12_min_tokens_holds_back_eos_and_stop_tokens() {
    // Upstream 0.33 relies on the sampler masking stop ids; we hold them back in the check.
    for stop in [EOS, 42] {
        let mut new = requests(1, 10, 100);
        new[0].min_tokens = 5;
        new[0].stop_token_ids = vec![42];
        let mut d = Driver::start(harness_config(), new);
        for token in [10, 11, stop] {
            assert_eq!(finish_at(&d.feed(&[("0", token)]), 0).0, None);
        }
        for token in [12, 13, 14, 15, 16] {
            let _ = d.feed(&[("0", token)]);
        }
        let last = d.feed(&[("0", stop)]);
        assert_eq!(finish_at(&last, 0).0, Some(FinishStatus::Stopped));
        let expected_reason = (stop == 42).then_some(42);
        assert_eq!(finish_at(&last, 0).1, expected_reason);
    }
    let mut d = Driver::start(harness_config(), requests(1, 10, 100));
    let _ = d.feed(&[("0", 10)]);
    assert_eq!(
        finish_at(&d.feed(&[("0", EOS)]), 0).0,
        Some(FinishStatus::Stopped)
    );
}

#[test]
fn s14_chunked_prefill_admits_a_partial_prompt_unchunked_admission_stops_at_a_long_one() {
    let prompts = [800usize, 800, 10, 10];
    let make = || {
        prompts
            .iter()
            .enumerate()
            .map(|(i, &n)| NewRequest::new(i.to_string(), vec![i as u32; n]))
            .collect::<Vec<_>>()
    };
    for (chunked, admitted) in [(true, vec![800, 224]), (false, vec![800])] {
        let mut s = scheduler(SchedulerConfig {
            max_num_batched_tokens: 1024,
            max_model_len: 1024,
            max_num_seqs: 3,
            enable_chunked_prefill: chunked,
            ..harness_config()
        });
        add_all(&mut s, make());
        let output = s.schedule(1);
        let counts: Vec<u32> = output.batch.num_scheduled_tokens.clone();
        assert_eq!(counts, admitted, "chunked prefill {chunked}");
    }
}

#[test]
fn s15_last_running_request_is_preempted_and_a_late_token_is_still_appended() {
    // Synchronous scheduling: r1 is admitted with a 20-token chunk beside r0 instead of in a
    // second batch in flight; when r0 needs its 6th block, r1 (last in running) is preempted.
    let mut s = scheduler(SchedulerConfig {
        num_blocks: 11,
        max_num_batched_tokens: 100,
        max_model_len: 100,
        ..harness_config()
    });
    add_all(&mut s, requests(2, 80, 16));
    let (first, _) = step(&mut s, 42);
    assert_eq!(tokens_of(&s, &first, "0"), Some(80));
    assert_eq!(tokens_of(&s, &first, "1"), Some(20));
    let second = s.schedule(10);
    assert_eq!(refs(&second.preempted), ["1"]);
    assert_eq!(strings(&s.running_ids()), ["0"]);
    assert_eq!(s.request("1").unwrap().status(), RequestStatus::Preempted);
    assert!(s.request("1").unwrap().block_ids().is_empty());
    // A reset between schedule and update preempts r0; its token from the step in flight is
    // still appended.
    let reset = s.reset_prefix_cache(true, 11);
    assert_eq!(strings(&reset.preempted_ids), ["0"]);
    let engine = s.update_from_output(&sample_all(&second, 42), 12).unwrap();
    assert_eq!(engine.handles.len(), 1);
    assert_eq!(s.request("0").unwrap().output_token_ids(), [42, 42]);
    assert_eq!(s.request("0").unwrap().status(), RequestStatus::Preempted);
}

#[test]
fn s19_prefix_cache_reset_needs_running_requests_preempted_in_order() {
    let mut s = scheduler(SchedulerConfig {
        enable_prefix_caching: true,
        ..harness_config()
    });
    add_all(&mut s, requests(10, 10, 16));
    let _ = s.schedule(1);
    assert_eq!(s.num_running(), 10);
    assert!(!s.reset_prefix_cache(false, 2).reset);
    let outcome = s.reset_prefix_cache(true, 3);
    assert!(outcome.reset);
    assert_eq!(s.num_running(), 0);
    let expected: Vec<String> = (0..10).map(|i| i.to_string()).collect();
    assert_eq!(strings(&s.waiting_ids()), expected);
    assert_eq!(strings(&outcome.preempted_ids), expected);
}

#[test]
fn s20_no_state_is_left_after_every_request_finishes() {
    let mut s = scheduler(SchedulerConfig {
        enable_prefix_caching: true,
        ..harness_config()
    });
    let mut pending = requests(5, 10, 10).into_iter();
    loop {
        if let Some(request) = pending.next() {
            s.add_request(request, 0).unwrap();
        }
        let _ = step(&mut s, 7);
        if s.num_running() == 0 && s.num_waiting() == 0 {
            break;
        }
    }
    let last = s.schedule(1_000_000);
    assert_eq!(
        last.finished.len(),
        1,
        "the final finish is reported by one more step"
    );
    assert!(s.requests().is_empty());
    assert!(s.pending_finished().is_empty());
    let pool = s.kv().pool();
    assert_eq!(pool.num_free_blocks(), pool.num_usable_blocks());
    assert!((1..pool.num_blocks()).all(|b| pool.ref_count(b) == 0));
}

#[test]
fn s21_priority_orders_admission_by_priority_value() {
    let mut s = scheduler(priority_config(16, 8192));
    add_all(&mut s, priority_requests(&[2, 0, 1], Some(&[1, 2, 3]), 10));
    let output = s.schedule(1);
    assert_eq!(
        ids_of_kind(&s, &output, ScheduledKind::New),
        ["1", "2", "0"]
    );
}

#[test]
fn s22_equal_priority_falls_back_to_arrival() {
    let mut s = scheduler(priority_config(16, 8192));
    add_all(&mut s, priority_requests(&[1, 1, 1], Some(&[3, 1, 2]), 10));
    let output = s.schedule(1);
    assert_eq!(
        ids_of_kind(&s, &output, ScheduledKind::New),
        ["1", "2", "0"]
    );
}

#[test]
fn s23_priority_then_arrival_on_mixed_input() {
    let mut s = scheduler(priority_config(16, 8192));
    add_all(
        &mut s,
        priority_requests(&[2, 1, 1, 0], Some(&[1, 3, 2, 4]), 10),
    );
    let output = s.schedule(1);
    assert_eq!(
        ids_of_kind(&s, &output, ScheduledKind::New),
        ["3", "2", "1", "0"]
    );
}

fn named(id: &str, priority: i32, arrival: u64, tokens: usize) -> NewRequest {
    NewRequest {
        priority,
        arrival_ns: arrival,
        max_tokens: 100,
        ..NewRequest::new(id, vec![arrival as u32 + 1; tokens])
    }
}

#[test]
fn s24_priority_preempts_the_low_priority_request_when_blocks_run_out() {
    let mut s = scheduler(SchedulerConfig {
        num_blocks: 6,
        max_model_len: 80,
        ..priority_config(3, 200)
    });
    s.add_request(named("lo1", 5, 0, 32), 0).unwrap();
    let _ = step(&mut s, 1);
    assert_eq!(s.request("lo1").unwrap().num_tokens(), 33);
    s.add_request(named("hi1", 0, 1, 32), 0).unwrap();
    let (admit, _) = step(&mut s, 1);
    assert_eq!(ids_of_kind(&s, &admit, ScheduledKind::New), ["hi1"]);
    assert_eq!(s.request("lo1").unwrap().block_ids().len(), 3);
    assert_eq!(s.kv().pool().num_free_blocks(), 0);
    let (out, _) = step(&mut s, 1);
    assert_eq!(refs(&out.preempted), ["lo1"]);
    assert_eq!(s.request("lo1").unwrap().status(), RequestStatus::Preempted);
    assert_eq!(strings(&s.running_ids()), ["hi1"]);
    assert_eq!(ids_of_kind(&s, &out, ScheduledKind::Running), ["hi1"]);
}

#[test]
fn s25_priority_does_not_preempt_when_there_is_room() {
    let mut s = scheduler(priority_config(3, 200));
    s.add_request(named("a", 5, 0, 30), 0).unwrap();
    s.add_request(named("b", 5, 1, 30), 0).unwrap();
    let _ = step(&mut s, 1);
    s.add_request(named("c", 0, 2, 30), 0).unwrap();
    let (out, _) = step(&mut s, 1);
    assert_eq!(ids_of_kind(&s, &out, ScheduledKind::New), ["c"]);
    assert!(out.preempted.is_empty());
    assert_eq!((s.num_running(), s.num_waiting()), (3, 0));
}

fn admitted_and_waiting(
    priorities: &[i32],
    arrivals: Option<&[u64]>,
    max_num_seqs: u32,
    budget: u32,
) -> (Vec<String>, Vec<String>) {
    let mut s = scheduler(priority_config(max_num_seqs, budget));
    add_all(&mut s, priority_requests(priorities, arrivals, 10));
    let output = s.schedule(1);
    (
        ids_of_kind(&s, &output, ScheduledKind::New),
        strings(&s.waiting_ids()),
    )
}

#[test]
fn s26_one_seat_goes_to_the_best_priority_and_the_rest_wait_in_order() {
    let (admitted, waiting) = admitted_and_waiting(&[3, 2, 0], None, 1, 8192);
    assert_eq!(
        (admitted, waiting),
        (vec!["2".into()], vec!["1".into(), "0".into()])
    );
}

#[test]
fn s27_one_seat_with_equal_priority_goes_to_the_earliest_arrival() {
    let (admitted, waiting) = admitted_and_waiting(&[0, 0, 0], Some(&[3, 1, 2]), 1, 8192);
    assert_eq!(
        (admitted, waiting),
        (vec!["1".into()], vec!["2".into(), "0".into()])
    );
}

#[test]
fn s28_one_seat_among_four_priorities() {
    let (admitted, waiting) = admitted_and_waiting(&[3, 1, 2, 0], None, 1, 8192);
    assert_eq!(admitted, ["3"]);
    assert_eq!(waiting, ["1", "2", "0"]);
}

#[test]
fn s29_two_seats_among_four_priorities() {
    let (admitted, waiting) = admitted_and_waiting(&[3, 1, 2, 0], None, 2, 1000);
    assert_eq!(admitted, ["3", "1"]);
    assert_eq!(waiting, ["2", "0"]);
}

#[test]
fn s30_priority_queue_serves_in_sorted_order() {
    let mut s = scheduler(priority_config(1, 8192));
    add_all(
        &mut s,
        priority_requests(&[5, 1, 8, 3, 2, 7, 4, 6], None, 10),
    );
    let mut served = Vec::new();
    while s.num_waiting() > 0 {
        let (output, _) = step(&mut s, 1);
        let id = id_of(&s, output.batch.handles[0]);
        served.push(s.request(&id).unwrap().priority());
        let _ = s.finish_requests([&*id], FinishStatus::Stopped, 0);
    }
    assert_eq!(served, [1, 2, 3, 4, 5, 6, 7, 8]);
}

#[test]
fn s31_preempted_request_resumes_with_its_generated_tokens() {
    let mut s = scheduler(SchedulerConfig {
        num_blocks: 5,
        max_model_len: 64,
        ..priority_config(2, 200)
    });
    s.add_request(named("low", 1, 0, 30), 0).unwrap();
    let _ = step(&mut s, 100);
    s.add_request(named("high", 0, 1, 32), 0).unwrap();
    let (admit, _) = step(&mut s, 100);
    assert_eq!(ids_of_kind(&s, &admit, ScheduledKind::New), ["high"]);
    assert_eq!(ids_of_kind(&s, &admit, ScheduledKind::Running), ["low"]);
    assert_eq!(s.kv().pool().num_free_blocks(), 0);
    let (out, _) = step(&mut s, 100);
    assert_eq!(refs(&out.preempted), ["low"]);
    assert_eq!(ids_of_kind(&s, &out, ScheduledKind::Running), ["high"]);
    assert_eq!((s.num_waiting(), s.num_running()), (1, 1));
    let _ = s.finish_requests(["high"], FinishStatus::Aborted, 0);
    let resume = s.schedule(100);
    assert_eq!(ids_of_kind(&s, &resume, ScheduledKind::Resumed), ["low"]);
    let low = resume.batch.entries().next().unwrap();
    let tokens = s.request("low").unwrap().all_token_ids();
    assert_eq!(tokens.len(), 32);
    assert_eq!(tokens[31], 100);
    assert_eq!(low.num_scheduled_tokens, 32);
}

#[test]
fn s39_prefix_cache_stats_are_counted_once_per_admission() {
    let mut s = scheduler(SchedulerConfig {
        num_blocks: 6,
        max_model_len: 64,
        max_num_batched_tokens: 256,
        enable_prefix_caching: true,
        ..harness_config()
    });
    let seed: Vec<u32> = (0..32).collect();
    s.add_request(
        NewRequest {
            max_tokens: 1,
            ..NewRequest::new("seed", seed.clone())
        },
        0,
    )
    .unwrap();
    let _ = step(&mut s, 7);
    assert!(s.request("seed").is_none());
    s.add_request(
        NewRequest {
            max_tokens: 10,
            ..NewRequest::new("occupier", vec![999; 40])
        },
        0,
    )
    .unwrap();
    let _ = step(&mut s, 7);
    let before = s.stats().prefix_cache;
    let mut prompt = seed;
    prompt.extend(100..116);
    s.add_request(NewRequest::new("late", prompt), 0).unwrap();
    let (blocked, _) = step(&mut s, 7);
    assert!(
        ids_of_kind(&s, &blocked, ScheduledKind::New).is_empty(),
        "2 hit + 1 new block do not fit in 2 free"
    );
    let _ = s.finish_requests(["occupier"], FinishStatus::Aborted, 0);
    let (admitted, _) = step(&mut s, 7);
    assert_eq!(ids_of_kind(&s, &admitted, ScheduledKind::New), ["late"]);
    assert_eq!(admitted.batch.num_computed_tokens[0], 32);
    let after = s.stats().prefix_cache;
    assert_eq!(after.requests - before.requests, 1);
    assert_eq!(after.queries - before.queries, 48);
    assert_eq!(after.hits - before.hits, 32);
}

#[test]
fn full_prefix_hit_recomputes_the_last_block_when_the_prompt_fills_whole_blocks() {
    for (len, hit, scheduled) in [(48usize, 32u32, 16u32), (33, 32, 1)] {
        let mut s = scheduler(SchedulerConfig {
            enable_prefix_caching: true,
            ..harness_config()
        });
        let prompt: Vec<u32> = (0..len as u32).collect();
        s.add_request(NewRequest::new("warm", prompt.clone()), 0)
            .unwrap();
        let _ = step(&mut s, 1);
        s.add_request(NewRequest::new("hit", prompt), 0).unwrap();
        let (output, _) = step(&mut s, 1);
        let entry = output
            .batch
            .entries()
            .find(|e| id_of(&s, e.handle) == "hit")
            .unwrap();
        assert_eq!(
            (entry.num_computed_tokens, entry.num_scheduled_tokens),
            (hit, scheduled)
        );
    }
}
