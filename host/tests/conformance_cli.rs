//! `waypoint conformance` through the real binary: the shipped policies pass, the hostile test
//! components fail with messages that say what went wrong.

use std::process::Command;

fn conformance(args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_waypoint"))
        .arg("conformance")
        .args(args)
        .output()
        .expect("the waypoint binary runs");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

fn hostile(name: &str) -> String {
    format!(
        "{}/../components/hostile/{name}.wasm",
        env!("CARGO_MANIFEST_DIR")
    )
}

#[test]
fn the_shipped_policies_pass_every_scenario() {
    for policy in ["fcfs", "priority", "fair"] {
        let (passed, report) = conformance(&[policy]);
        assert!(passed, "{report}");
        assert!(
            report.contains(&format!("conformance of {policy} ")),
            "{report}"
        );
        assert!(
            report.trim_end().ends_with("9 passed, 0 failed"),
            "{report}"
        );
    }
}

#[test]
fn a_component_file_is_checked_like_a_builtin() {
    let path = format!("{}/../components/fair.wasm", env!("CARGO_MANIFEST_DIR"));
    let (passed, report) = conformance(&[&path]);
    assert!(passed, "{report}");
}

#[test]
fn hostile_components_fail_with_clear_reasons() {
    // Only `spin` is meant to meet the deadline: the others get a long one, so that they meet
    // their own fault first even when a debug build on a busy machine is slow (filling 32 MiB
    // has taken more than 100 ms).
    for (name, timeout_ms, reason) in [
        (
            "trap",
            "30000",
            "trapped: wasm trap: wasm `unreachable` instruction executed in",
        ),
        ("spin", "100", "ran past its 100 ms limit per call"),
        (
            "grow",
            "30000",
            "exceeded its memory limit of 33554432 bytes",
        ),
    ] {
        let limits = [
            "--guest-call-timeout-ms",
            timeout_ms,
            "--guest-memory-limit",
            "32",
        ];
        let path = hostile(name);
        let mut args = vec![path.as_str()];
        args.extend(limits);
        let (passed, report) = conformance(&args);
        assert!(!passed, "{name} passed:\n{report}");
        assert!(report.contains(reason), "{name}: {report}");
        assert!(
            report.contains("FAIL  rejects invalid requests with typed errors"),
            "{name}: {report}"
        );
    }
}

#[test]
fn a_missing_or_invalid_file_is_reported_not_crashed_on() {
    let (passed, report) = conformance(&["/nonexistent/policy.wasm"]);
    assert!(!passed);
    assert!(
        report.contains("FAIL  loads as a policy component"),
        "{report}"
    );
    assert!(report.contains("/nonexistent/policy.wasm"), "{report}");
}
