//! The policy SDK as a third party uses it, through the real binary: `waypoint policy new` and
//! `waypoint policy build` on crates outside the workspace, then `conformance` and
//! `simulate --compare` on the components they make.

use std::path::{Path, PathBuf};
use std::process::Command;

fn waypoint(args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_waypoint"))
        .args(args)
        .output()
        .expect("the waypoint binary runs");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policies")
}

/// Build the policy crate in `dir` and check the component against the contract.
fn build_and_check(dir: &Path, name: &str) -> String {
    let dir = dir.to_str().expect("utf-8 path");
    let (built, log) = waypoint(&["policy", "build", dir]);
    assert!(built, "{log}");
    assert!(log.contains(&format!("(policy {name} 0.1.0)")), "{log}");
    let component = format!("{dir}/{name}.wasm");
    let (passed, report) = waypoint(&["conformance", &component]);
    assert!(passed, "{report}");
    assert!(report.contains(" 0 failed"), "{report}");
    component
}

/// The `deadlines met` row of a comparison table: `(met, with a deadline)` per column.
fn deadlines_met(table: &str) -> Vec<(u32, u32)> {
    let row = table
        .lines()
        .find_map(|line| line.strip_prefix("deadlines met"))
        .unwrap_or_else(|| panic!("no deadlines row in\n{table}"));
    row.split_whitespace()
        .map(|cell| {
            let (met, total) = cell.split_once('/').expect("met/total");
            (met.parse().expect("met"), total.parse().expect("total"))
        })
        .collect()
}

#[test]
fn the_example_policies_build_from_their_folders_pass_conformance_and_compare() {
    let sjf = build_and_check(&examples().join("sjf"), "sjf");
    let edf = build_and_check(&examples().join("edf"), "edf");
    let workload = examples().join("deadlines.jsonl");
    let (ran, table) = waypoint(&[
        "simulate",
        "--workload",
        workload.to_str().expect("utf-8 path"),
        "--compare",
        &format!("fcfs,{sjf},{edf}"),
    ]);
    assert!(ran, "{table}");
    assert!(
        table.contains("400/400"),
        "every request finishes:\n{table}"
    );
    let met = deadlines_met(&table);
    let [fcfs, sjf, edf] = met[..] else {
        panic!("three columns: {met:?}\n{table}");
    };
    assert!(fcfs.1 > 0 && fcfs.1 == sjf.1 && sjf.1 == edf.1, "{table}");
    assert!(
        edf.0 > fcfs.0,
        "earliest deadline first meets more deadlines than fcfs:\n{table}"
    );
    assert!(
        sjf.0 > fcfs.0,
        "short jobs first meets more of the short jobs' deadlines than fcfs:\n{table}"
    );
}

#[test]
fn a_new_policy_crate_builds_as_written_and_passes_conformance() {
    let scratch = tempfile::tempdir().expect("scratch dir");
    let dir = scratch.path().to_str().expect("utf-8");
    let (written, log) = waypoint(&["policy", "new", "my-policy", dir]);
    assert!(written, "{log}");
    build_and_check(scratch.path(), "my-policy");
    let (refused, log) = waypoint(&["policy", "new", "my-policy", dir]);
    assert!(!refused && log.contains("is not empty"), "{log}");
    let (refused, log) = waypoint(&["policy", "new", "My Policy"]);
    assert!(!refused && log.contains("policy name"), "{log}");
}
