//! `waypoint simulate` through the real binary: determinism across backends, the journey log,
//! the Chrome trace, the report checked against the journey log, and workload errors.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use tempfile::TempDir;
use waypoint_scheduler::{JourneyEvent, JourneyEventType, JourneyValidator};

struct Run {
    dir: TempDir,
    success: bool,
    stderr: String,
}

impl Run {
    fn file(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.dir.path().join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}\n{}", self.stderr))
    }

    fn journeys(&self) -> Vec<JourneyEvent> {
        String::from_utf8(self.file("journeys.jsonl"))
            .expect("utf-8")
            .lines()
            .map(|line| JourneyEvent::from_json_line(line).expect("a canonical journey line"))
            .collect()
    }

    fn report(&self) -> serde_json::Value {
        serde_json::from_slice(&self.file("report.json")).expect("report JSON")
    }
}

/// A folder removed with its files when dropped, after a failed assertion too.
fn scratch(name: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(&format!("waypoint-sim-{name}-"))
        .tempdir()
        .expect("scratch dir")
}

fn simulate(name: &str, args: &[&str]) -> Run {
    let dir = scratch(name);
    let output = Command::new(env!("CARGO_BIN_EXE_waypoint"))
        .arg("simulate")
        .args([
            "--journey-log",
            dir.path().join("journeys.jsonl").to_str().unwrap(),
        ])
        .args([
            "--chrome-trace",
            dir.path().join("trace.json").to_str().unwrap(),
        ])
        .args(["--report", dir.path().join("report.json").to_str().unwrap()])
        .args(args)
        .output()
        .expect("the waypoint binary runs");
    Run {
        dir,
        success: output.status.success(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A busy synthetic workload: prefix sharing, preemption pressure, several clients and
/// priorities.
const WORKLOAD: &[&str] = &[
    "--num-requests",
    "150",
    "--request-rate",
    "40",
    "--burstiness",
    "0.5",
    "--seed",
    "7",
    "--prefix-fraction",
    "0.5",
    "--prefix-len",
    "64",
    "--priorities",
    "0:1,1:1,2:1",
    "--clients",
    "0:2,1:1,2:1",
    "--num-blocks",
    "300",
    "--max-model-len",
    "2048",
    "--max-num-seqs",
    "32",
    "--slo-ttft-ms",
    "2000",
    "--slo-tpot-ms",
    "40",
];

fn with_scheduler(scheduler: &str) -> Vec<&str> {
    let mut args = WORKLOAD.to_vec();
    args.extend(["--scheduler", scheduler]);
    args
}

fn without_scheduler_name(mut report: serde_json::Value) -> serde_json::Value {
    report.as_object_mut().expect("object").remove("scheduler");
    report
}

#[test]
fn outputs_are_byte_identical_natively_and_through_each_wasm_policy() {
    for policy in ["fcfs", "priority", "fair"] {
        let native = simulate(
            &format!("native-{policy}"),
            &with_scheduler(&format!("native:{policy}")),
        );
        let wasm = simulate(&format!("wasm-{policy}"), &with_scheduler(policy));
        assert!(
            native.success && wasm.success,
            "{}\n{}",
            native.stderr,
            wasm.stderr
        );
        assert!(
            native.file("journeys.jsonl") == wasm.file("journeys.jsonl"),
            "{policy}: journey logs differ"
        );
        assert!(
            native.file("trace.json") == wasm.file("trace.json"),
            "{policy}: traces differ"
        );
        assert_eq!(
            without_scheduler_name(native.report()),
            without_scheduler_name(wasm.report()),
            "{policy}"
        );
        let again = simulate(&format!("again-{policy}"), &with_scheduler(policy));
        assert!(
            again.file("journeys.jsonl") == wasm.file("journeys.jsonl"),
            "{policy}: not deterministic"
        );
    }
}

#[test]
fn the_journey_log_follows_the_grammar_and_covers_every_request() {
    let run = simulate("grammar", &with_scheduler("fcfs"));
    assert!(run.success, "{}", run.stderr);
    let mut validator = JourneyValidator::new();
    let mut finished = 0;
    for event in run.journeys() {
        validator.observe(&event).unwrap_or_else(|e| panic!("{e}"));
        finished += usize::from(event.event_type == JourneyEventType::Finished);
    }
    assert_eq!(validator.num_open(), 0);
    assert_eq!(finished, 150);
    assert!(
        run.report()["preemptions"].as_u64().unwrap() > 0,
        "the workload preempts"
    );
}

#[test]
fn the_chrome_trace_is_json_with_one_balanced_track_per_request() {
    let run = simulate("trace", &with_scheduler("priority"));
    let events: Vec<serde_json::Value> =
        serde_json::from_slice(&run.file("trace.json")).expect("valid JSON");
    let tracks: Vec<_> = events
        .iter()
        .filter(|e| e["ph"] == "M" && e["name"] == "thread_name" && e["pid"] == 1)
        .map(|e| e["tid"].as_u64().unwrap())
        .collect();
    assert_eq!(tracks.len(), 150);
    let mut depth: HashMap<u64, i64> = HashMap::new();
    for event in events.iter().filter(|e| e["pid"] == 1) {
        let tid = event["tid"].as_u64().unwrap_or(0);
        match event["ph"].as_str() {
            Some("B") => *depth.entry(tid).or_default() += 1,
            Some("E") => *depth.entry(tid).or_default() -= 1,
            _ => {}
        }
        assert!(depth.get(&tid).copied().unwrap_or(0) >= 0);
    }
    assert!(depth.values().all(|&d| d == 0), "every slice is closed");
    let names: std::collections::HashSet<_> = events
        .iter()
        .filter(|e| e["ph"] == "B")
        .filter_map(|e| e["name"].as_str())
        .collect();
    for phase in ["waiting", "prefill", "decode", "preempted"] {
        assert!(names.contains(phase), "no {phase} slice");
    }
    for counter in ["kv_usage", "running", "waiting", "scheduled_tokens"] {
        assert!(
            events
                .iter()
                .any(|e| e["ph"] == "C" && e["name"] == counter),
            "no {counter} counter"
        );
    }
}

fn nearest_rank(values: &mut [f64], q: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

#[test]
fn the_summary_matches_values_computed_from_the_journey_log() {
    let run = simulate("summary", &with_scheduler("fair"));
    let report = run.report();
    let (mut queued, mut first_scheduled, mut first_token) =
        (HashMap::new(), HashMap::new(), HashMap::new());
    let (mut ttft, mut e2e, mut queue, mut tpot) = (vec![], vec![], vec![], vec![]);
    let (mut tokens, mut last, mut preemptions, mut good) = (0u64, 0u64, 0u64, 0u64);
    let ms = |ns: u64| ns as f64 / 1e6;
    for event in run.journeys() {
        let id = event.request_id.to_string();
        let ts = event.ts_monotonic_ns;
        last = last.max(ts);
        match event.event_type {
            JourneyEventType::Queued => {
                queued.insert(id, ts);
            }
            JourneyEventType::Scheduled => {
                if first_scheduled.insert(id.clone(), ts).is_none() {
                    queue.push(ms(ts - queued[&id]));
                }
            }
            JourneyEventType::FirstToken => {
                first_token.insert(id.clone(), ts);
                ttft.push(ms(ts - queued[&id]));
            }
            JourneyEventType::Preempted => preemptions += 1,
            JourneyEventType::Recovered => unreachable!("a simulation has no faults"),
            JourneyEventType::Finished => {
                e2e.push(ms(ts - queued[&id]));
                tokens += u64::from(event.decode_done_tokens);
                let request_ttft = ms(first_token[&id] - queued[&id]);
                let request_tpot = (event.decode_done_tokens > 1)
                    .then(|| ms(ts - first_token[&id]) / f64::from(event.decode_done_tokens - 1));
                if let Some(t) = request_tpot {
                    tpot.push(t);
                }
                good += u64::from(request_ttft <= 2000.0 && request_tpot.is_none_or(|t| t <= 40.0));
            }
        }
    }
    let start = queued.values().copied().min().unwrap();
    let duration = (last - start) as f64 / 1e9;
    assert!(close(report["duration_s"].as_f64().unwrap(), duration));
    assert!(close(
        report["throughput_rps"].as_f64().unwrap(),
        e2e.len() as f64 / duration
    ));
    assert!(close(
        report["output_tokens_per_s"].as_f64().unwrap(),
        tokens as f64 / duration
    ));
    assert!(close(
        report["goodput_rps"].as_f64().unwrap(),
        good as f64 / duration
    ));
    assert_eq!(report["preemptions"].as_u64().unwrap(), preemptions);
    for (key, values) in [
        ("ttft_ms", &mut ttft),
        ("e2e_ms", &mut e2e),
        ("queue_ms", &mut queue),
        ("tpot_ms", &mut tpot),
    ] {
        for (q, name) in [(0.5, "p50"), (0.9, "p90"), (0.99, "p99")] {
            let expected = nearest_rank(values, q);
            let actual = report[key][name].as_f64().unwrap();
            assert!(
                close(actual, expected),
                "{key} {name}: report {actual}, journey log {expected}"
            );
        }
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        assert!(
            close(report[key]["mean"].as_f64().unwrap(), mean),
            "{key} mean"
        );
    }
}

fn workload_file(dir: &Path, lines: &[&str]) -> String {
    let path = dir.join("workload.jsonl");
    std::fs::write(&path, lines.join("\n")).expect("write workload");
    path.to_str().unwrap().to_owned()
}

#[test]
fn malformed_workload_lines_are_reported_with_their_line_number() {
    let dir = scratch("malformed");
    let cases = [
        (
            r#"{"id":"b","arrival_ms":1,"output_len":4}"#,
            "one of prompt_len or prompt_token_ids is required",
        ),
        (
            r#"{"id":"b","arrival_ms":1,"prompt_len":8,"output_len":4,"colour":"red"}"#,
            "unknown field `colour`",
        ),
        (
            r#"{"id":"b","prompt_len":8,"output_len":4}"#,
            "one of arrival_ms or arrival_step is required",
        ),
        (
            r#"{"id":"b","arrival_ms":1,"prompt_len":8,"output_len":0}"#,
            "output_len must be at least 1",
        ),
        ("not json", "expected ident"),
        (
            r#"{"id":"b","arrival_ms":1,"prompt_len":4000000000,"output_len":4}"#,
            "a prompt of 4000000000 tokens does not fit max_model_len 4096",
        ),
        (
            r#"{"id":"b","arrival_ms":1,"prompt_len":5000,"output_len":4}"#,
            "a prompt of 5000 tokens does not fit max_model_len 4096",
        ),
        (
            r#"{"id":"b","arrival_ms":1,"prompt_len":8,"output_len":4,"prefix_group":[1],"prefix_len":4}"#,
            "a prefix group: a string or an integer",
        ),
    ];
    for (bad, reason) in cases {
        let good = r#"{"id":"a","arrival_ms":0,"prompt_len":8,"output_len":4}"#;
        let path = workload_file(dir.path(), &[good, "", bad]);
        let run = simulate(
            "malformed-run",
            &["--workload", &path, "--scheduler", "native"],
        );
        assert!(!run.success, "{bad} was accepted");
        assert!(run.stderr.contains("workload line 3:"), "{}", run.stderr);
        assert!(run.stderr.contains(reason), "{bad}: {}", run.stderr);
    }
}

#[test]
fn arrival_steps_add_requests_right_before_their_iteration() {
    let dir = scratch("steps");
    let path = workload_file(
        dir.path(),
        &[
            r#"{"id":"a","arrival_step":0,"prompt_len":32,"output_len":20}"#,
            r#"{"id":"b","arrival_step":0,"prompt_len":32,"output_len":20}"#,
            r#"{"id":"c","arrival_step":3,"prompt_len":32,"output_len":20}"#,
            r#"{"id":"d","arrival_step":5,"prompt_len":16,"output_len":2,"prefix_group":1,"prefix_len":8}"#,
        ],
    );
    let run = simulate("steps-run", &["--workload", &path, "--scheduler", "fcfs"]);
    assert!(run.success, "{}", run.stderr);
    let queued: Vec<(String, u64)> = run
        .journeys()
        .into_iter()
        .filter(|e| e.event_type == JourneyEventType::Queued)
        .map(|e| (e.request_id.to_string(), e.scheduler_step))
        .collect();
    let expected =
        [("a", 0), ("b", 0), ("c", 3), ("d", 5)].map(|(id, step)| (id.to_string(), step));
    assert_eq!(queued, expected);
}

#[test]
fn compare_runs_every_policy_on_the_same_workload() {
    let output = Command::new(env!("CARGO_BIN_EXE_waypoint"))
        .args(["simulate", "--compare", "fcfs,priority,fair"])
        .args(WORKLOAD)
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let header = stdout.lines().next().unwrap_or_default();
    for policy in ["fcfs 0.1.0", "priority 0.1.0", "fair 0.1.0"] {
        assert!(header.contains(policy), "{stdout}");
    }
    assert!(stdout.contains("TTFT p50/p90/p99 (ms)"), "{stdout}");
}

#[test]
fn a_request_the_scheduler_rejects_stops_the_run_with_its_reason() {
    let dir = scratch("rejected");
    let path = workload_file(
        dir.path(),
        &[
            r#"{"id":"a","arrival_ms":0,"prompt_len":8,"output_len":400}"#,
            r#"{"id":"a","arrival_ms":1,"prompt_len":8,"output_len":4}"#,
        ],
    );
    let run = simulate(
        "rejected-run",
        &["--workload", &path, "--scheduler", "fair"],
    );
    assert!(!run.success);
    assert!(
        run.stderr.contains(r#"request id "a" is already in use"#),
        "{}",
        run.stderr
    );
}

#[test]
fn a_request_listed_after_a_later_one_stops_the_run_naming_both_lines() {
    let dir = scratch("order");
    for (late, early) in [
        (r#""arrival_ms":40"#, r#""arrival_ms":0"#),
        (r#""arrival_step":4"#, r#""arrival_step":0"#),
    ] {
        let path = workload_file(
            dir.path(),
            &[
                &format!(r#"{{"id":"a",{late},"prompt_len":8,"output_len":4}}"#),
                "",
                &format!(r#"{{"id":"b",{early},"prompt_len":8,"output_len":4}}"#),
            ],
        );
        let run = simulate("order-run", &["--workload", &path, "--scheduler", "fcfs"]);
        assert!(!run.success, "{late} then {early} was accepted");
        assert!(
            run.stderr.contains(
                r#"workload line 3: request "b" arrives before the request on line 1; list requests in arrival order"#
            ),
            "{}",
            run.stderr
        );
    }
}

#[test]
fn named_prefix_groups_share_their_prefix_like_numbered_ones() {
    let dir = scratch("named-groups");
    let lines = |group: &dyn Fn(u32) -> String| -> Vec<String> {
        (0..12)
            .map(|i| {
                format!(
                    r#"{{"id":"r{i}","arrival_ms":{},"prompt_len":96,"output_len":4,"prefix_group":{},"prefix_len":64}}"#,
                    i * 50,
                    group(i % 3)
                )
            })
            .collect()
    };
    let mut journeys = Vec::new();
    for (name, group) in [
        (
            "named",
            &(|g| format!(r#""system-prompt-{g}""#)) as &dyn Fn(u32) -> String,
        ),
        ("numbered", &(|g: u32| g.to_string())),
    ] {
        let lines = lines(group);
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        let path = workload_file(dir.path(), &lines);
        let run = simulate(name, &["--workload", &path, "--scheduler", "fcfs"]);
        assert!(run.success, "{}", run.stderr);
        let hit_rate = run.report()["prefix_cache_hit_rate"]
            .as_f64()
            .expect("hit rate");
        assert!(hit_rate > 0.4, "{name}: hit rate {hit_rate}");
        journeys.push(run.file("journeys.jsonl"));
    }
    assert!(
        journeys[0] == journeys[1],
        "named and numbered groups schedule alike"
    );
}

/// The figures of the real vLLM 0.33 scheduler on the same workload and flags
/// (tests/fixtures/workloads/README.md).
#[test]
fn the_vllm_large_workload_runs_as_it_did_in_vllm() {
    let workload = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/workloads/vllm-large.jsonl"
    );
    let run = simulate(
        "vllm-large",
        &[
            "--workload",
            workload,
            "--scheduler",
            "native",
            "--max-num-seqs",
            "256",
            "--max-num-batched-tokens",
            "8192",
            "--num-blocks",
            "16384",
            "--block-size",
            "16",
            "--max-model-len",
            "4096",
            "--long-prefill-token-threshold",
            "0",
            "--enable-prefix-caching",
        ],
    );
    assert!(run.success, "{}", run.stderr);
    let report = run.report();
    assert_eq!(report["steps"], 2745);
    assert_eq!(report["preemptions"], 187);
    let journeys = run.journeys();
    let preempted: std::collections::HashSet<_> = journeys
        .iter()
        .filter(|e| e.event_type == JourneyEventType::Preempted)
        .map(|e| e.request_id.to_string())
        .collect();
    assert_eq!(preempted.len(), 169);
    let finished = journeys
        .iter()
        .filter(|e| e.event_type == JourneyEventType::Finished)
        .count();
    assert_eq!(finished, 2000);
}
