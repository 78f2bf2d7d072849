//! `waypoint serve` over HTTP: bad input gets OpenAI's error shape with the right status, and
//! the server keeps serving.

mod serving;

use serving::Server;

fn check_error(response: reqwest::blocking::Response, status: u16, param: Option<&str>) {
    assert_eq!(response.status().as_u16(), status);
    let body: serde_json::Value = response.json().expect("a JSON error body");
    let error = &body["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(error["type"].is_string(), "{body}");
    assert_eq!(error["code"], status, "{body}");
    assert_eq!(error["param"].as_str(), param, "{body}");
}

#[test]
fn bad_requests_get_openai_errors_and_the_server_keeps_serving() {
    let server = Server::start(
        &["--max-request-body-bytes", "4096", "--max-model-len", "256"],
        &[],
    );
    let client = reqwest::blocking::Client::new();
    let completions = format!("{}/v1/completions", server.url);
    let post = |body: serde_json::Value| {
        client
            .post(&completions)
            .json(&body)
            .send()
            .expect("answer")
    };

    check_error(
        client.post(&completions).body("{").send().expect("answer"),
        400,
        None,
    );
    check_error(post(serde_json::json!({"model": "tiny"})), 400, None);
    check_error(
        post(serde_json::json!({"model": "tiny", "prompt": "x", "temperature": 9})),
        400,
        Some("temperature"),
    );
    check_error(
        post(serde_json::json!({"model": "tiny", "prompt": "x", "top_p": 0})),
        400,
        Some("top_p"),
    );
    check_error(
        post(serde_json::json!({"model": "tiny", "prompt": "x", "max_tokens": 0})),
        400,
        Some("max_tokens"),
    );
    check_error(
        post(serde_json::json!({"model": "tiny", "prompt": "x", "max_tokens": 300})),
        400,
        Some("max_tokens"),
    );
    check_error(
        post(serde_json::json!({"model": "tiny", "prompt": [1, 2, 999]})),
        400,
        Some("prompt"),
    );
    check_error(
        post(serde_json::json!({"model": "tiny", "prompt": ""})),
        400,
        Some("prompt"),
    );
    check_error(
        post(serde_json::json!({"model": "tiny", "prompt": ["a", "b"]})),
        400,
        Some("prompt"),
    );
    check_error(
        post(serde_json::json!({"model": "tiny", "prompt": "x", "n": 3})),
        400,
        Some("n"),
    );
    check_error(
        post(serde_json::json!({"model": "tiny", "prompt": "x", "stop": vec!["s"; 65]})),
        400,
        Some("stop"),
    );
    check_error(
        post(serde_json::json!({"model": "tiny", "prompt": "x", "stop": "s".repeat(1025)})),
        400,
        Some("stop"),
    );
    check_error(
        post(serde_json::json!({"model": "tiny", "prompt": "x", "stop_token_ids": vec![0; 1025]})),
        400,
        Some("stop_token_ids"),
    );
    check_error(
        post(serde_json::json!({"model": "nope", "prompt": "x"})),
        404,
        None,
    );
    check_error(
        post(serde_json::json!({"model": "tiny", "prompt": "x".repeat(5000)})),
        413,
        None,
    );
    check_error(
        client
            .post(format!("{}/v1/chat/completions", server.url))
            .json(&serde_json::json!({"model": "tiny", "messages": []}))
            .send()
            .expect("answer"),
        400,
        Some("messages"),
    );
    check_error(
        client
            .get(format!("{}/v1/nothing", server.url))
            .send()
            .expect("answer"),
        404,
        None,
    );
    let wrong_method = client.get(&completions).send().expect("answer");
    assert_eq!(wrong_method.headers()["allow"], "POST");
    check_error(wrong_method, 405, None);

    let ok = post(serde_json::json!({"model": "tiny", "prompt": "still here", "max_tokens": 3}));
    assert_eq!(ok.status(), 200);
    let body: serde_json::Value = ok.json().expect("JSON");
    assert_eq!(body["usage"]["completion_tokens"], 3);
    // As in vLLM, a request without `model` is for the served model.
    let stops: Vec<String> = (0..64).map(|i| format!("never {i}")).collect();
    let unnamed = post(serde_json::json!({"prompt": "x", "max_tokens": 2, "stop": stops}));
    assert_eq!(unnamed.status(), 200);
    let body: serde_json::Value = unnamed.json().expect("JSON");
    assert_eq!(body["model"], "tiny");
    assert_eq!(body["usage"]["completion_tokens"], 2);
    let health = client
        .get(format!("{}/health", server.url))
        .send()
        .expect("health");
    assert_eq!(health.status(), 200);
    let metrics = client
        .get(format!("{}/metrics", server.url))
        .send()
        .expect("metrics")
        .text()
        .expect("text");
    assert!(
        metrics.contains(
            "vllm:request_success_total{model_name=\"tiny\",finished_reason=\"length\"} 2"
        ),
        "{metrics}"
    );
    server.stop();
}

#[test]
fn an_api_key_guards_the_v1_routes_but_not_health_or_metrics() {
    let server = Server::start(&["--api-key", "sesame"], &[]);
    let client = reqwest::blocking::Client::new();
    let models = format!("{}/v1/models", server.url);
    check_error(client.get(&models).send().expect("answer"), 401, None);
    check_error(
        client
            .get(&models)
            .bearer_auth("wrong")
            .send()
            .expect("answer"),
        401,
        None,
    );
    let listed: serde_json::Value = client
        .get(&models)
        .bearer_auth("sesame")
        .send()
        .expect("answer")
        .json()
        .expect("JSON");
    assert_eq!(listed["data"][0]["id"], "tiny");
    for open in ["health", "metrics"] {
        let response = client
            .get(format!("{}/{open}", server.url))
            .send()
            .expect("answer");
        assert_eq!(response.status(), 200, "{open}");
    }
    server.stop();
}
