//! The `waypoint` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::io::Write as _;
use waypoint::args::{CapacityArgs, EngineArgs, SequenceArgs, TracingArgs, DEFAULT_NUM_BLOCKS};

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use waypoint::bench;
use waypoint::conformance;
use waypoint::engine::worker::{self, WorkerParts};
use waypoint::engine::{Engine, EngineRequest};
use waypoint::guest::{GuestLimits, GuestRuntime};
use waypoint::model::sampling::SamplingParams;
use waypoint::model::{open_device, DeviceChoice, LoadedModel, Model, ModelConfig, Weights};
use waypoint::policy_crate;
use waypoint::server::tenants::Tenants;
use waypoint::server::{self, AppState};
use waypoint::sim::arrivals::{read_workload, Arrival, Synthetic, WorkloadError};
use waypoint::sim::latency::LatencyModel;
use waypoint::sim::report::{table, Report, Slo};
use waypoint::sim::settings::SyntheticSettings;
use waypoint::sim::trace::ChromeTrace;
use waypoint::sim::{simulate, Outputs, Settings};
use waypoint::spec::SchedulerSpec;
use waypoint::sweep;
use waypoint::telemetry::kv_events::{CacheShape, KvEventPublisher, KvEventsConfig};
use waypoint::telemetry::metrics::{CacheConfig, Metrics};
use waypoint::telemetry::traces::{CoreSpans, Tracing};
use waypoint::telemetry::Clock;
use waypoint::workload::Rng;
use waypoint_scheduler::{NewRequest, PolicyKind};

// The model runner's large activations are allocated and freed every layer; glibc's allocator
// hands them back to the kernel, so each step page-faults them in again.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "waypoint",
    version,
    about = "LLM request scheduling with request journeys"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Most linear memory a policy component instance may use, in MiB.
    #[arg(long, global = true, default_value_t = 256)]
    guest_memory_limit: usize,
    /// Most CPU time one call into a policy component may take, in milliseconds.
    #[arg(long, global = true, default_value_t = 1000)]
    guest_call_timeout_ms: u64,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text for a file of prompts through the real engine loop (scheduler + model).
    Generate(Box<GenerateArgs>),
    /// Serve the OpenAI-compatible API (completions, chat, models, health, metrics).
    Serve(Box<ServeArgs>),
    /// Replay a workload through a scheduler in virtual time: journeys, reports, traces.
    Simulate(Box<SimulateArgs>),
    /// Simulate a grid of configurations × request rates × schedulers on every core: a table,
    /// a chart and each configuration's highest rate within the objectives.
    Sweep(Box<SweepArgs>),
    /// Write a policy crate from a template, or build one into a component.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Check a policy component against the scheduler contract, scenario by scenario.
    Conformance {
        /// A policy component file, or a built-in policy name (fcfs, priority, fair).
        component: String,
    },
    /// Model runner throughput: prefill and decode tokens/s at several batch sizes.
    BenchModel {
        /// `tiny`, `110m` (a Llama-shaped configuration of about 110 M parameters) or `1b`
        /// (Llama 3.2 1B's shape).
        #[arg(long, value_delimiter = ',', default_value = "tiny,110m")]
        models: Vec<String>,
        /// Batch sizes.
        #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
        batch: Vec<usize>,
        /// Prompt length of each request.
        #[arg(long, default_value_t = 128)]
        prompt_len: usize,
        /// Contexts of the long-context rows, measured at batch 1: the prompt length before
        /// the timed decode steps (`--long-contexts` with no value: none).
        #[arg(long, value_delimiter = ',', num_args = 0.., default_value = "1024,4096")]
        long_contexts: Vec<usize>,
        /// Decode steps timed after the prefill.
        #[arg(long, default_value_t = 16)]
        decode_steps: usize,
        /// KV cache sizes in blocks of 16 tokens (serve's default unless told); each gets its
        /// rows, so a step's cost can be compared across cache sizes.
        #[arg(long, value_delimiter = ',', default_values_t = [DEFAULT_NUM_BLOCKS as usize])]
        num_blocks: Vec<usize>,
        /// Where the model runs: cpu or wgpu.
        #[arg(long, value_enum, default_value_t = DeviceChoice::Cpu)]
        device: DeviceChoice,
    },
    /// Scheduler cycle latency natively and through a policy component, side by side.
    Bench {
        /// Running requests to measure at.
        #[arg(long, value_delimiter = ',', default_value = "64,256,1024")]
        running: Vec<u32>,
        /// Timed cycles per measurement.
        #[arg(long, default_value_t = 2000)]
        cycles: u32,
        /// The component to compare with the native scheduler (its policy runs natively too).
        #[arg(long, default_value = "fcfs")]
        scheduler: SchedulerSpec,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Write a ready policy crate: Cargo.toml, a documented src/lib.rs and a README.
    New {
        /// The policy's name (a crate name: lowercase letters, digits, `-`, `_`).
        name: String,
        /// The folder to write (new or empty); ./NAME by default.
        dir: Option<PathBuf>,
        /// The waypoint-policy SDK crate the policy depends on; by default the one in the
        /// checkout this binary was built from.
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Build a policy crate for wasm32 into DIR/NAME.wasm, a component ready for
    /// `conformance`, `simulate` and `serve`.
    Build {
        /// The crate's folder.
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
}

/// The synthetic generator's flags, but its rate (one for `simulate`, a list for `sweep`).
#[derive(clap::Args)]
struct SyntheticArgs {
    /// Synthetic: number of requests.
    #[arg(long, default_value_t = 1000)]
    num_requests: u64,
    /// Synthetic: gamma shape of inter-arrival times (1: Poisson; lower is burstier).
    #[arg(long, default_value_t = 1.0)]
    burstiness: f64,
    /// Synthetic: prompt lengths, fixed:N, uniform:A-B or sharegpt.
    #[arg(long, default_value = "sharegpt")]
    prompt_lengths: String,
    /// Synthetic: output lengths, fixed:N, uniform:A-B or sharegpt.
    #[arg(long, default_value = "sharegpt")]
    output_lengths: String,
    /// Synthetic: fraction of requests sharing a prefix with their group.
    #[arg(long, default_value_t = 0.0)]
    prefix_fraction: f64,
    /// Synthetic: number of shared-prefix groups.
    #[arg(long, default_value_t = 8)]
    prefix_groups: u32,
    /// Synthetic: length of a shared prefix.
    #[arg(long, default_value_t = 128)]
    prefix_len: u32,
    /// Synthetic: priority mix, value:weight pairs (e.g. 0:0.8,1:0.2).
    #[arg(long, default_value = "0")]
    priorities: String,
    /// Synthetic: client mix, value:weight pairs (e.g. 0:3,1:1).
    #[arg(long, default_value = "0")]
    clients: String,
    /// Synthetic: seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

impl SyntheticArgs {
    fn settings(&self, request_rate: f64) -> SyntheticSettings {
        SyntheticSettings {
            num_requests: self.num_requests,
            request_rate: Some(request_rate),
            burstiness: self.burstiness,
            prompt_lengths: self.prompt_lengths.clone(),
            output_lengths: self.output_lengths.clone(),
            prefix_fraction: self.prefix_fraction,
            prefix_groups: self.prefix_groups,
            prefix_len: self.prefix_len,
            priorities: self.priorities.clone(),
            clients: self.clients.clone(),
            seed: self.seed,
        }
    }
}

#[derive(clap::Args)]
struct SimulateArgs {
    /// A JSON Lines workload (see the README); without it a synthetic workload is generated.
    #[arg(long)]
    workload: Option<PathBuf>,
    /// Synthetic: mean arrivals per second (inf: all at once).
    #[arg(long, default_value_t = f64::INFINITY)]
    request_rate: f64,
    #[command(flatten)]
    synthetic: SyntheticArgs,
    /// The scheduler: native, native:<policy>, fcfs, priority, fair or a .wasm component.
    #[arg(long, default_value = "fcfs")]
    scheduler: SchedulerSpec,
    /// Run several schedulers on the same workload and compare them (e.g. fcfs,priority,fair).
    #[arg(long, value_delimiter = ',')]
    compare: Vec<SchedulerSpec>,
    /// Latency model JSON (fixed_us, prefill_token_us, decode_request_us, context_token_us).
    #[arg(long)]
    latency_model: Option<PathBuf>,
    /// Write the canonical journey JSON Lines here.
    #[arg(long)]
    journey_log: Option<PathBuf>,
    /// Write a Chrome/Perfetto trace here.
    #[arg(long)]
    chrome_trace: Option<PathBuf>,
    /// Write the report JSON here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Time-to-first-token objective for goodput, ms.
    #[arg(long)]
    slo_ttft_ms: Option<f64>,
    /// Time-per-output-token objective for goodput, ms.
    #[arg(long)]
    slo_tpot_ms: Option<f64>,
    #[command(flatten)]
    engine: EngineArgs,
}

impl SimulateArgs {
    fn synthetic(&self) -> Result<Synthetic> {
        self.synthetic
            .settings(self.request_rate)
            .synthetic(self.engine.sequence.max_model_len)
            .map_err(anyhow::Error::msg)
    }

    /// A fresh stream of the workload's arrivals (each run replays it from the start).
    fn arrivals(&self) -> Result<Box<dyn Iterator<Item = Result<Arrival, WorkloadError>>>> {
        Ok(match &self.workload {
            Some(path) => {
                let file = std::fs::File::open(path)
                    .with_context(|| format!("opening {}", path.display()))?;
                Box::new(read_workload(
                    std::io::BufReader::new(file),
                    self.engine.sequence.max_model_len,
                ))
            }
            None => Box::new(self.synthetic()?.arrivals().map(Ok)),
        })
    }
}

#[derive(clap::Args)]
struct SweepArgs {
    /// Engine configurations: every combination of these three lists is one line of the chart.
    #[arg(long, value_delimiter = ',', default_value = "128")]
    max_num_seqs: Vec<u32>,
    /// Token budgets of one engine step.
    #[arg(long, value_delimiter = ',', default_value = "2048")]
    max_num_batched_tokens: Vec<u32>,
    /// KV cache sizes in blocks.
    #[arg(long, value_delimiter = ',', default_value = "8192")]
    num_blocks: Vec<u32>,
    /// Mean arrivals per second to offer each configuration.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16,32")]
    request_rate: Vec<f64>,
    /// Schedulers: native, native:<policy>, fcfs, priority, fair or .wasm components.
    #[arg(long, value_delimiter = ',', default_value = "fcfs")]
    scheduler: Vec<SchedulerSpec>,
    #[command(flatten)]
    synthetic: SyntheticArgs,
    /// Latency model JSON (fixed_us, prefill_token_us, decode_request_us, context_token_us).
    #[arg(long)]
    latency_model: Option<PathBuf>,
    /// Time-to-first-token objective, ms.
    #[arg(long, default_value_t = 2000.0)]
    slo_ttft_ms: f64,
    /// Time-per-output-token objective, ms.
    #[arg(long, default_value_t = 100.0)]
    slo_tpot_ms: f64,
    /// Fraction of requests that must meet both objectives for a rate to pass.
    #[arg(long, default_value_t = 0.9)]
    slo_attainment: f64,
    /// Folder for sweep.csv, sweep.json and sweep.svg.
    #[arg(long, default_value = "sweep")]
    out: PathBuf,
    #[command(flatten)]
    sequence: SequenceArgs,
}

#[derive(clap::Args)]
struct GenerateArgs {
    /// Prompts, JSON Lines: {"id", "prompt" or "prompt_token_ids", sampling parameters}.
    #[arg(long)]
    prompts: PathBuf,
    /// Where to write one JSON line per request: id, text, token ids, finish reason, timings.
    #[arg(long)]
    output: PathBuf,
    /// The model: `tiny` (built in: seeded weights, byte tokens) or a local Hugging Face
    /// directory of a Llama checkpoint (config.json, *.safetensors, tokenizer.json).
    #[arg(long, default_value = "tiny")]
    model: String,
    /// Where the model runs: cpu (burn ndarray) or wgpu (a GPU; needs the `wgpu` build feature).
    #[arg(long, value_enum, default_value_t = DeviceChoice::Cpu)]
    device: DeviceChoice,
    /// The scheduler: native, native:<policy>, fcfs, priority, fair or a .wasm component.
    #[arg(long, default_value = "fcfs")]
    scheduler: SchedulerSpec,
    /// Write the canonical journey JSON Lines here.
    #[arg(long)]
    journey_log: Option<PathBuf>,
    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on.
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// The model: `tiny` (built in) or a local Hugging Face Llama checkpoint directory.
    #[arg(long, default_value = "tiny")]
    model: String,
    /// The name clients use for the model (default: --model).
    #[arg(long)]
    served_model_name: Option<String>,
    /// Where the model runs: cpu (burn ndarray) or wgpu (a GPU; needs the `wgpu` build feature).
    #[arg(long, value_enum, default_value_t = DeviceChoice::Cpu)]
    device: DeviceChoice,
    /// The scheduler: native, native:<policy>, fcfs, priority, fair or a .wasm component.
    #[arg(long, default_value = "fcfs")]
    scheduler: SchedulerSpec,
    /// Require `Authorization: Bearer <key>` on /v1 routes.
    #[arg(long, env = "WAYPOINT_API_KEY")]
    api_key: Option<String>,
    /// Largest request body accepted, in bytes.
    #[arg(long, default_value_t = 4 << 20)]
    max_request_body_bytes: usize,
    /// The header that names a request's tenant; it wins over the body's `user` field. The
    /// default is the Gateway API Inference Extension's fairness id, which llm-d's router sets.
    #[arg(long, default_value = "x-gateway-inference-fairness-id")]
    tenant_header: String,
    /// Turn on `POST /admin/scheduler` (a policy component swapped in live), guarded by this
    /// key as `Authorization: Bearer <key>`.
    #[arg(long, env = "WAYPOINT_ADMIN_API_KEY")]
    admin_api_key: Option<String>,
    /// Largest policy component `POST /admin/scheduler` accepts, in bytes.
    #[arg(long, default_value_t = 32 << 20)]
    max_policy_bytes: usize,
    /// Scheduler faults that may name one request before it fails; requests a fault does not
    /// name are resubmitted with their tokens and recomputed.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    max_faults_per_request: u32,
    /// Faults within --policy-fault-window-s after which a policy component is replaced by the
    /// built-in fcfs.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    policy_fault_limit: u32,
    /// The window of --policy-fault-limit, in seconds.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    policy_fault_window_s: u64,
    /// Let requests ask for their timings (`"return_timings": true`): queue, prefill, decode,
    /// TTFT, end-to-end, tokens, preemptions and scheduler steps, from their journeys.
    #[arg(long)]
    enable_request_timings: bool,
    /// Tenants that each get their own scheduler client index; later ones share one more.
    #[arg(long, default_value_t = 16)]
    max_tenants: u32,
    /// Write the canonical journey JSON Lines of every sampled request here.
    #[arg(long)]
    journey_log: Option<PathBuf>,
    /// Publish the prefix cache's changes as vLLM's KV events, for prefix-cache-aware routers;
    /// vLLM's JSON, e.g. '{"enable_kv_cache_events": true, "endpoint": "tcp://*:5557",
    /// "replay_endpoint": "tcp://*:5558", "topic": "kv-events"}'.
    #[arg(long, value_parser = parse_kv_events_config)]
    kv_events_config: Option<KvEventsConfig>,
    #[command(flatten)]
    tracing: TracingArgs,
    #[command(flatten)]
    engine: EngineArgs,
}

fn parse_kv_events_config(json: &str) -> Result<KvEventsConfig, String> {
    KvEventsConfig::parse(json).map_err(|error| error.to_string())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PromptLine {
    id: String,
    prompt: Option<String>,
    prompt_token_ids: Option<Vec<u32>>,
    #[serde(default = "default_max_tokens")]
    max_tokens: u32,
    #[serde(default)]
    min_tokens: u32,
    #[serde(default)]
    temperature: f32,
    top_p: Option<f32>,
    #[serde(default)]
    top_k: usize,
    #[serde(default)]
    seed: u64,
    #[serde(default)]
    stop_token_ids: Vec<u32>,
    #[serde(default)]
    priority: i32,
    #[serde(default)]
    ignore_eos: bool,
}

fn default_max_tokens() -> u32 {
    16
}

fn read_prompts(path: &PathBuf, model: &LoadedModel) -> Result<Vec<EngineRequest>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut requests = Vec::new();
    for (index, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let line: PromptLine = serde_json::from_str(line)
            .with_context(|| format!("{} line {}", path.display(), index + 1))?;
        let prompt = match (line.prompt, line.prompt_token_ids) {
            (Some(text), None) => model.vocabulary.encode(&text).map_err(|e| {
                anyhow::anyhow!("{} line {}: tokenizing: {e}", path.display(), index + 1)
            })?,
            (None, Some(tokens)) => tokens,
            _ => anyhow::bail!(
                "{} line {}: give prompt or prompt_token_ids",
                path.display(),
                index + 1
            ),
        };
        requests.push(EngineRequest {
            request: NewRequest {
                max_tokens: line.max_tokens,
                min_tokens: line.min_tokens,
                stop_token_ids: line.stop_token_ids,
                priority: line.priority,
                eos_token_id: if line.ignore_eos {
                    None
                } else {
                    model.eos_token_id
                },
                ..NewRequest::new(line.id, prompt)
            },
            sampling: SamplingParams {
                temperature: line.temperature,
                top_p: line.top_p.unwrap_or(1.0),
                top_k: line.top_k,
                seed: line.seed,
            },
        });
    }
    Ok(requests)
}

fn generate_command(cli: &Cli, args: &GenerateArgs) -> Result<ExitCode> {
    let loaded = waypoint::model::load(&args.model, args.device)?;
    let requests = read_prompts(&args.prompts, &loaded)?;
    let config = args.engine.config(args.journey_log.is_some());
    let runtime = runtime(cli)?;
    let module = args.scheduler.load(&runtime)?;
    let backend = args.scheduler.open(module.as_ref(), config)?;
    let LoadedModel {
        model, vocabulary, ..
    } = loaded;
    let mut engine = Engine::new(backend, model, &config);
    let start = std::time::Instant::now();
    let clock = || start.elapsed().as_nanos() as u64;
    let mut journey_log = create_output(&args.journey_log)?;
    let mut write_events = |events: &[waypoint_scheduler::JourneyEvent]| -> Result<()> {
        if let Some(log) = journey_log.as_mut() {
            for event in events {
                writeln!(log, "{}", event.to_json_line())?;
            }
        }
        Ok(())
    };
    for request in requests {
        let events = engine.add(request, (), clock())?;
        write_events(&events)?;
    }
    let mut output = std::io::BufWriter::new(
        std::fs::File::create(&args.output)
            .with_context(|| format!("creating {}", args.output.display()))?,
    );
    while engine.num_unfinished() > 0 {
        let step = engine.step(clock(), clock)?;
        write_events(&step.journey_events)?;
        for (done, ()) in step.finished {
            let line = serde_json::json!({
                "id": &*done.id,
                "text": vocabulary.decode(&done.token_ids),
                "token_ids": done.token_ids,
                "finish_reason": done.finish_status.finish_reason(),
                "timings": {
                    "ttft_ms": done.first_token_ns.map(|t| (t - done.arrival_ns) as f64 / 1e6),
                    "e2e_ms": (done.finish_ns - done.arrival_ns) as f64 / 1e6,
                },
            });
            writeln!(output, "{line}")?;
        }
    }
    output.flush()?;
    if let Some(log) = journey_log.as_mut() {
        log.flush()?;
    }
    Ok(ExitCode::SUCCESS)
}

fn serve_command(cli: &Cli, args: &ServeArgs) -> Result<ExitCode> {
    let rate = args.tracing.journey_tracing_sample_rate;
    if !(0.0..=1.0).contains(&rate) {
        anyhow::bail!("--journey-tracing-sample-rate must be in [0, 1], not {rate}");
    }
    let journeys = args.tracing.enable_journey_tracing
        || args.journey_log.is_some()
        || args.enable_request_timings;
    let mut config = args.engine.config(journeys);
    args.tracing.apply(&mut config);
    let kv_events = args
        .kv_events_config
        .as_ref()
        .filter(|kv_events| kv_events.publishes());
    config.enable_kv_cache_events = kv_events.is_some();
    config.validate().context("engine settings")?;
    let loaded = waypoint::model::load(&args.model, args.device)?;
    let runtime = runtime(cli)?;
    let module = args.scheduler.load(&runtime)?;
    let backend = args.scheduler.open(module.as_ref(), config)?;
    // A policy component that keeps faulting gives way to the built-in fcfs; the native
    // scheduler has none to give way to.
    let fallback = match &module {
        Some(_) => {
            let fcfs = SchedulerSpec::Builtin("fcfs".into());
            let fcfs_module = fcfs.load(&runtime)?;
            Some(Box::new(move || fcfs.open(fcfs_module.as_ref(), config)) as worker::Fallback)
        }
        None => None,
    };
    let description = backend.policy().clone();
    let policy = description.to_string();
    let model_config = *loaded.model.config();
    let engine = Engine::new(backend, loaded.model, &config);
    let journey_log = match &args.journey_log {
        Some(path) => Some(Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        )) as Box<dyn std::io::Write + Send>),
        None => None,
    };
    let served_name = args.served_model_name.clone().unwrap_or(args.model.clone());
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(async move {
            let clock = Clock::new();
            let wants_spans = journeys || args.tracing.step_tracing_enabled;
            let tracing = match args.tracing.endpoint() {
                Some(endpoint) if wants_spans => Some(Arc::new(
                    Tracing::new(Some(&endpoint), clock).context("OTLP trace export")?,
                )),
                _ => None,
            };
            let metrics = Arc::new(Metrics::new(
                &served_name,
                config.max_model_len,
                CacheConfig {
                    block_size: config.block_size,
                    num_gpu_blocks: config.num_blocks,
                    enable_prefix_caching: config.enable_prefix_caching,
                },
            ));
            metrics.policy_running((&description.name, &description.version), None);
            let kv_events = match kv_events {
                Some(kv_events) => {
                    let shape = CacheShape {
                        block_size: config.block_size,
                    };
                    let (publisher, endpoints) =
                        KvEventPublisher::start(kv_events, shape, metrics.clone())?;
                    eprintln!(
                        "waypoint: KV events on {}{}",
                        endpoints.publish,
                        endpoints
                            .replay
                            .map(|replay| format!(", replay on {replay}"))
                            .unwrap_or_default()
                    );
                    Some(publisher)
                }
                None => None,
            };
            let vocabulary = Arc::new(loaded.vocabulary);
            let handle = worker::spawn(
                engine,
                WorkerParts {
                    vocabulary: vocabulary.clone(),
                    clock,
                    metrics: metrics.clone(),
                    spans: tracing.clone().map(CoreSpans::new),
                    journey_log,
                    faults: worker::FaultPolicy {
                        max_faults_per_request: args.max_faults_per_request,
                        policy_fault_limit: args.policy_fault_limit,
                        window_ns: args.policy_fault_window_s * 1_000_000_000,
                    },
                    fallback,
                    kv_events,
                },
            )
            .context("starting the engine thread")?;
            let tenants = Tenants::new(
                axum::http::HeaderName::try_from(args.tenant_header.as_str())
                    .with_context(|| format!("--tenant-header {:?}", args.tenant_header))?,
                args.max_tenants,
            );
            let state = Arc::new(AppState {
                engine: handle,
                vocabulary,
                model_name: served_name,
                max_model_len: config.max_model_len,
                vocab_size: model_config.vocab_size,
                eos_token_id: loaded.eos_token_id,
                api_key: args.api_key.clone(),
                tenants,
                request_timings: args.enable_request_timings,
                admin: args
                    .admin_api_key
                    .clone()
                    .map(|api_key| server::admin::Admin {
                        api_key,
                        runtime: runtime.clone(),
                        config,
                    }),
                clock,
                metrics,
                tracing: tracing.clone(),
                journey_sample_rate: if journeys { rate } else { 0.0 },
                rng: Mutex::new(Rng::new(clock.since_epoch(0).as_nanos() as u64)),
                next_id: AtomicU64::new(0),
                created: clock.since_epoch(0).as_secs(),
            });
            let address = format!("{}:{}", args.host, args.port);
            let listener = tokio::net::TcpListener::bind(&address)
                .await
                .with_context(|| format!("listening on {address}"))?;
            eprintln!(
                "waypoint: serving {} on http://{} with the {policy} scheduler",
                state.model_name,
                listener
                    .local_addr()
                    .map_or(address.clone(), |a| a.to_string())
            );
            axum::serve(
                listener,
                server::router(
                    state.clone(),
                    args.max_request_body_bytes,
                    args.max_policy_bytes,
                ),
            )
            .with_graceful_shutdown(shutdown_signal())
            .await
            .context("serving")?;
            state.engine.join();
            if let Some(tracing) = tracing {
                tokio::task::spawn_blocking(move || tracing.shutdown())
                    .await
                    .ok();
            }
            Ok(ExitCode::SUCCESS)
        })
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {}
        _ = terminate => {}
    }
}

fn create_output(path: &Option<PathBuf>) -> Result<Option<std::io::BufWriter<std::fs::File>>> {
    path.as_ref()
        .map(|path| {
            std::fs::File::create(path)
                .map(std::io::BufWriter::new)
                .with_context(|| format!("creating {}", path.display()))
        })
        .transpose()
}

fn latency_model(path: Option<&PathBuf>) -> Result<LatencyModel> {
    let Some(path) = path else {
        return Ok(LatencyModel::default());
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    LatencyModel::from_json(&text).with_context(|| format!("latency model {}", path.display()))
}

fn sweep_command(cli: &Cli, args: &SweepArgs) -> Result<ExitCode> {
    let runtime = runtime(cli)?;
    let schedulers = args
        .scheduler
        .iter()
        .map(|spec| {
            Ok(sweep::Scheduler {
                module: spec.load(&runtime)?,
                spec: spec.clone(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let capacities = args
        .max_num_seqs
        .iter()
        .flat_map(|&max_num_seqs| {
            args.max_num_batched_tokens
                .iter()
                .flat_map(move |&max_num_batched_tokens| {
                    args.num_blocks.iter().map(move |&num_blocks| CapacityArgs {
                        max_num_seqs,
                        max_num_batched_tokens,
                        num_blocks,
                    })
                })
        })
        .collect::<Vec<_>>();
    let settings = Settings {
        latency: latency_model(args.latency_model.as_ref())?,
        slo: Slo {
            ttft_ms: Some(args.slo_ttft_ms),
            tpot_ms: Some(args.slo_tpot_ms),
        },
    };
    let grid = sweep::Grid {
        capacities,
        rates: args.request_rate.clone(),
        schedulers,
        sequence: args.sequence.clone(),
        workload: args.synthetic.settings(f64::INFINITY),
        settings,
        attainment: args.slo_attainment,
    };
    let started = std::time::Instant::now();
    let points = grid.run()?;
    let elapsed = started.elapsed();
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let write = |name: &str, text: String| {
        let path = args.out.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    };
    write("sweep.csv", sweep::csv(&points)?)?;
    write("sweep.json", serde_json::to_string_pretty(&points)? + "\n")?;
    write(
        "sweep.svg",
        sweep::chart(&points, &settings, args.slo_attainment)?,
    )?;
    print!("{}", sweep::summary(&points));
    println!(
        "{} points in {:.1} s on {} threads; wrote sweep.csv, sweep.json and sweep.svg to {}",
        points.len(),
        elapsed.as_secs_f64(),
        rayon::current_num_threads(),
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn simulate_command(cli: &Cli, args: &SimulateArgs) -> Result<ExitCode> {
    let settings = Settings {
        latency: latency_model(args.latency_model.as_ref())?,
        slo: Slo {
            ttft_ms: args.slo_ttft_ms,
            tpot_ms: args.slo_tpot_ms,
        },
    };
    let specs = if args.compare.is_empty() {
        vec![args.scheduler.clone()]
    } else {
        args.compare.clone()
    };
    if specs.len() > 1 && (args.journey_log.is_some() || args.chrome_trace.is_some()) {
        anyhow::bail!(
            "--journey-log and --chrome-trace record one run; leave them out with --compare"
        );
    }
    let runtime = runtime(cli)?;
    let config = args.engine.config(true);
    let mut reports: Vec<Report> = Vec::new();
    for spec in &specs {
        let module = spec.load(&runtime)?;
        let mut backend = spec.open(module.as_ref(), config)?;
        let mut journey_log = create_output(&args.journey_log)?;
        let mut trace_file = create_output(&args.chrome_trace)?;
        let progress = indicatif::ProgressBar::new(if args.workload.is_some() {
            0
        } else {
            args.synthetic.num_requests
        });
        progress.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {msg} {pos}/{len} requests finished [{elapsed}]",
            )
            .context("progress template")?,
        );
        progress.set_message(spec.to_string());
        let report_progress = |finished: u64| progress.set_position(finished);
        let mut outputs = Outputs {
            journey_log: journey_log.as_mut().map(|w| w as &mut dyn std::io::Write),
            chrome_trace: match trace_file.as_mut() {
                Some(w) => Some(ChromeTrace::new(w as &mut dyn std::io::Write)?),
                None => None,
            },
            progress: Some(&report_progress),
            steps: None,
        };
        let report = simulate(backend.as_mut(), args.arrivals()?, settings, &mut outputs)?;
        progress.finish_and_clear();
        reports.push(report);
    }
    print!("{}", table(&reports));
    if let Some(path) = &args.report {
        let json = if reports.len() == 1 {
            serde_json::to_string_pretty(&reports[0])?
        } else {
            serde_json::to_string_pretty(&reports)?
        };
        std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn runtime(cli: &Cli) -> Result<GuestRuntime> {
    GuestRuntime::new(GuestLimits {
        memory_bytes: cli.guest_memory_limit << 20,
        call_timeout: Duration::from_millis(cli.guest_call_timeout_ms),
    })
}

fn policy_command(cli: &Cli, command: &PolicyCommand) -> Result<ExitCode> {
    match command {
        PolicyCommand::New { name, dir, sdk } => {
            let dir = dir.clone().unwrap_or_else(|| PathBuf::from(name));
            let sdk = sdk.clone().unwrap_or_else(policy_crate::default_sdk);
            for file in policy_crate::new_crate(name, &dir, &sdk)? {
                println!("wrote {}", file.display());
            }
            println!(
                "next: waypoint policy build {}, then waypoint conformance {}",
                dir.display(),
                dir.join(format!("{name}.wasm")).display()
            );
        }
        PolicyCommand::Build { dir } => {
            let component = policy_crate::build_crate(dir)?;
            let module = runtime(cli)?.load_file(&component)?;
            let policy = module.description();
            println!(
                "built {} (policy {} {})",
                component.display(),
                policy.name,
                policy.version
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn conformance(cli: &Cli, component: &str) -> Result<ExitCode> {
    let spec: SchedulerSpec = if component.ends_with(".wasm") {
        SchedulerSpec::File(PathBuf::from(component))
    } else {
        component.parse().map_err(anyhow::Error::msg)?
    };
    let runtime = runtime(cli)?;
    let module = match spec.load(&runtime) {
        Ok(Some(module)) => module,
        Ok(None) => {
            anyhow::bail!("conformance checks a policy component, not the native scheduler")
        }
        Err(error) => {
            println!("conformance of {component}\n  FAIL  loads as a policy component: {error:#}\n0 passed, 1 failed");
            return Ok(ExitCode::FAILURE);
        }
    };
    let outcomes = conformance::run(&module);
    print!("{}", conformance::report(&module, &outcomes));
    Ok(if outcomes.iter().all(|o| o.failure.is_none()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn bench(cli: &Cli, running: &[u32], cycles: u32, spec: &SchedulerSpec) -> Result<ExitCode> {
    anyhow::ensure!(cycles > 0, "--cycles must be at least 1");
    let runtime = runtime(cli)?;
    let module = spec
        .load(&runtime)?
        .context("bench compares a policy component with the native scheduler")?;
    let policy = match module.description().name.as_str() {
        "priority" => PolicyKind::Priority,
        "fair" => PolicyKind::Fair,
        _ => PolicyKind::Fcfs,
    };
    println!(
        "steady decode, one schedule + update_from_output cycle; {cycles} timed cycles each, \
         the backends taking turns of 50"
    );
    println!(
        "{:>8}  {:>12} {:>10}  {:>12} {:>10}  {:>11}  {:>9} {:>9}",
        "running", "native p50", "p99", "wasm p50", "p99", "wasm/native", "schedule", "update"
    );
    let warmup = cycles / 10;
    for &n in running {
        let config = bench::decode_config(n, warmup + cycles);
        let mut native = SchedulerSpec::Native(policy).open(None, config)?;
        let mut wasm = spec.open(Some(&module), config)?;
        let figures =
            bench::measure_side_by_side(&mut [native.as_mut(), wasm.as_mut()], n, warmup, cycles)?;
        let (native_figures, wasm_figures) = (figures[0], figures[1]);
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let ratio = |part: fn(&bench::Figures) -> Duration| {
            us(part(&wasm_figures)) / us(part(&native_figures))
        };
        println!(
            "{n:>8}  {:>10.2}µs {:>8.2}µs  {:>10.2}µs {:>8.2}µs  {:>10.2}×  {:>8.2}× {:>8.2}×",
            us(native_figures.median),
            us(native_figures.p99),
            us(wasm_figures.median),
            us(wasm_figures.p99),
            ratio(|figures| figures.median),
            ratio(|figures| figures.schedule_median),
            ratio(|figures| figures.update_median),
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// What `bench-model` measures.
struct ModelBench<'a> {
    models: &'a [String],
    batches: &'a [usize],
    prompt_len: usize,
    long_contexts: &'a [usize],
    decode_steps: usize,
    num_blocks: &'a [usize],
}

fn bench_model(bench: &ModelBench<'_>, choice: DeviceChoice) -> Result<ExitCode> {
    let device = open_device(choice)?;
    println!(
        "model runner on {choice:?}; {} decode steps timed after the prompt, the rows' steps in turn",
        bench.decode_steps
    );
    println!(
        "{:>6} {:>10} {:>8} {:>8} {:>6}  {:>16}  {:>16}  {:>16}",
        "model",
        "params",
        "blocks",
        "context",
        "batch",
        "prefill tok/s",
        "decode tok/s",
        format!("decode vs {}", bench.prompt_len)
    );
    for name in bench.models {
        let config = match name.as_str() {
            "tiny" => ModelConfig::tiny(),
            "110m" => ModelConfig::llama_110m(),
            "1b" => ModelConfig::llama_1b(),
            other => anyhow::bail!("unknown benchmark model {other:?}: tiny, 110m or 1b"),
        };
        let model = Model::new(config, Weights::random(&config, 1, &device), device.clone());
        let rows = bench
            .batches
            .iter()
            .map(|&batch| (batch, bench.prompt_len))
            .chain(bench.long_contexts.iter().map(|&context| (1, context)));
        let rows: Vec<bench::ModelRow> = rows
            .map(|(batch, prompt_len)| bench::ModelRow { batch, prompt_len })
            .collect();
        let short = bench::ModelRow {
            batch: 1,
            prompt_len: bench.prompt_len,
        };
        for &num_blocks in bench.num_blocks {
            let (blocks, figures) =
                bench::measure_model(&model, &rows, bench.decode_steps, num_blocks);
            // Long-context rows against batch 1 at the prompt length, when it is measured.
            let short_decode = rows
                .iter()
                .position(|row| *row == short)
                .map(|i| figures[i].decode_tokens_per_s);
            for (row, figures) in rows.iter().zip(&figures) {
                let against_short = match short_decode {
                    Some(short) if row.prompt_len != bench.prompt_len => {
                        format!("{:.2}", figures.decode_tokens_per_s / short)
                    }
                    _ => String::new(),
                };
                println!(
                    "{name:>6} {:>9.1}M {blocks:>8} {:>8} {:>6}  {:>16.1}  {:>16.1}  {against_short:>16}",
                    config.num_parameters() as f64 / 1e6,
                    row.prompt_len,
                    row.batch,
                    figures.prefill_tokens_per_s,
                    figures.decode_tokens_per_s
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> Result<ExitCode> {
    let cli = Cli::parse();
    match &cli.command {
        Command::Simulate(args) => simulate_command(&cli, args),
        Command::Sweep(args) => sweep_command(&cli, args),
        Command::Generate(args) => generate_command(&cli, args),
        Command::Serve(args) => serve_command(&cli, args),
        Command::Policy(command) => policy_command(&cli, command),
        Command::Conformance { component } => conformance(&cli, component),
        Command::Bench {
            running,
            cycles,
            scheduler,
        } => bench(&cli, running, *cycles, scheduler),
        Command::BenchModel {
            models,
            batch,
            prompt_len,
            long_contexts,
            decode_steps,
            num_blocks,
            device,
        } => bench_model(
            &ModelBench {
                models,
                batches: batch,
                prompt_len: *prompt_len,
                long_contexts,
                decode_steps: *decode_steps,
                num_blocks,
            },
            *device,
        ),
    }
}
