//! `waypoint serve` among vLLM's tools: `/tokenize`, `/detokenize`, `/version` and `/v1/models`
//! in vLLM's shapes, and `X-Request-Id` naming a request's journey and coming back on every
//! response.

mod serving;

use serving::{post_with_id, JourneyLog, Server};

fn json(response: reqwest::blocking::Response) -> (u16, serde_json::Value) {
    let status = response.status().as_u16();
    (status, response.json().expect("a JSON body"))
}

#[test]
fn vllm_routes_answer_in_vllms_shapes_without_the_api_key() {
    let server = Server::start(&["--api-key", "sesame", "--max-model-len", "512"], &[]);
    let client = reqwest::blocking::Client::new();
    let post = |route: &str, body: serde_json::Value| {
        json(
            client
                .post(format!("{}/{route}", server.url))
                .json(&body)
                .send()
                .expect("answer"),
        )
    };

    let (status, body) = post(
        "tokenize",
        serde_json::json!({"model": "tiny", "prompt": "hi"}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        serde_json::json!({"count": 2, "max_model_len": 512, "tokens": [104, 105]})
    );
    let (_, body) = post(
        "tokenize",
        serde_json::json!({"prompt": "hi", "return_token_strs": true}),
    );
    assert_eq!(body["token_strs"], serde_json::json!(["h", "i"]), "{body}");

    let chat = |add_generation_prompt: bool| {
        post(
            "tokenize",
            serde_json::json!({
                "messages": [{"role": "user", "content": "hi"}],
                "add_generation_prompt": add_generation_prompt,
            }),
        )
    };
    let (status, with_prompt) = chat(true);
    assert_eq!(status, 200, "{with_prompt}");
    let expected = "<|user|>\nhi\n<|assistant|>\n";
    assert_eq!(with_prompt["count"], expected.len());
    let (_, without_prompt) = chat(false);
    assert_eq!(without_prompt["count"], "<|user|>\nhi\n".len());

    let (status, body) = post(
        "tokenize",
        serde_json::json!({"model": "other", "prompt": "x"}),
    );
    assert_eq!(status, 404, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("other")));
    let (status, body) = post("tokenize", serde_json::json!({"text": "x"}));
    assert_eq!(status, 400, "{body}");

    let (status, body) = post("detokenize", serde_json::json!({"tokens": [104, 105]}));
    assert_eq!((status, body), (200, serde_json::json!({"prompt": "hi"})));
    let (status, body) = post("detokenize", serde_json::json!({"tokens": [104, 99999]}));
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "tokens", "{body}");

    let (status, body) = json(
        client
            .get(format!("{}/version", server.url))
            .send()
            .expect("answer"),
    );
    assert_eq!(status, 200);
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));

    let (status, models) = json(
        client
            .get(format!("{}/v1/models", server.url))
            .bearer_auth("sesame")
            .send()
            .expect("answer"),
    );
    assert_eq!(status, 200);
    let card = &models["data"][0];
    for key in [
        "id",
        "object",
        "created",
        "owned_by",
        "root",
        "parent",
        "max_model_len",
        "permission",
    ] {
        assert!(
            card.get(key).is_some(),
            "the model card lacks {key}: {card}"
        );
    }
    assert_eq!(card["object"], "model");
    assert_eq!(card["max_model_len"], 512);
    assert_eq!(card["permission"][0]["object"], "model_permission");
    server.stop();
}

#[test]
fn x_request_id_names_the_journey_and_comes_back_on_every_response() {
    let log = JourneyLog::new();
    let server = Server::start(&["--journey-log", log.arg()], &[]);
    let client = reqwest::blocking::Client::new();
    let completions = format!("{}/v1/completions", server.url);
    let send = |id: &str, body: serde_json::Value| post_with_id(&client, &completions, id, &body);
    let echoed = |response: &reqwest::blocking::Response| {
        response
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let short = serde_json::json!({"model": "tiny", "prompt": "hello", "max_tokens": 3});

    let response = send("client-42", short.clone());
    assert_eq!(echoed(&response).as_deref(), Some("client-42"));
    let (status, body) = json(response);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], "cmpl-client-42");

    let mut streaming = short.clone();
    streaming["stream"] = true.into();
    let response = send("client-sse", streaming);
    assert_eq!(echoed(&response).as_deref(), Some("client-sse"));
    assert!(response.text().expect("the stream").contains("[DONE]"));

    let response = send("bad-1", serde_json::json!({"model": "tiny"}));
    assert_eq!(echoed(&response).as_deref(), Some("bad-1"));
    assert_eq!(response.status(), 400);

    let response = send("has space", short.clone());
    assert!(echoed(&response).is_some_and(|id| id.starts_with("cmpl-")));
    let (status, body) = json(response);
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "X-Request-Id", "{body}");

    // While one request holds an id, another that sends it gets a suffix.
    let long = send(
        "same",
        serde_json::json!({"model": "tiny", "prompt": "hello", "max_tokens": 400, "stream": true, "ignore_eos": true}),
    );
    assert_eq!(echoed(&long).as_deref(), Some("same"));
    let response = send("same", short.clone());
    assert_eq!(echoed(&response).as_deref(), Some("same-1"));
    let (_, body) = json(response);
    assert_eq!(body["id"], "cmpl-same-1");
    drop(long);

    let response = client
        .get(format!("{}/v1/models", server.url))
        .header("X-Request-Id", "models-1")
        .send()
        .expect("answer");
    assert_eq!(echoed(&response).as_deref(), Some("models-1"));
    let response = client
        .get(format!("{}/nowhere", server.url))
        .header("X-Request-Id", "lost-1")
        .send()
        .expect("answer");
    assert_eq!(response.status(), 404);
    assert_eq!(echoed(&response).as_deref(), Some("lost-1"));
    server.stop();

    let ids: std::collections::BTreeSet<String> = log
        .events()
        .into_iter()
        .map(|event| event.request_id.to_string())
        .collect();
    for id in ["client-42", "client-sse", "same", "same-1"] {
        assert!(ids.contains(id), "no journey for {id}: {ids:?}");
    }
    assert!(!ids.iter().any(|id| id.contains(' ')), "{ids:?}");
}

/// The value of one counter of `/metrics`.
fn counter(server: &Server, name: &str) -> f64 {
    let text = server.metrics();
    text.lines()
        .find(|line| line.starts_with(&format!("{name}{{")))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

#[test]
fn cache_salt_keeps_prefix_cache_hits_within_one_salt() {
    let server = Server::start(&[], &[]);
    let client = reqwest::blocking::Client::new();
    let prompt = "a shared system prompt long enough to fill several KV blocks of sixteen tokens";
    let hits_for = |endpoint: &str, salt: Option<&str>| {
        let before = counter(&server, "vllm:prefix_cache_hits_total");
        let mut body = match endpoint {
            "completions" => {
                serde_json::json!({"model": "tiny", "prompt": prompt, "max_tokens": 2})
            }
            _ => serde_json::json!({
                "model": "tiny",
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": 2,
            }),
        };
        if let Some(salt) = salt {
            body["cache_salt"] = salt.into();
        }
        let response = client
            .post(format!(
                "{}/v1/{}",
                server.url,
                endpoint.replace("chat", "chat/completions")
            ))
            .json(&body)
            .send()
            .expect("answer");
        assert_eq!(response.status(), 200, "{:?}", response.text());
        counter(&server, "vllm:prefix_cache_hits_total") - before
    };
    assert_eq!(
        hits_for("completions", Some("tenant-a")),
        0.0,
        "a cold cache"
    );
    assert_eq!(
        hits_for("completions", Some("tenant-b")),
        0.0,
        "another salt shares nothing"
    );
    assert_eq!(hits_for("completions", None), 0.0, "nor does no salt");
    assert!(
        hits_for("completions", Some("tenant-a")) >= 64.0,
        "the same salt hits"
    );
    assert_eq!(hits_for("chat", Some("tenant-c")), 0.0);
    assert!(hits_for("chat", Some("tenant-c")) >= 64.0);

    let response = client
        .post(format!("{}/v1/completions", server.url))
        .json(&serde_json::json!({"model": "tiny", "prompt": "x", "cache_salt": ""}))
        .send()
        .expect("answer");
    let (status, body) = json(response);
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "cache_salt");
    server.stop();
}

#[test]
fn tenants_from_the_gateway_header_or_user_get_bounded_client_indices_and_metrics() {
    let log = JourneyLog::new();
    let server = Server::start(
        &[
            "--journey-log",
            log.arg(),
            "--max-tenants",
            "2",
            "--scheduler",
            "fair",
        ],
        &[],
    );
    let client = reqwest::blocking::Client::new();
    let send = |id: &str, header: Option<&str>, user: Option<&str>| {
        let mut body = serde_json::json!({"model": "tiny", "prompt": "hello", "max_tokens": 2});
        if let Some(user) = user {
            body["user"] = user.into();
        }
        let mut request = client
            .post(format!("{}/v1/completions", server.url))
            .header("X-Request-Id", id)
            .json(&body);
        if let Some(header) = header {
            request = request.header("x-gateway-inference-fairness-id", header);
        }
        let response = request.send().expect("answer");
        assert_eq!(response.status(), 200, "{id}: {:?}", response.text());
    };
    send("anonymous", None, None);
    send("acme-by-header", Some("acme"), Some("bob"));
    send("bob-by-user", None, Some("bob"));
    send("acme-by-user", None, Some("acme"));
    send("carol", None, Some("carol"));
    send("dave", Some("dave"), None);

    let metrics = server.metrics();
    let count = |tenant: &str| {
        metrics
            .lines()
            .find(|line| {
                line.starts_with("waypoint:tenant_requests_total{")
                    && line.contains(&format!("tenant=\"{tenant}\""))
                    && line.contains("finished_reason=\"length\"")
            })
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert_eq!(count("acme"), 2.0, "{metrics}");
    assert_eq!(count("bob"), 1.0);
    assert_eq!(count("(other)"), 2.0, "carol and dave are past the bound");
    assert_eq!(count("(none)"), 1.0);
    assert_eq!(count("carol"), 0.0, "no label beyond the bound");
    assert!(metrics.contains("waypoint:tenant_time_to_first_token_seconds_bucket{"));
    for (tenant, index) in [("acme", 1), ("bob", 2), ("(other)", 3)] {
        assert!(
            metrics
                .lines()
                .any(|line| line.starts_with("waypoint:tenant_info{")
                    && line.contains(&format!("tenant=\"{tenant}\""))
                    && line.contains(&format!("client_index=\"{index}\""))),
            "no tenant_info for {tenant}: {metrics}"
        );
    }
    server.stop();

    let journeys = log.events();
    let index_of = |id: &str| {
        journeys
            .iter()
            .find(|event| event.request_id.to_string() == id)
            .map(|event| event.client_index)
            .unwrap_or_else(|| panic!("no journey for {id}"))
    };
    assert_eq!(index_of("anonymous"), 0);
    assert_eq!(index_of("acme-by-header"), 1, "the header wins over user");
    assert_eq!(index_of("bob-by-user"), 2);
    assert_eq!(index_of("acme-by-user"), 1);
    assert_eq!(index_of("carol"), 3);
    assert_eq!(index_of("dave"), 3);
}

#[test]
fn timings_come_from_the_journey_when_asked_for_and_only_then() {
    let log = JourneyLog::new();
    let server = Server::start(
        &["--enable-request-timings", "--journey-log", log.arg()],
        &[],
    );
    let client = reqwest::blocking::Client::new();
    let completions = format!("{}/v1/completions", server.url);
    let prompt = "timings for a prompt that fills a few blocks of the prefix cache";
    let ask = |id: &str, extra: serde_json::Value| {
        let mut body = serde_json::json!({"model": "tiny", "prompt": prompt, "max_tokens": 5, "ignore_eos": true});
        for (key, value) in extra.as_object().expect("an object") {
            body[key] = value.clone();
        }
        post_with_id(&client, &completions, id, &body)
    };

    let response = ask("plain", serde_json::json!({}));
    assert!(response.headers().get("server-timing").is_none());
    let (_, body) = json(response);
    assert!(body.get("timings").is_none(), "{body}");

    let response = ask("timed", serde_json::json!({"return_timings": true}));
    let server_timing = response
        .headers()
        .get("server-timing")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .expect("a Server-Timing header");
    let (status, body) = json(response);
    assert_eq!(status, 200, "{body}");
    let timings = &body["timings"];
    for phase in ["queue", "prefill", "decode", "ttft", "e2e"] {
        assert!(
            server_timing.contains(&format!("{phase};dur=")),
            "{server_timing}"
        );
        assert!(
            timings[format!("{phase}_ms")]
                .as_f64()
                .is_some_and(|ms| ms >= 0.0),
            "{timings}"
        );
    }
    let ms = |key: &str| timings[key].as_f64().unwrap_or(f64::NAN);
    assert!(ms("ttft_ms") <= ms("e2e_ms"), "{timings}");
    assert!(
        ms("prefill_ms") + ms("decode_ms") <= ms("e2e_ms") + 1e-6,
        "{timings}"
    );
    assert_eq!(timings["prompt_tokens"], body["usage"]["prompt_tokens"]);
    assert_eq!(timings["generated_tokens"], 5);
    assert_eq!(timings["preemptions"], 0);
    assert!(
        timings["cached_tokens"]
            .as_u64()
            .is_some_and(|cached| cached >= 48),
        "{timings}"
    );

    let mut streaming = serde_json::json!({"return_timings": true, "stream": true});
    streaming["stream_options"] = serde_json::json!({"include_usage": true});
    let text = ask("streamed", streaming).text().expect("the stream");
    let chunks: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .filter(|data| *data != "[DONE]")
        .map(|data| serde_json::from_str(data).expect("a JSON chunk"))
        .collect();
    let last = chunks
        .iter()
        .find(|chunk| chunk["choices"][0]["finish_reason"].is_string())
        .expect("a final chunk");
    assert_eq!(last["timings"]["generated_tokens"], 5, "{last}");
    assert_eq!(
        chunks
            .iter()
            .filter(|chunk| chunk.get("timings").is_some())
            .count(),
        1,
        "only the final chunk carries timings"
    );
    server.stop();

    // The steps are the journey's own.
    let events: Vec<_> = log
        .events()
        .into_iter()
        .filter(|event| event.request_id.to_string() == "timed")
        .collect();
    let scheduled = events
        .iter()
        .find(|e| e.event_type == waypoint_scheduler::JourneyEventType::Scheduled)
        .expect("SCHEDULED");
    let finished = events.last().expect("FINISHED");
    assert_eq!(timings["first_scheduler_step"], scheduled.scheduler_step);
    assert_eq!(timings["last_scheduler_step"], finished.scheduler_step);

    let server = Server::start(&[], &[]);
    let (status, body) = json(
        reqwest::blocking::Client::new()
            .post(format!("{}/v1/completions", server.url))
            .json(&serde_json::json!({"model": "tiny", "prompt": "x", "return_timings": true}))
            .send()
            .expect("answer"),
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "return_timings");
    server.stop();
}
