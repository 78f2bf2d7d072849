//! Lying policy components (`components/hostile/lie-<rule>.wasm`, built by `cargo xtask
//! hostile`: the real fcfs scheduler with one lie from step 3 on) through the real binary. Under
//! `serve`, every instance faults at its third step, so the request in flight is resubmitted to
//! fresh ones until the third fault hands it to the built-in fcfs, and it completes; a lie about
//! that request names it, and three faults that name it fail it with an error that names the
//! broken rule. The server goes on serving; under `simulate`, the run stops with the error.
//! Nothing panics.

mod serving;

use std::process::Command;
use std::time::Duration;

use serving::Server;

/// Each lie, words of the error that must name it, and whether the lie names a live request.
const LIES: [(&str, &str, bool); 12] = [
    ("unknown-handle", "unknown request handle", false),
    ("repeated-handle", "is named twice", true),
    ("range", "computed + ", true),
    ("block-id", "is outside 1..512", true),
    ("too-few-blocks", "blocks for its range", true),
    ("over-budget", "over the budget of 32", false),
    ("too-many-entries", "over max_num_seqs 4", false),
    ("early-sample", "samples before its last known token", true),
    (
        "unknown-preempted",
        "unknown request handle 3735928559",
        false,
    ),
    ("unknown-event-id", "\"ghost\" is not a live request", false),
    ("stats", "KV cache usage 2", false),
    ("kv-events", "impossible KV events", false),
];

/// Small enough that the lies which need it (a recomputed step, a batch one too large) break a
/// limit the host knows.
const ENGINE: [&str; 6] = [
    "--max-num-batched-tokens",
    "32",
    "--max-num-seqs",
    "4",
    "--num-blocks",
    "512",
];

fn component(rule: &str) -> String {
    format!(
        "{}/../components/hostile/lie-{rule}.wasm",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn completion(prompt: &str, max_tokens: u32) -> serde_json::Value {
    serde_json::json!({"model": "tiny", "prompt": prompt, "max_tokens": max_tokens})
}

fn wait_until_healthy(client: &reqwest::blocking::Client, url: &str) {
    for _ in 0..400 {
        let health = client.get(format!("{url}/health")).send().expect("health");
        if health.status() == 200 {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("the server never became healthy again");
}

/// One liar under `serve`: the long request completes, or fails naming the rule when the lie
/// names it; three faults put fcfs in the liar's place, a short request succeeds, and the
/// server stays healthy.
fn serve_survives(rule: &str, words: &str, names_request: bool) {
    let scheduler = component(rule);
    let mut args = vec!["--scheduler", scheduler.as_str()];
    args.extend(ENGINE);
    let server = Server::start(&args, &[]);
    let client = reqwest::blocking::Client::new();
    let url = format!("{}/v1/completions", server.url);
    wait_until_healthy(&client, &server.url);

    // Sixty prompt bytes take two chunks of 32, then decoding: step 3 is a decode step.
    let long = client
        .post(&url)
        .json(&completion(&"x".repeat(60), 16))
        .send()
        .expect("the server answers");
    if names_request {
        assert_eq!(long.status(), 503, "{rule}: the lied-about request fails");
        let body: serde_json::Value = long.json().expect("an OpenAI error body");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("3 scheduler faults named it")
                && message.contains("broke the contract")
                && message.contains(words),
            "{rule}: the error names the rule: {body}"
        );
    } else {
        assert_eq!(
            long.status(),
            200,
            "{rule}: the request outlives the faults"
        );
        let body: serde_json::Value = long.json().expect("a completion");
        assert_eq!(body["usage"]["completion_tokens"], 16, "{body}");
    }
    let metrics = server.metrics();
    for (name, value) in [
        ("waypoint:scheduler_faults_total", " 3"),
        ("waypoint:policy_fallbacks_total", " 1"),
    ] {
        assert!(
            metrics
                .lines()
                .any(|line| line.starts_with(name) && line.ends_with(value)),
            "{rule}: {name}{value} in\n{metrics}"
        );
    }

    wait_until_healthy(&client, &server.url);
    let short = client
        .post(&url)
        .json(&completion("ok", 1))
        .send()
        .expect("the server answers");
    assert_eq!(short.status(), 200, "{rule}: serving continues");
    let body: serde_json::Value = short.json().expect("a completion");
    assert_eq!(body["usage"]["completion_tokens"], 1, "{body}");
    let models = client
        .get(format!("{}/v1/models", server.url))
        .send()
        .expect("models");
    assert_eq!(models.status(), 200);
    wait_until_healthy(&client, &server.url);
    server.stop();
}

macro_rules! serve_tests {
    ($($name:ident => $index:expr),* $(,)?) => {$(
        #[test]
        fn $name() {
            let (rule, words, names_request) = LIES[$index];
            serve_survives(rule, words, names_request);
        }
    )*};
}

serve_tests! {
    serve_survives_an_unknown_handle => 0,
    serve_survives_a_repeated_handle => 1,
    serve_survives_a_range_past_the_known_tokens => 2,
    serve_survives_a_block_outside_the_cache => 3,
    serve_survives_too_few_blocks => 4,
    serve_survives_a_step_over_the_token_budget => 5,
    serve_survives_a_batch_over_max_num_seqs => 6,
    serve_survives_a_sample_before_the_prompt_is_computed => 7,
    serve_survives_an_unknown_preempted_handle => 8,
    serve_survives_an_event_for_an_unknown_request => 9,
    serve_survives_statistics_out_of_bounds => 10,
    serve_survives_kv_events_the_cache_cannot_have_made => 11,
}

#[test]
fn simulate_stops_with_the_broken_rule_for_every_lie() {
    for (rule, words, _) in LIES {
        let output = Command::new(env!("CARGO_BIN_EXE_waypoint"))
            .args(["simulate", "--scheduler", &component(rule)])
            .args(ENGINE)
            .args([
                "--num-requests",
                "8",
                "--prompt-lengths",
                "fixed:60",
                "--output-lengths",
                "fixed:16",
            ])
            .output()
            .expect("the waypoint binary runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(1),
            "{rule}: an error, not a panic: {stderr}"
        );
        assert!(
            stderr.contains("broke the contract") && stderr.contains(words),
            "{rule}: the error names the rule: {stderr}"
        );
    }
}
