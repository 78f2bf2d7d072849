//! Load: 200 concurrent streaming clients, a fifth of them leaving mid-stream. Everyone else
//! completes; afterwards nothing is running or waiting, every span was ended and exported,
//! and memory is back near where it started.

mod serving;

use futures_util::StreamExt;
use serving::{named, Receiver, Server};

const CLIENTS: usize = 200;

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// One round of clients; returns how many completed with `[DONE]`.
async fn round(url: &str) -> usize {
    let client = reqwest::Client::new();
    let clients = (0..CLIENTS).map(|i| {
        let client = client.clone();
        let url = url.to_owned();
        async move {
            let leaves = i % 5 == 0;
            let body = serde_json::json!({
                "model": "tiny",
                "prompt": format!("client {i} asks about paged attention"),
                "max_tokens": if leaves { 400 } else { 24 },
                "ignore_eos": true,
                "stream": true,
            });
            let response = client.post(&url).json(&body).send().await.expect("answer");
            assert_eq!(response.status(), 200);
            let mut stream = response.bytes_stream();
            let mut text = Vec::new();
            while let Some(chunk) = stream.next().await {
                text.extend_from_slice(&chunk.expect("bytes"));
                if leaves {
                    return false;
                }
            }
            let text = String::from_utf8_lossy(&text);
            assert!(text.contains("\"finish_reason\":\"length\""), "{text}");
            text.trim_end().ends_with("data: [DONE]")
        }
    });
    futures_util::future::join_all(clients)
        .await
        .into_iter()
        .filter(|done| *done)
        .count()
}

#[test]
fn streaming_clients_that_leave_lose_nothing_for_the_others() {
    let runtime = tokio::runtime::Runtime::new().expect("tokio");
    let receiver = Receiver::start(&runtime);
    let server = Server::start(
        &[
            "--enable-journey-tracing",
            "--otlp-traces-endpoint",
            &receiver.endpoint,
        ],
        &[
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "65536"),
            ("OTEL_SERVICE_NAME", "waypoint-load"),
        ],
    );
    let url = format!("{}/v1/completions", server.url);
    let metrics_url = format!("{}/metrics", server.url);
    let staying = CLIENTS - CLIENTS / 5;
    let idle_metrics = || {
        runtime.block_on(async {
            let client = reqwest::Client::new();
            for _ in 0..200 {
                let text = client
                    .get(&metrics_url)
                    .send()
                    .await
                    .expect("metrics")
                    .text()
                    .await
                    .expect("text");
                let running = metric(&text, "vllm:num_requests_running");
                let waiting = metric(&text, "vllm:num_requests_waiting");
                if running == Some(0.0) && waiting == Some(0.0) {
                    return text;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            panic!("requests were left running or waiting");
        })
    };

    assert_eq!(runtime.block_on(round(&url)), staying);
    idle_metrics();
    let warm_kib = server.rss_kib();
    assert_eq!(runtime.block_on(round(&url)), staying);
    let text = idle_metrics();
    let after_kib = server.rss_kib();
    assert_eq!(
        metric(&text, "vllm:request_success_total").map(|_| ()),
        Some(()),
        "finished requests are counted"
    );
    let aborted = format!(
        "vllm:request_success_total{{model_name=\"tiny\",finished_reason=\"abort\"}} {}",
        2 * (CLIENTS / 5)
    );
    assert!(
        text.contains(&aborted),
        "every leaving client is counted as an abort: {text}"
    );
    assert!(
        after_kib < warm_kib + 32 * 1024,
        "memory grew from {warm_kib} KiB to {after_kib} KiB over a second round"
    );

    let spans = receiver.wait_for("waypoint-load", |spans| {
        named(spans, "llm_request").len() >= 2 * CLIENTS
            && named(spans, "llm_core").len() >= 2 * CLIENTS
    });
    assert_eq!(
        named(&spans, "llm_request").len(),
        2 * CLIENTS,
        "every llm_request ended"
    );
    assert_eq!(
        named(&spans, "llm_core").len(),
        2 * CLIENTS,
        "every llm_core ended"
    );
    server.stop();
}
