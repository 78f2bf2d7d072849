//! The admin routes, off unless the server has an admin key: `POST /admin/scheduler`, a policy
//! component uploaded into the running server, compiled, checked against the scheduler contract,
//! and swapped in between two steps with the running state; `GET /admin/kv-cache`, the
//! scheduler's prefix cache as KV-event consumers see it.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use waypoint_scheduler::kv::events::external_hash;
use waypoint_scheduler::SchedulerConfig;

use super::{bearer, json_or_error, ApiError, AppState};
use crate::backend::SchedulerBackend;
use crate::conformance;
use crate::guest::GuestRuntime;

/// What the admin route needs: its key, and how to build a scheduler from an upload.
pub struct Admin {
    /// The key callers send as `Authorization: Bearer <key>`.
    pub api_key: String,
    /// The wasmtime engine uploads are compiled on.
    pub runtime: GuestRuntime,
    /// The running scheduler's configuration, which the new policy takes over.
    pub config: SchedulerConfig,
}

/// `POST /admin/scheduler` with a component as the body.
pub async fn swap_scheduler(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    json_or_error(swapped(&app, &headers, body).await)
}

/// `GET /admin/kv-cache`: every cached block with its hash as KV events carry it, read from the
/// scheduler between two steps.
pub async fn kv_cache(State(app): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    json_or_error(cached(&app, &headers).await)
}

async fn cached(app: &Arc<AppState>, headers: &HeaderMap) -> Result<serde_json::Value, ApiError> {
    let admin = authorized(app, headers, "/admin/kv-cache")?;
    let blocks = app
        .engine
        .cached_blocks()
        .await
        .map_err(|message| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message))?;
    let blocks: Vec<serde_json::Value> = blocks
        .into_iter()
        .map(|(block_id, hash)| {
            serde_json::json!({ "block_id": block_id, "block_hash": external_hash(hash) })
        })
        .collect();
    Ok(serde_json::json!({
        "object": "kv_cache",
        "block_size": admin.config.block_size,
        "num_gpu_blocks": admin.config.num_blocks,
        "cached_blocks": blocks,
    }))
}

/// The admin settings, once the request carries the admin key.
fn authorized<'a>(
    app: &'a AppState,
    headers: &HeaderMap,
    route: &str,
) -> Result<&'a Admin, ApiError> {
    let Some(admin) = &app.admin else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no route {route}"),
        ));
    };
    if bearer(headers) != Some(admin.api_key.as_str()) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing or wrong admin key: send `Authorization: Bearer <admin key>`",
        ));
    }
    Ok(admin)
}

async fn swapped(
    app: &Arc<AppState>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<serde_json::Value, ApiError> {
    let admin = authorized(app, headers, "/admin/scheduler")?;
    let bytes =
        body.map_err(|rejection| ApiError::new(rejection.status(), rejection.body_text()))?;
    let runtime = admin.runtime.clone();
    let config = admin.config;
    // Compiling and checking take a while; they stay off the async workers.
    let backend = tokio::task::spawn_blocking(move || checked_backend(&runtime, &bytes, config))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    let swapped = app
        .engine
        .swap(backend)
        .await
        .map_err(|message| ApiError::new(StatusCode::CONFLICT, message))?;
    Ok(serde_json::json!({
        "object": "scheduler",
        "name": swapped.policy.name,
        "version": swapped.policy.version,
        "origin": swapped.policy.origin,
        "pause_ms": swapped.pause_ns as f64 / 1e6,
        "live_requests": swapped.live_requests,
    }))
}

/// The upload as a scheduler of `config`, once it compiles and passes every conformance check.
fn checked_backend(
    runtime: &GuestRuntime,
    bytes: &[u8],
    config: SchedulerConfig,
) -> Result<Box<dyn SchedulerBackend + Send>, ApiError> {
    let module = runtime
        .load(bytes, "POST /admin/scheduler")
        .map_err(|e| ApiError::invalid(format!("the component does not load: {e}")))?;
    let failed: Vec<String> = conformance::run(&module)
        .into_iter()
        .filter_map(|outcome| {
            outcome
                .failure
                .map(|why| format!("{}: {why}", outcome.scenario))
        })
        .collect();
    if !failed.is_empty() {
        return Err(ApiError::invalid(format!(
            "the component fails the conformance checks, so the running policy stays: {}",
            failed.join("; ")
        )));
    }
    let backend = module
        .create(config)
        .map_err(|e| ApiError::invalid(format!("the component cannot start: {e}")))?;
    Ok(Box::new(backend))
}
