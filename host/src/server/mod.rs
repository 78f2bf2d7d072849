//! The OpenAI-compatible HTTP server: routes, shared state, authentication and the body limit.

pub mod admin;
mod error;
mod generate;
pub mod protocol;
pub mod tenants;
mod vllm;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, HeaderName, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

pub use error::ApiError;

use crate::engine::worker::EngineHandle;
use crate::model::Vocabulary;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::traces::Tracing;
use crate::telemetry::Clock;
use crate::workload::Rng;

/// The header that names a request: a completion takes it as its id, and every response
/// carries it back.
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What every handler shares.
pub struct AppState {
    /// The engine thread.
    pub engine: EngineHandle,
    /// Text to tokens and back.
    pub vocabulary: Arc<Vocabulary>,
    /// The name clients use for the model.
    pub model_name: String,
    /// Longest sequence (prompt and output).
    pub max_model_len: u32,
    /// Vocabulary size, to check token-id prompts.
    pub vocab_size: usize,
    /// The model's end-of-sequence token.
    pub eos_token_id: Option<u32>,
    /// The key clients must send as `Authorization: Bearer <key>`, if any.
    pub api_key: Option<String>,
    /// Tenants by name, and their client indices.
    pub tenants: tenants::Tenants,
    /// Whether requests may ask for their timings (`return_timings`).
    pub request_timings: bool,
    /// `POST /admin/scheduler`, when the server has an admin key.
    pub admin: Option<admin::Admin>,
    /// The server's clock.
    pub clock: Clock,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// OTLP span export, when configured.
    pub tracing: Option<Arc<Tracing>>,
    /// Fraction of requests whose journey is recorded (0 when journey tracing is off).
    pub journey_sample_rate: f64,
    /// Draws for sampling decisions, seeds and ids.
    pub rng: Mutex<Rng>,
    /// Makes response ids unique.
    pub next_id: AtomicU64,
    /// When the server started (seconds since the epoch), for `/v1/models`.
    pub created: u64,
}

impl AppState {
    fn random(&self) -> u64 {
        self.rng.lock().map(|mut rng| rng.next_u64()).unwrap_or(0)
    }

    /// Decide once whether a request's journey is recorded.
    fn sample_journey(&self) -> bool {
        let draw = (self.random() >> 11) as f64 / (1u64 << 53) as f64;
        draw < self.journey_sample_rate
    }

    fn response_id(&self, prefix: &str) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{prefix}-{:016x}{n:08x}", self.random())
    }

    fn created_now(&self) -> u64 {
        self.clock.since_epoch(self.clock.now_ns()).as_secs()
    }

    /// A request naming another model than the one served is a 404, as in OpenAI's API.
    fn check_model(&self, model: &str) -> Result<(), ApiError> {
        if model == self.model_name {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("The model `{model}` does not exist."),
            ))
        }
    }

    fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        match &self.api_key {
            Some(key) if bearer(headers) != Some(key.as_str()) => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing or wrong API key: send `Authorization: Bearer <key>`",
            )),
            _ => Ok(()),
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// A handler's answer: the body as JSON, or the error in OpenAI's shape.
fn json_or_error<T: serde::Serialize>(result: Result<T, ApiError>) -> Response {
    match result {
        Ok(body) => Json(body).into_response(),
        Err(error) => error.into_response(),
    }
}

/// The server's routes; `/admin/scheduler` takes bodies up to `policy_limit` bytes.
pub fn router(state: Arc<AppState>, body_limit: usize, policy_limit: usize) -> Router {
    let admin = if state.admin.is_some() {
        Router::new()
            .route(
                "/admin/scheduler",
                post(admin::swap_scheduler).layer(DefaultBodyLimit::max(policy_limit)),
            )
            .route("/admin/kv-cache", get(admin::kv_cache))
    } else {
        Router::new()
    };
    Router::new()
        .merge(admin)
        .route("/v1/completions", post(generate::completions))
        .route("/v1/chat/completions", post(generate::chat_completions))
        .route("/v1/models", get(models))
        .route("/tokenize", post(vllm::tokenize))
        .route("/detokenize", post(vllm::detokenize))
        .route("/version", get(vllm::version))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn(echo_request_id))
        .with_state(state)
}

/// Echo a sent `X-Request-Id` on responses that do not name their request themselves.
async fn echo_request_id(request: Request, next: Next) -> Response {
    let sent = request.headers().get(&REQUEST_ID).cloned();
    let mut response = next.run(request).await;
    if let Some(sent) = sent {
        response.headers_mut().entry(&REQUEST_ID).or_insert(sent);
    }
    response
}

async fn models(State(app): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(error) = app.authorize(&headers) {
        return error.into_response();
    }
    // vLLM's `ModelCard`, with the one permission entry vLLM gives every model.
    Json(serde_json::json!({
        "object": "list",
        "data": [{
            "id": app.model_name,
            "object": "model",
            "created": app.created,
            "owned_by": "waypoint",
            "root": app.model_name,
            "parent": null,
            "max_model_len": app.max_model_len,
            "permission": [{
                "id": format!("modelperm-{:016x}", app.created),
                "object": "model_permission",
                "created": app.created,
                "allow_create_engine": false,
                "allow_sampling": true,
                "allow_logprobs": false,
                "allow_search_indices": false,
                "allow_view": true,
                "allow_fine_tuning": false,
                "organization": "*",
                "group": null,
                "is_blocking": false,
            }],
        }],
    }))
    .into_response()
}

async fn health(State(app): State<Arc<AppState>>) -> Response {
    match app.engine.unavailable() {
        Some(reason) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, reason).into_response(),
        None => StatusCode::OK.into_response(),
    }
}

async fn metrics(State(app): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.encode(),
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such route")
}

async fn method_not_allowed(method: Method) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("this route does not take {method}"),
    )
}
