//! `waypoint serve` exporting journeys to a real OTLP receiver: one `llm_request` and one
//! `llm_core` per sampled request, linked to the client's trace, journey events in order with
//! the reference's keys, and every span ended — through successes, validation errors, client
//! disconnects mid-stream and a trapping scheduler guest.

mod serving;

use std::collections::HashMap;

use futures_util::StreamExt;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode as Status;
use opentelemetry_proto::tonic::trace::v1::Span;
use serving::{attribute, named, Receiver, Server};

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn event_names(span: &Span) -> Vec<&str> {
    span.events.iter().map(|e| e.name.as_str()).collect()
}

fn server(receiver: &Receiver, service: &str, extra: &[&str]) -> Server {
    let mut args = vec![
        "--enable-journey-tracing",
        "--otlp-traces-endpoint",
        &receiver.endpoint,
        "--max-model-len",
        "512",
    ];
    args.extend_from_slice(extra);
    Server::start(
        &args,
        &[
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_SERVICE_NAME", service),
        ],
    )
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    body: serde_json::Value,
    traceparent: Option<&str>,
) -> reqwest::Response {
    let mut request = client.post(url).json(&body);
    if let Some(traceparent) = traceparent {
        request = request.header("traceparent", traceparent);
    }
    request.send().await.expect("the server answers")
}

/// Every `llm_core` is the child of an `llm_request` in the same trace, and carries its
/// journey in order with every key of the reference's §3.4.
fn check_core_spans(requests: &[&Span], cores: &[&Span]) -> HashMap<Vec<u8>, String> {
    let by_id: HashMap<&[u8], &Span> = requests
        .iter()
        .map(|s| (s.span_id.as_slice(), *s))
        .collect();
    let mut finish_status = HashMap::new();
    for core in cores {
        assert_eq!(core.kind, SpanKind::Internal as i32);
        let parent = by_id
            .get(core.parent_span_id.as_slice())
            .unwrap_or_else(|| panic!("llm_core {} has no llm_request parent", hex(&core.span_id)));
        assert_eq!(
            core.trace_id, parent.trace_id,
            "parent and child share the trace"
        );
        assert!(core.end_time_unix_nano >= core.start_time_unix_nano);
        let names = event_names(core);
        assert_eq!(names.first(), Some(&"journey.QUEUED"), "{names:?}");
        assert_eq!(names.last(), Some(&"journey.FINISHED"), "{names:?}");
        let times: Vec<u64> = core.events.iter().map(|e| e.time_unix_nano).collect();
        assert!(
            times.windows(2).all(|w| w[0] <= w[1]),
            "events in time order"
        );
        for event in &core.events {
            for key in [
                "event.type",
                "ts.monotonic",
                "ts.monotonic_ns",
                "scheduler.step",
                "phase",
                "prefill.done_tokens",
                "prefill.total_tokens",
                "decode.done_tokens",
                "decode.max_tokens",
                "num_preemptions",
            ] {
                assert!(
                    attribute(&event.attributes, key).is_some(),
                    "{} lacks {key}",
                    event.name
                );
            }
            let kind = attribute(&event.attributes, "schedule.kind");
            assert_eq!(
                kind.is_some(),
                event.name == "journey.SCHEDULED",
                "{}",
                event.name
            );
            let status = attribute(&event.attributes, "finish.status");
            assert_eq!(
                status.is_some(),
                event.name == "journey.FINISHED",
                "{}",
                event.name
            );
            if let Some(status) = status {
                finish_status.insert(core.parent_span_id.clone(), status);
            }
        }
    }
    finish_status
}

/// Each `llm_request` starts with `api.ARRIVED` and ends with exactly one of `api.DEPARTED`
/// and `api.ABORTED`; returns the ABORTED reasons by span id.
fn check_request_spans(requests: &[&Span]) -> HashMap<Vec<u8>, Option<String>> {
    let mut outcomes = HashMap::new();
    for span in requests {
        assert_eq!(span.kind, SpanKind::Server as i32);
        assert!(span.end_time_unix_nano >= span.start_time_unix_nano);
        let names = event_names(span);
        assert_eq!(names.first(), Some(&"api.ARRIVED"), "{names:?}");
        let terminal: Vec<_> = span
            .events
            .iter()
            .filter(|e| e.name == "api.DEPARTED" || e.name == "api.ABORTED")
            .collect();
        assert_eq!(terminal.len(), 1, "{names:?}");
        assert_eq!(names.last(), Some(&terminal[0].name.as_str()));
        let reason = attribute(&terminal[0].attributes, "reason");
        outcomes.insert(span.span_id.clone(), reason);
    }
    outcomes
}

#[test]
fn every_sampled_request_gets_one_linked_pair_of_ended_spans() {
    let runtime = tokio::runtime::Runtime::new().expect("tokio");
    let receiver = Receiver::start(&runtime);
    let server = server(
        &receiver,
        "waypoint-journeys",
        &[
            "--step-tracing-enabled",
            "--step-tracing-sample-rate",
            "1",
            "--step-tracing-closure-interval",
            "10",
        ],
    );
    let completions = format!("{}/v1/completions", server.url);
    let chat = format!("{}/v1/chat/completions", server.url);
    let traceparent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    runtime.block_on(async {
        let client = reqwest::Client::new();
        for stream in [false, true] {
            let response = post(
                &client,
                &completions,
                serde_json::json!({"model": "tiny", "prompt": "journeys", "max_tokens": 6, "stream": stream}),
                Some(&traceparent),
            )
            .await;
            assert_eq!(response.status(), 200);
            response.bytes().await.expect("body");
            let response = post(
                &client,
                &chat,
                serde_json::json!({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": stream}),
                None,
            )
            .await;
            assert_eq!(response.status(), 200);
            response.bytes().await.expect("body");
        }
        let bad_json = client.post(&completions).body("{not json").send().await.expect("answer");
        assert_eq!(bad_json.status(), 400);
        let too_long = post(
            &client,
            &completions,
            serde_json::json!({"model": "tiny", "prompt": "x".repeat(600)}),
            None,
        )
        .await;
        assert_eq!(too_long.status(), 400);
        for _ in 0..3 {
            let response = post(
                &client,
                &completions,
                serde_json::json!({"model": "tiny", "prompt": "long", "max_tokens": 400, "stream": true, "ignore_eos": true}),
                None,
            )
            .await;
            let mut body = response.bytes_stream();
            body.next().await.expect("a first chunk").expect("bytes");
            drop(body);
        }
    });
    // 4 served + 2 invalid + 3 disconnected requests; the invalid ones never reach the engine.
    let spans = receiver.wait_for("waypoint-journeys", |spans| {
        named(spans, "llm_request").len() >= 9 && named(spans, "llm_core").len() >= 7
    });
    let requests = named(&spans, "llm_request");
    let cores = named(&spans, "llm_core");
    assert_eq!(requests.len(), 9, "one llm_request per request");
    assert_eq!(cores.len(), 7, "one llm_core per request the engine took");
    let outcomes = check_request_spans(&requests);
    let finish_status = check_core_spans(&requests, &cores);
    let reasons = |r: &str| {
        outcomes
            .values()
            .filter(|v| v.as_deref() == Some(r))
            .count()
    };
    assert_eq!(
        outcomes.values().filter(|v| v.is_none()).count(),
        4,
        "DEPARTED"
    );
    assert_eq!(reasons("validation_error"), 2);
    assert_eq!(reasons("client_disconnect"), 3);
    for (request, reason) in &outcomes {
        if reason.as_deref() == Some("client_disconnect") {
            assert_eq!(
                finish_status.get(request).map(String::as_str),
                Some("aborted")
            );
        }
    }
    let continued: Vec<_> = requests
        .iter()
        .filter(|s| hex(&s.trace_id) == CLIENT_TRACE)
        .collect();
    assert_eq!(
        continued.len(),
        2,
        "both requests that sent a traceparent continue its trace"
    );
    assert!(continued
        .iter()
        .all(|s| hex(&s.parent_span_id) == CLIENT_SPAN));
    let steps: Vec<_> = spans
        .iter()
        .filter(|s| s.name.starts_with("scheduler_steps_"))
        .collect();
    assert!(!steps.is_empty(), "closed step windows are exported");
    assert!(steps
        .iter()
        .all(|s| s.events.iter().any(|e| e.name == "step.BATCH_SUMMARY")));
    assert!(steps
        .iter()
        .all(|s| attribute(&s.attributes, "scheduler.step_range_end").is_some()));
    server.stop();
}

#[test]
fn a_trapping_scheduler_guest_loses_no_request_and_its_spans_show_the_recovery() {
    let runtime = tokio::runtime::Runtime::new().expect("tokio");
    let receiver = Receiver::start(&runtime);
    let trap = format!(
        "{}/../components/hostile/trap.wasm",
        env!("CARGO_MANIFEST_DIR")
    );
    let server = server(&receiver, "waypoint-trap", &["--scheduler", &trap]);
    let url = format!("{}/v1/completions", server.url);
    let statuses: Vec<u16> = runtime.block_on(async {
        let client = reqwest::Client::new();
        let mut statuses = Vec::new();
        for _ in 0..3 {
            // The first request outlives three trapping instances, then the built-in fcfs
            // takes it over; the others run on fcfs.
            let response = post(
                &client,
                &url,
                serde_json::json!({"model": "tiny", "prompt": "trap", "max_tokens": 5}),
                None,
            )
            .await;
            statuses.push(response.status().as_u16());
        }
        statuses
    });
    assert_eq!(statuses, [200, 200, 200]);
    let spans = receiver.wait_for("waypoint-trap", |spans| {
        named(spans, "llm_request").len() >= 3 && named(spans, "llm_core").len() >= 3
    });
    let requests = named(&spans, "llm_request");
    let cores = named(&spans, "llm_core");
    assert_eq!((requests.len(), cores.len()), (3, 3));
    let outcomes = check_request_spans(&requests);
    assert!(
        outcomes.values().all(Option::is_none),
        "no request departs with an error reason: {outcomes:?}"
    );
    // The request the traps held carries its recovery and the replacement of the policy.
    let recovered: Vec<&&Span> = cores
        .iter()
        .filter(|core| event_names(core).contains(&"journey.RECOVERED"))
        .collect();
    assert_eq!(recovered.len(), 1, "{cores:?}");
    assert!(
        event_names(recovered[0]).contains(&"scheduler.POLICY_SWAPPED"),
        "{:?}",
        event_names(recovered[0])
    );
    for core in &cores {
        assert!(core.end_time_unix_nano >= core.start_time_unix_nano);
        let status = core.status.as_ref().map(|s| s.code);
        assert_ne!(status, Some(Status::Error as i32), "{core:?}");
    }
    server.stop();
}

#[test]
fn journeys_export_over_grpc_by_default() {
    let runtime = tokio::runtime::Runtime::new().expect("tokio");
    let receiver = Receiver::start_grpc(&runtime);
    let server = Server::start(
        &[
            "--enable-journey-tracing",
            "--otlp-traces-endpoint",
            &receiver.endpoint,
        ],
        &[
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_SERVICE_NAME", "waypoint-grpc"),
        ],
    );
    let url = format!("{}/v1/completions", server.url);
    runtime.block_on(async {
        let client = reqwest::Client::new();
        for _ in 0..2 {
            let body = serde_json::json!({"model": "tiny", "prompt": "grpc", "max_tokens": 3});
            let response = post(&client, &url, body, None).await;
            assert_eq!(response.status(), 200);
        }
    });
    let spans = receiver.wait_for("waypoint-grpc", |spans| {
        named(spans, "llm_request").len() >= 2 && named(spans, "llm_core").len() >= 2
    });
    let requests = named(&spans, "llm_request");
    let cores = named(&spans, "llm_core");
    assert_eq!((requests.len(), cores.len()), (2, 2));
    check_request_spans(&requests);
    check_core_spans(&requests, &cores);
    server.stop();
}

#[test]
fn a_collector_that_is_down_costs_only_the_spans() {
    let closed = serving::free_port();
    let endpoint = format!("http://127.0.0.1:{closed}");
    let server = Server::start(
        &[
            "--enable-journey-tracing",
            "--otlp-traces-endpoint",
            &endpoint,
        ],
        &[("OTEL_BSP_SCHEDULE_DELAY", "50")],
    );
    let url = format!("{}/v1/completions", server.url);
    let runtime = tokio::runtime::Runtime::new().expect("tokio");
    runtime.block_on(async {
        let client = reqwest::Client::new();
        let requests = (0..20).map(|i| {
            let body = serde_json::json!({"model": "tiny", "prompt": format!("down {i}"), "max_tokens": 4});
            post(&client, &url, body, None)
        });
        for response in futures_util::future::join_all(requests).await {
            assert_eq!(response.status(), 200);
        }
    });
    server.stop();
}
