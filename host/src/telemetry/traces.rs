//! Journey tracing over OTLP: the exporter, the `llm_request` span of each HTTP request, the
//! `llm_core` span that carries its journey events, and the `scheduler_steps_<n>` spans of
//! step tracing.

use axum::http::HeaderMap;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt as _, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Array, Context, KeyValue, StringValue, Value};
use opentelemetry_otlp::{SpanExporter, WithExportConfig as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider, Span, SpanData};
use opentelemetry_sdk::Resource;
use waypoint_scheduler::step_trace::AttributeValue;
use waypoint_scheduler::{JourneyEvent, RequestId, StepEvent};

use super::Clock;

/// How spans leave the process (`OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, else
/// `OTEL_EXPORTER_OTLP_PROTOCOL`, else gRPC as in vLLM).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP over gRPC.
    Grpc,
    /// OTLP protobuf over HTTP.
    HttpProtobuf,
}

/// Why tracing could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TracingError {
    /// The protocol variable names something else.
    #[error("unsupported OTLP protocol {0:?}: use grpc or http/protobuf")]
    Protocol(String),
    /// The exporter rejected its settings.
    #[error("OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

impl Protocol {
    /// The protocol the standard variables ask for.
    pub fn from_env() -> Result<Self, TracingError> {
        let value = std::env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL"));
        match value.as_deref() {
            Err(_) | Ok("grpc") => Ok(Self::Grpc),
            Ok("http/protobuf") => Ok(Self::HttpProtobuf),
            Ok(other) => Err(TracingError::Protocol(other.to_owned())),
        }
    }
}

/// Runs an async exporter's calls on the server's tokio runtime: the SDK's batch processor
/// exports from its own thread, where tonic and reqwest would find no reactor.
#[derive(Debug)]
struct OnRuntime {
    exporter: SpanExporter,
    runtime: tokio::runtime::Handle,
}

impl opentelemetry_sdk::trace::SpanExporter for OnRuntime {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let result = self.runtime.block_on(self.exporter.export(batch));
        std::future::ready(result)
    }

    fn shutdown_with_timeout(&mut self, timeout: std::time::Duration) -> OTelSdkResult {
        self.exporter.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.exporter.set_resource(resource);
    }
}

/// The tracers of a server that exports journeys.
pub struct Tracing {
    provider: SdkTracerProvider,
    api: SdkTracer,
    core: SdkTracer,
    steps: SdkTracer,
    clock: Clock,
}

impl Tracing {
    /// Export to `endpoint` (the standard variables when `None`) with a batch processor, on
    /// the current tokio runtime. Export never blocks serving: a collector that is down costs
    /// dropped spans only.
    pub fn new(endpoint: Option<&str>, clock: Clock) -> Result<Self, TracingError> {
        let protocol = Protocol::from_env()?;
        let exporter = match protocol {
            Protocol::Grpc => {
                let builder = SpanExporter::builder().with_tonic();
                match endpoint {
                    Some(endpoint) => builder.with_endpoint(endpoint).build()?,
                    None => builder.build()?,
                }
            }
            Protocol::HttpProtobuf => {
                let builder = SpanExporter::builder().with_http();
                match endpoint {
                    Some(endpoint) => builder.with_endpoint(http_traces_url(endpoint)).build()?,
                    None => builder.build()?,
                }
            }
        };
        let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "waypoint".into());
        let provider = SdkTracerProvider::builder()
            .with_resource(Resource::builder().with_service_name(service).build())
            .with_batch_exporter(OnRuntime {
                exporter,
                runtime: tokio::runtime::Handle::current(),
            })
            .build();
        Ok(Self {
            api: provider.tracer("waypoint.api"),
            core: provider.tracer("waypoint.scheduler"),
            steps: provider.tracer("waypoint.scheduler.step"),
            provider,
            clock,
        })
    }

    /// Export what is pending and stop. Blocks: call it off the async runtime.
    pub fn shutdown(&self) {
        if let Err(error) = self.provider.shutdown() {
            eprintln!("waypoint: flushing spans at shutdown: {error}");
        }
    }
}

/// `http://host:4318` → `http://host:4318/v1/traces`; a URL with a path is kept as given.
fn http_traces_url(endpoint: &str) -> String {
    let after_scheme = endpoint
        .split_once("://")
        .map_or(endpoint, |(_, rest)| rest);
    match after_scheme.find('/') {
        Some(slash) if after_scheme.len() > slash + 1 => endpoint.to_owned(),
        _ => format!("{}/v1/traces", endpoint.trim_end_matches('/')),
    }
}

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

fn event_time(ns: u64) -> Vec<KeyValue> {
    vec![KeyValue::new("event.ts.monotonic", ns as f64 / 1e9)]
}

/// The `llm_request` span of one HTTP request. Exactly one of `api.DEPARTED` / `api.ABORTED`
/// ends it; dropping it unfinished counts as a client disconnect.
pub struct ApiSpan {
    span: Option<Span>,
    clock: Clock,
}

impl ApiSpan {
    /// No span: the request is not sampled or tracing is off.
    pub fn none(clock: Clock) -> Self {
        Self { span: None, clock }
    }

    /// Start the span at the request's arrival, as a child of the client's `traceparent` when
    /// one was sent, and record `api.ARRIVED`.
    pub fn start(tracing: &Tracing, route: &'static str, headers: &HeaderMap, now_ns: u64) -> Self {
        let parent = TraceContextPropagator::new().extract(&Headers(headers));
        let mut span = tracing
            .api
            .span_builder("llm_request")
            .with_kind(SpanKind::Server)
            .with_start_time(tracing.clock.wall(now_ns))
            .with_attributes([
                KeyValue::new("http.route", route),
                KeyValue::new("gen_ai.provider.name", "waypoint"),
            ])
            .start_with_context(&tracing.api, &parent);
        span.add_event_with_timestamp(
            "api.ARRIVED",
            tracing.clock.wall(now_ns),
            event_time(now_ns),
        );
        Self {
            span: Some(span),
            clock: tracing.clock,
        }
    }

    /// Whether a span is being recorded.
    pub fn is_sampled(&self) -> bool {
        self.span.is_some()
    }

    /// The context an `llm_core` span is started in.
    pub fn context(&self) -> Option<Context> {
        let span = self.span.as_ref()?;
        Some(Context::new().with_remote_span_context(span.span_context().clone()))
    }

    /// Add span attributes.
    pub fn set_attributes(&mut self, attributes: impl IntoIterator<Item = KeyValue>) {
        if let Some(span) = self.span.as_mut() {
            span.set_attributes(attributes);
        }
    }

    /// Record `api.<name>` (`HANDOFF_TO_CORE`, `FIRST_RESPONSE_FROM_CORE`).
    pub fn event(&mut self, name: &'static str, now_ns: u64) {
        if let Some(span) = self.span.as_mut() {
            span.add_event_with_timestamp(name, self.clock.wall(now_ns), event_time(now_ns));
        }
    }

    /// The response was handed to the HTTP layer: `api.DEPARTED`, end.
    pub fn departed(&mut self, now_ns: u64) {
        if let Some(mut span) = self.span.take() {
            let at = self.clock.wall(now_ns);
            span.add_event_with_timestamp("api.DEPARTED", at, event_time(now_ns));
            span.end_with_timestamp(at);
        }
    }

    /// Any other exit: `api.ABORTED` with its reason (and error status when there is an
    /// error message), end.
    pub fn aborted(&mut self, reason: &'static str, error: Option<&str>, now_ns: u64) {
        if let Some(mut span) = self.span.take() {
            let at = self.clock.wall(now_ns);
            let mut attributes = event_time(now_ns);
            attributes.push(KeyValue::new("reason", reason));
            if let Some(error) = error {
                attributes.push(KeyValue::new("error", error.to_owned()));
                span.set_attribute(KeyValue::new("error.type", reason));
                span.set_status(Status::error(error.to_owned()));
            }
            span.add_event_with_timestamp("api.ABORTED", at, attributes);
            span.end_with_timestamp(at);
        }
    }
}

impl Drop for ApiSpan {
    fn drop(&mut self) {
        let now = self.clock.now_ns();
        self.aborted("client_disconnect", None, now);
    }
}

/// A string array attribute value.
pub fn strings(values: impl IntoIterator<Item = String>) -> Value {
    Value::Array(Array::String(
        values.into_iter().map(StringValue::from).collect(),
    ))
}

fn journey_attributes(event: &JourneyEvent) -> Vec<KeyValue> {
    let mut attributes = vec![
        KeyValue::new("event.type", event.event_type.as_str()),
        KeyValue::new("ts.monotonic", event.ts_monotonic_ns as f64 / 1e9),
        KeyValue::new("ts.monotonic_ns", event.ts_monotonic_ns as i64),
        KeyValue::new("scheduler.step", event.scheduler_step as i64),
        KeyValue::new("phase", event.phase.as_str()),
        KeyValue::new("prefill.done_tokens", i64::from(event.prefill_done_tokens)),
        KeyValue::new(
            "prefill.total_tokens",
            i64::from(event.prefill_total_tokens),
        ),
        KeyValue::new("decode.done_tokens", i64::from(event.decode_done_tokens)),
        KeyValue::new("decode.max_tokens", i64::from(event.decode_max_tokens)),
        KeyValue::new("num_preemptions", i64::from(event.num_preemptions_so_far)),
    ];
    if let Some(kind) = event.schedule_kind {
        attributes.push(KeyValue::new("schedule.kind", kind.as_str()));
    }
    if let Some(status) = event.finish_status {
        attributes.push(KeyValue::new("finish.status", status.as_str()));
    }
    attributes
}

fn step_attributes(attributes: Vec<(&'static str, AttributeValue)>) -> Vec<KeyValue> {
    attributes
        .into_iter()
        .map(|(key, value)| match value {
            AttributeValue::Int(v) => KeyValue::new(key, v),
            AttributeValue::Float(v) => KeyValue::new(key, v),
            AttributeValue::Str(v) => KeyValue::new(key, v.to_string()),
        })
        .collect()
}

/// A traced request's `llm_core` span, held in the engine's record of the request.
#[derive(Debug)]
pub struct RequestSpan(Span);

impl Drop for RequestSpan {
    /// A span still open here outlived its request's record: the engine thread stopped.
    fn drop(&mut self) {
        if self.0.is_recording() {
            self.0.set_status(Status::error("the engine stopped"));
            self.0.end();
        }
    }
}

/// The engine thread's spans: it opens each traced request's `llm_core` (which the request's
/// record then holds) and keeps the open `scheduler_steps_<n>` window.
pub struct CoreSpans {
    tracing: std::sync::Arc<Tracing>,
    window: Option<Span>,
}

impl CoreSpans {
    /// No spans yet.
    pub fn new(tracing: std::sync::Arc<Tracing>) -> Self {
        Self {
            tracing,
            window: None,
        }
    }

    /// Start `llm_core` for a request the engine accepted, under its `llm_request`.
    pub fn open(&self, id: &RequestId, parent: &Context, now_ns: u64) -> RequestSpan {
        let core = &self.tracing.core;
        let span = core
            .span_builder("llm_core")
            .with_kind(SpanKind::Internal)
            .with_start_time(self.tracing.clock.wall(now_ns))
            .with_attributes([KeyValue::new("gen_ai.request.id", id.to_string())])
            .start_with_context(core, parent);
        RequestSpan(span)
    }

    /// Record a journey event as a `journey.<TYPE>` span event; FINISHED ends the span.
    pub fn journey(&self, span: &mut RequestSpan, event: &JourneyEvent) {
        let at = self.tracing.clock.wall(event.ts_monotonic_ns);
        span.0.add_event_with_timestamp(
            format!("journey.{}", event.event_type.as_str()),
            at,
            journey_attributes(event),
        );
        if event.finish_status.is_some() {
            span.0.end_with_timestamp(at);
        }
    }

    /// End a finished request's span, if no FINISHED event ended it.
    pub fn finish(&self, mut span: RequestSpan, now_ns: u64) {
        if span.0.is_recording() {
            span.0.end_with_timestamp(self.tracing.clock.wall(now_ns));
        }
    }

    /// End a failed request's span with the error, after its FINISHED(error) event when its
    /// journey had begun (the scheduler that held it was lost to a fault, or it was shed).
    pub fn fail(
        &self,
        mut span: RequestSpan,
        error: &str,
        finished: Option<&JourneyEvent>,
        now_ns: u64,
    ) {
        if span.0.is_recording() {
            span.0.set_status(Status::error(error.to_owned()));
            match finished {
                Some(event) => self.journey(&mut span, event),
                None => span.0.end_with_timestamp(self.tracing.clock.wall(now_ns)),
            }
        }
    }

    /// The running scheduler's policy was swapped: a `scheduler.POLICY_SWAPPED` event on the
    /// open step window and on every live request's `llm_core`.
    pub fn policy_swapped<'a>(
        &mut self,
        requests: impl Iterator<Item = &'a mut RequestSpan>,
        from: &str,
        to: &str,
        now_ns: u64,
    ) {
        let at = self.tracing.clock.wall(now_ns);
        let attributes = || {
            [
                KeyValue::new("policy.from", from.to_owned()),
                KeyValue::new("policy.to", to.to_owned()),
            ]
        };
        if let Some(window) = self.window.as_mut() {
            window.add_event_with_timestamp("scheduler.POLICY_SWAPPED", at, attributes().to_vec());
        }
        for span in requests {
            span.0
                .add_event_with_timestamp("scheduler.POLICY_SWAPPED", at, attributes().to_vec());
        }
    }

    /// Open, fill and close `scheduler_steps_<n>` windows from the scheduler's step records;
    /// `ts_end_ns` is when the step's work ended.
    pub fn steps(&mut self, events: &[StepEvent], ts_end_ns: u64) {
        let at = self.tracing.clock.wall(ts_end_ns);
        for event in events {
            match event {
                StepEvent::WindowOpened {
                    sequence,
                    step_range_start,
                    closure_interval,
                } => {
                    let steps = &self.tracing.steps;
                    let span = steps
                        .span_builder(format!("scheduler_steps_{sequence}"))
                        .with_kind(SpanKind::Internal)
                        .with_start_time(at)
                        .with_attributes([
                            KeyValue::new("scheduler.span_sequence", *sequence as i64),
                            KeyValue::new("scheduler.step_range_start", *step_range_start as i64),
                            KeyValue::new(
                                "scheduler.closure_interval",
                                i64::from(*closure_interval),
                            ),
                        ])
                        .start_with_context(steps, &Context::new());
                    if let Some(mut previous) = self.window.replace(span) {
                        previous.end_with_timestamp(at);
                    }
                }
                StepEvent::BatchSummary(summary) => {
                    if let Some(span) = self.window.as_mut() {
                        let attributes = step_attributes(summary.attributes(ts_end_ns));
                        span.add_event_with_timestamp("step.BATCH_SUMMARY", at, attributes);
                    }
                }
                StepEvent::RequestSnapshot(snapshot) => {
                    if let Some(span) = self.window.as_mut() {
                        let attributes = step_attributes(snapshot.attributes());
                        span.add_event_with_timestamp("step.REQUEST_SNAPSHOT", at, attributes);
                    }
                }
                StepEvent::WindowClosed { step_range_end, .. } => {
                    if let Some(mut span) = self.window.take() {
                        span.set_attribute(KeyValue::new(
                            "scheduler.step_range_end",
                            *step_range_end as i64,
                        ));
                        span.end_with_timestamp(at);
                    }
                }
            }
        }
    }
}

impl Drop for CoreSpans {
    fn drop(&mut self) {
        if let Some(mut window) = self.window.take() {
            window.end();
        }
    }
}
