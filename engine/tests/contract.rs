//! The component backend's checks against random corrupt results: nothing panics, a valid step
//! passes, and each kind of corruption is refused with the violation that names its rule.

use proptest::prelude::*;
use waypoint_engine::backend::{BackendError, GuestFault, PolicyDescription, SchedulerBackend};
use waypoint_engine::component::{ComponentBackend, Transport};
use waypoint_engine::fault::ContractViolation;
use waypoint_scheduler::output::{
    Added, EngineOutputs, FinishOutcome, RequestRef, ResetOutcome, ScheduledBatch, ScheduledDetail,
    SchedulerOutput,
};
use waypoint_scheduler::{
    FinishStatus, JourneyConfig, JourneyEvent, LiveRequest, ModelOutput, NewRequest, RequestHandle,
    ScheduledKind, Scheduler, SchedulerConfig, SchedulerStats, StepEvent,
};

const BLOCK_SIZE: u32 = 16;
const NUM_BLOCKS: u32 = 512;

/// A transport that hands out handles and returns whatever result the test scripted.
#[derive(Default)]
struct Scripted {
    next_handle: u64,
    step: Option<SchedulerOutput>,
    outputs: Option<EngineOutputs>,
}

impl Transport for Scripted {
    fn create(&mut self, _config: &SchedulerConfig) -> Result<(), BackendError> {
        Ok(())
    }
    fn import_state(&mut self, _state: &[u8], _now_ns: u64) -> Result<(), BackendError> {
        Ok(())
    }
    fn add_request(&mut self, _request: &NewRequest, _now_ns: u64) -> Result<Added, BackendError> {
        self.next_handle += 1;
        Ok(Added {
            handle: RequestHandle(self.next_handle),
            journey_events: Vec::new(),
        })
    }
    fn schedule(&mut self, _now_ns: u64) -> Result<SchedulerOutput, BackendError> {
        Ok(self.step.take().unwrap_or_default())
    }
    fn update_from_output(
        &mut self,
        _output: &ModelOutput,
        _now_ns: u64,
    ) -> Result<EngineOutputs, BackendError> {
        Ok(self.outputs.take().unwrap_or_default())
    }
    fn finish_requests(
        &mut self,
        _ids: &[String],
        _status: FinishStatus,
        _now_ns: u64,
    ) -> Result<FinishOutcome, BackendError> {
        Ok(FinishOutcome::default())
    }
    fn reset_prefix_cache(
        &mut self,
        _reset: bool,
        _now_ns: u64,
    ) -> Result<ResetOutcome, BackendError> {
        Ok(ResetOutcome::default())
    }
    fn shutdown(&mut self, _now_ns: u64) -> Result<Vec<StepEvent>, BackendError> {
        Ok(Vec::new())
    }
    fn stats(&mut self, _now_ns: u64) -> Result<SchedulerStats, BackendError> {
        unreachable!("not called by these tests")
    }
    fn live_requests(&mut self, _now_ns: u64) -> Result<Vec<LiveRequest>, BackendError> {
        Ok(Vec::new())
    }
    fn export_state(&mut self, _now_ns: u64) -> Result<Vec<u8>, BackendError> {
        Ok(Vec::new())
    }
}

/// A backend holding requests with these prompt lengths, and a valid first step that prefills
/// all of them (the budget and `max_num_seqs` are exactly what it uses).
fn setup(prompts: &[u32], prefix_hits: &[u32]) -> (ComponentBackend<Scripted>, SchedulerOutput) {
    let total: u32 = prompts
        .iter()
        .zip(prefix_hits)
        .map(|(&len, &hit)| len - hit.min(len - 1))
        .sum();
    let config = SchedulerConfig {
        max_num_seqs: prompts.len() as u32,
        max_num_batched_tokens: total.max(BLOCK_SIZE),
        block_size: BLOCK_SIZE,
        num_blocks: NUM_BLOCKS,
        max_model_len: 4096,
        ..SchedulerConfig::default()
    };
    let description = PolicyDescription {
        name: "scripted".into(),
        version: "0".into(),
        origin: "test".into(),
    };
    let mut backend =
        ComponentBackend::new(Scripted::default(), description, config).expect("created");
    let mut batch = ScheduledBatch::default();
    let mut next_block = 1;
    for (index, (&len, &hit)) in prompts.iter().zip(prefix_hits).enumerate() {
        let request = NewRequest::new(format!("r{index}"), vec![7; len as usize]);
        backend.add_request(request, 0).expect("added");
        let computed = hit.min(len - 1);
        let blocks: Vec<u32> = (0..len.div_ceil(BLOCK_SIZE))
            .map(|_| {
                next_block += 1;
                next_block
            })
            .collect();
        batch.handles.push(RequestHandle(index as u64 + 1));
        batch.num_computed_tokens.push(computed);
        batch.num_scheduled_tokens.push(len - computed);
        batch.sample.push(true);
        batch.set_last_detail(ScheduledKind::New, &blocks);
    }
    let step = SchedulerOutput {
        step: 1,
        batch,
        total_num_scheduled_tokens: total,
        ..SchedulerOutput::default()
    };
    (backend, step)
}

fn schedule(
    backend: &mut ComponentBackend<Scripted>,
    step: SchedulerOutput,
) -> Result<Vec<(u32, u32)>, BackendError> {
    backend.transport_mut().step = Some(step);
    let output = backend.schedule(1)?;
    Ok(output
        .batch
        .entries()
        .map(|entry| (entry.num_computed_tokens, entry.num_scheduled_tokens))
        .collect())
}

fn violation(result: Result<impl std::fmt::Debug, BackendError>) -> ContractViolation {
    match result {
        Err(BackendError::Guest(GuestFault::Contract(violation))) => violation,
        other => panic!("expected a contract violation, got {other:?}"),
    }
}

/// One way of corrupting a valid step, and the rule it breaks.
#[derive(Clone, Copy, Debug)]
enum Lie {
    UnknownHandle,
    RepeatedHandle,
    RangePastKnownTokens,
    BlockZero,
    BlockPastCache,
    TooFewBlocks,
    OverTokenBudget,
    TotalMismatch,
    TooManyEntries,
    SampleBeforeEnd,
    EmptyEntry,
    UnknownPreempted,
    MismatchedPreempted,
    UnknownEventId,
    ListsDiffer,
    DetailOutOfRange,
    BlockCountMismatch,
}

fn lie() -> impl Strategy<Value = Lie> {
    prop_oneof![
        Just(Lie::UnknownHandle),
        Just(Lie::RepeatedHandle),
        Just(Lie::RangePastKnownTokens),
        Just(Lie::BlockZero),
        Just(Lie::BlockPastCache),
        Just(Lie::TooFewBlocks),
        Just(Lie::OverTokenBudget),
        Just(Lie::TotalMismatch),
        Just(Lie::TooManyEntries),
        Just(Lie::SampleBeforeEnd),
        Just(Lie::EmptyEntry),
        Just(Lie::UnknownPreempted),
        Just(Lie::MismatchedPreempted),
        Just(Lie::UnknownEventId),
        Just(Lie::ListsDiffer),
        Just(Lie::DetailOutOfRange),
        Just(Lie::BlockCountMismatch),
    ]
}

/// Where entry `at`'s blocks sit in the batch's block list (every entry has a detail here).
fn blocks_of(batch: &ScheduledBatch, at: usize) -> std::ops::Range<usize> {
    let first: u32 = batch.details[..at].iter().map(|d| d.num_blocks).sum();
    first as usize..(first + batch.details[at].num_blocks) as usize
}

/// The QUEUED event of a request that only another scheduler has.
fn ghost_event() -> JourneyEvent {
    let config = SchedulerConfig {
        journey: JourneyConfig { enabled: true },
        ..SchedulerConfig::default()
    };
    let mut scheduler = Scheduler::new(config).expect("valid config");
    let added = scheduler
        .add_request(NewRequest::new("ghost", vec![1, 2, 3]), 0)
        .expect("added");
    added.journey_events[0].clone()
}

/// Apply `lie` to entry `at`; whether the rule it breaks is what the check must name.
fn tell(lie: Lie, step: &mut SchedulerOutput, at: usize) -> fn(&ContractViolation) -> bool {
    let batch = &mut step.batch;
    let other = (at + 1) % batch.handles.len();
    match lie {
        Lie::UnknownHandle => {
            batch.handles[at] = RequestHandle(9999);
            |v| {
                matches!(
                    v,
                    ContractViolation::UnknownHandle {
                        handle: RequestHandle(9999),
                        ..
                    }
                )
            }
        }
        Lie::RepeatedHandle => {
            // Entry `other` becomes a copy of entry `at`: whichever comes first is valid.
            batch.handles[other] = batch.handles[at];
            batch.num_computed_tokens[other] = batch.num_computed_tokens[at];
            batch.num_scheduled_tokens[other] = batch.num_scheduled_tokens[at];
            let blocks = batch.block_ids[blocks_of(batch, at)].to_vec();
            batch
                .block_ids
                .splice(blocks_of(batch, other), blocks.iter().copied());
            batch.details[other].num_blocks = blocks.len() as u32;
            |v| matches!(v, ContractViolation::RepeatedHandle { .. })
        }
        Lie::RangePastKnownTokens => {
            batch.num_scheduled_tokens[at] += 1;
            step.total_num_scheduled_tokens += 1;
            |v| matches!(v, ContractViolation::RangePastKnownTokens { .. })
        }
        Lie::BlockZero => {
            let first = blocks_of(batch, at).start;
            batch.block_ids[first] = 0;
            |v| matches!(v, ContractViolation::BlockOutOfRange { block: 0, .. })
        }
        Lie::BlockPastCache => {
            let first = blocks_of(batch, at).start;
            batch.block_ids[first] = NUM_BLOCKS;
            |v| matches!(v, ContractViolation::BlockOutOfRange { .. })
        }
        Lie::TooFewBlocks => {
            let last = blocks_of(batch, at).end - 1;
            batch.block_ids.remove(last);
            batch.details[at].num_blocks -= 1;
            |v| matches!(v, ContractViolation::TooFewBlocks { .. })
        }
        Lie::OverTokenBudget => {
            // Still a valid range: one prompt token of the hit recomputed.
            batch.num_computed_tokens[at] -= 1;
            batch.num_scheduled_tokens[at] += 1;
            step.total_num_scheduled_tokens += 1;
            |v| matches!(v, ContractViolation::OverTokenBudget { .. })
        }
        Lie::TotalMismatch => {
            step.total_num_scheduled_tokens -= 1;
            |v| matches!(v, ContractViolation::TotalMismatch { .. })
        }
        Lie::TooManyEntries => {
            batch.handles.push(batch.handles[at]);
            batch.num_computed_tokens.push(0);
            batch.num_scheduled_tokens.push(1);
            batch.sample.push(false);
            |v| matches!(v, ContractViolation::TooManyEntries { .. })
        }
        Lie::SampleBeforeEnd => {
            batch.num_scheduled_tokens[at] -= 1;
            step.total_num_scheduled_tokens -= 1;
            |v| matches!(v, ContractViolation::SampleBeforeEnd { .. })
        }
        Lie::EmptyEntry => {
            step.total_num_scheduled_tokens -= batch.num_scheduled_tokens[at];
            batch.num_scheduled_tokens[at] = 0;
            |v| matches!(v, ContractViolation::EmptyEntry { .. })
        }
        Lie::UnknownPreempted => {
            step.preempted.push(RequestRef {
                id: "ghost".into(),
                handle: RequestHandle(4242),
                client_index: 0,
            });
            |v| {
                matches!(
                    v,
                    ContractViolation::UnknownHandle {
                        handle: RequestHandle(4242),
                        ..
                    }
                )
            }
        }
        Lie::MismatchedPreempted => {
            step.preempted.push(RequestRef {
                id: "ghost".into(),
                handle: batch.handles[at],
                client_index: 0,
            });
            |v| matches!(v, ContractViolation::MismatchedReference { .. })
        }
        Lie::UnknownEventId => {
            step.journey_events.push(ghost_event());
            |v| matches!(v, ContractViolation::UnknownRequestId { .. })
        }
        Lie::ListsDiffer => {
            batch.sample.pop();
            |v| matches!(v, ContractViolation::Malformed { .. })
        }
        Lie::DetailOutOfRange => {
            batch.details[at].index = batch.handles.len() as u32;
            |v| matches!(v, ContractViolation::Malformed { .. })
        }
        Lie::BlockCountMismatch => {
            batch.details[at].num_blocks += 1;
            |v| matches!(v, ContractViolation::Malformed { .. })
        }
    }
}

fn prompts() -> impl Strategy<Value = (Vec<u32>, Vec<u32>)> {
    // Every prompt has a prefix hit, so a valid range can always be widened by one token.
    prop::collection::vec((20u32..200, 1u32..5), 2..12).prop_map(|pairs| pairs.into_iter().unzip())
}

proptest! {
    #[test]
    fn a_valid_step_passes_unchanged((prompts, hits) in prompts()) {
        let (mut backend, step) = setup(&prompts, &hits);
        let expected: Vec<(u32, u32)> = step
            .batch
            .num_computed_tokens
            .iter()
            .copied()
            .zip(step.batch.num_scheduled_tokens.iter().copied())
            .collect();
        prop_assert_eq!(schedule(&mut backend, step).expect("valid"), expected);
    }

    #[test]
    fn every_corruption_is_refused_with_the_rule_it_breaks(
        (prompts, hits) in prompts(),
        lie in lie(),
        at in any::<prop::sample::Index>(),
    ) {
        let (mut backend, mut step) = setup(&prompts, &hits);
        let at = at.index(prompts.len());
        let names_the_rule = tell(lie, &mut step, at);
        let refused = violation(schedule(&mut backend, step));
        prop_assert!(names_the_rule(&refused), "{:?} was refused as {:?}", lie, refused);
        prop_assert!(
            matches!(backend.stats(2), Err(BackendError::Guest(GuestFault::Unavailable))),
            "a violation poisons the instance"
        );
    }

    #[test]
    fn arbitrary_steps_never_panic_and_what_passes_is_within_the_cache(
        (prompts, hits) in prompts(),
        handles in prop::collection::vec((0u64..16).prop_map(RequestHandle), 0..16),
        computed in prop::collection::vec(any::<u32>(), 0..16),
        scheduled in prop::collection::vec(0u32..300, 0..16),
        sample in prop::collection::vec(any::<bool>(), 0..16),
        blocks in prop::collection::vec((0u32..16, prop::collection::vec(0u32..600, 0..20)), 0..8),
        stray_blocks in prop::collection::vec(0u32..600, 0..2),
        total in any::<u32>(),
    ) {
        let (mut backend, _) = setup(&prompts, &hits);
        let mut block_ids = Vec::new();
        let details = blocks
            .into_iter()
            .map(|(index, blocks)| {
                block_ids.extend_from_slice(&blocks);
                ScheduledDetail { index, kind: ScheduledKind::New, num_blocks: blocks.len() as u32 }
            })
            .collect();
        // Sometimes blocks that no detail counts.
        block_ids.extend(stray_blocks);
        let step = SchedulerOutput {
            batch: ScheduledBatch { handles, num_computed_tokens: computed, num_scheduled_tokens: scheduled, sample, details, block_ids },
            total_num_scheduled_tokens: total,
            ..SchedulerOutput::default()
        };
        backend.transport_mut().step = Some(step);
        match backend.schedule(1) {
            Ok(output) => {
                for entry in output.batch.entries() {
                    let prompt = prompts[entry.handle.0 as usize - 1];
                    prop_assert!(entry.num_computed_tokens + entry.num_scheduled_tokens <= prompt);
                    prop_assert!(entry.block_ids.iter().all(|&b| b > 0 && b < NUM_BLOCKS));
                }
            }
            Err(BackendError::Guest(GuestFault::Contract(_))) => {}
            Err(other) => prop_assert!(false, "not a named violation: {:?}", other),
        }
    }
}

#[test]
fn outputs_must_be_the_tokens_the_model_sampled_for_the_step() {
    let (mut backend, step) = setup(&[4, 4], &[0, 0]);
    schedule(&mut backend, step).expect("valid");
    backend.transport_mut().outputs = Some(EngineOutputs {
        step: 1,
        handles: vec![RequestHandle(1), RequestHandle(2)],
        token_ids: vec![5, 9],
        ..EngineOutputs::default()
    });
    let sampled = ModelOutput {
        sampled_token_ids: vec![Some(5), Some(6)],
    };
    assert!(matches!(
        violation(backend.update_from_output(&sampled, 2)),
        ContractViolation::UnsampledOutput { token: 9, .. }
    ));
}

#[test]
fn an_accepted_step_grows_the_known_tokens_by_the_sampled_ones() {
    let (mut backend, step) = setup(&[4, 4], &[0, 0]);
    schedule(&mut backend, step).expect("valid");
    backend.transport_mut().outputs = Some(EngineOutputs {
        step: 1,
        handles: vec![RequestHandle(1), RequestHandle(2)],
        token_ids: vec![5, 6],
        ..EngineOutputs::default()
    });
    let sampled = ModelOutput {
        sampled_token_ids: vec![Some(5), Some(6)],
    };
    let _ = backend.update_from_output(&sampled, 2).expect("valid");
    // A decode step over the fifth token of each request is now within range.
    let decode = SchedulerOutput {
        step: 2,
        batch: ScheduledBatch {
            handles: vec![RequestHandle(1), RequestHandle(2)],
            num_computed_tokens: vec![4, 4],
            num_scheduled_tokens: vec![1, 1],
            sample: vec![true, true],
            ..ScheduledBatch::default()
        },
        total_num_scheduled_tokens: 2,
        ..SchedulerOutput::default()
    };
    assert_eq!(
        schedule(&mut backend, decode).expect("valid"),
        vec![(4, 1), (4, 1)]
    );
}
