//! The Prometheus metrics of `/metrics`, under vLLM's names and buckets so that existing vLLM
//! dashboards work unchanged.

use std::borrow::Cow;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use waypoint_scheduler::SchedulerStats;

const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
const ITL_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];
const REQUEST_BUCKETS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];

/// vLLM's tokens-per-step buckets.
const ITERATION_TOKEN_BUCKETS: &[f64] = &[
    1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0,
];

/// vLLM's 1-2-5 series up to `max`: 1, 2, 5, 10, 20, 50, ...
fn one_two_five_buckets(max: u32) -> Vec<f64> {
    let max = f64::from(max.max(1));
    (0..)
        .map(|exponent| 10f64.powi(exponent))
        .flat_map(|decade| [1.0, 2.0, 5.0].map(|m| m * decade))
        .take_while(|&bound| bound <= max)
        .collect()
}

/// The KV cache as `vllm:cache_config_info` labels it.
#[derive(Clone, Copy, Debug)]
pub struct CacheConfig {
    /// Tokens per block.
    pub block_size: u32,
    /// Blocks in the cache.
    pub num_gpu_blocks: u32,
    /// Whether prefix caching is on.
    pub enable_prefix_caching: bool,
}

fn histogram(buckets: &'static [f64]) -> Histogram {
    Histogram::new(buckets.iter().copied())
}

fn ttft_histogram() -> Histogram {
    histogram(TTFT_BUCKETS)
}

fn request_histogram() -> Histogram {
    histogram(REQUEST_BUCKETS)
}

type Labels = Vec<(String, String)>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

fn tenant(label: &str) -> Labels {
    vec![("tenant".to_owned(), label.to_owned())]
}

/// One request's phases, in seconds, recorded when it finishes.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestTimes {
    /// Arrival to finish.
    pub e2e: f64,
    /// Queued to first scheduled.
    pub queue: Option<f64>,
    /// First scheduled to first token.
    pub prefill: Option<f64>,
    /// First token to finish.
    pub decode: Option<f64>,
    /// First scheduled to finish.
    pub inference: Option<f64>,
}

/// The last cumulative scheduler counters seen, to turn them into counter increments.
#[derive(Default)]
struct SeenTotals {
    preemptions: u64,
    prefix_queries: u64,
    prefix_hits: u64,
}

/// Every metric the server exports.
pub struct Metrics {
    registry: Registry,
    time_to_first_token: Histogram,
    inter_token_latency: Histogram,
    e2e_request_latency: Histogram,
    request_queue_time: Histogram,
    request_prefill_time: Histogram,
    request_decode_time: Histogram,
    request_inference_time: Histogram,
    num_preemptions: Counter,
    num_requests_running: Gauge,
    num_requests_waiting: Gauge,
    kv_cache_usage_perc: Gauge<f64, AtomicU64>,
    prefix_cache_queries: Counter,
    prefix_cache_hits: Counter,
    prompt_tokens: Counter,
    generation_tokens: Counter,
    request_success: Family<Labels, Counter>,
    request_prompt_tokens: Histogram,
    request_generation_tokens: Histogram,
    iteration_tokens: Histogram,
    cache_config_info: Family<Labels, Gauge>,
    tenant_requests: Family<Labels, Counter>,
    tenant_prompt_tokens: Family<Labels, Counter>,
    tenant_generation_tokens: Family<Labels, Counter>,
    tenant_time_to_first_token: HistogramFamily,
    tenant_e2e_request_latency: HistogramFamily,
    tenant_info: Family<Labels, Gauge>,
    policy_info: Family<Labels, Gauge>,
    scheduler_faults: Counter,
    requests_recovered: Counter,
    requests_shed: Counter,
    policy_fallbacks: Counter,
    kv_event_batches_dropped: Counter,
    seen: Mutex<SeenTotals>,
}

impl Metrics {
    /// The metrics of a server that serves `model_name` (a label on every series, as in vLLM),
    /// with sequences up to `max_model_len` and this KV cache.
    pub fn new(model_name: &str, max_model_len: u32, cache: CacheConfig) -> Self {
        let mut registry = Registry::with_labels(
            [(
                Cow::Borrowed("model_name"),
                Cow::Owned(model_name.to_owned()),
            )]
            .into_iter(),
        );
        let metrics = Self {
            time_to_first_token: histogram(TTFT_BUCKETS),
            inter_token_latency: histogram(ITL_BUCKETS),
            e2e_request_latency: histogram(REQUEST_BUCKETS),
            request_queue_time: histogram(REQUEST_BUCKETS),
            request_prefill_time: histogram(REQUEST_BUCKETS),
            request_decode_time: histogram(REQUEST_BUCKETS),
            request_inference_time: histogram(REQUEST_BUCKETS),
            num_preemptions: Counter::default(),
            num_requests_running: Gauge::default(),
            num_requests_waiting: Gauge::default(),
            kv_cache_usage_perc: Gauge::default(),
            prefix_cache_queries: Counter::default(),
            prefix_cache_hits: Counter::default(),
            prompt_tokens: Counter::default(),
            generation_tokens: Counter::default(),
            request_success: Family::default(),
            request_prompt_tokens: Histogram::new(one_two_five_buckets(max_model_len)),
            request_generation_tokens: Histogram::new(one_two_five_buckets(max_model_len)),
            iteration_tokens: histogram(ITERATION_TOKEN_BUCKETS),
            cache_config_info: Family::default(),
            tenant_requests: Family::default(),
            tenant_prompt_tokens: Family::default(),
            tenant_generation_tokens: Family::default(),
            tenant_time_to_first_token: Family::new_with_constructor(ttft_histogram),
            tenant_e2e_request_latency: Family::new_with_constructor(request_histogram),
            tenant_info: Family::default(),
            policy_info: Family::default(),
            scheduler_faults: Counter::default(),
            requests_recovered: Counter::default(),
            requests_shed: Counter::default(),
            policy_fallbacks: Counter::default(),
            kv_event_batches_dropped: Counter::default(),
            seen: Mutex::new(SeenTotals::default()),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            metrics.time_to_first_token.clone(),
        );
        r.register(
            "vllm:inter_token_latency_seconds",
            "Histogram of inter-token latency in seconds.",
            metrics.inter_token_latency.clone(),
        );
        r.register(
            "vllm:e2e_request_latency_seconds",
            "Histogram of end-to-end request latency in seconds.",
            metrics.e2e_request_latency.clone(),
        );
        r.register(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent waiting in the queue in seconds.",
            metrics.request_queue_time.clone(),
        );
        r.register(
            "vllm:request_prefill_time_seconds",
            "Histogram of time spent in prefill in seconds.",
            metrics.request_prefill_time.clone(),
        );
        r.register(
            "vllm:request_decode_time_seconds",
            "Histogram of time spent in decode in seconds.",
            metrics.request_decode_time.clone(),
        );
        r.register(
            "vllm:request_inference_time_seconds",
            "Histogram of time spent running (scheduled to finished) in seconds.",
            metrics.request_inference_time.clone(),
        );
        r.register(
            "vllm:num_preemptions",
            "Cumulative number of preemptions from the engine.",
            metrics.num_preemptions.clone(),
        );
        r.register(
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
            metrics.num_requests_running.clone(),
        );
        r.register(
            "vllm:num_requests_waiting",
            "Number of requests waiting to be processed.",
            metrics.num_requests_waiting.clone(),
        );
        r.register(
            "vllm:kv_cache_usage_perc",
            "KV-cache usage. 1 means 100 percent usage.",
            metrics.kv_cache_usage_perc.clone(),
        );
        r.register(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
            metrics.prefix_cache_queries.clone(),
        );
        r.register(
            "vllm:prefix_cache_hits",
            "Prefix cache hits, in terms of number of cached tokens.",
            metrics.prefix_cache_hits.clone(),
        );
        r.register(
            "vllm:prompt_tokens",
            "Number of prefill tokens processed.",
            metrics.prompt_tokens.clone(),
        );
        r.register(
            "vllm:generation_tokens",
            "Number of generation tokens processed.",
            metrics.generation_tokens.clone(),
        );
        r.register(
            "vllm:request_success",
            "Count of successfully processed requests.",
            metrics.request_success.clone(),
        );
        r.register(
            "vllm:request_prompt_tokens",
            "Number of prefill tokens processed.",
            metrics.request_prompt_tokens.clone(),
        );
        r.register(
            "vllm:request_generation_tokens",
            "Number of generation tokens processed.",
            metrics.request_generation_tokens.clone(),
        );
        r.register(
            "vllm:iteration_tokens_total",
            "Histogram of number of tokens per engine_step.",
            metrics.iteration_tokens.clone(),
        );
        r.register(
            "vllm:cache_config_info",
            "Information of the LLMEngine CacheConfig.",
            metrics.cache_config_info.clone(),
        );
        metrics
            .cache_config_info
            .get_or_create(&vec![
                ("block_size".to_owned(), cache.block_size.to_string()),
                (
                    "num_gpu_blocks".to_owned(),
                    cache.num_gpu_blocks.to_string(),
                ),
                ("num_cpu_blocks".to_owned(), "0".to_owned()),
                (
                    "enable_prefix_caching".to_owned(),
                    if cache.enable_prefix_caching {
                        "True"
                    } else {
                        "False"
                    }
                    .to_owned(),
                ),
                ("cache_dtype".to_owned(), "auto".to_owned()),
            ])
            .set(1);
        r.register(
            "waypoint:tenant_requests",
            "Finished requests by tenant and finish reason.",
            metrics.tenant_requests.clone(),
        );
        r.register(
            "waypoint:tenant_prompt_tokens",
            "Prompt tokens of finished requests by tenant.",
            metrics.tenant_prompt_tokens.clone(),
        );
        r.register(
            "waypoint:tenant_generation_tokens",
            "Generated tokens of finished requests by tenant.",
            metrics.tenant_generation_tokens.clone(),
        );
        r.register(
            "waypoint:tenant_time_to_first_token_seconds",
            "Histogram of time to first token in seconds, by tenant.",
            metrics.tenant_time_to_first_token.clone(),
        );
        r.register(
            "waypoint:tenant_e2e_request_latency_seconds",
            "Histogram of end-to-end request latency in seconds, by tenant.",
            metrics.tenant_e2e_request_latency.clone(),
        );
        r.register(
            "waypoint:policy_info",
            "1 for the scheduling policy running now.",
            metrics.policy_info.clone(),
        );
        r.register(
            "waypoint:scheduler_faults",
            "Faults of the scheduling policy (traps, timeouts, memory, broken contract).",
            metrics.scheduler_faults.clone(),
        );
        r.register(
            "waypoint:requests_recovered",
            "Requests resubmitted with their tokens to a fresh scheduler after a fault.",
            metrics.requests_recovered.clone(),
        );
        r.register(
            "waypoint:requests_shed",
            "Requests failed to let the others go on after the fallback scheduler faulted \
             with no request to blame (its memory or time limit under the load).",
            metrics.requests_shed.clone(),
        );
        r.register(
            "waypoint:policy_fallbacks",
            "Times a policy that kept faulting was replaced by the built-in fcfs.",
            metrics.policy_fallbacks.clone(),
        );
        r.register(
            "waypoint:kv_event_batches_dropped",
            "KV-event batches dropped because the publisher's queue was full.",
            metrics.kv_event_batches_dropped.clone(),
        );
        r.register(
            "waypoint:tenant_info",
            "1 for each tenant label with the scheduler client index it maps to.",
            metrics.tenant_info.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }

    /// A request of tenant `tenant` (its label) had its first token `seconds` after it arrived.
    pub fn first_token(&self, seconds: f64, tenant_label: &str) {
        self.time_to_first_token.observe(seconds);
        self.tenant_time_to_first_token
            .get_or_create(&tenant(tenant_label))
            .observe(seconds);
    }

    /// The scheduler now runs `policy` (name and version), instead of `previous` if one ran.
    pub fn policy_running(&self, policy: (&str, &str), previous: Option<(&str, &str)>) {
        let labels = |(name, version): (&str, &str)| {
            vec![
                ("name".to_owned(), name.to_owned()),
                ("version".to_owned(), version.to_owned()),
            ]
        };
        if let Some(previous) = previous {
            self.policy_info.remove(&labels(previous));
        }
        self.policy_info.get_or_create(&labels(policy)).set(1);
    }

    /// The scheduler faulted, and `recovered` requests were resubmitted to its replacement.
    pub fn scheduler_fault(&self, recovered: usize, shed: usize) {
        self.scheduler_faults.inc();
        self.requests_recovered.inc_by(recovered as u64);
        self.requests_shed.inc_by(shed as u64);
    }

    /// A policy that kept faulting was replaced by the fallback.
    pub fn policy_fallback(&self) {
        self.policy_fallbacks.inc();
    }

    /// A step's KV events found the publisher's queue full.
    pub fn kv_event_batch_dropped(&self) {
        self.kv_event_batches_dropped.inc();
    }

    /// A request came from the tenant labelled `tenant_label`, scheduled as `client_index`.
    pub fn tenant_seen(&self, tenant_label: &str, client_index: u32) {
        let mut labels = tenant(tenant_label);
        labels.push(("client_index".to_owned(), client_index.to_string()));
        self.tenant_info.get_or_create(&labels).set(1);
    }

    /// A request of the tenant labelled `tenant_label` was aborted: its client went away.
    pub fn tenant_aborted(&self, tenant_label: &str) {
        let mut labels = tenant(tenant_label);
        labels.push(("finished_reason".to_owned(), "abort".to_owned()));
        self.tenant_requests.get_or_create(&labels).inc();
    }

    /// A request produced a token `seconds` after its previous one.
    pub fn inter_token(&self, seconds: f64) {
        self.inter_token_latency.observe(seconds);
    }

    /// A request finished normally (`finished_reason` is OpenAI's: stop, length, abort).
    pub fn request_finished(
        &self,
        finished_reason: &str,
        times: RequestTimes,
        prompt_tokens: u64,
        generation_tokens: u64,
        tenant_label: &str,
    ) {
        self.e2e_request_latency.observe(times.e2e);
        let labels = tenant(tenant_label);
        self.tenant_e2e_request_latency
            .get_or_create(&labels)
            .observe(times.e2e);
        self.tenant_prompt_tokens
            .get_or_create(&labels)
            .inc_by(prompt_tokens);
        self.tenant_generation_tokens
            .get_or_create(&labels)
            .inc_by(generation_tokens);
        let mut by_reason = labels;
        by_reason.push(("finished_reason".to_owned(), finished_reason.to_owned()));
        self.tenant_requests.get_or_create(&by_reason).inc();
        let phases = [
            (&self.request_queue_time, times.queue),
            (&self.request_prefill_time, times.prefill),
            (&self.request_decode_time, times.decode),
            (&self.request_inference_time, times.inference),
        ];
        for (histogram, value) in phases {
            if let Some(value) = value {
                histogram.observe(value);
            }
        }
        self.prompt_tokens.inc_by(prompt_tokens);
        self.generation_tokens.inc_by(generation_tokens);
        self.request_prompt_tokens.observe(prompt_tokens as f64);
        self.request_generation_tokens
            .observe(generation_tokens as f64);
        self.request_success
            .get_or_create(&vec![(
                "finished_reason".to_owned(),
                finished_reason.to_owned(),
            )])
            .inc();
    }

    /// A request was aborted because its client went away.
    pub fn request_aborted(&self) {
        self.request_success
            .get_or_create(&vec![("finished_reason".to_owned(), "abort".to_owned())])
            .inc();
    }

    /// An engine step computed `tokens` tokens (prefill and decode).
    pub fn iteration(&self, tokens: u32) {
        self.iteration_tokens.observe(f64::from(tokens));
    }

    /// The scheduler's current load, cache use and cumulative counters.
    pub fn scheduler_stats(&self, stats: &SchedulerStats) {
        self.num_requests_running.set(i64::from(stats.num_running));
        self.num_requests_waiting.set(i64::from(stats.num_waiting));
        self.kv_cache_usage_perc.set(stats.kv_cache_usage);
        let Ok(mut seen) = self.seen.lock() else {
            return;
        };
        let advance = |counter: &Counter, last: &mut u64, now: u64| {
            // A reloaded scheduler starts its totals again from zero.
            counter.inc_by(now.saturating_sub(*last));
            *last = now;
        };
        advance(
            &self.num_preemptions,
            &mut seen.preemptions,
            stats.num_preemptions_total,
        );
        let prefix = &stats.prefix_cache;
        advance(
            &self.prefix_cache_queries,
            &mut seen.prefix_queries,
            prefix.queries + prefix.preempted_queries,
        );
        advance(
            &self.prefix_cache_hits,
            &mut seen.prefix_hits,
            prefix.hits + prefix.preempted_hits,
        );
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}
