//! vLLM's own routes beside the OpenAI ones, in vLLM's shapes: `/tokenize`, `/detokenize` and
//! `/version`. As in vLLM, the API key guards `/v1/` only, so these answer without it.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::generate::{chat_prompt, parse};
use super::protocol::{
    DetokenizeRequest, DetokenizeResponse, TokenizeChat, TokenizeCompletion, TokenizeResponse,
};
use super::{json_or_error, ApiError, AppState};

/// `POST /tokenize`: a prompt, or a conversation through the chat template.
pub async fn tokenize(
    State(app): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    json_or_error(tokenized(&app, body))
}

fn tokenized(
    app: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<TokenizeResponse, ApiError> {
    let body: serde_json::Value = parse(body)?;
    let (model, text, add_special_tokens, return_token_strs) = if body.get("messages").is_some() {
        let request: TokenizeChat = from_value(body)?;
        let text = chat_prompt(&request.messages, request.add_generation_prompt)?;
        (
            request.model,
            text,
            request.add_special_tokens,
            request.return_token_strs,
        )
    } else {
        let request: TokenizeCompletion = from_value(body)?;
        (
            request.model,
            request.prompt,
            request.add_special_tokens,
            request.return_token_strs,
        )
    };
    if let Some(model) = &model {
        app.check_model(model)?;
    }
    let tokens = app
        .vocabulary
        .encode_with(&text, add_special_tokens)
        .map_err(|e| ApiError::invalid_param("prompt", format!("tokenizing the prompt: {e}")))?;
    Ok(TokenizeResponse {
        count: tokens.len(),
        max_model_len: app.max_model_len,
        token_strs: return_token_strs.then(|| app.vocabulary.token_strs(&tokens)),
        tokens,
    })
}

/// `POST /detokenize`: the text of token ids.
pub async fn detokenize(
    State(app): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    json_or_error(detokenized(&app, body))
}

fn detokenized(
    app: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<DetokenizeResponse, ApiError> {
    let request: DetokenizeRequest = parse(body)?;
    if let Some(model) = &request.model {
        app.check_model(model)?;
    }
    if let Some(bad) = request
        .tokens
        .iter()
        .find(|&&t| t as usize >= app.vocab_size)
    {
        return Err(ApiError::invalid_param(
            "tokens",
            format!(
                "token id {bad} is outside the vocabulary of {} tokens",
                app.vocab_size
            ),
        ));
    }
    Ok(DetokenizeResponse {
        prompt: app.vocabulary.decode(&request.tokens),
    })
}

fn from_value<T: serde::de::DeserializeOwned>(body: serde_json::Value) -> Result<T, ApiError> {
    serde_json::from_value(body)
        .map_err(|e| ApiError::invalid(format!("invalid request body: {e}")))
}

/// `GET /version`.
pub async fn version() -> Response {
    Json(serde_json::json!({ "version": env!("CARGO_PKG_VERSION") })).into_response()
}
