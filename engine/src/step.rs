//! The step loop: a scheduler backend deciding every step, the model runner computing it over
//! the paged KV cache, and sampled tokens flowing back.
//!
//! The engine holds one record per live request, keyed by its handle: the model's view (tokens,
//! block table, sampling) and the caller's payload (the server's stream and span). A request
//! leaves only by finishing, by [`Engine::finish`], by a [`Engine::recover`] that fails it, or by
//! [`Engine::reload`], and each hands its payload back, so whatever the payload holds is
//! released on every exit path.

use std::collections::HashMap;

use waypoint_scheduler::{
    FinishStatus, HandleMap, JourneyEvent, ModelOutput, NewRequest, Recovery, RequestHandle,
    RequestId, ScheduledKind, SchedulerConfig, SchedulerStats, StepEvent,
};

use waypoint_model::sampling::{sample, SamplingParams};
use waypoint_model::{rows, rows_async, BatchRequest, Model, PagedBatch, PagedKvCache};
use waypoint_scheduler::kv::KvEvent;
use waypoint_scheduler::output::SchedulerOutput;

use crate::backend::{BackendError, PolicyDescription, SchedulerBackend};
use crate::fault::{ContractViolation, GuestFault};

/// A request as the engine takes it.
#[derive(Clone, Debug)]
pub struct EngineRequest {
    /// The scheduler's view (id, prompt, limits, priority, ...).
    pub request: NewRequest,
    /// How its tokens are sampled.
    pub sampling: SamplingParams,
}

/// A finished request.
#[derive(Clone, Debug, PartialEq)]
pub struct Completion {
    /// Request id.
    pub id: RequestId,
    /// Generated tokens.
    pub token_ids: Vec<u32>,
    /// Why it finished.
    pub finish_status: FinishStatus,
    /// When it arrived, produced its first token and finished (engine clock, ns).
    pub arrival_ns: u64,
    /// When it was first scheduled, if it was.
    pub first_scheduled_ns: Option<u64>,
    /// Time of its first token, if it produced one.
    pub first_token_ns: Option<u64>,
    /// Time it finished.
    pub finish_ns: u64,
    /// Prompt tokens.
    pub prompt_len: usize,
    /// Prompt tokens found in the prefix cache when it was first scheduled.
    pub cached_tokens: u32,
}

/// A token one request produced in a step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewToken {
    /// Request id.
    pub id: RequestId,
    /// The sampled token.
    pub token_id: u32,
}

struct Running<P> {
    id: RequestId,
    /// The submission without its prompt, to resubmit after a fault.
    submission: NewRequest,
    tokens: Vec<u32>,
    prompt_len: usize,
    num_preemptions: u32,
    /// Faults that named this request.
    faults: u32,
    block_table: Vec<u32>,
    sampling: SamplingParams,
    arrival_ns: u64,
    first_scheduled_ns: Option<u64>,
    first_token_ns: Option<u64>,
    cached_tokens: u32,
    payload: P,
}

impl<P> Running<P> {
    /// The request as a fresh scheduler takes it back after a fault: its prompt, with the
    /// tokens it generated carried in its recovery.
    fn resubmission(&self) -> NewRequest {
        NewRequest {
            prompt_token_ids: self.tokens[..self.prompt_len].to_vec(),
            recovery: Some(Recovery {
                output_token_ids: self.tokens[self.prompt_len..].to_vec(),
                num_preemptions: self.num_preemptions,
                was_scheduled: self.first_scheduled_ns.is_some(),
            }),
            ..self.submission.clone()
        }
    }

    /// The request's completion, and its payload back.
    fn complete(self, finish_status: FinishStatus, finish_ns: u64) -> (Completion, P) {
        let completion = Completion {
            id: self.id,
            token_ids: self.tokens[self.prompt_len..].to_vec(),
            finish_status,
            arrival_ns: self.arrival_ns,
            first_scheduled_ns: self.first_scheduled_ns,
            first_token_ns: self.first_token_ns,
            finish_ns,
            prompt_len: self.prompt_len,
            cached_tokens: self.cached_tokens,
        };
        (completion, self.payload)
    }
}

/// The scheduler and the model runner, stepping together, with a payload `P` per live request.
/// The host's engine thread holds a `Send` backend; the browser's holds JavaScript objects.
pub struct Engine<B: ?Sized + SchedulerBackend = dyn SchedulerBackend + Send, P = ()> {
    backend: Box<B>,
    model: Model,
    cache: PagedKvCache,
    requests: HandleMap<Running<P>>,
    handles: HashMap<RequestId, RequestHandle>,
    /// Requests a recovery has not yet resubmitted (its scheduler faulted again first).
    pending: Vec<Running<P>>,
}

/// What one engine step produced.
#[derive(Debug)]
pub struct StepResult<P = ()> {
    /// Tokens the model computed in this step (prefill and decode).
    pub scheduled_tokens: u32,
    /// Tokens sampled in this step, in batch order.
    pub tokens: Vec<NewToken>,
    /// When the step's tokens were produced (after the model ran).
    pub tokens_ns: u64,
    /// Requests that finished in this step, each with its payload.
    pub finished: Vec<(Completion, P)>,
    /// Requests preempted in this step.
    pub preempted: Vec<RequestId>,
    /// Journey events of the step's scheduler calls.
    pub journey_events: Vec<JourneyEvent>,
    /// Step-tracing records of the step.
    pub step_events: Vec<StepEvent>,
    /// Changes to the prefix cache in the step (with KV events on).
    pub kv_events: Vec<KvEvent>,
}

/// Requests finished from outside the step loop.
#[derive(Debug)]
pub struct Finished<P = ()> {
    /// The requests, with what they had produced, each with its payload.
    pub completions: Vec<(Completion, P)>,
    /// Their FINISHED events.
    pub journey_events: Vec<JourneyEvent>,
}

impl<P> Default for Finished<P> {
    fn default() -> Self {
        Self {
            completions: Vec::new(),
            journey_events: Vec::new(),
        }
    }
}

/// A request the engine did not take, with the payload it came with.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct Refused<P = ()> {
    /// Why.
    #[source]
    pub error: BackendError,
    /// The request, back to the caller (to submit again after a fault).
    pub request: Box<EngineRequest>,
    /// The request's payload, back to the caller.
    pub payload: P,
}

/// What a recovery did: the requests it failed or shed, the journeys of those it resubmitted,
/// and whether the scheduler took every request back.
#[derive(Debug)]
pub struct Recovered<P = ()> {
    /// Requests named by too many faults, with their payloads, to be failed by the caller.
    pub failed: Vec<(RequestId, P)>,
    /// The newest requests, dropped so that the others fit, with their payloads, to be failed
    /// by the caller.
    pub shed: Vec<(RequestId, P)>,
    /// The RECOVERED events of the resubmitted requests.
    pub journey_events: Vec<JourneyEvent>,
    /// An error when the scheduler faulted again; the requests it did not take back wait in
    /// the engine for the next recovery (or a reload).
    pub result: Result<(), BackendError>,
}

/// What a reload did: the requests it dropped, and whether the fresh scheduler came up.
#[derive(Debug)]
pub struct Reloaded<P = ()> {
    /// Every request the old scheduler held, with its payload.
    pub lost: Vec<(RequestId, P)>,
    /// The fresh scheduler's start.
    pub result: Result<(), BackendError>,
}

/// Why an awaited step failed.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// The scheduler failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The device could not return the logits.
    #[error("reading the step's logits from the device: {0}")]
    Device(String),
}

/// A step between the scheduler's decision and the model's logits.
struct PlannedStep<P> {
    output: SchedulerOutput,
    batch: PagedBatch,
    result: StepResult<P>,
}

impl<B: ?Sized + SchedulerBackend, P> Engine<B, P> {
    /// An engine whose KV cache has the configuration's `num_blocks × block_size` slots.
    pub fn new(backend: Box<B>, model: Model, config: &SchedulerConfig) -> Self {
        let cache = PagedKvCache::new(
            model.config(),
            config.num_blocks as usize,
            config.block_size as usize,
            model.device(),
        );
        Self {
            backend,
            model,
            cache,
            requests: HandleMap::default(),
            handles: HashMap::new(),
            pending: Vec::new(),
        }
    }

    /// Take a request out of both maps.
    fn remove(&mut self, handle: RequestHandle) -> Option<Running<P>> {
        let running = self.requests.remove(&handle)?;
        self.handles.remove(&running.id);
        Some(running)
    }

    /// Requests not finished.
    pub fn num_unfinished(&self) -> usize {
        self.requests.len() + self.pending.len()
    }

    /// The live request a handle of the running scheduler names.
    pub fn id_of(&self, handle: RequestHandle) -> Option<&RequestId> {
        self.requests.get(&handle).map(|running| &running.id)
    }

    /// Whether the engine holds request `id` (submitted, not yet finished).
    pub fn is_live(&self, id: &str) -> bool {
        self.handles.contains_key(id) || self.pending.iter().any(|running| &*running.id == id)
    }

    /// Every live request's payload.
    pub fn payloads_mut(&mut self) -> impl Iterator<Item = &mut P> {
        self.requests
            .values_mut()
            .map(|running| &mut running.payload)
    }

    /// A live request's payload.
    pub fn payload_mut(&mut self, id: &str) -> Option<&mut P> {
        let handle = self.handles.get(id)?;
        self.requests
            .get_mut(handle)
            .map(|running| &mut running.payload)
    }

    /// Submit a request with its payload; its QUEUED event is returned. A refused request's
    /// payload comes back with the error.
    pub fn add(
        &mut self,
        request: EngineRequest,
        payload: P,
        now_ns: u64,
    ) -> Result<Vec<JourneyEvent>, Refused<P>> {
        let EngineRequest {
            request: mut submission,
            sampling,
        } = request;
        let tokens = std::mem::take(&mut submission.prompt_token_ids);
        let request = NewRequest {
            prompt_token_ids: tokens.clone(),
            ..submission.clone()
        };
        let running = Running {
            id: submission.id.as_str().into(),
            submission,
            prompt_len: tokens.len(),
            tokens,
            num_preemptions: 0,
            faults: 0,
            block_table: Vec::new(),
            sampling,
            arrival_ns: now_ns,
            first_scheduled_ns: None,
            first_token_ns: None,
            cached_tokens: 0,
            payload,
        };
        self.admit(running, request, now_ns).map_err(|refused| {
            let (error, running) = *refused;
            Refused {
                error,
                request: Box::new(EngineRequest {
                    request: NewRequest {
                        prompt_token_ids: running.tokens,
                        ..running.submission
                    },
                    sampling: running.sampling,
                }),
                payload: running.payload,
            }
        })
    }

    /// Hand `request`, the submission of `running`, to the scheduler and hold `running` under
    /// the handle it gets; on an error `running` comes back.
    fn admit(
        &mut self,
        running: Running<P>,
        request: NewRequest,
        now_ns: u64,
    ) -> Result<Vec<JourneyEvent>, Box<(BackendError, Running<P>)>> {
        let added = match self.backend.add_request(request, now_ns) {
            Ok(added) => added,
            Err(error) => return Err(Box::new((error, running))),
        };
        // The component backend checks this already; a native scheduler's bug stops here too.
        if self.requests.contains_key(&added.handle) {
            let violation = ContractViolation::HandleReused {
                handle: added.handle,
            };
            return Err(Box::new((GuestFault::Contract(violation).into(), running)));
        }
        self.handles.insert(running.id.clone(), added.handle);
        self.requests.insert(added.handle, running);
        Ok(added.journey_events)
    }

    /// Take every live request out of the engine, those waiting for a recovery included.
    fn take_all(&mut self) -> Vec<Running<P>> {
        self.handles.clear();
        let mut all = std::mem::take(&mut self.pending);
        all.extend(self.requests.drain().map(|(_, running)| running));
        all
    }

    /// One step: schedule, compute, sample, update. `clock` gives the time after the model ran.
    pub fn step(
        &mut self,
        now_ns: u64,
        clock: impl FnOnce() -> u64,
    ) -> Result<StepResult<P>, BackendError> {
        let planned = self.plan(now_ns)?;
        let logits = if planned.batch.requests.is_empty() {
            Vec::new()
        } else {
            rows(self.model.forward_paged(&planned.batch, &mut self.cache))
        };
        self.complete(planned, logits, clock())
    }

    /// [`Engine::step`] for devices whose results can only be awaited (WebGPU in a browser).
    pub async fn step_async(
        &mut self,
        now_ns: u64,
        clock: impl FnOnce() -> u64,
    ) -> Result<StepResult<P>, StepError> {
        let planned = self.plan(now_ns)?;
        let logits = if planned.batch.requests.is_empty() {
            Vec::new()
        } else {
            rows_async(self.model.forward_paged(&planned.batch, &mut self.cache))
                .await
                .map_err(StepError::Device)?
        };
        Ok(self.complete(planned, logits, clock())?)
    }

    /// Ask the scheduler for a step and gather its batch.
    fn plan(&mut self, now_ns: u64) -> Result<PlannedStep<P>, BackendError> {
        let mut output = self.backend.schedule(now_ns)?;
        let mut result = StepResult {
            scheduled_tokens: output.total_num_scheduled_tokens,
            tokens: Vec::new(),
            tokens_ns: 0,
            finished: Vec::new(),
            preempted: Vec::new(),
            journey_events: output.journey_events.clone(),
            step_events: output.step_events.clone(),
            kv_events: std::mem::take(&mut output.kv_events),
        };
        for preempted in &output.preempted {
            if let Some(running) = self.requests.get_mut(&preempted.handle) {
                running.block_table.clear();
                running.num_preemptions += 1;
                result.preempted.push(preempted.id.clone());
            }
        }
        let mut batch = PagedBatch::default();
        for entry in output.batch.entries() {
            let Some(running) = self.requests.get_mut(&entry.handle) else {
                continue;
            };
            if running.first_scheduled_ns.is_none() {
                running.first_scheduled_ns = Some(now_ns);
                // A new request's computed tokens are its prefix-cache hit.
                running.cached_tokens = entry.num_computed_tokens;
            }
            match entry.kind {
                ScheduledKind::New | ScheduledKind::Resumed => {
                    running.block_table = entry.block_ids.to_vec()
                }
                ScheduledKind::Running => running.block_table.extend_from_slice(entry.block_ids),
            }
            let start = entry.num_computed_tokens as usize;
            let end = start + entry.num_scheduled_tokens as usize;
            // A component's steps are checked before they get here; this keeps a native
            // scheduler's bug from reaching the model too.
            let tokens = running.tokens.get(start..end).ok_or_else(|| {
                GuestFault::Contract(ContractViolation::RangePastKnownTokens {
                    id: running.id.to_string(),
                    computed: entry.num_computed_tokens,
                    scheduled: entry.num_scheduled_tokens,
                    known: running.tokens.len() as u32,
                })
            })?;
            batch.requests.push(BatchRequest {
                tokens: tokens.to_vec(),
                start_position: start,
                block_table: running.block_table.clone(),
                sample: entry.sample,
            });
        }
        Ok(PlannedStep {
            output,
            batch,
            result,
        })
    }

    /// Sample from the step's logits and report the tokens; `now` is after the model ran.
    fn complete(
        &mut self,
        planned: PlannedStep<P>,
        logits: Vec<Vec<f32>>,
        now: u64,
    ) -> Result<StepResult<P>, BackendError> {
        let PlannedStep {
            output, mut result, ..
        } = planned;
        let mut logits = logits.into_iter();
        let sampled = output
            .batch
            .handles
            .iter()
            .zip(&output.batch.sample)
            .map(|(handle, &sampled)| {
                if !sampled {
                    return None;
                }
                let row = logits.next()?;
                let running = self.requests.get(handle)?;
                let index = (running.tokens.len() - running.prompt_len) as u64;
                Some(sample(&row, &running.sampling, index))
            })
            .collect();
        result.tokens_ns = now;
        let engine = self.backend.update_from_output(
            &ModelOutput {
                sampled_token_ids: sampled,
            },
            now,
        )?;
        result
            .journey_events
            .extend(engine.journey_events.iter().cloned());
        for (handle, token_id, finish) in engine.tokens() {
            let Some(running) = self.requests.get_mut(&handle) else {
                continue;
            };
            running.tokens.push(token_id);
            running.first_token_ns.get_or_insert(now);
            result.tokens.push(NewToken {
                id: running.id.clone(),
                token_id,
            });
            if let Some(finish) = finish {
                if let Some(done) = self.remove(handle) {
                    result.finished.push(done.complete(finish.status, now));
                }
            }
        }
        Ok(result)
    }

    /// Finish requests from outside the step loop (client gone, stop string seen, ...).
    /// Unknown ids are skipped.
    pub fn finish(
        &mut self,
        ids: &[RequestId],
        status: FinishStatus,
        now_ns: u64,
    ) -> Result<Finished<P>, BackendError> {
        let ids: Vec<String> = ids
            .iter()
            .filter(|id| self.is_live(id))
            .map(|id| id.to_string())
            .collect();
        if ids.is_empty() {
            return Ok(Finished::default());
        }
        let outcome = self.backend.finish_requests(&ids, status, now_ns)?;
        let completions = outcome
            .finished_ids
            .into_iter()
            .filter_map(|id| {
                let handle = *self.handles.get(&id)?;
                Some(self.remove(handle)?.complete(status, now_ns))
            })
            .collect();
        Ok(Finished {
            completions,
            journey_events: outcome.journey_events,
        })
    }

    /// After a fault: `replacement`, or a fresh instance of the scheduler that faulted, takes
    /// back every live request with the tokens it has, in arrival order, to recompute it as
    /// after a preemption; its journey goes on with RECOVERED. A request named by `named` has
    /// one more fault counted, and at `max_faults` it is failed instead (handed back in
    /// [`Recovered::failed`]). The `shed` newest requests are not taken back (handed back in
    /// [`Recovered::shed`]). The model's KV cache needs nothing: recomputed requests write
    /// their blocks again.
    pub fn recover(
        &mut self,
        replacement: Option<Box<B>>,
        named: &[RequestId],
        shed: usize,
        max_faults: u32,
        now_ns: u64,
    ) -> Recovered<P> {
        let mut waiting = self.take_all();
        waiting.sort_by(|a, b| (a.arrival_ns, &a.id).cmp(&(b.arrival_ns, &b.id)));
        let newest = waiting.split_off(waiting.len().saturating_sub(shed));
        let mut recovered = Recovered {
            failed: Vec::new(),
            shed: newest.into_iter().map(|r| (r.id, r.payload)).collect(),
            journey_events: Vec::new(),
            result: Ok(()),
        };
        for running in &mut waiting {
            running.faults += u32::from(named.contains(&running.id));
        }
        let (kept, failed): (Vec<_>, Vec<_>) = waiting
            .into_iter()
            .partition(|running| running.faults < max_faults);
        recovered
            .failed
            .extend(failed.into_iter().map(|r| (r.id, r.payload)));
        let started = match replacement {
            Some(backend) => {
                self.backend = backend;
                Ok(())
            }
            None => self.backend.reload(),
        };
        if let Err(error) = started {
            self.pending = kept;
            recovered.result = Err(error);
            return recovered;
        }
        let mut kept = kept.into_iter();
        while let Some(mut running) = kept.next() {
            running.block_table.clear();
            let request = running.resubmission();
            match self
                .admit(running, request, now_ns)
                .map_err(|refused| *refused)
            {
                Ok(events) => recovered.journey_events.extend(events),
                // The fresh scheduler refuses the request itself: nothing more can be done.
                Err((BackendError::Request(_), running)) => {
                    recovered.failed.push((running.id, running.payload))
                }
                Err((error, running)) => {
                    self.pending.push(running);
                    self.pending.extend(kept);
                    recovered.result = Err(error);
                    return recovered;
                }
            }
        }
        recovered
    }

    /// After a fault: a fresh scheduler of the same configuration. Every request the old one
    /// held is lost, and comes back with its payload whether or not the fresh one starts, so
    /// that the caller can fail it.
    pub fn reload(&mut self) -> Reloaded<P> {
        let lost = self
            .take_all()
            .into_iter()
            .map(|running| (running.id, running.payload))
            .collect();
        Reloaded {
            lost,
            result: self.backend.reload(),
        }
    }

    /// Between steps, move the scheduler's whole state into `backend` (another policy) and run
    /// on it from now on: every live request keeps its handle, blocks and progress, so nothing
    /// is recomputed. If the export or the import fails, the old backend keeps running.
    pub fn swap_backend(&mut self, mut backend: Box<B>, now_ns: u64) -> Result<(), BackendError> {
        let state = self.backend.export_state(now_ns)?;
        backend.import_state(&state, now_ns)?;
        self.backend = backend;
        Ok(())
    }

    /// The running scheduler's policy.
    pub fn policy(&self) -> &PolicyDescription {
        self.backend.policy()
    }

    /// The scheduler's whole state, as a swap would move it.
    pub fn export_state(&mut self, now_ns: u64) -> Result<Vec<u8>, BackendError> {
        self.backend.export_state(now_ns)
    }

    /// The scheduler's load and cache statistics.
    pub fn stats(&mut self, now_ns: u64) -> Result<SchedulerStats, BackendError> {
        self.backend.stats(now_ns)
    }

    /// Close the scheduler's open step-tracing window.
    pub fn shutdown(&mut self, now_ns: u64) -> Result<Vec<StepEvent>, BackendError> {
        self.backend.shutdown(now_ns)
    }
}
