//! The fair policy, and moving a live scheduler's state between policies.

mod common;

use common::*;
use waypoint_scheduler::{
    FinishStatus, JourneyConfig, JourneyEvent, JourneyValidator, NewRequest, PolicyKind,
    ScheduledKind, Scheduler, SchedulerConfig, StateError,
};

fn tenant_request(id: &str, client: u32, tokens: usize) -> NewRequest {
    NewRequest {
        client_index: client,
        max_tokens: 8,
        ..NewRequest::new(id, vec![client + 1; tokens])
    }
}

#[test]
fn fair_policy_admits_a_quiet_tenant_ahead_of_a_bursting_one() {
    let config = SchedulerConfig {
        max_num_seqs: 2,
        ..harness_config()
    };
    let admitted = |policy| {
        let mut s = scheduler(SchedulerConfig { policy, ..config });
        for i in 0..20 {
            s.add_request(tenant_request(&format!("burst-{i}"), 0, 32), i)
                .unwrap();
        }
        for i in 0..3 {
            s.add_request(tenant_request(&format!("quiet-{i}"), 1, 32), 100 + i)
                .unwrap();
        }
        let mut order = Vec::new();
        while order.len() < 6 {
            let (output, _) = step(&mut s, 1);
            order.extend(ids_of_kind(&s, &output, ScheduledKind::New));
        }
        order
    };
    let fcfs = admitted(PolicyKind::Fcfs);
    assert!(fcfs.iter().all(|id| id.starts_with("burst")), "{fcfs:?}");
    let fair = admitted(PolicyKind::Fair);
    assert_eq!(
        fair.iter().filter(|id| id.starts_with("quiet")).count(),
        3,
        "{fair:?}"
    );
    assert_eq!(&fair[..2], ["burst-0", "quiet-0"]);
}

#[test]
fn fair_policy_preempts_the_tenant_with_the_most_service() {
    let mut s = scheduler(SchedulerConfig {
        policy: PolicyKind::Fair,
        num_blocks: 6,
        max_model_len: 80,
        max_num_batched_tokens: 200,
        ..harness_config()
    });
    // Tenant 7 is admitted first and has had more tokens scheduled when blocks run out.
    s.add_request(
        NewRequest {
            max_tokens: 40,
            ..tenant_request("heavy", 7, 32)
        },
        0,
    )
    .unwrap();
    let _ = step(&mut s, 1);
    s.add_request(
        NewRequest {
            max_tokens: 40,
            ..tenant_request("light", 3, 31)
        },
        1,
    )
    .unwrap();
    let mut preempted = Vec::new();
    for _ in 0..20 {
        let (output, _) = step(&mut s, 1);
        preempted.extend(refs(&output.preempted));
        if !preempted.is_empty() {
            break;
        }
    }
    assert_eq!(preempted, ["heavy"]);
}

/// A deterministic mixed workload: prefix sharing, preemption pressure, aborts, EOS.
struct Run {
    s: Scheduler,
    next: u32,
    now: u64,
    transcript: Vec<String>,
    journeys: JourneyValidator,
}

impl Run {
    fn new(policy: PolicyKind) -> Self {
        let config = SchedulerConfig {
            policy,
            num_blocks: 24,
            max_num_batched_tokens: 96,
            max_model_len: 256,
            max_num_seqs: 12,
            enable_prefix_caching: true,
            journey: JourneyConfig { enabled: true },
            ..SchedulerConfig::default()
        };
        Self {
            s: scheduler(config),
            next: 0,
            now: 0,
            transcript: Vec::new(),
            journeys: JourneyValidator::new(),
        }
    }

    fn record(&mut self, events: &[JourneyEvent]) {
        for event in events {
            self.journeys.observe(event).unwrap();
            self.transcript.push(event.to_json_line());
        }
    }

    fn cycle(&mut self, adding: bool) {
        self.now += 1_000;
        if adding {
            for _ in 0..3 {
                let n = self.next;
                self.next += 1;
                let mut prompt = vec![1_000 + n % 3; 32];
                prompt.extend((0..(n * 7) % 40 + 1).map(|t| t + n));
                let request = NewRequest {
                    client_index: n % 4,
                    priority: (n % 5) as i32,
                    arrival_ns: self.now,
                    max_tokens: 4 + n % 30,
                    eos_token_id: Some(EOS),
                    ..NewRequest::new(format!("r{n}"), prompt)
                };
                let added = self.s.add_request(request, self.now).unwrap();
                self.record(&added.journey_events);
            }
            if self.next % 9 == 0 {
                let victim = format!("r{}", self.next - 4);
                let outcome =
                    self.s
                        .finish_requests([victim.as_str()], FinishStatus::Aborted, self.now);
                self.record(&outcome.journey_events);
            }
        }
        let output = self.s.schedule(self.now);
        self.transcript
            .push(serde_json::to_string(&output).unwrap());
        self.record(&output.journey_events);
        let token = if self.now % 7_000 == 0 {
            EOS
        } else {
            (self.now / 1000 % 500) as u32
        };
        let engine = self
            .s
            .update_from_output(&sample_all(&output, token), self.now + 1)
            .unwrap();
        self.transcript
            .push(serde_json::to_string(&engine).unwrap());
        self.record(&engine.journey_events);
    }

    fn drain(&mut self) {
        for _ in 0..10_000 {
            if self.s.num_unfinished() == 0 {
                return;
            }
            self.cycle(false);
        }
        panic!("workload did not drain");
    }

    fn swap(&mut self, policy: PolicyKind) {
        let bytes = self.s.export_state();
        self.s = Scheduler::import_state(&bytes, policy, 0).expect("a state this build wrote");
    }
}

#[test]
fn state_moves_from_fcfs_into_every_policy_and_all_requests_finish() {
    for target in [PolicyKind::Fcfs, PolicyKind::Priority, PolicyKind::Fair] {
        let mut run = Run::new(PolicyKind::Fcfs);
        for _ in 0..40 {
            run.cycle(true);
        }
        assert!(
            run.s.stats().num_preemptions_total > 0,
            "the workload preempts"
        );
        let before = run.s.stats();
        run.swap(target);
        assert_eq!(run.s.policy_name(), format!("{target:?}").to_lowercase());
        let after = run.s.stats();
        assert_eq!(
            (
                before.num_running,
                before.num_waiting,
                before.num_free_blocks
            ),
            (after.num_running, after.num_waiting, after.num_free_blocks)
        );
        for _ in 0..20 {
            run.cycle(true);
        }
        run.drain();
        let pool = run.s.kv().pool();
        assert_eq!(
            pool.num_free_blocks(),
            pool.num_usable_blocks(),
            "no block leaks"
        );
        assert_eq!(run.s.journey_state_len(), 0);
        assert_eq!(
            run.journeys.num_open(),
            0,
            "journeys stay valid across the swap"
        );
    }
}

#[test]
fn a_round_trip_into_the_same_policy_changes_no_output() {
    for policy in [PolicyKind::Fcfs, PolicyKind::Priority, PolicyKind::Fair] {
        let mut straight = Run::new(policy);
        let mut swapped = Run::new(policy);
        for cycle in 0..80 {
            if cycle % 10 == 5 {
                swapped.swap(policy);
            }
            straight.cycle(cycle < 50);
            swapped.cycle(cycle < 50);
        }
        assert!(
            straight.transcript == swapped.transcript,
            "{policy:?}: outputs differ"
        );
        assert!(
            straight.s.export_state() == swapped.s.export_state(),
            "{policy:?}: states differ"
        );
    }
}

#[test]
fn a_state_exported_mid_step_keeps_the_step_in_flight() {
    let mut run = Run::new(PolicyKind::Fcfs);
    for _ in 0..5 {
        run.cycle(true);
    }
    let output = run.s.schedule(99_000);
    let moved = Scheduler::import_state(&run.s.export_state(), PolicyKind::Priority, 0).unwrap();
    run.s = moved;
    let engine = run
        .s
        .update_from_output(&sample_all(&output, 3), 99_001)
        .unwrap();
    assert_eq!(engine.step, output.step);
}

#[test]
fn corrupt_states_are_rejected_without_panicking() {
    let mut run = Run::new(PolicyKind::Fcfs);
    for _ in 0..30 {
        run.cycle(true);
    }
    let bytes = run.s.export_state();
    assert_eq!(
        Scheduler::import_state(b"nope", PolicyKind::Fcfs, 0).unwrap_err(),
        StateError::NotAState
    );
    let mut future = bytes.clone();
    future[4] = 9;
    assert_eq!(
        Scheduler::import_state(&future, PolicyKind::Fcfs, 0).unwrap_err(),
        StateError::UnsupportedVersion(9)
    );
    let truncated = &bytes[..bytes.len() / 2];
    assert!(matches!(
        Scheduler::import_state(truncated, PolicyKind::Fcfs, 0),
        Err(StateError::Malformed(_))
    ));

    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let (mut accepted, mut rejected) = (0, 0);
    for _ in 0..3_000 {
        let mut mutated = bytes.clone();
        for _ in 0..3 {
            rng = rng.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let at = 8 + (rng >> 33) as usize % (mutated.len() - 8);
            mutated[at] ^= 1 << ((rng >> 20) % 8);
        }
        match Scheduler::import_state(&mutated, PolicyKind::Fair, 0) {
            Err(_) => rejected += 1,
            Ok(mut s) => {
                accepted += 1;
                for i in 0..50 {
                    let output = s.schedule(1_000_000 + i);
                    let _ = s.update_from_output(&sample_all(&output, 5), 1_000_000 + i);
                }
            }
        }
    }
    assert!(rejected > 0 && accepted + rejected == 3_000);
}
