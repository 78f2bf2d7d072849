//! A policy component as jco transpiled it, as a [`Transport`] of the engine crate's component
//! backend: calls go through the JavaScript bindings, and their records are converted field for
//! field to the crate's and the wire records. The backend checks them, as it does the wasmtime
//! host's.

use js_sys::{Array, BigUint64Array, Function, Object, Reflect, Uint32Array, Uint8Array};
use wasm_bindgen::{JsCast, JsValue};
use waypoint_engine::backend::{BackendError, GuestFault, PolicyDescription};
use waypoint_engine::component::{ComponentBackend, Transport};
use waypoint_engine::fault::{Call, ContractViolation};
use waypoint_scheduler::kv::PrefixCacheStats;
use waypoint_scheduler::output::{
    Added, EngineOutputs, FinishOutcome, OutputFinish, RequestRef, ResetOutcome, ScheduledBatch,
    ScheduledDetail, SchedulerOutput,
};
use waypoint_scheduler::step_trace::{BatchSummary, RequestSnapshot};
use waypoint_scheduler::{
    ConfigError, FinishStatus, JourneyEvent, JourneyEventType, LiveRequest, NewRequest,
    OutputError, Phase, RequestError, RequestHandle, RequestId, ScheduleKind, ScheduledKind,
    SchedulerConfig, SchedulerStats, StateError, StepEvent,
};

/// A scheduler in a transpiled policy component.
pub type JcoBackend = ComponentBackend<JcoTransport>;

/// A scheduler backend over the transpiled module's `scheduler` interface `exports`, for
/// `config`; `origin` names the component file.
pub fn backend(
    exports: &JsValue,
    config: SchedulerConfig,
    origin: &str,
) -> Result<JcoBackend, BackendError> {
    let exports = Record(exports.clone());
    let info = Record(call(&exports.0, "describePolicy", &[]).map_err(fault)?);
    let description = PolicyDescription {
        name: info.string("name")?,
        version: info.string("version")?,
        origin: origin.to_owned(),
    };
    let transport = JcoTransport {
        class: exports.get("Scheduler")?,
        instance: JsValue::UNDEFINED,
    };
    ComponentBackend::new(transport, description, config)
}

/// The calls of one transpiled component's scheduler instance.
pub struct JcoTransport {
    class: JsValue,
    instance: JsValue,
}

/// What a call into the component threw.
enum Thrown {
    /// A `result` error of the contract (jco's `ComponentError`, with the variant as payload).
    Error(Record),
    /// Anything else: a trap or a broken binding.
    Fault(GuestFault),
}

impl From<GuestFault> for Thrown {
    fn from(fault: GuestFault) -> Self {
        Self::Fault(fault)
    }
}

impl JcoTransport {
    /// A call whose contract has no error case.
    fn infallible(&self, method: &str, args: &[JsValue]) -> Result<Record, BackendError> {
        call(&self.instance, method, args)
            .map(Record)
            .map_err(fault)
    }
}

impl Transport for JcoTransport {
    fn create(&mut self, config: &SchedulerConfig) -> Result<(), BackendError> {
        self.instance = call(&self.class, "create", &[scheduler_config(config)])
            .map_err(|thrown| contract_error(thrown, config_error))?;
        Ok(())
    }

    fn import_state(&mut self, state: &[u8], now_ns: u64) -> Result<(), BackendError> {
        let args = [Uint8Array::from(state).into(), now_ns.into()];
        self.instance = call(&self.class, "importState", &args)
            .map_err(|thrown| contract_error(thrown, state_error))?;
        Ok(())
    }

    fn add_request(&mut self, request: &NewRequest, now_ns: u64) -> Result<Added, BackendError> {
        let added = call(
            &self.instance,
            "addRequest",
            &[new_request(request), now_ns.into()],
        )
        .map(Record)
        .map_err(|thrown| contract_error(thrown, request_error))?;
        Ok(Added {
            handle: RequestHandle(added.u64("handle")?),
            journey_events: added.list("journeyEvents", journey_event)?,
        })
    }

    fn schedule(&mut self, now_ns: u64) -> Result<SchedulerOutput, BackendError> {
        let output = self.infallible("schedule", &[now_ns.into()])?;
        Ok(scheduler_output(&output)?)
    }

    fn update_from_output(
        &mut self,
        token_ids: &[u32],
        missing: &[u32],
        now_ns: u64,
    ) -> Result<EngineOutputs, BackendError> {
        let output = object(&[("tokenIds", u32s(token_ids)), ("missing", u32s(missing))]);
        let outputs = call(&self.instance, "updateFromOutput", &[output, now_ns.into()])
            .map(Record)
            .map_err(|thrown| contract_error(thrown, output_error))?;
        Ok(engine_outputs(&outputs)?)
    }

    fn finish_requests(
        &mut self,
        ids: &[String],
        status: FinishStatus,
        now_ns: u64,
    ) -> Result<FinishOutcome, BackendError> {
        let ids: Array = ids.iter().map(|id| JsValue::from_str(id)).collect();
        let status = JsValue::from_str(finish_status_name(status));
        let outcome = self.infallible("finishRequests", &[ids.into(), status, now_ns.into()])?;
        Ok(FinishOutcome {
            finished_ids: outcome
                .strings("finishedIds")?
                .into_iter()
                .map(RequestId::from)
                .collect(),
            journey_events: outcome.list("journeyEvents", journey_event)?,
        })
    }

    fn reset_prefix_cache(
        &mut self,
        reset_running_requests: bool,
        now_ns: u64,
    ) -> Result<ResetOutcome, BackendError> {
        let outcome = self.infallible(
            "resetPrefixCache",
            &[reset_running_requests.into(), now_ns.into()],
        )?;
        Ok(ResetOutcome {
            reset: outcome.bool("reset")?,
            preempted_ids: outcome
                .strings("preemptedIds")?
                .into_iter()
                .map(RequestId::from)
                .collect(),
            journey_events: outcome.list("journeyEvents", journey_event)?,
        })
    }

    fn shutdown(&mut self, now_ns: u64) -> Result<Vec<StepEvent>, BackendError> {
        let events = self.infallible("shutdown", &[now_ns.into()])?;
        Ok(events
            .items()?
            .iter()
            .map(step_event)
            .collect::<Result<_, _>>()?)
    }

    fn stats(&mut self, now_ns: u64) -> Result<SchedulerStats, BackendError> {
        let stats = self.infallible("stats", &[now_ns.into()])?;
        Ok(scheduler_stats(&stats)?)
    }

    fn live_requests(&mut self, now_ns: u64) -> Result<Vec<LiveRequest>, BackendError> {
        let refs = self.infallible("liveRequests", &[now_ns.into()])?;
        Ok(refs
            .items()?
            .iter()
            .map(live_request)
            .collect::<Result<_, _>>()?)
    }

    fn export_state(&mut self, now_ns: u64) -> Result<Vec<u8>, BackendError> {
        let state = self.infallible("exportState", &[now_ns.into()])?;
        Ok(state
            .0
            .dyn_into::<Uint8Array>()
            .map(|bytes| bytes.to_vec())
            .map_err(|_| contract("exportState returned no bytes"))?)
    }
}

/// Call `object[method](...args)`, telling the contract's errors from faults.
fn call(object: &JsValue, method: &str, args: &[JsValue]) -> Result<JsValue, Thrown> {
    let function = Reflect::get(object, &JsValue::from_str(method))
        .ok()
        .and_then(|f| f.dyn_into::<Function>().ok())
        .ok_or_else(|| GuestFault::Incompatible(format!("the component has no {method}")))?;
    let args: Array = args.iter().collect();
    function.apply(object, &args).map_err(|thrown| {
        match Reflect::get(&thrown, &JsValue::from_str("payload")) {
            Ok(payload) if payload.is_object() => Thrown::Error(Record(payload)),
            _ => Thrown::Fault(GuestFault::Trap(describe(&thrown))),
        }
    })
}

/// A thrown value's message (a `WebAssembly.RuntimeError` for a trap).
fn describe(thrown: &JsValue) -> String {
    thrown
        .dyn_ref::<js_sys::Error>()
        .map(|error| String::from(error.to_string()))
        .or_else(|| thrown.as_string())
        .unwrap_or_else(|| format!("{thrown:?}"))
}

fn fault(thrown: Thrown) -> BackendError {
    match thrown {
        Thrown::Error(_) => contract("an error where the contract has none").into(),
        Thrown::Fault(fault) => fault.into(),
    }
}

/// A thrown `result` error converted by `convert`, or the fault.
fn contract_error<E: Into<BackendError>>(
    thrown: Thrown,
    convert: fn(&Record) -> Result<E, GuestFault>,
) -> BackendError {
    match thrown {
        Thrown::Error(payload) => match convert(&payload) {
            Ok(error) => error.into(),
            Err(fault) => fault.into(),
        },
        Thrown::Fault(fault) => fault.into(),
    }
}

/// A record jco built that does not have the contract's shape.
fn contract(what: impl Into<String>) -> GuestFault {
    GuestFault::Contract(ContractViolation::Malformed {
        call: Call::Transport,
        what: what.into(),
    })
}

/// A JavaScript object as jco shapes a WIT record or variant.
struct Record(JsValue);

impl Record {
    fn get(&self, name: &str) -> Result<JsValue, GuestFault> {
        Reflect::get(&self.0, &JsValue::from_str(name))
            .ok()
            .filter(|value| !value.is_undefined())
            .ok_or_else(|| contract(format!("a record without {name}")))
    }

    fn optional(&self, name: &str) -> Option<JsValue> {
        Reflect::get(&self.0, &JsValue::from_str(name))
            .ok()
            .filter(|value| !value.is_undefined() && !value.is_null())
    }

    fn record(&self, name: &str) -> Result<Record, GuestFault> {
        self.get(name).map(Record)
    }

    fn u64(&self, name: &str) -> Result<u64, GuestFault> {
        u64::try_from(self.get(name)?).map_err(|_| contract(format!("{name} is not a u64")))
    }

    fn u32(&self, name: &str) -> Result<u32, GuestFault> {
        to_u32(&self.get(name)?).ok_or_else(|| contract(format!("{name} is not a u32")))
    }

    fn optional_u32(&self, name: &str) -> Result<Option<u32>, GuestFault> {
        self.optional(name)
            .map(|value| to_u32(&value).ok_or_else(|| contract(format!("{name} is not a u32"))))
            .transpose()
    }

    fn f64(&self, name: &str) -> Result<f64, GuestFault> {
        self.get(name)?
            .as_f64()
            .ok_or_else(|| contract(format!("{name} is not a number")))
    }

    fn bool(&self, name: &str) -> Result<bool, GuestFault> {
        self.get(name)?
            .as_bool()
            .ok_or_else(|| contract(format!("{name} is not a bool")))
    }

    /// A string, or a WIT enum as jco's kebab-case name.
    fn string(&self, name: &str) -> Result<String, GuestFault> {
        self.get(name)?
            .as_string()
            .ok_or_else(|| contract(format!("{name} is not a string")))
    }

    fn u32s(&self, name: &str) -> Result<Vec<u32>, GuestFault> {
        let value = self.get(name)?;
        match value.dyn_ref::<Uint32Array>() {
            Some(array) => Ok(array.to_vec()),
            None => Record(value)
                .items()?
                .iter()
                .map(|item| {
                    to_u32(&item.0).ok_or_else(|| contract(format!("{name} holds a non-u32")))
                })
                .collect(),
        }
    }

    fn u64s(&self, name: &str) -> Result<Vec<u64>, GuestFault> {
        let value = self.get(name)?;
        match value.dyn_ref::<BigUint64Array>() {
            Some(array) => Ok(array.to_vec()),
            None => Record(value)
                .items()?
                .into_iter()
                .map(|item| {
                    u64::try_from(item.0).map_err(|_| contract(format!("{name} holds a non-u64")))
                })
                .collect(),
        }
    }

    fn bools(&self, name: &str) -> Result<Vec<bool>, GuestFault> {
        Record(self.get(name)?)
            .items()?
            .iter()
            .map(|item| {
                item.0
                    .as_bool()
                    .ok_or_else(|| contract(format!("{name} holds a non-bool")))
            })
            .collect()
    }

    fn strings(&self, name: &str) -> Result<Vec<String>, GuestFault> {
        Record(self.get(name)?)
            .items()?
            .iter()
            .map(|item| {
                item.0
                    .as_string()
                    .ok_or_else(|| contract(format!("{name} holds a non-string")))
            })
            .collect()
    }

    fn list<T>(
        &self,
        name: &str,
        convert: fn(&Record) -> Result<T, GuestFault>,
    ) -> Result<Vec<T>, GuestFault> {
        Record(self.get(name)?)
            .items()?
            .iter()
            .map(convert)
            .collect()
    }

    /// The elements of this array.
    fn items(&self) -> Result<Vec<Record>, GuestFault> {
        self.0
            .dyn_ref::<Array>()
            .map(|array| array.iter().map(Record).collect())
            .ok_or_else(|| contract("a list that is not an array"))
    }

    /// A WIT variant: jco's `{ tag, val }`.
    fn variant(&self) -> Result<(String, Record), GuestFault> {
        Ok((
            self.string("tag")?,
            Record(self.optional("val").unwrap_or(JsValue::UNDEFINED)),
        ))
    }
}

fn to_u32(value: &JsValue) -> Option<u32> {
    value
        .as_f64()
        .filter(|n| n.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(n))
        .map(|n| n as u32)
}

fn object(fields: &[(&str, JsValue)]) -> JsValue {
    let object = Object::new();
    for (name, value) in fields {
        // Setting a property of a fresh plain object cannot fail.
        let _ = Reflect::set(&object, &JsValue::from_str(name), value);
    }
    object.into()
}

fn u32s(values: &[u32]) -> JsValue {
    Uint32Array::from(values).into()
}

fn optional<T: Into<JsValue>>(value: Option<T>) -> JsValue {
    value.map_or(JsValue::UNDEFINED, Into::into)
}

fn scheduler_config(config: &SchedulerConfig) -> JsValue {
    let tracing = config.step_tracing;
    object(&[
        ("maxNumSeqs", config.max_num_seqs.into()),
        ("maxNumBatchedTokens", config.max_num_batched_tokens.into()),
        ("maxModelLen", config.max_model_len.into()),
        ("blockSize", config.block_size.into()),
        ("numBlocks", config.num_blocks.into()),
        ("enablePrefixCaching", config.enable_prefix_caching.into()),
        ("enableChunkedPrefill", config.enable_chunked_prefill.into()),
        (
            "longPrefillTokenThreshold",
            config.long_prefill_token_threshold.into(),
        ),
        ("reserveFullPrompt", config.reserve_full_prompt.into()),
        (
            "journey",
            object(&[("enabled", config.journey.enabled.into())]),
        ),
        (
            "stepTracing",
            object(&[
                ("enabled", tracing.enabled.into()),
                ("sampleRate", tracing.sample_rate.into()),
                ("richSubsampleRate", tracing.rich_subsample_rate.into()),
                ("closureInterval", tracing.closure_interval.into()),
                ("seed", tracing.seed.into()),
            ]),
        ),
    ])
}

fn new_request(request: &NewRequest) -> JsValue {
    object(&[
        ("id", JsValue::from_str(&request.id)),
        ("clientIndex", request.client_index.into()),
        ("promptTokenIds", u32s(&request.prompt_token_ids)),
        ("maxTokens", request.max_tokens.into()),
        ("minTokens", request.min_tokens.into()),
        ("eosTokenId", optional(request.eos_token_id)),
        ("stopTokenIds", u32s(&request.stop_token_ids)),
        ("priority", request.priority.into()),
        ("arrivalNs", request.arrival_ns.into()),
        ("journeySampled", request.journey_sampled.into()),
        (
            "cacheSalt",
            optional(request.cache_salt.as_deref().map(JsValue::from_str)),
        ),
    ])
}

fn finish_status_name(status: FinishStatus) -> &'static str {
    match status {
        FinishStatus::Stopped => "stopped",
        FinishStatus::LengthCapped => "length-capped",
        FinishStatus::Aborted => "aborted",
        FinishStatus::Ignored => "ignored",
        FinishStatus::Error => "error",
    }
}

fn unknown(what: &str, name: &str) -> GuestFault {
    contract(format!("unknown {what} {name:?}"))
}

fn finish_status(name: &str) -> Result<FinishStatus, GuestFault> {
    Ok(match name {
        "stopped" => FinishStatus::Stopped,
        "length-capped" => FinishStatus::LengthCapped,
        "aborted" => FinishStatus::Aborted,
        "ignored" => FinishStatus::Ignored,
        "error" => FinishStatus::Error,
        other => return Err(unknown("finish status", other)),
    })
}

fn phase(name: &str) -> Result<Phase, GuestFault> {
    Ok(match name {
        "waiting" => Phase::Waiting,
        "prefill" => Phase::Prefill,
        "decode" => Phase::Decode,
        other => return Err(unknown("phase", other)),
    })
}

fn journey_event(event: &Record) -> Result<JourneyEvent, GuestFault> {
    Ok(JourneyEvent {
        request_id: event.string("requestId")?.into(),
        event_type: match event.string("eventType")?.as_str() {
            "queued" => JourneyEventType::Queued,
            "scheduled" => JourneyEventType::Scheduled,
            "first-token" => JourneyEventType::FirstToken,
            "preempted" => JourneyEventType::Preempted,
            "finished" => JourneyEventType::Finished,
            other => return Err(unknown("journey event type", other)),
        },
        ts_monotonic_ns: event.u64("tsMonotonicNs")?,
        scheduler_step: event.u64("schedulerStep")?,
        prefill_done_tokens: event.u32("prefillDoneTokens")?,
        prefill_total_tokens: event.u32("prefillTotalTokens")?,
        decode_done_tokens: event.u32("decodeDoneTokens")?,
        decode_max_tokens: event.u32("decodeMaxTokens")?,
        phase: phase(&event.string("phase")?)?,
        num_preemptions_so_far: event.u32("numPreemptionsSoFar")?,
        schedule_kind: match event.optional("scheduleKind").and_then(|v| v.as_string()) {
            None => None,
            Some(kind) => Some(match kind.as_str() {
                "first" => ScheduleKind::First,
                "resume" => ScheduleKind::Resume,
                other => return Err(unknown("schedule kind", other)),
            }),
        },
        finish_status: event
            .optional("finishStatus")
            .and_then(|v| v.as_string())
            .map(|status| finish_status(&status))
            .transpose()?,
        client_index: event.u32("clientIndex")?,
    })
}

fn step_event(event: &Record) -> Result<StepEvent, GuestFault> {
    let (tag, val) = event.variant()?;
    Ok(match tag.as_str() {
        "window-opened" => StepEvent::WindowOpened {
            sequence: val.u64("sequence")?,
            step_range_start: val.u64("stepRangeStart")?,
            closure_interval: val.u32("closureInterval")?,
        },
        "batch-summary" => StepEvent::BatchSummary(BatchSummary {
            step_id: val.u64("stepId")?,
            ts_start_ns: val.u64("tsStartNs")?,
            running_depth: val.u32("runningDepth")?,
            waiting_depth: val.u32("waitingDepth")?,
            num_prefill_reqs: val.u32("numPrefillReqs")?,
            num_decode_reqs: val.u32("numDecodeReqs")?,
            scheduled_tokens: val.u32("scheduledTokens")?,
            prefill_tokens: val.u32("prefillTokens")?,
            decode_tokens: val.u32("decodeTokens")?,
            num_finished: val.u32("numFinished")?,
            num_preempted: val.u32("numPreempted")?,
            kv_usage_ratio: val.f64("kvUsageRatio")?,
            kv_blocks_total: val.u32("kvBlocksTotal")?,
            kv_blocks_free: val.u32("kvBlocksFree")?,
        }),
        "request-snapshot" => StepEvent::RequestSnapshot(RequestSnapshot {
            step_id: val.u64("stepId")?,
            request_id: val.string("requestId")?.into(),
            phase: phase(&val.string("phase")?)?,
            num_prompt_tokens: val.u32("numPromptTokens")?,
            num_computed_tokens: val.u32("numComputedTokens")?,
            num_output_tokens: val.u32("numOutputTokens")?,
            num_preemptions: val.u32("numPreemptions")?,
            scheduled_tokens_this_step: val.u32("scheduledTokensThisStep")?,
            kv_blocks_allocated: val.u32("kvBlocksAllocated")?,
            kv_blocks_cached: val.u32("kvBlocksCached")?,
            effective_prompt_len: val.optional_u32("effectivePromptLen")?,
        }),
        "window-closed" => StepEvent::WindowClosed {
            sequence: val.u64("sequence")?,
            step_range_start: val.u64("stepRangeStart")?,
            step_range_end: val.u64("stepRangeEnd")?,
        },
        other => return Err(unknown("step event", other)),
    })
}

fn scheduled_kind(name: &str) -> Result<ScheduledKind, GuestFault> {
    Ok(match name {
        "new" => ScheduledKind::New,
        "resumed" => ScheduledKind::Resumed,
        "running" => ScheduledKind::Running,
        other => return Err(unknown("scheduled kind", other)),
    })
}

fn detail(detail: &Record) -> Result<ScheduledDetail, GuestFault> {
    Ok(ScheduledDetail {
        index: detail.u32("index")?,
        kind: scheduled_kind(&detail.string("kind")?)?,
        block_ids: detail.u32s("blockIds")?,
        token_ids: detail.u32s("tokenIds")?,
    })
}

fn live_request(request: &Record) -> Result<LiveRequest, GuestFault> {
    Ok(LiveRequest {
        handle: RequestHandle(request.u64("handle")?),
        request_id: request.string("requestId")?.into(),
        client_index: request.u32("clientIndex")?,
        num_tokens: request.u32("numTokens")?,
        num_blocks: request.u32("numBlocks")?,
        finished: request.bool("finished")?,
    })
}

fn scheduler_output(output: &Record) -> Result<SchedulerOutput, GuestFault> {
    let batch = output.record("batch")?;
    Ok(SchedulerOutput {
        step: output.u64("step")?,
        batch: ScheduledBatch {
            handles: handles(batch.u64s("handles")?),
            num_computed_tokens: batch.u32s("numComputedTokens")?,
            num_scheduled_tokens: batch.u32s("numScheduledTokens")?,
            sample: batch.bools("sample")?,
            details: batch.list("details", detail)?,
        },
        total_num_scheduled_tokens: output.u32("totalNumScheduledTokens")?,
        preempted: output.list("preempted", reference)?,
        finished: output.list("finished", reference)?,
        journey_events: output.list("journeyEvents", journey_event)?,
        step_events: output.list("stepEvents", step_event)?,
    })
}

fn handles(handles: Vec<u64>) -> Vec<RequestHandle> {
    handles.into_iter().map(RequestHandle).collect()
}

fn reference(reference: &Record) -> Result<RequestRef, GuestFault> {
    Ok(RequestRef {
        id: reference.string("id")?.into(),
        handle: RequestHandle(reference.u64("handle")?),
        client_index: reference.u32("clientIndex")?,
    })
}

fn finish(finish: &Record) -> Result<OutputFinish, GuestFault> {
    Ok(OutputFinish {
        index: finish.u32("index")?,
        status: finish_status(&finish.string("status")?)?,
        stop_reason: finish.optional_u32("stopReason")?,
    })
}

fn engine_outputs(outputs: &Record) -> Result<EngineOutputs, GuestFault> {
    Ok(EngineOutputs {
        step: outputs.u64("step")?,
        handles: handles(outputs.u64s("handles")?),
        token_ids: outputs.u32s("tokenIds")?,
        finishes: outputs.list("finishes", finish)?,
        journey_events: outputs.list("journeyEvents", journey_event)?,
    })
}

fn scheduler_stats(stats: &Record) -> Result<SchedulerStats, GuestFault> {
    let cache = stats.record("prefixCache")?;
    Ok(SchedulerStats {
        step: stats.u64("step")?,
        num_running: stats.u32("numRunning")?,
        num_waiting: stats.u32("numWaiting")?,
        kv_cache_usage: stats.f64("kvCacheUsage")?,
        num_free_blocks: stats.u32("numFreeBlocks")?,
        num_usable_blocks: stats.u32("numUsableBlocks")?,
        prefix_cache: PrefixCacheStats {
            requests: cache.u64("requests")?,
            queries: cache.u64("queries")?,
            hits: cache.u64("hits")?,
            preempted_requests: cache.u64("preemptedRequests")?,
            preempted_queries: cache.u64("preemptedQueries")?,
            preempted_hits: cache.u64("preemptedHits")?,
            resets: cache.u64("resets")?,
        },
        num_preemptions_total: stats.u64("numPreemptionsTotal")?,
    })
}

fn config_error(error: &Record) -> Result<ConfigError, GuestFault> {
    let (tag, val) = error.variant()?;
    let limit = |val: &Record| Ok::<_, GuestFault>((val.u32("budget")?, val.u32("limit")?));
    Ok(match tag.as_str() {
        "zero-block-size" => ConfigError::ZeroBlockSize,
        "too-few-blocks" => ConfigError::TooFewBlocks {
            num_blocks: to_u32(&val.0).ok_or_else(|| contract("too-few-blocks without a count"))?,
        },
        "zero-max-num-seqs" => ConfigError::ZeroMaxNumSeqs,
        "zero-max-model-len" => ConfigError::ZeroMaxModelLen,
        "budget-below-block-size" => {
            let (max_num_batched_tokens, block_size) = limit(&val)?;
            ConfigError::BudgetBelowBlockSize {
                max_num_batched_tokens,
                block_size,
            }
        }
        "budget-below-max-num-seqs" => {
            let (max_num_batched_tokens, max_num_seqs) = limit(&val)?;
            ConfigError::BudgetBelowMaxNumSeqs {
                max_num_batched_tokens,
                max_num_seqs,
            }
        }
        "budget-below-model-len-unchunked" => {
            let (max_num_batched_tokens, max_model_len) = limit(&val)?;
            ConfigError::BudgetBelowModelLenUnchunked {
                max_num_batched_tokens,
                max_model_len,
            }
        }
        "kv-cache-too-small" => ConfigError::KvCacheTooSmall {
            capacity_tokens: val.u64("capacityTokens")?,
            usable_blocks: val.u32("usableBlocks")?,
            block_size: val.u32("blockSize")?,
            max_model_len: val.u32("maxModelLen")?,
        },
        "threshold-above-model-len" => {
            let (threshold, max_model_len) = limit(&val)?;
            ConfigError::ThresholdAboveModelLen {
                threshold,
                max_model_len,
            }
        }
        "sample-rate-out-of-range" => ConfigError::SampleRateOutOfRange(number(&val)?),
        "rich-subsample-rate-out-of-range" => {
            ConfigError::RichSubsampleRateOutOfRange(number(&val)?)
        }
        "closure-interval-out-of-range" => ConfigError::ClosureIntervalOutOfRange(
            to_u32(&val.0)
                .ok_or_else(|| contract("closure-interval-out-of-range without a u32"))?,
        ),
        other => return Err(unknown("config error", other)),
    })
}

fn number(val: &Record) -> Result<f64, GuestFault> {
    val.0
        .as_f64()
        .ok_or_else(|| contract("an error without its number"))
}

fn text(val: &Record) -> Result<String, GuestFault> {
    val.0
        .as_string()
        .ok_or_else(|| contract("an error without its text"))
}

fn request_error(error: &Record) -> Result<RequestError, GuestFault> {
    let (tag, val) = error.variant()?;
    Ok(match tag.as_str() {
        "duplicate-id" => RequestError::DuplicateId { id: text(&val)? },
        "empty-prompt" => RequestError::EmptyPrompt { id: text(&val)? },
        "prompt-too-long" => RequestError::PromptTooLong {
            id: val.string("id")?,
            prompt_len: val.u32("promptLen")?,
            max_model_len: val.u32("maxModelLen")?,
        },
        "zero-max-tokens" => RequestError::ZeroMaxTokens { id: text(&val)? },
        "min-tokens-above-max-tokens" => RequestError::MinTokensAboveMaxTokens {
            id: val.string("id")?,
            min_tokens: val.u32("minTokens")?,
            max_tokens: val.u32("maxTokens")?,
        },
        other => return Err(unknown("request error", other)),
    })
}

fn output_error(error: &Record) -> Result<OutputError, GuestFault> {
    let (tag, val) = error.variant()?;
    Ok(match tag.as_str() {
        "no-step-in-flight" => OutputError::NoStepInFlight,
        "length-mismatch" => OutputError::LengthMismatch {
            expected: val.u32("expected")? as usize,
            got: val.u32("got")? as usize,
        },
        "token-during-prefill" => OutputError::TokenDuringPrefill { id: text(&val)? },
        other => return Err(unknown("output error", other)),
    })
}

fn state_error(error: &Record) -> Result<StateError, GuestFault> {
    let (tag, val) = error.variant()?;
    Ok(match tag.as_str() {
        "not-a-state" => StateError::NotAState,
        "unsupported-version" => StateError::UnsupportedVersion(
            to_u32(&val.0).ok_or_else(|| contract("unsupported-version without a version"))?,
        ),
        "malformed" => StateError::Malformed(text(&val)?),
        "inconsistent" => StateError::Inconsistent(text(&val)?),
        "config" => StateError::Config(config_error(&val)?),
        other => return Err(unknown("state error", other)),
    })
}
