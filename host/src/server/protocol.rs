//! The OpenAI-compatible request and response bodies.

use serde::{Deserialize, Serialize};

/// A string or a list of strings (`stop`).
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// One string.
    One(String),
    /// Several.
    Many(Vec<String>),
}

impl OneOrMany {
    /// The strings.
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
        }
    }
}

/// A completions prompt: text, token ids, or a batch of one of either.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    /// Text.
    Text(String),
    /// Token ids.
    Tokens(Vec<u32>),
    /// Texts (one is served).
    Texts(Vec<String>),
    /// Lists of token ids (one is served).
    TokenLists(Vec<Vec<u32>>),
}

/// `stream_options`.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with the usage.
    #[serde(default)]
    pub include_usage: bool,
}

/// The sampling and stopping fields both endpoints share (vLLM's extensions included).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Sampling {
    /// Most tokens to generate.
    pub max_tokens: Option<u32>,
    /// The chat name of `max_tokens`.
    pub max_completion_tokens: Option<u32>,
    /// Sampling temperature (0: greedy). OpenAI's default is 1.
    pub temperature: Option<f32>,
    /// Nucleus sampling mass.
    pub top_p: Option<f32>,
    /// Keep the k most likely tokens (0 or -1: all).
    pub top_k: Option<i64>,
    /// Seed of the request's sampler.
    pub seed: Option<u64>,
    /// Strings that end the output.
    pub stop: Option<OneOrMany>,
    /// Tokens that end the output.
    #[serde(default)]
    pub stop_token_ids: Vec<u32>,
    /// Do not stop at the end-of-sequence token.
    #[serde(default)]
    pub ignore_eos: bool,
    /// Stop conditions do not apply before this many tokens.
    #[serde(default)]
    pub min_tokens: u32,
    /// Completions per prompt (only 1).
    pub n: Option<u32>,
    /// Stream server-sent events.
    #[serde(default)]
    pub stream: bool,
    /// Stream settings.
    pub stream_options: Option<StreamOptions>,
    /// Priority for the priority policy (lower first).
    #[serde(default)]
    pub priority: i32,
    /// Milliseconds after arrival by which the request should finish, for deadline-aware
    /// policies (the `edf` example); a Waypoint extension.
    pub deadline_ms: Option<u64>,
    /// vLLM's prefix-cache isolation: only requests with the same salt share cached blocks.
    pub cache_salt: Option<String>,
    /// OpenAI's end-user id: the request's tenant, unless the tenant header names one.
    pub user: Option<String>,
    /// Return the request's timings (the server must run with `--enable-request-timings`).
    #[serde(default)]
    pub return_timings: bool,
    /// Log probabilities are not supported; asking for them is an error.
    pub logprobs: Option<serde_json::Value>,
    /// Echoing the prompt is not supported.
    #[serde(default)]
    pub echo: bool,
}

/// `POST /v1/completions`.
#[derive(Clone, Debug, Deserialize)]
pub struct CompletionRequest {
    /// The served model's name; without it, the served model (as in vLLM).
    pub model: Option<String>,
    /// The prompt.
    pub prompt: Prompt,
    /// Sampling and stopping.
    #[serde(flatten)]
    pub sampling: Sampling,
}

/// A chat message's content: text or text parts.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Text.
    Text(String),
    /// Parts; only text parts are supported.
    Parts(Vec<ContentPart>),
}

/// One part of a message's content.
#[derive(Clone, Debug, Deserialize)]
pub struct ContentPart {
    /// Must be `text`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The text.
    #[serde(default)]
    pub text: String,
}

/// A chat message.
#[derive(Clone, Debug, Deserialize)]
pub struct Message {
    /// system, user, assistant, ...
    pub role: String,
    /// What it says.
    pub content: Option<Content>,
}

/// `POST /v1/chat/completions`.
#[derive(Clone, Debug, Deserialize)]
pub struct ChatRequest {
    /// The served model's name; without it, the served model (as in vLLM).
    pub model: Option<String>,
    /// The conversation.
    pub messages: Vec<Message>,
    /// Sampling and stopping.
    #[serde(flatten)]
    pub sampling: Sampling,
}

/// Token counts.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Generated tokens.
    pub completion_tokens: u64,
    /// Their sum.
    pub total_tokens: u64,
}

impl Usage {
    /// Usage of a request.
    pub fn new(prompt_tokens: u64, completion_tokens: u64) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }
}

/// `POST /tokenize` with a prompt (vLLM's `TokenizeCompletionRequest`).
#[derive(Clone, Debug, Deserialize)]
pub struct TokenizeCompletion {
    /// The served model's name, if given.
    pub model: Option<String>,
    /// The text.
    pub prompt: String,
    /// Add the tokenizer's special tokens (BOS); vLLM's default is yes.
    #[serde(default = "yes")]
    pub add_special_tokens: bool,
    /// Also return each token's string.
    #[serde(default)]
    pub return_token_strs: bool,
}

/// `POST /tokenize` with a conversation, through the chat template (vLLM's
/// `TokenizeChatRequest`).
#[derive(Clone, Debug, Deserialize)]
pub struct TokenizeChat {
    /// The served model's name, if given.
    pub model: Option<String>,
    /// The conversation.
    pub messages: Vec<Message>,
    /// End with the assistant's turn opening, as a generation would.
    #[serde(default = "yes")]
    pub add_generation_prompt: bool,
    /// Add special tokens on top of the template's; vLLM's default is no.
    #[serde(default)]
    pub add_special_tokens: bool,
    /// Also return each token's string.
    #[serde(default)]
    pub return_token_strs: bool,
}

fn yes() -> bool {
    true
}

/// `POST /tokenize`'s answer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenizeResponse {
    /// Number of tokens.
    pub count: usize,
    /// Longest sequence the server takes.
    pub max_model_len: u32,
    /// The token ids.
    pub tokens: Vec<u32>,
    /// Each token's string, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_strs: Option<Vec<String>>,
}

/// `POST /detokenize`.
#[derive(Clone, Debug, Deserialize)]
pub struct DetokenizeRequest {
    /// The served model's name, if given.
    pub model: Option<String>,
    /// The token ids.
    pub tokens: Vec<u32>,
}

/// `POST /detokenize`'s answer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DetokenizeResponse {
    /// The text.
    pub prompt: String,
}

/// A request's timings, with the metrics' definitions (milliseconds): phases from the engine's
/// record of the request, steps and preemptions from its journey.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Timings {
    /// Queued to first scheduled (`vllm:request_queue_time_seconds`).
    pub queue_ms: Option<f64>,
    /// First scheduled to first token (`vllm:request_prefill_time_seconds`).
    pub prefill_ms: Option<f64>,
    /// First token to finish (`vllm:request_decode_time_seconds`).
    pub decode_ms: Option<f64>,
    /// HTTP arrival to first token (`vllm:time_to_first_token_seconds`).
    pub ttft_ms: Option<f64>,
    /// HTTP arrival to finish (`vllm:e2e_request_latency_seconds`).
    pub e2e_ms: f64,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Prompt tokens found in the prefix cache when first scheduled.
    pub cached_tokens: u32,
    /// Generated tokens.
    pub generated_tokens: u64,
    /// Times the request was preempted.
    pub preemptions: u32,
    /// The scheduler step that first scheduled it.
    pub first_scheduler_step: Option<u64>,
    /// The scheduler step of its last journey event (its finish).
    pub last_scheduler_step: Option<u64>,
}

impl Timings {
    /// The `Server-Timing` header value: each phase as `name;dur=ms`.
    pub fn server_timing(&self) -> String {
        [
            ("queue", self.queue_ms),
            ("prefill", self.prefill_ms),
            ("decode", self.decode_ms),
            ("ttft", self.ttft_ms),
            ("e2e", Some(self.e2e_ms)),
        ]
        .into_iter()
        .filter_map(|(name, ms)| ms.map(|ms| format!("{name};dur={ms:.3}")))
        .collect::<Vec<_>>()
        .join(", ")
    }
}
