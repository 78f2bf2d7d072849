//! Moving a live scheduler between policy components: run on `fcfs`, export, import into
//! `priority` (and `fair`), finish. Every request finishes, no block leaks, journeys stay valid.

use waypoint::backend::SchedulerBackend;
use waypoint::builtin::builtin_policy;
use waypoint::guest::{GuestLimits, GuestRuntime, PolicyModule};
use waypoint::workload::{Driver, Workload};

fn module(runtime: &GuestRuntime, name: &str) -> PolicyModule {
    runtime
        .load(builtin_policy(name).expect("built-in"), name)
        .expect("loads")
}

#[test]
fn state_moves_from_fcfs_to_other_policies_under_live_traffic() {
    let runtime = GuestRuntime::new(GuestLimits::default()).expect("wasmtime starts");
    let fcfs = module(&runtime, "fcfs");
    for target in ["priority", "fair"] {
        let target_module = module(&runtime, target);
        let mut swapped_any = 0;
        for seed in 0..40 {
            let workload = Workload::random(seed);
            let mut source = fcfs.create(workload.config).expect("create");
            let mut driver = Driver::new(&mut source, workload.seed);
            let half = workload.ops.len() / 2;
            for op in &workload.ops[..half] {
                driver.apply(op).expect("fcfs run");
            }
            let now = driver.now_ns();
            let mut transcript = driver.transcript;
            let before = source.stats(0).expect("stats");
            let state = source.export_state(0).expect("export");
            let mut destination = target_module.create(workload.config).expect("create");
            destination
                .import_state(&state, 0)
                .expect("import a state written by fcfs");
            assert_eq!(destination.policy().name, target);
            let after = destination.stats(0).expect("stats");
            assert_eq!(
                (
                    before.num_running,
                    before.num_waiting,
                    before.num_free_blocks
                ),
                (after.num_running, after.num_waiting, after.num_free_blocks),
                "seed {seed}: the swap recomputed or dropped something"
            );
            swapped_any += u32::from(after.num_running + after.num_waiting > 0);
            let mut driver = Driver::new(&mut destination, workload.seed).starting_at(now);
            driver.transcript = std::mem::take(&mut transcript);
            for op in &workload.ops[half..] {
                driver.apply(op).expect("run after the swap");
            }
            driver.drain().expect("every request finishes");
            driver
                .transcript
                .check_journeys()
                .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            let stats = destination.stats(0).expect("stats");
            assert_eq!(
                stats.num_free_blocks, stats.num_usable_blocks,
                "seed {seed}: blocks leaked"
            );
        }
        assert!(
            swapped_any > 20,
            "most swaps happen with requests in flight"
        );
    }
}
