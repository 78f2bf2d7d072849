//! `waypoint bench` through the real binary: one row per batch size with the native and the
//! component figures and their ratios, and a clear error for settings it cannot measure with.
//! (The figures themselves are measured, not asserted.)

use std::process::Command;

fn bench(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_waypoint"))
        .arg("bench")
        .args(args)
        .output()
        .expect("waypoint runs")
}

#[test]
fn bench_prints_a_row_with_ratios_per_batch_size() {
    let output = bench(&["--running", "4,8", "--cycles", "20"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .filter(|fields| fields.first().is_some_and(|f| f.parse::<u32>().is_ok()))
        .collect();
    assert_eq!(rows.len(), 2, "{stdout}");
    for (row, running) in rows.iter().zip(["4", "8"]) {
        assert_eq!(row[0], running, "{stdout}");
        let ratios: Vec<f64> = row[5..]
            .iter()
            .map(|field| {
                field
                    .trim_end_matches('×')
                    .parse()
                    .unwrap_or_else(|_| panic!("{field:?} is no ratio:\n{stdout}"))
            })
            .collect();
        assert_eq!(
            ratios.len(),
            3,
            "cycle, schedule and update ratios:\n{stdout}"
        );
        assert!(ratios.iter().all(|r| r.is_finite() && *r > 0.0), "{stdout}");
    }
}

#[test]
fn bench_refuses_zero_cycles_with_a_clear_error() {
    let output = bench(&["--running", "4", "--cycles", "0"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--cycles must be at least 1"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn bench_runs_more_cycles_than_the_default_model_length() {
    let output = bench(&["--running", "2", "--cycles", "5000"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
