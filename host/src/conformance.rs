//! `waypoint conformance`: the contract every policy component must keep, checked scenario by
//! scenario, so a third party can test a policy before deploying it.

use std::fmt::Write as _;

use waypoint_scheduler::{
    ConfigError, FinishStatus, ModelOutput, NewRequest, OutputError, RequestError, SchedulerConfig,
    StateError,
};

use crate::backend::{BackendError, NativeBackend, SchedulerBackend};
use crate::guest::PolicyModule;
use crate::workload::{run_workload, Driver, Workload};

/// Workloads each randomized scenario runs.
const WORKLOADS: u64 = 12;

/// One scenario's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// What the scenario checks.
    pub scenario: &'static str,
    /// `None` when it passed, else why it failed.
    pub failure: Option<String>,
}

/// A small valid configuration for the fixed scenarios.
fn base_config() -> SchedulerConfig {
    SchedulerConfig {
        max_num_seqs: 8,
        max_num_batched_tokens: 128,
        max_model_len: 128,
        num_blocks: 64,
        block_size: 16,
        ..SchedulerConfig::default()
    }
}

type Check = fn(&PolicyModule) -> Result<(), String>;

const SCENARIOS: [(&str, Check); 9] = [
    (
        "rejects invalid configurations with typed errors",
        invalid_configs,
    ),
    (
        "rejects invalid requests with typed errors",
        invalid_requests,
    ),
    (
        "rejects malformed model output and keeps the step",
        malformed_output,
    ),
    ("ignores unknown ids when finishing", unknown_ids),
    (
        "returns every KV block once all requests finish",
        block_conservation,
    ),
    (
        "emits journeys that follow the journey grammar",
        journey_grammar,
    ),
    ("gives identical outputs for identical inputs", determinism),
    (
        "continues unchanged after a state round trip",
        state_round_trip,
    ),
    (
        "continues from a state exported by another policy",
        foreign_state,
    ),
];

/// Run every scenario against a compiled policy component.
pub fn run(module: &PolicyModule) -> Vec<Outcome> {
    SCENARIOS
        .iter()
        .map(|&(scenario, check)| Outcome {
            scenario,
            failure: check(module).err(),
        })
        .collect()
}

/// The report `waypoint conformance` prints.
pub fn report(module: &PolicyModule, outcomes: &[Outcome]) -> String {
    let mut text = format!("conformance of {}\n", module.description());
    for outcome in outcomes {
        match &outcome.failure {
            None => writeln!(text, "  ok    {}", outcome.scenario),
            Some(why) => writeln!(text, "  FAIL  {}: {why}", outcome.scenario),
        }
        .expect("writing to a String");
    }
    let failed = outcomes.iter().filter(|o| o.failure.is_some()).count();
    writeln!(text, "{} passed, {failed} failed", outcomes.len() - failed)
        .expect("writing to a String");
    text
}

fn open(
    module: &PolicyModule,
    config: SchedulerConfig,
) -> Result<Box<dyn SchedulerBackend>, String> {
    module
        .create(config)
        .map(|backend| Box::new(backend) as Box<dyn SchedulerBackend>)
        .map_err(|e| e.to_string())
}

fn expect_error<T: std::fmt::Debug>(
    what: &str,
    result: Result<T, BackendError>,
    expected: BackendError,
) -> Result<(), String> {
    match result {
        Err(error) if error == expected => Ok(()),
        Err(error) => Err(format!("{what}: expected {expected:?}, got {error:?}")),
        Ok(value) => Err(format!("{what}: expected {expected:?}, got Ok({value:?})")),
    }
}

fn invalid_configs(module: &PolicyModule) -> Result<(), String> {
    let base = base_config();
    let cases = [
        (
            SchedulerConfig {
                block_size: 0,
                ..base
            },
            ConfigError::ZeroBlockSize,
        ),
        (
            SchedulerConfig {
                num_blocks: 1,
                ..base
            },
            ConfigError::TooFewBlocks { num_blocks: 1 },
        ),
        (
            SchedulerConfig {
                max_num_seqs: 0,
                ..base
            },
            ConfigError::ZeroMaxNumSeqs,
        ),
        (
            SchedulerConfig {
                num_blocks: 4,
                ..base
            },
            ConfigError::KvCacheTooSmall {
                capacity_tokens: 48,
                usable_blocks: 3,
                block_size: 16,
                max_model_len: 128,
            },
        ),
    ];
    for (config, expected) in cases {
        expect_error("create", module.create(config).map(|_| ()), expected.into())?;
    }
    Ok(())
}

fn invalid_requests(module: &PolicyModule) -> Result<(), String> {
    let mut backend = open(module, base_config())?;
    backend
        .add_request(NewRequest::new("a", vec![1; 4]), 1)
        .map_err(|e| format!("a valid request was rejected: {e}"))?;
    let cases = [
        (
            NewRequest::new("a", vec![1; 4]),
            RequestError::DuplicateId { id: "a".into() },
        ),
        (
            NewRequest::new("empty", vec![]),
            RequestError::EmptyPrompt { id: "empty".into() },
        ),
        (
            NewRequest::new("long", vec![1; 128]),
            RequestError::PromptTooLong {
                id: "long".into(),
                prompt_len: 128,
                max_model_len: 128,
            },
        ),
        (
            NewRequest {
                max_tokens: 0,
                ..NewRequest::new("zero", vec![1])
            },
            RequestError::ZeroMaxTokens { id: "zero".into() },
        ),
        (
            NewRequest {
                min_tokens: 9,
                max_tokens: 3,
                ..NewRequest::new("min", vec![1])
            },
            RequestError::MinTokensAboveMaxTokens {
                id: "min".into(),
                min_tokens: 9,
                max_tokens: 3,
            },
        ),
    ];
    for (request, expected) in cases {
        expect_error(
            "add-request",
            backend.add_request(request, 2),
            expected.into(),
        )?;
    }
    let stats = backend.stats(3).map_err(|e| e.to_string())?;
    if stats.num_waiting != 1 {
        return Err(format!(
            "rejected requests changed the queue: {} waiting",
            stats.num_waiting
        ));
    }
    Ok(())
}

fn malformed_output(module: &PolicyModule) -> Result<(), String> {
    let mut backend = open(module, base_config())?;
    expect_error(
        "update before any schedule",
        backend.update_from_output(&ModelOutput::default(), 1),
        OutputError::NoStepInFlight.into(),
    )?;
    backend
        .add_request(NewRequest::new("a", vec![1; 4]), 1)
        .map_err(|e| e.to_string())?;
    let step = backend.schedule(2).map_err(|e| e.to_string())?;
    expect_error(
        "update with a wrong length",
        backend.update_from_output(
            &ModelOutput {
                sampled_token_ids: vec![],
            },
            3,
        ),
        OutputError::LengthMismatch {
            expected: step.batch.len(),
            got: 0,
        }
        .into(),
    )?;
    let good = ModelOutput {
        sampled_token_ids: step
            .batch
            .sample
            .iter()
            .map(|&sample| sample.then_some(7))
            .collect(),
    };
    backend
        .update_from_output(&good, 4)
        .map(drop)
        .map_err(|e| format!("the step was not kept in flight after a rejected output: {e}"))
}

fn unknown_ids(module: &PolicyModule) -> Result<(), String> {
    let mut backend = open(module, base_config())?;
    let outcome = backend
        .finish_requests(&["never-added".into()], FinishStatus::Aborted, 1)
        .map_err(|e| e.to_string())?;
    match outcome.finished_ids.is_empty() && outcome.journey_events.is_empty() {
        true => Ok(()),
        false => Err(format!("finishing an unknown id reported {outcome:?}")),
    }
}

fn seeds() -> impl Iterator<Item = u64> {
    (0..WORKLOADS).map(|i| 0xC0FFEE + i)
}

fn block_conservation(module: &PolicyModule) -> Result<(), String> {
    for seed in seeds() {
        let workload = Workload::random(seed);
        let mut backend = open(module, workload.config)?;
        run_workload(backend.as_mut(), &workload).map_err(|e| format!("workload {seed}: {e}"))?;
        let stats = backend.stats(0).map_err(|e| e.to_string())?;
        if stats.num_free_blocks != stats.num_usable_blocks
            || stats.num_running + stats.num_waiting != 0
        {
            return Err(format!(
                "workload {seed}: {} of {} blocks free, {} running, {} waiting after the drain",
                stats.num_free_blocks,
                stats.num_usable_blocks,
                stats.num_running,
                stats.num_waiting
            ));
        }
    }
    Ok(())
}

fn journey_grammar(module: &PolicyModule) -> Result<(), String> {
    for seed in seeds() {
        let workload = Workload::random(seed);
        let mut backend = open(module, workload.config)?;
        let transcript = run_workload(backend.as_mut(), &workload)
            .map_err(|e| format!("workload {seed}: {e}"))?;
        transcript
            .check_journeys()
            .map_err(|e| format!("workload {seed}: {e}"))?;
    }
    Ok(())
}

fn determinism(module: &PolicyModule) -> Result<(), String> {
    for seed in seeds() {
        let workload = Workload::random(seed);
        let mut first = open(module, workload.config)?;
        let mut second = open(module, workload.config)?;
        let a = run_workload(first.as_mut(), &workload).map_err(|e| e.to_string())?;
        let b = run_workload(second.as_mut(), &workload).map_err(|e| e.to_string())?;
        if let Some(line) = a.lines.iter().zip(&b.lines).position(|(x, y)| x != y) {
            return Err(format!("workload {seed}: runs differ at output {line}"));
        }
        if a.lines.len() != b.lines.len() {
            return Err(format!("workload {seed}: runs have different lengths"));
        }
    }
    Ok(())
}

fn state_round_trip(module: &PolicyModule) -> Result<(), String> {
    for seed in seeds() {
        let workload = Workload::random(seed);
        let mut straight = open(module, workload.config)?;
        let expected = run_workload(straight.as_mut(), &workload).map_err(|e| e.to_string())?;
        let mut moved = open(module, workload.config)?;
        let mut driver = Driver::new(moved.as_mut(), workload.seed);
        let half = workload.ops.len() / 2;
        for op in &workload.ops[..half] {
            driver.apply(op).map_err(|e| e.to_string())?;
        }
        let state = driver
            .backend_mut()
            .export_state(0)
            .map_err(|e| e.to_string())?;
        driver
            .backend_mut()
            .import_state(&state, 0)
            .map_err(|e| format!("workload {seed}: importing its own state: {e}"))?;
        for op in &workload.ops[half..] {
            driver.apply(op).map_err(|e| e.to_string())?;
        }
        driver.drain().map_err(|e| e.to_string())?;
        if driver.transcript != expected {
            return Err(format!(
                "workload {seed}: outputs changed after export and import"
            ));
        }
    }
    Ok(())
}

fn foreign_state(module: &PolicyModule) -> Result<(), String> {
    for seed in seeds() {
        let workload = Workload::random(seed);
        let mut native = NativeBackend::new(workload.config).map_err(|e| e.to_string())?;
        let mut driver = Driver::new(&mut native, workload.seed);
        for op in &workload.ops {
            driver.apply(op).map_err(|e| e.to_string())?;
        }
        let now = driver.now_ns();
        let state = native.export_state(0).map_err(|e| e.to_string())?;
        let mut backend = open(module, workload.config)?;
        backend
            .import_state(&state, 0)
            .map_err(|e| format!("workload {seed}: importing a native FCFS state: {e}"))?;
        let mut driver = Driver::new(backend.as_mut(), workload.seed).starting_at(now);
        driver
            .drain()
            .map_err(|e| format!("workload {seed}: {e}"))?;
        let stats = backend.stats(0).map_err(|e| e.to_string())?;
        if stats.num_free_blocks != stats.num_usable_blocks {
            return Err(format!(
                "workload {seed}: blocks leaked after an imported state drained"
            ));
        }
    }
    expect_error(
        "importing garbage",
        open(module, base_config())?.import_state(b"not a state", 0),
        StateError::NotAState.into(),
    )
}
