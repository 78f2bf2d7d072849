//! `POST /admin/scheduler` through the real binary: a policy component swapped into a server
//! under a live stream, which goes on without failing or recomputing; components that do not
//! load or break the contract leave the running policy in place.

mod serving;

use std::io::{BufRead, BufReader};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serving::{stream_greedy, JourneyLog, Server};
use waypoint_scheduler::{JourneyEvent, JourneyEventType};

fn component(name: &str) -> Vec<u8> {
    let path = format!("{}/../components/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e} (run `cargo xtask all`)"))
}

fn policy_info(server: &Server) -> Vec<String> {
    server
        .metrics()
        .lines()
        .filter(|line| line.starts_with("waypoint:policy_info{"))
        .map(str::to_owned)
        .collect()
}

/// Tokens of the stream that runs across the swap.
const STREAM_TOKENS: u32 = 2000;

#[test]
fn a_live_swap_keeps_the_stream_going_and_bad_components_change_nothing() {
    let log = JourneyLog::new();
    let server = Server::start(
        &[
            "--admin-api-key",
            "root",
            "--max-policy-bytes",
            "4000000",
            "--journey-log",
            log.arg(),
        ],
        &[],
    );
    let client = reqwest::blocking::Client::new();
    let admin = format!("{}/admin/scheduler", server.url);
    let upload = |bytes: Vec<u8>, key: Option<&str>| {
        let mut request = client.post(&admin).body(bytes);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let response = request.send().expect("answer");
        let status = response.status().as_u16();
        (
            status,
            response.json::<serde_json::Value>().expect("a JSON body"),
        )
    };
    assert!(policy_info(&server)
        .iter()
        .any(|line| line.contains("name=\"fcfs\"")));

    // Long enough to outlive the uploads' conformance runs (about 4 s each in a debug build,
    // where `STREAM_TOKENS` take about 20 s).
    let stream = client
        .post(format!("{}/v1/completions", server.url))
        .header("X-Request-Id", "long")
        .json(&serde_json::json!({
            "model": "tiny", "prompt": "a stream across a policy swap", "max_tokens": STREAM_TOKENS,
            "ignore_eos": true, "stream": true,
        }))
        .send()
        .expect("a stream");
    let mut lines = BufReader::new(stream).lines();
    let mut chunks = 0;
    while chunks < 5 {
        let line = lines.next().expect("a line").expect("readable");
        chunks += usize::from(line.starts_with("data: {"));
    }

    let (status, body) = upload(component("priority.wasm"), None);
    assert_eq!(status, 401, "{body}");
    let (status, body) = upload(component("priority.wasm"), Some("not-the-key"));
    assert_eq!(status, 401, "{body}");
    let (status, body) = upload(b"not a component".to_vec(), Some("root"));
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("does not load")));
    let (status, body) = upload(component("hostile/lie-range.wasm"), Some("root"));
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("conformance")),
        "{body}"
    );
    let (status, _) = upload(vec![0; 4_000_001], Some("root"));
    assert_eq!(status, 413);
    assert!(policy_info(&server)
        .iter()
        .any(|line| line.contains("name=\"fcfs\"")));

    let (status, body) = upload(component("priority.wasm"), Some("root"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["name"], "priority");
    assert!(
        body["pause_ms"].as_f64().is_some_and(|ms| ms >= 0.0),
        "{body}"
    );
    assert_eq!(body["live_requests"], 1, "the stream's request moved over");
    let info = policy_info(&server);
    assert_eq!(info.len(), 1, "{info:?}");
    assert!(
        info[0].contains("name=\"priority\"") && info[0].ends_with(" 1"),
        "{info:?}"
    );

    // The stream goes on to its end.
    let rest: Vec<String> = lines.map(|line| line.expect("readable")).collect();
    let finished: Vec<&String> = rest
        .iter()
        .filter(|line| line.contains("\"finish_reason\":\"length\""))
        .collect();
    assert_eq!(finished.len(), 1, "{rest:?}");
    assert!(rest.iter().any(|line| line == "data: [DONE]"));
    assert!(
        !rest.iter().any(|line| line.contains("\"error\"")),
        "{rest:?}"
    );

    // New requests run on the new policy.
    let response = client
        .post(format!("{}/v1/completions", server.url))
        .json(&serde_json::json!({"model": "tiny", "prompt": "after", "max_tokens": 3}))
        .send()
        .expect("answer");
    assert_eq!(response.status(), 200);
    server.stop();

    // The journey went on: scheduled once, never preempted or recomputed, finished at length.
    let journey: Vec<JourneyEvent> = log
        .events()
        .into_iter()
        .filter(|event| event.request_id.to_string() == "long")
        .collect();
    let types: Vec<JourneyEventType> = journey.iter().map(|e| e.event_type).collect();
    assert_eq!(
        types,
        [
            JourneyEventType::Queued,
            JourneyEventType::Scheduled,
            JourneyEventType::FirstToken,
            JourneyEventType::Finished
        ]
    );
    assert_eq!(journey[3].decode_done_tokens, STREAM_TOKENS);
}

#[test]
fn the_admin_route_is_off_without_an_admin_key() {
    let server = Server::start(&[], &[]);
    let response = reqwest::blocking::Client::new()
        .post(format!("{}/admin/scheduler", server.url))
        .body(component("priority.wasm"))
        .send()
        .expect("answer");
    assert_eq!(response.status(), 404);
    server.stop();
}

/// The `sjf` example policy, built from its own folder as a third party would build it.
fn sjf_component() -> Vec<u8> {
    let dir = format!("{}/../examples/policies/sjf", env!("CARGO_MANIFEST_DIR"));
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_waypoint"))
        .args(["policy", "build", &dir])
        .output()
        .expect("the waypoint binary runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::read(format!("{dir}/sjf.wasm")).expect("sjf.wasm")
}

const CLIENTS: usize = 100;
const TOKENS: usize = 160;

fn wait_for(chunks: &AtomicUsize, at_least: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while chunks.load(Ordering::Relaxed) < at_least {
        assert!(Instant::now() < deadline, "the streams stalled");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn swaps_fcfs_to_sjf_to_fair_under_100_streams_fail_nothing_and_change_no_output() {
    let sjf = sjf_component();
    let fair = component("fair.wasm");
    let baseline = Server::start(&[], &[]);
    let expected = stream_greedy(&baseline.url, CLIENTS, TOKENS, |_| {});
    baseline.stop();

    let log = JourneyLog::new();
    let server = Server::start(
        &["--admin-api-key", "root", "--journey-log", log.arg()],
        &[],
    );
    let admin = format!("{}/admin/scheduler", server.url);
    let swap = |bytes: &[u8]| {
        let response = reqwest::blocking::Client::new()
            .post(&admin)
            .bearer_auth("root")
            .body(bytes.to_vec())
            .send()
            .expect("answer");
        assert_eq!(response.status(), 200);
        response.json::<serde_json::Value>().expect("a JSON body")
    };
    let mut swaps = Vec::new();
    let got = stream_greedy(&server.url, CLIENTS, TOKENS, |chunks| {
        wait_for(chunks, CLIENTS);
        swaps.push(swap(&sjf));
        // The server runs ahead of 100 reading threads: swap again soon, while it is far from
        // done (a chunk carries one or more tokens).
        wait_for(chunks, CLIENTS * 3);
        swaps.push(swap(&fair));
    });
    server.stop();

    assert_eq!(swaps[0]["name"], "sjf", "{swaps:?}");
    assert_eq!(swaps[1]["name"], "fair", "{swaps:?}");
    for swap in &swaps {
        assert!(
            swap["live_requests"].as_u64().is_some_and(|n| n > 0),
            "each swap moved live streams: {swaps:?}"
        );
    }
    let failed: Vec<&String> = got.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(failed.is_empty(), "{} failed: {failed:?}", failed.len());
    assert_eq!(got, expected, "greedy outputs equal the run without swaps");
    let events = log.events();
    assert_eq!(
        events
            .iter()
            .filter(|e| e.event_type == JourneyEventType::Finished)
            .count(),
        CLIENTS
    );
    let preempted: Vec<&JourneyEvent> = events
        .iter()
        .filter(|e| e.event_type == JourneyEventType::Preempted)
        .collect();
    assert!(preempted.is_empty(), "nothing recomputed: {preempted:?}");
}
