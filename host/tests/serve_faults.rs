//! Faults of a policy component through the real binary: the requests it held are resubmitted
//! with their tokens to a fresh instance, a policy that keeps faulting gives way to the built-in
//! fcfs, and no client sees more than a pause; a load the fallback cannot hold is shed, newest
//! first, and serving goes on.

mod serving;

use serving::{stream_greedy, JourneyLog, Server};
use waypoint_scheduler::{FinishStatus, JourneyEventType, JourneyValidator};

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
    let log = JourneyLog::new();
    let server = Server::start(
        &[
            "--scheduler",
            &hostile("lie-stats"),
            "--journey-log",
            log.arg(),
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
    let events = log.events();
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

/// Send `count` completions at once, each holding 1024 `stop_token_ids` (4 KiB of the
/// scheduler's memory): the status and body of each answer.
async fn burst(url: &str, count: usize) -> Vec<(u16, String)> {
    let client = reqwest::Client::new();
    let stop_token_ids: Vec<u32> = (1000..2024).collect();
    let requests = (0..count).map(|i| {
        let request = client
            .post(format!("{url}/v1/completions"))
            .timeout(std::time::Duration::from_secs(120))
            .json(&serde_json::json!({
                "model": "tiny", "prompt": format!("burst {i}"), "max_tokens": 16,
                "ignore_eos": true, "stop_token_ids": stop_token_ids,
            }))
            .send();
        async move {
            let response = request.await.expect("an answer, not a hang");
            let status = response.status().as_u16();
            (status, response.text().await.unwrap_or_default())
        }
    });
    futures_util::future::join_all(requests).await
}

#[test]
fn a_load_the_fallback_cannot_hold_is_shed_and_serving_goes_on() {
    // Two MiB of scheduler memory hold about 150 of the burst's requests: the built-in fcfs runs
    // out of memory with no request to blame, faults until it gives way to itself, and then
    // sheds. Before shedding, it resubmitted everything and faulted again, forever.
    let log = JourneyLog::new();
    let server = Server::start(
        &[
            "--guest-memory-limit",
            "2",
            "--max-num-seqs",
            "4",
            "--journey-log",
            log.arg(),
        ],
        &[],
    );
    let runtime = tokio::runtime::Runtime::new().expect("tokio");
    let answers = runtime.block_on(burst(&server.url, 400));

    let shed = answers
        .iter()
        .filter(|(status, body)| *status == 503 && body.contains("was shed"))
        .count();
    let finished = answers.iter().filter(|(status, _)| *status == 200).count();
    for (status, body) in &answers {
        assert!(*status == 200 || *status == 503, "{status}: {body}");
    }
    assert!(shed > 0, "nothing was shed");
    assert!(finished > 0, "nothing finished");
    let metrics = server.metrics();
    assert_eq!(
        counter(&metrics, "waypoint:requests_shed_total"),
        shed as f64
    );
    assert_eq!(counter(&metrics, "waypoint:policy_fallbacks_total"), 1.0);

    let client = reqwest::blocking::Client::new();
    let after = client
        .post(format!("{}/v1/completions", server.url))
        .json(&serde_json::json!({"model": "tiny", "prompt": "after", "max_tokens": 3}))
        .send()
        .expect("an answer");
    assert_eq!(after.status(), 200);
    let health = client
        .get(format!("{}/health", server.url))
        .send()
        .expect("health");
    assert_eq!(health.status(), 200);
    server.stop();

    // A shed request's journey ends with FINISHED(error), written by the host since no
    // scheduler holds it any more: every journey is valid and ends once.
    let events = log.events();
    let mut validator = JourneyValidator::new();
    for event in &events {
        validator.observe(event).expect("a valid journey");
    }
    assert_eq!(validator.num_open(), 0);
    let errors = events
        .iter()
        .filter(|e| e.finish_status == Some(FinishStatus::Error))
        .count();
    assert_eq!(errors, shed);
}
