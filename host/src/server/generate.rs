//! `/v1/completions` and `/v1/chat/completions`: validate, hand the request to the engine
//! thread, and answer with one JSON body or a stream of server-sent events — recording the
//! `llm_request` span and the latency metrics on every exit path.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::Stream;
use opentelemetry::KeyValue;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use waypoint_scheduler::{NewRequest, RequestId};

use super::protocol::{
    ChatRequest, CompletionRequest, Content, Message, OneOrMany, Prompt, Sampling, Timings, Usage,
};
use super::tenants::Tenant;
use super::{ApiError, AppState, REQUEST_ID};
use crate::engine::worker::{finish_reason, JourneyTally, Rejection, StreamEvent, Submission};
use crate::engine::{Completion, EngineRequest};
use crate::model::sampling::SamplingParams;
use crate::telemetry::metrics::RequestTimes;
use crate::telemetry::traces::{strings, ApiSpan};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
    Completions,
    Chat,
}

impl Endpoint {
    fn route(self) -> &'static str {
        match self {
            Self::Completions => "/v1/completions",
            Self::Chat => "/v1/chat/completions",
        }
    }

    fn id_prefix(self) -> &'static str {
        match self {
            Self::Completions => "cmpl",
            Self::Chat => "chatcmpl",
        }
    }

    fn operation(self) -> &'static str {
        match self {
            Self::Completions => "text_completion",
            Self::Chat => "chat",
        }
    }
}

/// `POST /v1/completions`.
pub async fn completions(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    serve(app, Endpoint::Completions, headers, body).await
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    serve(app, Endpoint::Chat, headers, body).await
}

/// A validated request, ready for the engine.
struct Prepared {
    request: NewRequest,
    /// The deadline relative to arrival; the request's absolute one is set on submission.
    deadline_after_ns: Option<u64>,
    tenant: Tenant,
    timings: bool,
    sampling: SamplingParams,
    stop: Vec<String>,
    stream: bool,
    include_usage: bool,
}

pub(super) fn parse<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let body =
        body.map_err(|rejection| ApiError::new(rejection.status(), rejection.body_text()))?;
    serde_json::from_slice(&body).map_err(ApiError::invalid_body)
}

/// A plain chat template that any byte- or BPE-tokenized model can follow; with
/// `add_generation_prompt`, it ends by opening the assistant's turn.
pub(super) fn chat_prompt(
    messages: &[Message],
    add_generation_prompt: bool,
) -> Result<String, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid_param(
            "messages",
            "messages must not be empty",
        ));
    }
    let mut prompt = String::new();
    for message in messages {
        let text = match &message.content {
            None => String::new(),
            Some(Content::Text(text)) => text.clone(),
            Some(Content::Parts(parts)) => {
                let mut text = String::new();
                for part in parts {
                    if part.kind != "text" {
                        return Err(ApiError::invalid_param(
                            "messages",
                            format!("content parts of type {:?} are not supported", part.kind),
                        ));
                    }
                    text.push_str(&part.text);
                }
                text
            }
        };
        prompt.push_str(&format!("<|{}|>\n{text}\n", message.role));
    }
    if add_generation_prompt {
        prompt.push_str("<|assistant|>\n");
    }
    Ok(prompt)
}

fn prepare(
    app: &AppState,
    endpoint: Endpoint,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    id: &str,
    span: &mut ApiSpan,
) -> Result<Prepared, ApiError> {
    app.authorize(headers)?;
    let (model, prompt_tokens, sampling) = match endpoint {
        Endpoint::Completions => {
            let request: CompletionRequest = parse(body)?;
            let tokens = match request.prompt {
                Prompt::Text(text) => encode(app, &text)?,
                Prompt::Tokens(tokens) => tokens,
                Prompt::Texts(mut texts) if texts.len() == 1 => encode(app, &texts.remove(0))?,
                Prompt::TokenLists(mut lists) if lists.len() == 1 => lists.remove(0),
                _ => {
                    return Err(ApiError::invalid_param(
                        "prompt",
                        "give exactly one prompt per request",
                    ))
                }
            };
            (request.model, tokens, request.sampling)
        }
        Endpoint::Chat => {
            let request: ChatRequest = parse(body)?;
            let tokens = encode(app, &chat_prompt(&request.messages, true)?)?;
            (request.model, tokens, request.sampling)
        }
    };
    let model = model.unwrap_or_else(|| app.model_name.clone());
    app.check_model(&model)?;
    span.set_attributes([
        KeyValue::new("gen_ai.operation.name", endpoint.operation()),
        KeyValue::new("gen_ai.request.model", model),
        KeyValue::new("gen_ai.request.id", id.to_owned()),
        KeyValue::new("gen_ai.response.id", id.to_owned()),
        KeyValue::new("gen_ai.response.model", app.model_name.clone()),
        KeyValue::new("gen_ai.usage.input_tokens", prompt_tokens.len() as i64),
    ]);
    check_prompt(app, &prompt_tokens)?;
    let tenant = app.tenants.resolve(headers, sampling.user.as_deref())?;
    app.metrics.tenant_seen(&tenant.label, tenant.client_index);
    span.set_attributes([
        KeyValue::new("waypoint.tenant", tenant.name.clone()),
        KeyValue::new("waypoint.client_index", i64::from(tenant.client_index)),
    ]);
    let prepared = sampling_of(app, endpoint, sampling, prompt_tokens, id, tenant)?;
    let mut attributes = vec![
        KeyValue::new(
            "gen_ai.request.max_tokens",
            i64::from(prepared.request.max_tokens),
        ),
        KeyValue::new(
            "gen_ai.request.temperature",
            f64::from(prepared.sampling.temperature),
        ),
        KeyValue::new("gen_ai.request.top_p", f64::from(prepared.sampling.top_p)),
        KeyValue::new("gen_ai.request.top_k", prepared.sampling.top_k as i64),
        KeyValue::new("gen_ai.request.seed", prepared.sampling.seed as i64),
    ];
    if !prepared.stop.is_empty() {
        attributes.push(KeyValue::new(
            "gen_ai.request.stop_sequences",
            strings(prepared.stop.iter().cloned()),
        ));
    }
    span.set_attributes(attributes);
    Ok(prepared)
}

fn encode(app: &AppState, text: &str) -> Result<Vec<u32>, ApiError> {
    app.vocabulary
        .encode(text)
        .map_err(|e| ApiError::invalid_param("prompt", format!("tokenizing the prompt: {e}")))
}

fn check_prompt(app: &AppState, tokens: &[u32]) -> Result<(), ApiError> {
    if tokens.is_empty() {
        return Err(ApiError::invalid_param("prompt", "the prompt is empty"));
    }
    if let Some(bad) = tokens.iter().find(|&&t| t as usize >= app.vocab_size) {
        return Err(ApiError::invalid_param(
            "prompt",
            format!(
                "token id {bad} is outside the vocabulary of {} tokens",
                app.vocab_size
            ),
        ));
    }
    if tokens.len() >= app.max_model_len as usize {
        return Err(ApiError::invalid_param(
            "prompt",
            format!(
                "This model's maximum context length is {} tokens. However, your prompt has {} tokens, which leaves no room for output.",
                app.max_model_len,
                tokens.len()
            ),
        ));
    }
    Ok(())
}

fn sampling_of(
    app: &AppState,
    endpoint: Endpoint,
    sampling: Sampling,
    prompt: Vec<u32>,
    id: &str,
    tenant: Tenant,
) -> Result<Prepared, ApiError> {
    if sampling.n.unwrap_or(1) != 1 {
        return Err(ApiError::invalid_param("n", "only n = 1 is supported"));
    }
    if sampling
        .logprobs
        .as_ref()
        .is_some_and(|v| !v.is_null() && *v != false)
    {
        return Err(ApiError::invalid_param(
            "logprobs",
            "logprobs are not supported",
        ));
    }
    if sampling.echo {
        return Err(ApiError::invalid_param("echo", "echo is not supported"));
    }
    let stop = sampling.stop.map(OneOrMany::into_vec).unwrap_or_default();
    if stop.len() > MAX_STOP_STRINGS || stop.iter().any(|s| s.len() > MAX_STOP_STRING_LEN) {
        return Err(ApiError::invalid_param(
            "stop",
            format!(
                "stop takes at most {MAX_STOP_STRINGS} strings of at most \
                 {MAX_STOP_STRING_LEN} bytes each"
            ),
        ));
    }
    if sampling.stop_token_ids.len() > MAX_STOP_TOKEN_IDS {
        return Err(ApiError::invalid_param(
            "stop_token_ids",
            format!("stop_token_ids takes at most {MAX_STOP_TOKEN_IDS} token ids"),
        ));
    }
    let temperature = sampling.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid_param(
            "temperature",
            "temperature must be in [0, 2]",
        ));
    }
    let top_p = sampling.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid_param("top_p", "top_p must be in (0, 1]"));
    }
    let top_k = match sampling.top_k.unwrap_or(0) {
        -1 | 0 => 0,
        k if k > 0 => k as usize,
        _ => {
            return Err(ApiError::invalid_param(
                "top_k",
                "top_k must be -1, 0 or positive",
            ))
        }
    };
    let room = app.max_model_len - prompt.len() as u32;
    let default_max = match endpoint {
        Endpoint::Completions => 16.min(room),
        Endpoint::Chat => room,
    };
    let max_tokens = sampling
        .max_completion_tokens
        .or(sampling.max_tokens)
        .unwrap_or(default_max);
    if max_tokens == 0 {
        return Err(ApiError::invalid_param(
            "max_tokens",
            "max_tokens must be at least 1",
        ));
    }
    if max_tokens > room {
        return Err(ApiError::invalid_param(
            "max_tokens",
            format!(
                "This model's maximum context length is {} tokens. However, you requested {} tokens ({} in the prompt, {max_tokens} in the completion).",
                app.max_model_len,
                prompt.len() as u32 + max_tokens,
                prompt.len()
            ),
        ));
    }
    if sampling.min_tokens > max_tokens {
        return Err(ApiError::invalid_param(
            "min_tokens",
            "min_tokens must not exceed max_tokens",
        ));
    }
    if sampling.return_timings && !app.request_timings {
        return Err(ApiError::invalid_param(
            "return_timings",
            "request timings are off: start the server with --enable-request-timings",
        ));
    }
    if sampling
        .cache_salt
        .as_ref()
        .is_some_and(|salt| salt.is_empty() || salt.len() > MAX_CACHE_SALT_LEN)
    {
        return Err(ApiError::invalid_param(
            "cache_salt",
            format!("cache_salt must be a non-empty string of at most {MAX_CACHE_SALT_LEN} bytes"),
        ));
    }
    if sampling
        .deadline_ms
        .is_some_and(|ms| ms == 0 || ms > MAX_DEADLINE_MS)
    {
        return Err(ApiError::invalid_param(
            "deadline_ms",
            format!("deadline_ms must be between 1 and {MAX_DEADLINE_MS} (a day)"),
        ));
    }
    let seed = sampling.seed.unwrap_or_else(|| app.random());
    Ok(Prepared {
        deadline_after_ns: sampling.deadline_ms.map(|ms| ms * 1_000_000),
        request: NewRequest {
            client_index: tenant.client_index,
            max_tokens,
            min_tokens: sampling.min_tokens,
            stop_token_ids: sampling.stop_token_ids,
            priority: sampling.priority,
            cache_salt: sampling.cache_salt,
            eos_token_id: if sampling.ignore_eos {
                None
            } else {
                app.eos_token_id
            },
            journey_sampled: false,
            ..NewRequest::new(id, prompt)
        },
        sampling: SamplingParams {
            temperature,
            top_p,
            top_k,
            seed,
        },
        tenant,
        timings: sampling.return_timings,
        stop,
        stream: sampling.stream,
        include_usage: sampling.stream_options.unwrap_or_default().include_usage,
    })
}

/// Aborts the request in the scheduler if its handler goes away before it finished.
struct AbortOnDrop {
    app: Arc<AppState>,
    id: RequestId,
    /// The tenant's metrics label.
    tenant: String,
    finished: bool,
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if !self.finished {
            self.app.metrics.tenant_aborted(&self.tenant);
            self.app.engine.abort(self.id.clone());
        }
    }
}

/// A request in flight: its events, span and timings.
struct Flight {
    endpoint: Endpoint,
    id: String,
    created: u64,
    arrival_ns: u64,
    prompt_tokens: u64,
    events: UnboundedReceiver<StreamEvent>,
    guard: AbortOnDrop,
    span: ApiSpan,
    first_token_ns: Option<u64>,
    last_token_ns: Option<u64>,
    text: String,
    /// Whether the response carries the request's timings.
    timings: bool,
}

/// What one event from the engine means for the response.
enum Progress {
    Text(String),
    Done(Box<Completion>, JourneyTally),
    Failed(String),
}

impl Flight {
    /// The next thing to tell the client.
    async fn next(&mut self) -> Progress {
        loop {
            match self.events.recv().await {
                Some(StreamEvent::Delta {
                    text,
                    token_ids,
                    at_ns,
                }) => {
                    if !token_ids.is_empty() {
                        self.token_arrived(at_ns);
                    }
                    if !text.is_empty() {
                        return Progress::Text(text);
                    }
                }
                Some(StreamEvent::Finished(completion, journey)) => {
                    self.guard.finished = true;
                    return Progress::Done(completion, journey);
                }
                Some(StreamEvent::Failed { error }) => {
                    self.guard.finished = true;
                    return Progress::Failed(error);
                }
                Some(StreamEvent::Accepted { .. } | StreamEvent::Rejected(_)) => {}
                None => {
                    self.guard.finished = true;
                    return Progress::Failed("the engine stopped".into());
                }
            }
        }
    }

    fn token_arrived(&mut self, at_ns: u64) {
        let metrics = &self.guard.app.metrics;
        match self.last_token_ns {
            None => {
                self.first_token_ns = Some(at_ns);
                metrics.first_token(
                    seconds(at_ns.saturating_sub(self.arrival_ns)),
                    &self.guard.tenant,
                );
                self.span.event("api.FIRST_RESPONSE_FROM_CORE", at_ns);
            }
            Some(last) => metrics.inter_token(seconds(at_ns.saturating_sub(last))),
        }
        self.last_token_ns = Some(at_ns);
    }

    /// Record the finished request: metrics and the span's usage attributes. Returns OpenAI's
    /// finish reason, and the request's timings when it asked for them.
    fn finished(
        &mut self,
        completion: &Completion,
        journey: &JourneyTally,
    ) -> (&'static str, Option<Timings>) {
        let reason = finish_reason(completion.finish_status);
        let since = |from: Option<u64>, to: Option<u64>| Some(seconds(to?.saturating_sub(from?)));
        let times = RequestTimes {
            e2e: seconds(completion.finish_ns.saturating_sub(self.arrival_ns)),
            queue: since(Some(completion.arrival_ns), completion.first_scheduled_ns),
            prefill: since(completion.first_scheduled_ns, completion.first_token_ns),
            decode: since(completion.first_token_ns, Some(completion.finish_ns)),
            inference: since(completion.first_scheduled_ns, Some(completion.finish_ns)),
        };
        let generated = completion.token_ids.len() as u64;
        self.guard.app.metrics.request_finished(
            reason,
            times,
            self.prompt_tokens,
            generated,
            &self.guard.tenant,
        );
        self.span.set_attributes([
            KeyValue::new("gen_ai.usage.output_tokens", generated as i64),
            KeyValue::new(
                "gen_ai.response.finish_reasons",
                strings([reason.to_owned()]),
            ),
        ]);
        let ms = |seconds: f64| seconds * 1e3;
        let timings = self.timings.then(|| Timings {
            queue_ms: times.queue.map(ms),
            prefill_ms: times.prefill.map(ms),
            decode_ms: times.decode.map(ms),
            ttft_ms: self
                .first_token_ns
                .map(|at| ms(seconds(at.saturating_sub(self.arrival_ns)))),
            e2e_ms: ms(times.e2e),
            prompt_tokens: self.prompt_tokens,
            cached_tokens: completion.cached_tokens,
            generated_tokens: generated,
            preemptions: journey.preemptions(),
            first_scheduler_step: journey.first_scheduled_step,
            last_scheduler_step: journey.last_step(),
        });
        (reason, timings)
    }

    fn usage(&self, completion: &Completion) -> Usage {
        Usage::new(self.prompt_tokens, completion.token_ids.len() as u64)
    }

    fn model(&self) -> &str {
        &self.guard.app.model_name
    }

    fn now(&self) -> u64 {
        self.guard.app.clock.now_ns()
    }

    fn chunk(
        &self,
        text: Option<&str>,
        finish_reason: Option<&str>,
        first: bool,
    ) -> serde_json::Value {
        let choice = match self.endpoint {
            Endpoint::Completions => serde_json::json!({
                "index": 0,
                "text": text.unwrap_or_default(),
                "logprobs": null,
                "finish_reason": finish_reason,
            }),
            Endpoint::Chat => {
                let mut delta = serde_json::Map::new();
                if first {
                    delta.insert("role".into(), "assistant".into());
                }
                if let Some(text) = text {
                    delta.insert("content".into(), text.into());
                }
                serde_json::json!({
                    "index": 0,
                    "delta": delta,
                    "logprobs": null,
                    "finish_reason": finish_reason,
                })
            }
        };
        serde_json::json!({
            "id": self.id,
            "object": match self.endpoint {
                Endpoint::Completions => "text_completion",
                Endpoint::Chat => "chat.completion.chunk",
            },
            "created": self.created,
            "model": self.model(),
            "choices": [choice],
        })
    }
}

fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// The longest `deadline_ms` taken: a day.
const MAX_DEADLINE_MS: u64 = 86_400_000;

/// The longest `cache_salt` taken: it is hashed into a request's first block, not stored per
/// block, but it still crosses into the scheduler with the request.
const MAX_CACHE_SALT_LEN: usize = 1024;

/// The most stop strings a request may give. OpenAI takes 4 and vLLM any number; clients
/// written for vLLM may send a model's several turn markers, and the engine thread matches each
/// new byte of text against all of them.
const MAX_STOP_STRINGS: usize = 64;

/// The longest stop string taken, in bytes.
const MAX_STOP_STRING_LEN: usize = 1024;

/// The most `stop_token_ids` taken: the scheduler checks every sampled token against them.
const MAX_STOP_TOKEN_IDS: usize = 1024;

/// The longest `X-Request-Id` taken.
const MAX_REQUEST_ID_LEN: usize = 256;

/// The client's `X-Request-Id`, if it sent one that can name a request.
fn requested_id(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(&REQUEST_ID) else {
        return Ok(None);
    };
    let id = value.to_str().ok().filter(|id| {
        (1..=MAX_REQUEST_ID_LEN).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic())
    });
    id.map(|id| Some(id.to_owned())).ok_or_else(|| {
        ApiError::invalid_param(
            "X-Request-Id",
            format!(
                "X-Request-Id must be 1 to {MAX_REQUEST_ID_LEN} visible ASCII characters \
                 without spaces"
            ),
        )
    })
}

/// `response` with the request's id in `X-Request-Id`.
fn echoed(mut response: Response, id: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

async fn serve(
    app: Arc<AppState>,
    endpoint: Endpoint,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let (id, response) = answer(app, endpoint, headers, body).await;
    echoed(response, &id)
}

/// The response to a completion request, and the request's id, which every response carries.
async fn answer(
    app: Arc<AppState>,
    endpoint: Endpoint,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> (String, Response) {
    let arrival_ns = app.clock.now_ns();
    let sampled = app.sample_journey();
    let mut span = match (&app.tracing, sampled) {
        (Some(tracing), true) => ApiSpan::start(tracing, endpoint.route(), &headers, arrival_ns),
        _ => ApiSpan::none(app.clock),
    };
    let requested = match requested_id(&headers) {
        Ok(requested) => requested,
        Err(error) => {
            let id = app.response_id(endpoint.id_prefix());
            return (id, refuse(&mut span, &app, "validation_error", error));
        }
    };
    if let Some(requested) = &requested {
        span.set_attributes([KeyValue::new(
            "http.request.header.x-request-id",
            strings([requested.clone()]),
        )]);
    }
    let id = requested
        .clone()
        .unwrap_or_else(|| app.response_id(endpoint.id_prefix()));
    let prepared = match prepare(&app, endpoint, &headers, body, &id, &mut span) {
        Ok(prepared) => prepared,
        Err(error) => return (id, refuse(&mut span, &app, "validation_error", error)),
    };
    if let Some(reason) = app.engine.unavailable() {
        let error = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("{reason}; retry"));
        return (id, refuse(&mut span, &app, "unavailable", error));
    }
    let prompt_tokens = prepared.request.prompt_token_ids.len() as u64;
    let tenant = prepared.tenant.label;
    let (sender, events) = unbounded_channel();
    let submission = Submission {
        request: EngineRequest {
            request: NewRequest {
                // Timings come from the journey, so a request that asks for them records one.
                journey_sampled: sampled || prepared.timings,
                arrival_ns,
                deadline_ns: prepared
                    .deadline_after_ns
                    .map(|after| arrival_ns.saturating_add(after)),
                ..prepared.request
            },
            sampling: prepared.sampling,
        },
        stop: prepared.stop,
        trace_parent: span.context(),
        events: sender,
    };
    if app.engine.submit(submission).is_err() {
        let error = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the engine has stopped");
        return (id, refuse(&mut span, &app, "unavailable", error));
    }
    let mut flight = Flight {
        endpoint,
        created: app.created_now(),
        id: id.clone(),
        arrival_ns,
        prompt_tokens,
        events,
        guard: AbortOnDrop {
            app: app.clone(),
            id: id.as_str().into(),
            tenant,
            finished: false,
        },
        span,
        first_token_ns: None,
        last_token_ns: None,
        text: String::new(),
        timings: prepared.timings,
    };
    let id = match flight.events.recv().await {
        Some(StreamEvent::Accepted {
            at_ns,
            id: accepted,
        }) => {
            flight.span.event("api.HANDOFF_TO_CORE", at_ns);
            let accepted = accepted.to_string();
            if accepted != id {
                flight.span.set_attributes([
                    KeyValue::new("gen_ai.request.id", accepted.clone()),
                    KeyValue::new("gen_ai.response.id", accepted.clone()),
                ]);
            }
            flight.guard.id = accepted.as_str().into();
            // A client's own id gets the endpoint's prefix in the body, as in vLLM.
            flight.id = match requested {
                Some(_) => format!("{}-{accepted}", endpoint.id_prefix()),
                None => accepted.clone(),
            };
            accepted
        }
        Some(StreamEvent::Rejected(rejection)) => {
            flight.guard.finished = true;
            let (reason, error) = match rejection {
                Rejection::Invalid(message) => ("validation_error", ApiError::invalid(message)),
                Rejection::Unavailable(message) => (
                    "unavailable",
                    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message),
                ),
            };
            return (id, refuse(&mut flight.span, &app, reason, error));
        }
        _ => {
            flight.guard.finished = true;
            let error = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the engine has stopped");
            return (id, refuse(&mut flight.span, &app, "unavailable", error));
        }
    };
    let response = if prepared.stream {
        Sse::new(sse(flight, prepared.include_usage))
            .keep_alive(KeepAlive::default())
            .into_response()
    } else {
        respond(flight).await
    };
    (id, response)
}

fn refuse(span: &mut ApiSpan, app: &AppState, reason: &'static str, error: ApiError) -> Response {
    span.aborted(reason, Some(&error.message), app.clock.now_ns());
    error.into_response()
}

async fn respond(mut flight: Flight) -> Response {
    loop {
        match flight.next().await {
            Progress::Text(text) => flight.text.push_str(&text),
            Progress::Done(completion, journey) => {
                let (reason, timings) = flight.finished(&completion, &journey);
                let choice = match flight.endpoint {
                    Endpoint::Completions => serde_json::json!({
                        "index": 0, "text": flight.text, "logprobs": null, "finish_reason": reason,
                    }),
                    Endpoint::Chat => serde_json::json!({
                        "index": 0,
                        "message": {"role": "assistant", "content": flight.text},
                        "logprobs": null,
                        "finish_reason": reason,
                    }),
                };
                let mut body = serde_json::json!({
                    "id": flight.id,
                    "object": match flight.endpoint {
                        Endpoint::Completions => "text_completion",
                        Endpoint::Chat => "chat.completion",
                    },
                    "created": flight.created,
                    "model": flight.model(),
                    "choices": [choice],
                    "usage": flight.usage(&completion),
                });
                let now = flight.now();
                flight.span.departed(now);
                let Some(timings) = timings else {
                    return Json(body).into_response();
                };
                body["timings"] = serde_json::json!(timings);
                let mut response = Json(body).into_response();
                if let Ok(value) = HeaderValue::from_str(&timings.server_timing()) {
                    response.headers_mut().insert("server-timing", value);
                }
                return response;
            }
            Progress::Failed(message) => {
                let now = flight.now();
                flight.span.aborted("generation_error", Some(&message), now);
                return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message).into_response();
            }
        }
    }
}

fn data(value: &serde_json::Value) -> Event {
    Event::default().data(value.to_string())
}

/// The event stream of a streaming request. Dropping it (the client went away) aborts the
/// request and ends its span with `api.ABORTED`.
fn sse(flight: Flight, include_usage: bool) -> impl Stream<Item = Result<Event, Infallible>> {
    let state = (flight, VecDeque::new(), false, true);
    futures_util::stream::unfold(
        state,
        move |(mut flight, mut pending, mut done, mut first)| async move {
            loop {
                if let Some(event) = pending.pop_front() {
                    return Some((Ok(event), (flight, pending, done, first)));
                }
                if done {
                    return None;
                }
                match flight.next().await {
                    Progress::Text(text) => {
                        pending.push_back(data(&flight.chunk(Some(&text), None, first)));
                        first = false;
                    }
                    Progress::Done(completion, journey) => {
                        let (reason, timings) = flight.finished(&completion, &journey);
                        let mut last = flight.chunk(None, Some(reason), first);
                        if let Some(timings) = timings {
                            last["timings"] = serde_json::json!(timings);
                        }
                        pending.push_back(data(&last));
                        if include_usage {
                            let mut chunk = flight.chunk(None, None, false);
                            chunk["choices"] = serde_json::json!([]);
                            chunk["usage"] = serde_json::json!(flight.usage(&completion));
                            pending.push_back(data(&chunk));
                        }
                        let now = flight.now();
                        flight.span.departed(now);
                        pending.push_back(Event::default().data("[DONE]"));
                        done = true;
                    }
                    Progress::Failed(message) => {
                        let error = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message.clone());
                        pending.push_back(data(&error.body()));
                        let now = flight.now();
                        flight.span.aborted("generation_error", Some(&message), now);
                        pending.push_back(Event::default().data("[DONE]"));
                        done = true;
                    }
                }
            }
        },
    )
}
