//! Native and WASM schedulers give byte-identical scheduler outputs, engine outputs and journey
//! events for the same inputs: 1000 random workloads per policy (prefix sharing, preemption
//! pressure, aborts, EOS, cache resets, tracing on and off).

use waypoint::backend::NativeBackend;
use waypoint::builtin::builtin_policy;
use waypoint::guest::{GuestLimits, GuestRuntime};
use waypoint::workload::{run_workload, Workload};
use waypoint_scheduler::{PolicyKind, SchedulerConfig};

const WORKLOADS: u64 = 1000;

fn native_and_wasm_agree(policy: &str, kind: PolicyKind) {
    let runtime = GuestRuntime::new(GuestLimits::default()).expect("wasmtime starts");
    let module = runtime
        .load(builtin_policy(policy).expect("built-in policy"), policy)
        .expect("the built-in component loads");
    let (mut preempting, mut steps) = (0, 0);
    for seed in 0..WORKLOADS {
        let workload = Workload::random(seed);
        let mut native = NativeBackend::new(SchedulerConfig {
            policy: kind,
            ..workload.config
        })
        .expect("valid generated config");
        let mut wasm = module
            .create(workload.config)
            .expect("valid generated config");
        let expected = run_workload(&mut native, &workload).expect("native run");
        let actual = run_workload(&mut wasm, &workload).expect("wasm run");
        if let Some(at) = expected
            .lines
            .iter()
            .zip(&actual.lines)
            .position(|(a, b)| a != b)
        {
            panic!(
                "{policy}, workload {seed}: outputs differ at call {at}\nnative: {}\nwasm:   {}",
                expected.lines[at], actual.lines[at]
            );
        }
        assert_eq!(
            expected.lines.len(),
            actual.lines.len(),
            "{policy}, workload {seed}"
        );
        assert!(
            expected.journeys == actual.journeys,
            "{policy}, workload {seed}: journeys differ"
        );
        expected
            .check_journeys()
            .unwrap_or_else(|e| panic!("{policy}, workload {seed}: {e}"));
        preempting += u32::from(expected.lines.iter().any(|l| l.contains("\"PREEMPTED\"")));
        steps += expected.steps;
    }
    assert!(
        preempting > 100,
        "{policy}: only {preempting} workloads preempted"
    );
    assert!(
        steps > WORKLOADS * 20,
        "{policy}: workloads too short ({steps} steps)"
    );
}

#[test]
fn fcfs_native_and_wasm_give_identical_outputs() {
    native_and_wasm_agree("fcfs", PolicyKind::Fcfs);
}

#[test]
fn priority_native_and_wasm_give_identical_outputs() {
    native_and_wasm_agree("priority", PolicyKind::Priority);
}

#[test]
fn fair_native_and_wasm_give_identical_outputs() {
    native_and_wasm_agree("fair", PolicyKind::Fair);
}
