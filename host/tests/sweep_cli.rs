//! `waypoint sweep` through the real binary: one row per grid point in the CSV and the JSON,
//! each line's highest passing rate marked by the rule, a chart with one line per
//! configuration, and clear errors for grids it cannot run.

use std::process::{Command, Output};

use tempfile::TempDir;

/// Runs `waypoint sweep` into a folder that is removed when the returned guard drops.
fn sweep(name: &str, args: &[&str]) -> (TempDir, Output) {
    let dir = tempfile::Builder::new()
        .prefix(&format!("waypoint-sweep-{name}-"))
        .tempdir()
        .expect("scratch dir");
    let output = Command::new(env!("CARGO_BIN_EXE_waypoint"))
        .arg("sweep")
        .args(["--out", dir.path().to_str().expect("utf-8 path")])
        .args(args)
        .output()
        .expect("waypoint runs");
    (dir, output)
}

#[test]
fn sweep_writes_a_table_and_a_chart_and_marks_each_lines_capacity() {
    let (dir, output) = sweep(
        "grid",
        &[
            "--max-num-seqs",
            "8,64",
            "--request-rate",
            "1,4,16",
            "--scheduler",
            "native,fair",
            "--num-requests",
            "80",
            "--slo-ttft-ms",
            "1500",
        ],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let points: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(dir.path().join("sweep.json")).expect("sweep.json"))
            .expect("JSON");
    assert_eq!(
        points.len(),
        2 * 3 * 2,
        "schedulers × configurations × rates"
    );

    let csv = std::fs::read_to_string(dir.path().join("sweep.csv")).expect("sweep.csv");
    let mut rows = csv.lines();
    let header: Vec<&str> = rows.next().expect("a header").split(',').collect();
    for column in [
        "scheduler",
        "max_num_seqs",
        "request_rate",
        "goodput_rps",
        "ttft_p50_ms",
        "ttft_p99_ms",
        "tpot_p50_ms",
        "tpot_p99_ms",
        "preemptions",
        "kv_usage_mean",
        "kv_usage_max",
        "meets_slo",
        "max_rate_meeting_slo",
    ] {
        assert!(header.contains(&column), "no {column} in {header:?}");
    }
    assert_eq!(rows.count(), points.len());

    // Each line (scheduler × configuration) marks the top of its run of passing rates.
    let mut lines: Vec<(String, u64)> = Vec::new();
    for point in &points {
        let line = (
            point["scheduler"].as_str().expect("scheduler").to_owned(),
            point["max_num_seqs"].as_u64().expect("max_num_seqs"),
        );
        if !lines.contains(&line) {
            lines.push(line);
        }
    }
    assert_eq!(lines.len(), 4);
    for (scheduler, seqs) in &lines {
        let line: Vec<&serde_json::Value> = points
            .iter()
            .filter(|p| p["scheduler"] == scheduler.as_str() && p["max_num_seqs"] == *seqs)
            .collect();
        let rates: Vec<f64> = line
            .iter()
            .map(|p| p["request_rate"].as_f64().unwrap_or(0.0))
            .collect();
        assert_eq!(rates, [1.0, 4.0, 16.0]);
        for point in &line {
            let attained = point["slo_attainment"].as_f64().expect("attainment");
            assert_eq!(point["meets_slo"], attained >= 0.9, "{point}");
        }
        let passing = line.iter().take_while(|p| p["meets_slo"] == true).count();
        let marked: Vec<usize> = (0..line.len())
            .filter(|&i| line[i]["max_rate_meeting_slo"] == true)
            .collect();
        assert_eq!(
            marked,
            (passing > 0)
                .then(|| passing - 1)
                .into_iter()
                .collect::<Vec<_>>()
        );
        assert!(
            stdout.contains(&format!("{scheduler} · seqs {seqs} ")),
            "{stdout}"
        );
    }
    // The small batch saturates before the large one at the same rate.
    let ttft = |seqs: u64| {
        points
            .iter()
            .find(|p| {
                p["scheduler"] == "native" && p["max_num_seqs"] == seqs && p["request_rate"] == 16.0
            })
            .and_then(|p| p["ttft_p99_ms"].as_f64())
            .expect("a point")
    };
    assert!(
        ttft(8) > ttft(64),
        "8 seqs: {}, 64 seqs: {}",
        ttft(8),
        ttft(64)
    );

    let svg = std::fs::read_to_string(dir.path().join("sweep.svg")).expect("sweep.svg");
    assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);
    for (scheduler, seqs) in &lines {
        let label = format!("{scheduler} · seqs {seqs} · tokens 2048 · blocks 8192");
        assert!(svg.contains(&label), "the chart has no line {label}");
    }
    assert!(svg.contains("objective 1500 ms"));
}

#[test]
fn sweep_refuses_grids_it_cannot_run() {
    for (args, reason) in [
        (
            &["--request-rate", "0,4"][..],
            "rates must be positive and finite",
        ),
        (
            &["--request-rate", "inf"][..],
            "rates must be positive and finite",
        ),
        (
            &["--slo-attainment", "1.5"][..],
            "--slo-attainment 1.5 must be in (0, 1]",
        ),
        (
            &["--prompt-lengths", "fixed:9000"][..],
            "do not fit --max-model-len 4096",
        ),
    ] {
        let (_, output) = sweep("bad", args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} was accepted");
        assert!(stderr.contains(reason), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
