//! Faults of a policy component through the real binary: the requests it held are resubmitted
//! with their tokens to a fresh instance, a policy that keeps faulting gives way to the built-in
//! fcfs, and no client sees more than a pause.

mod serving;

use serving::{journey_log, stream_greedy, Server};
use waypoint_scheduler::{JourneyEventType, JourneyValidator};

fn hostile(name: &str) -> String {
    format!(
        "{}/../components/hostile/{name}.wasm",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// The value of a counter with only the `model_name` label in a `/metrics` text.
fn counter(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| {
            line.strip_prefix(name)?
                .strip_prefix("{model_name=\"tiny\"} ")
        })
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{metrics}"))
}

#[test]
fn a_policy_that_keeps_faulting_loses_no_token_and_gives_way_to_fcfs() {
    const CLIENTS: usize = 20;
    const TOKENS: usize = 40;
    let baseline = Server::start(&[], &[]);
    let expected = stream_greedy(&baseline.url, CLIENTS, TOKENS, |_| {});
    baseline.stop();

    // The real fcfs, whose statistics lie from its third step on: every instance faults.
    let scratch = tempfile::tempdir().expect("scratch dir");
    let log = scratch.path().join("journeys.jsonl");
    let server = Server::start(
        &[
            "--scheduler",
            &hostile("lie-stats"),
            "--journey-log",
            log.to_str().expect("utf-8 path"),
        ],
        &[],
    );
    let got = stream_greedy(&server.url, CLIENTS, TOKENS, |_| {});
    let metrics = server.metrics();
    server.stop();

    let failed: Vec<&String> = got.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(failed.is_empty(), "{} failed: {failed:?}", failed.len());
    assert_eq!(
        got, expected,
        "recomputed requests give the tokens they would have"
    );
    assert_eq!(counter(&metrics, "waypoint:scheduler_faults_total"), 3.0);
    assert_eq!(counter(&metrics, "waypoint:policy_fallbacks_total"), 1.0);
    assert!(counter(&metrics, "waypoint:requests_recovered_total") >= 1.0);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("waypoint:policy_info{") && l.contains("name=\"fcfs\"")),
        "{metrics}"
    );

    // Every journey follows the grammar, RECOVERED included, and ends once.
    let events = journey_log(&log);
    let mut validator = JourneyValidator::new();
    for event in &events {
        validator.observe(event).expect("a valid journey");
    }
    assert_eq!(validator.num_open(), 0);
    let count = |kind| events.iter().filter(|e| e.event_type == kind).count();
    assert_eq!(count(JourneyEventType::Finished), CLIENTS);
    assert!(
        count(JourneyEventType::Recovered) >= CLIENTS,
        "each fault recovers what it held"
    );
}

#[test]
fn the_trap_component_under_50_clients_fails_no_request() {
    let server = Server::start(&["--scheduler", &hostile("trap")], &[]);
    let got = stream_greedy(&server.url, 50, 8, |_| {});
    let metrics = server.metrics();
    server.stop();
    let failed: Vec<&String> = got.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(failed.is_empty(), "{} failed: {failed:?}", failed.len());
    assert!(counter(&metrics, "waypoint:scheduler_faults_total") >= 1.0);
    assert_eq!(counter(&metrics, "waypoint:policy_fallbacks_total"), 1.0);
}
