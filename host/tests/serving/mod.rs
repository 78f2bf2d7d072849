//! Helpers of the `waypoint serve` tests: the real binary on a free port, and an OTLP/HTTP
//! receiver that decodes real OTLP protobuf.

// Each test crate that includes this module uses part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

/// A `--journey-log` for `waypoint serve`, in a folder removed when this drops.
pub struct JourneyLog {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
}

impl JourneyLog {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("scratch dir");
        let path = dir.path().join("journeys.jsonl");
        Self { _dir: dir, path }
    }

    /// The path, as the flag's argument.
    pub fn arg(&self) -> &str {
        self.path.to_str().expect("utf-8 path")
    }

    /// The events the server wrote.
    pub fn events(&self) -> Vec<waypoint_scheduler::JourneyEvent> {
        std::fs::read_to_string(&self.path)
            .expect("the journey log")
            .lines()
            .map(|line| {
                waypoint_scheduler::JourneyEvent::from_json_line(line).expect("a journey line")
            })
            .collect()
    }
}

/// A completion request with an `X-Request-Id`.
pub fn post_with_id(
    client: &reqwest::blocking::Client,
    url: &str,
    id: &str,
    body: &serde_json::Value,
) -> reqwest::blocking::Response {
    client
        .post(url)
        .header("X-Request-Id", id)
        .json(body)
        .send()
        .expect("answer")
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Stream one greedy completion of `tokens` tokens per client (`client-N`), all at once;
/// `after_chunks` runs on the calling thread with a count of the chunks received so far.
/// Returns each client's text, or its error.
pub fn stream_greedy(
    url: &str,
    clients: usize,
    tokens: usize,
    after_chunks: impl FnOnce(&AtomicUsize),
) -> Vec<Result<String, String>> {
    let chunks = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let streams: Vec<_> = (0..clients)
            .map(|client| {
                let chunks = &chunks;
                scope.spawn(move || -> Result<String, String> {
                    let response = reqwest::blocking::Client::new()
                        .post(format!("{url}/v1/completions"))
                        .header("X-Request-Id", format!("client-{client}"))
                        .json(&serde_json::json!({
                            "model": "tiny", "prompt": format!("client {client} asks"),
                            "max_tokens": tokens, "temperature": 0, "ignore_eos": true,
                            "stream": true,
                        }))
                        .send()
                        .map_err(|e| e.to_string())?;
                    if response.status() != 200 {
                        return Err(format!("status {}", response.status()));
                    }
                    let mut text = String::new();
                    for line in BufReader::new(response).lines() {
                        let line = line.map_err(|e| e.to_string())?;
                        let Some(data) = line.strip_prefix("data: ") else {
                            continue;
                        };
                        if data == "[DONE]" {
                            return Ok(text);
                        }
                        let chunk: serde_json::Value =
                            serde_json::from_str(data).map_err(|e| e.to_string())?;
                        if chunk.get("error").is_some() {
                            return Err(data.to_owned());
                        }
                        text += chunk["choices"][0]["text"].as_str().unwrap_or_default();
                        chunks.fetch_add(1, Ordering::Relaxed);
                    }
                    Err("the stream ended without [DONE]".into())
                })
            })
            .collect();
        after_chunks(&chunks);
        streams
            .into_iter()
            .map(|stream| stream.join().expect("a client thread"))
            .collect()
    })
}

/// A running `waypoint serve`; killed when dropped.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
}

impl Server {
    /// Start `waypoint serve` with `args` and `env` on a port the kernel picks, and wait until it listens.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        // Port 0 and the address the server reports: a port picked here and bound later can be
        // taken by a parallel test's server in between.
        let mut child = Command::new(env!("CARGO_BIN_EXE_waypoint"))
            .args(["serve", "--port", "0"])
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("waypoint serve starts");
        let stderr = child.stderr.take().expect("piped stderr");
        let (address_tx, address_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("{line}");
                if let Some(url) = line
                    .split_whitespace()
                    .find(|word| word.starts_with("http://"))
                    .filter(|_| line.starts_with("waypoint: serving "))
                {
                    let _ = address_tx.send(url.to_string());
                }
            }
        });
        let mut server = Self {
            child,
            url: String::new(),
        };
        match address_rx.recv_timeout(Duration::from_secs(60)) {
            Ok(url) => server.url = url,
            Err(_) => match server.child.try_wait() {
                Ok(Some(status)) => panic!("waypoint serve exited with {status}"),
                _ => panic!("waypoint serve did not report its address within 60 s"),
            },
        }
        server
    }

    /// The text of `/metrics`.
    pub fn metrics(&self) -> String {
        reqwest::blocking::get(format!("{}/metrics", self.url))
            .and_then(|r| r.text())
            .expect("metrics")
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory of the server process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("/proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// Stop with SIGTERM (a graceful shutdown that flushes spans) and wait.
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A span as received, with the service that sent it.
#[derive(Clone, Debug)]
pub struct Received {
    /// `service.name` of its resource.
    pub service: String,
    /// The span.
    pub span: Span,
}

/// An OTLP trace receiver on loopback (HTTP/protobuf or gRPC).
pub struct Receiver {
    /// Its endpoint (`http://127.0.0.1:<port>`).
    pub endpoint: String,
    spans: Arc<Mutex<Vec<Received>>>,
}

/// The value of a span or event attribute, as text.
pub fn attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes.iter().find(|kv| kv.key == key).and_then(|kv| {
        Some(match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => s.clone(),
            Value::IntValue(i) => i.to_string(),
            Value::DoubleValue(d) => d.to_string(),
            Value::BoolValue(b) => b.to_string(),
            other => format!("{other:?}"),
        })
    })
}

fn collect(sink: &Mutex<Vec<Received>>, request: ExportTraceServiceRequest) {
    let mut sink = sink.lock().expect("receiver lock");
    for resource in request.resource_spans {
        let service = resource
            .resource
            .as_ref()
            .and_then(|r| attribute(&r.attributes, "service.name"))
            .unwrap_or_default();
        for scope in resource.scope_spans {
            for span in scope.spans {
                sink.push(Received {
                    service: service.clone(),
                    span,
                });
            }
        }
    }
}

struct GrpcCollector(Arc<Mutex<Vec<Received>>>);

#[tonic::async_trait]
impl TraceService for GrpcCollector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        collect(&self.0, request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Receiver {
    /// Start an OTLP/gRPC receiver on `runtime`.
    pub fn start_grpc(runtime: &tokio::runtime::Runtime) -> Self {
        let spans: Arc<Mutex<Vec<Received>>> = Arc::default();
        let port = free_port();
        let service = TraceServiceServer::new(GrpcCollector(spans.clone()));
        runtime.spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve(([127, 0, 0, 1], port).into()),
        );
        Self {
            endpoint: format!("http://127.0.0.1:{port}"),
            spans,
        }
    }

    /// Start an OTLP/HTTP receiver on `runtime`.
    pub fn start(runtime: &tokio::runtime::Runtime) -> Self {
        let spans: Arc<Mutex<Vec<Received>>> = Arc::default();
        let sink = spans.clone();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("receiver port");
        let endpoint = format!("http://{}", listener.local_addr().expect("address"));
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| {
                let sink = sink.clone();
                async move {
                    let request = ExportTraceServiceRequest::decode(body)
                        .expect("the body is an OTLP ExportTraceServiceRequest");
                    collect(&sink, request);
                    (
                        [("content-type", "application/x-protobuf")],
                        Vec::<u8>::new(),
                    )
                }
            }),
        );
        runtime.spawn(async move { axum::serve(listener, app).await });
        Self { endpoint, spans }
    }

    /// The spans received so far from `service`.
    pub fn spans(&self, service: &str) -> Vec<Span> {
        self.spans
            .lock()
            .expect("receiver lock")
            .iter()
            .filter(|r| r.service == service)
            .map(|r| r.span.clone())
            .collect()
    }

    /// Wait until `done` holds for `service`'s spans (or 30 s pass), and return them.
    pub fn wait_for(&self, service: &str, done: impl Fn(&[Span]) -> bool) -> Vec<Span> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let spans = self.spans(service);
            if done(&spans) || Instant::now() > deadline {
                return spans;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Spans named `name`.
pub fn named<'a>(spans: &'a [Span], name: &str) -> Vec<&'a Span> {
    spans.iter().filter(|s| s.name == name).collect()
}
