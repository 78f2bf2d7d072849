//! `waypoint bench` and `bench-model` through the real binary: `bench` prints one row per batch
//! size with the native and the component figures and their ratios, and a clear error for
//! settings it cannot measure with; `bench-model` prints one row per cache size, batch size and
//! long context. (The figures themselves are measured, not asserted.)

use std::process::Command;

fn waypoint(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_waypoint"))
        .args(args)
        .output()
        .expect("waypoint runs")
}

fn bench(args: &[&str]) -> std::process::Output {
    waypoint(&[&["bench"], args].concat())
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

/// The rows `waypoint bench-model` prints: `[blocks, context, batch]` of each, and whether it
/// gives its decode against the batch-1 row at the prompt length.
fn model_rows(args: &[&str]) -> Vec<([usize; 3], bool)> {
    let fixed = ["bench-model", "--models", "tiny", "--decode-steps", "2"];
    let output = waypoint(&[&fixed[..], args].concat());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .filter(|fields| fields.first() == Some(&"tiny"))
        .map(|fields| {
            let field = |i: usize| fields[i].parse().expect("a count");
            assert!(
                fields[5..7]
                    .iter()
                    .all(|f| f.parse::<f64>().is_ok_and(|v| v > 0.0)),
                "{stdout}"
            );
            let ratio = fields.get(7).map(|f| f.parse::<f64>().expect("a ratio"));
            assert!(ratio.is_none_or(|r| r > 0.0), "{stdout}");
            ([field(2), field(3), field(4)], ratio.is_some())
        })
        .collect()
}

#[test]
fn bench_model_prints_rows_per_cache_size_and_long_context() {
    let rows = model_rows(&[
        "--batch",
        "1,2",
        "--prompt-len",
        "8",
        "--long-contexts",
        "40",
        "--num-blocks",
        "16,64",
    ]);
    let expected = [16, 64].into_iter().flat_map(|blocks| {
        [
            ([blocks, 8, 1], false),
            ([blocks, 8, 2], false),
            ([blocks, 40, 1], true),
        ]
    });
    assert_eq!(rows, expected.collect::<Vec<_>>());
}

#[test]
fn bench_model_without_long_contexts_prints_only_the_batch_rows() {
    let rows = model_rows(&[
        "--batch",
        "1",
        "--prompt-len",
        "8",
        "--long-contexts",
        "--num-blocks",
        "16",
    ]);
    assert_eq!(rows, vec![([16, 8, 1], false)]);
}
