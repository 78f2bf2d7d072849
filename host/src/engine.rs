//! The engine loop: a scheduler backend deciding every step, the model runner computing it over
//! the paged KV cache, and sampled tokens flowing back.

use std::collections::HashMap;

use waypoint_scheduler::{
    FinishStatus, JourneyEvent, ModelOutput, NewRequest, RequestId, ScheduledKind, SchedulerConfig,
};

use crate::backend::{BackendError, SchedulerBackend};
use crate::model::sampling::{sample, SamplingParams};
use crate::model::{rows, BatchRequest, Model, PagedBatch, PagedKvCache};

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
    /// Time of its first token, if it produced one.
    pub first_token_ns: Option<u64>,
    /// Time it finished.
    pub finish_ns: u64,
}

struct Running {
    tokens: Vec<u32>,
    prompt_len: usize,
    block_table: Vec<u32>,
    sampling: SamplingParams,
    arrival_ns: u64,
    first_token_ns: Option<u64>,
}

/// The scheduler and the model runner, stepping together.
pub struct Engine {
    backend: Box<dyn SchedulerBackend>,
    model: Model,
    cache: PagedKvCache,
    requests: HashMap<RequestId, Running>,
}

/// What one engine step produced.
#[derive(Debug, Default)]
pub struct StepResult {
    /// Requests that finished in this step.
    pub finished: Vec<Completion>,
    /// Journey events of the step's scheduler calls.
    pub journey_events: Vec<JourneyEvent>,
}

impl Engine {
    /// An engine whose KV cache has the configuration's `num_blocks × block_size` slots.
    pub fn new(backend: Box<dyn SchedulerBackend>, model: Model, config: &SchedulerConfig) -> Self {
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
            requests: HashMap::new(),
        }
    }

    /// Requests not finished.
    pub fn num_unfinished(&self) -> usize {
        self.requests.len()
    }

    /// Submit a request; its QUEUED event is returned.
    pub fn add(
        &mut self,
        request: EngineRequest,
        now_ns: u64,
    ) -> Result<Vec<JourneyEvent>, BackendError> {
        let id: RequestId = request.request.id.as_str().into();
        let running = Running {
            tokens: request.request.prompt_token_ids.clone(),
            prompt_len: request.request.prompt_token_ids.len(),
            block_table: Vec::new(),
            sampling: request.sampling,
            arrival_ns: now_ns,
            first_token_ns: None,
        };
        let events = self.backend.add_request(request.request, now_ns)?;
        self.requests.insert(id, running);
        Ok(events)
    }

    /// One step: schedule, compute, sample, update. `clock` gives the time after the model ran.
    pub fn step(
        &mut self,
        now_ns: u64,
        clock: impl FnOnce() -> u64,
    ) -> Result<StepResult, BackendError> {
        let output = self.backend.schedule(now_ns)?;
        let mut result = StepResult {
            journey_events: output.journey_events.clone(),
            ..StepResult::default()
        };
        for preempted in &output.preempted {
            if let Some(running) = self.requests.get_mut(&preempted.id) {
                running.block_table.clear();
            }
        }
        let mut batch = PagedBatch::default();
        for entry in &output.scheduled {
            let Some(running) = self.requests.get_mut(&entry.request_id) else {
                continue;
            };
            match entry.kind {
                ScheduledKind::New | ScheduledKind::Resumed => {
                    running.block_table = entry.block_ids.clone()
                }
                ScheduledKind::Running => running.block_table.extend_from_slice(&entry.block_ids),
            }
            let start = entry.num_computed_tokens as usize;
            let end = start + entry.num_scheduled_tokens as usize;
            batch.requests.push(BatchRequest {
                tokens: running.tokens[start..end].to_vec(),
                start_position: start,
                block_table: running.block_table.clone(),
                sample: entry.sample,
            });
        }
        let logits = if batch.requests.is_empty() {
            Vec::new()
        } else {
            rows(self.model.forward_paged(&batch, &mut self.cache))
        };
        let mut logits = logits.into_iter();
        let sampled = output
            .scheduled
            .iter()
            .map(|entry| {
                if !entry.sample {
                    return None;
                }
                let row = logits.next()?;
                let running = self.requests.get(&entry.request_id)?;
                let index = (running.tokens.len() - running.prompt_len) as u64;
                Some(sample(&row, &running.sampling, index))
            })
            .collect();
        let now = clock();
        let engine = self.backend.update_from_output(
            &ModelOutput {
                sampled_token_ids: sampled,
            },
            now,
        )?;
        result
            .journey_events
            .extend(engine.journey_events.iter().cloned());
        for out in engine.outputs {
            let Some(running) = self.requests.get_mut(&out.request_id) else {
                continue;
            };
            running.tokens.push(out.token_id);
            running.first_token_ns.get_or_insert(now);
            if let Some(status) = out.finish_status {
                if let Some(done) = self.requests.remove(&out.request_id) {
                    result.finished.push(Completion {
                        id: out.request_id,
                        token_ids: done.tokens[done.prompt_len..].to_vec(),
                        finish_status: status,
                        arrival_ns: done.arrival_ns,
                        first_token_ns: done.first_token_ns,
                        finish_ns: now,
                    });
                }
            }
        }
        Ok(result)
    }
}
