//! The engine thread: owns the engine, takes submissions and aborts over a channel, steps while
//! work exists and sleeps when there is none, and streams each request's text back.
//!
//! What the server keeps per request ([`Client`]: its stream and its span) rides in the engine's
//! own record of the request, so it leaves with the request on every path: finished, stopped,
//! aborted, refused, or failed by the faults that keep naming it.
//!
//! When the scheduler faults (a trap, a timeout, its memory limit, a broken contract), the
//! requests it held are resubmitted to a fresh instance with the tokens they have and
//! recomputed like preempted ones: a client sees a pause, and the journey a RECOVERED event.
//! Only a request that faults keep naming fails, and a policy that keeps faulting is replaced
//! by the fallback (the built-in fcfs). A fault on the fallback that names no request, while none
//! is being added, comes from the load itself (its memory or time limit): the newest half of the
//! live requests is shed.

use std::collections::VecDeque;
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use opentelemetry::Context;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::oneshot;
use waypoint_scheduler::kv::BlockHash;
use waypoint_scheduler::state::cached_blocks;
use waypoint_scheduler::{FinishStatus, JourneyEvent, JourneyEventType, RequestId};

use super::text::TextStream;
use super::{
    Completion, Engine, EngineRequest, Finished, Recovered, Refused, Reloaded, StepResult,
};
use crate::backend::{BackendError, PolicyDescription, SchedulerBackend};
use crate::model::Vocabulary;
use crate::telemetry::kv_events::KvEventPublisher;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::traces::{CoreSpans, RequestSpan};
use crate::telemetry::Clock;
use waypoint_engine::{GuestFault, NamedRequest};

/// A request for the engine thread.
pub struct Submission {
    /// The request.
    pub request: EngineRequest,
    /// Strings that end the output (not included in it).
    pub stop: Vec<String>,
    /// The `llm_request` span's context when the request's journey is traced.
    pub trace_parent: Option<Context>,
    /// Where its events go.
    pub events: UnboundedSender<StreamEvent>,
}

/// Why the engine refused a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// The request is invalid (duplicate id, prompt too long, ...).
    Invalid(String),
    /// The scheduler is being reloaded after a fault.
    Unavailable(String),
}

/// OpenAI's reason a request finished.
pub fn finish_reason(status: FinishStatus) -> &'static str {
    match status {
        FinishStatus::Stopped => "stop",
        FinishStatus::LengthCapped | FinishStatus::Ignored => "length",
        FinishStatus::Aborted => "abort",
        FinishStatus::Error => "error",
    }
}

/// What the engine thread tells the request's HTTP handler.
#[derive(Clone, Debug, PartialEq)]
pub enum StreamEvent {
    /// The scheduler took the request.
    Accepted {
        /// When (server clock, ns).
        at_ns: u64,
        /// Its id: the one asked for, or with a suffix when a live request had it.
        id: RequestId,
    },
    /// The scheduler refused it; nothing of it remains.
    Rejected(Rejection),
    /// New text and the tokens that produced it. The text can be empty while a partial
    /// character or a possible stop string is held back.
    Delta {
        /// Text.
        text: String,
        /// Tokens.
        token_ids: Vec<u32>,
        /// When they were produced.
        at_ns: u64,
    },
    /// The request finished; any held-back text came in the last delta.
    Finished(Box<Completion>, JourneyTally),
    /// The scheduler failed while it held the request.
    Failed {
        /// What happened.
        error: String,
    },
}

enum Command {
    Submit(Box<Submission>),
    Abort(RequestId),
    Swap {
        backend: Box<dyn SchedulerBackend + Send>,
        reply: oneshot::Sender<Result<Swapped, String>>,
    },
    /// The scheduler's prefix cache: each cached block and its hash.
    CachedBlocks(oneshot::Sender<Result<Vec<(u32, BlockHash)>, String>>),
    /// Finish the live requests, then stop.
    Shutdown,
}

/// Why the engine cannot serve right now, shared between the engine thread and the server.
#[derive(Clone, Default)]
struct Availability(Arc<Mutex<Option<String>>>);

impl Availability {
    fn set(&self, reason: Option<String>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = reason;
    }

    fn reason(&self) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// The HTTP side's handle on the engine thread.
pub struct EngineHandle {
    commands: mpsc::Sender<Command>,
    availability: Availability,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// A policy swap that took place.
#[derive(Clone, Debug)]
pub struct Swapped {
    /// The policy now running.
    pub policy: PolicyDescription,
    /// How long the engine spent moving the state, between two steps.
    pub pause_ns: u64,
    /// Requests the state carried over.
    pub live_requests: usize,
}

/// The engine thread has stopped.
#[derive(Debug, thiserror::Error)]
#[error("the engine thread has stopped")]
pub struct EngineStopped;

impl EngineHandle {
    /// Hand a request to the engine; its events arrive on `submission.events`.
    pub fn submit(&self, submission: Submission) -> Result<(), EngineStopped> {
        self.commands
            .send(Command::Submit(Box::new(submission)))
            .map_err(|_| EngineStopped)
    }

    /// Between two steps, move the running state into `backend` and serve on it; the answer is
    /// the new policy, or why the old one keeps running.
    pub async fn swap(&self, backend: Box<dyn SchedulerBackend + Send>) -> Result<Swapped, String> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Swap { backend, reply })
            .map_err(|_| EngineStopped.to_string())?;
        answer.await.map_err(|_| EngineStopped.to_string())?
    }

    /// The scheduler's prefix cache, between two steps: each cached block and its hash.
    pub async fn cached_blocks(&self) -> Result<Vec<(u32, BlockHash)>, String> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::CachedBlocks(reply))
            .map_err(|_| EngineStopped.to_string())?;
        answer.await.map_err(|_| EngineStopped.to_string())?
    }

    /// Abort a request (its client went away). Unknown or finished ids are ignored.
    pub fn abort(&self, id: RequestId) {
        // A stopped engine holds no requests.
        let _ = self.commands.send(Command::Abort(id));
    }

    /// Why the engine cannot serve now (a scheduler being reloaded after a fault, or one that
    /// could not be reloaded, or an engine thread that stopped); `None` while it can.
    pub fn unavailable(&self) -> Option<String> {
        let stopped = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_none_or(JoinHandle::is_finished);
        if stopped {
            return Some("the engine thread has stopped".into());
        }
        self.availability.reason()
    }

    /// Stop the thread once its requests are done (its journey log flushed, its step window
    /// closed), and wait for it. Handlers that still hold the server's state do not keep it
    /// running.
    pub fn join(&self) {
        let _ = self.commands.send(Command::Shutdown);
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

/// What the engine thread needs besides the engine.
pub struct WorkerParts {
    /// How the model's tokens become text.
    pub vocabulary: Arc<Vocabulary>,
    /// The server's clock.
    pub clock: Clock,
    /// Gauges and counters it keeps current.
    pub metrics: Arc<Metrics>,
    /// Journey and step spans, when traces are exported.
    pub spans: Option<CoreSpans>,
    /// The canonical journey log, when one is written.
    pub journey_log: Option<Box<dyn Write + Send>>,
    /// What a fault costs a request and the policy.
    pub faults: FaultPolicy,
    /// The scheduler that replaces a policy that keeps faulting; none for a native scheduler.
    pub fallback: Option<Fallback>,
    /// vLLM's KV events, when they are published.
    pub kv_events: Option<KvEventPublisher>,
}

/// How the engine thread answers the scheduler's faults.
#[derive(Clone, Copy, Debug)]
pub struct FaultPolicy {
    /// Faults that name one request before it fails.
    pub max_faults_per_request: u32,
    /// Faults within `window_ns` after which the policy is replaced by the fallback.
    pub policy_fault_limit: u32,
    /// The window of `policy_fault_limit`.
    pub window_ns: u64,
}

/// Builds the fallback scheduler (the built-in fcfs component, of the same configuration).
pub type Fallback =
    Box<dyn FnMut() -> Result<Box<dyn SchedulerBackend + Send>, BackendError> + Send>;

/// The server's engine: each live request's record carries its [`Client`].
pub type ServingEngine = Engine<dyn SchedulerBackend + Send, Client>;

/// Start the engine thread.
pub fn spawn(engine: ServingEngine, parts: WorkerParts) -> std::io::Result<EngineHandle> {
    let (commands, receiver) = mpsc::channel();
    let availability = Availability::default();
    let mut worker = Worker {
        engine,
        parts,
        availability: availability.clone(),
        stopping: false,
        fault_times: VecDeque::new(),
        on_fallback: false,
    };
    let thread = std::thread::Builder::new()
        .name("waypoint-engine".into())
        .spawn(move || worker.run(&receiver))?;
    Ok(EngineHandle {
        commands,
        availability,
        thread: Mutex::new(Some(thread)),
    })
}

/// What the server keeps for a request the engine holds: where its events go, its text so far,
/// its `llm_core` span when it is traced, and what its journey has told so far.
pub struct Client {
    events: UnboundedSender<StreamEvent>,
    text: TextStream,
    span: Option<RequestSpan>,
    journey: JourneyTally,
}

/// What a request's journey has told so far: what its per-request timings report, and the
/// latest event, from which the host ends the journey if the request fails outside the
/// scheduler.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JourneyTally {
    /// The step of its first SCHEDULED event.
    pub first_scheduled_step: Option<u64>,
    latest: Option<JourneyEvent>,
}

impl JourneyTally {
    fn record(&mut self, event: &JourneyEvent) {
        if event.event_type == JourneyEventType::Scheduled && self.first_scheduled_step.is_none() {
            self.first_scheduled_step = Some(event.scheduler_step);
        }
        self.latest = Some(event.clone());
    }

    /// The step of its latest event.
    pub fn last_step(&self) -> Option<u64> {
        self.latest.as_ref().map(|event| event.scheduler_step)
    }

    /// Times it was preempted.
    pub fn preemptions(&self) -> u32 {
        self.latest
            .as_ref()
            .map_or(0, |event| event.num_preemptions_so_far)
    }

    /// The FINISHED(error) that ends the journey of a request failed outside the scheduler,
    /// unless the journey has not begun or has ended.
    fn failed_end(self, now_ns: u64) -> Option<JourneyEvent> {
        self.latest
            .filter(|latest| latest.event_type != JourneyEventType::Finished)
            .map(|latest| latest.failed_after(now_ns))
    }
}

/// Where a fault came from, which decides whom it counts against.
#[derive(Clone, Copy)]
enum FaultSite<'a> {
    /// A call on what the scheduler holds: against the requests it names or, with none named,
    /// against the load as a whole.
    Held(&'a [RequestId]),
    /// Adding a request: against that request, which is retried, then refused, on its own.
    Adding,
}

impl FaultSite<'static> {
    /// The site of a fault while a request was being added. The guest's memory or time
    /// running out then is the load's doing, not the request's.
    fn adding(error: &BackendError) -> Self {
        match error {
            BackendError::Guest(GuestFault::MemoryLimit { .. } | GuestFault::Timeout { .. }) => {
                Self::Held(&[])
            }
            _ => Self::Adding,
        }
    }
}

struct Worker {
    engine: ServingEngine,
    parts: WorkerParts,
    availability: Availability,
    /// Asked to stop once the live requests are done.
    stopping: bool,
    /// When the running policy faulted, within the fault window.
    fault_times: VecDeque<u64>,
    /// Whether the fallback replaced a policy that kept faulting.
    on_fallback: bool,
}

/// The client of a request that is live, or that finishes in the step being handled.
fn client_of<'a>(
    engine: &'a mut ServingEngine,
    finishing: &'a mut [(Completion, Client)],
    id: &str,
) -> Option<&'a mut Client> {
    match engine.payload_mut(id) {
        Some(client) => Some(client),
        None => finishing
            .iter_mut()
            .find(|(completion, _)| &*completion.id == id)
            .map(|(_, client)| client),
    }
}

impl Worker {
    fn run(&mut self, commands: &mpsc::Receiver<Command>) {
        loop {
            if self.engine.num_unfinished() == 0 {
                self.idle();
                if self.stopping {
                    break;
                }
                match commands.recv() {
                    Ok(command) => self.handle(command),
                    Err(mpsc::RecvError) => break,
                }
            }
            while let Ok(command) = commands.try_recv() {
                self.handle(command);
            }
            if self.engine.num_unfinished() > 0 {
                // Results are checked before the model sees them, so nothing a component returns
                // should panic here; if a bug does, fail what was in flight and keep serving.
                if catch_unwind(AssertUnwindSafe(|| self.step())).is_err() {
                    self.fault(&"the engine step panicked", FaultSite::Held(&[]));
                }
            }
        }
        let now = self.parts.clock.now_ns();
        if let Ok(events) = self.engine.shutdown(now) {
            if let Some(spans) = self.parts.spans.as_mut() {
                spans.steps(&events, now);
            }
        }
        self.flush_log();
    }

    fn idle(&mut self) {
        self.flush_log();
        let now = self.parts.clock.now_ns();
        if let Ok(stats) = self.engine.stats(now) {
            self.parts.metrics.scheduler_stats(&stats);
        }
    }

    fn flush_log(&mut self) {
        if let Some(log) = self.parts.journey_log.as_mut() {
            if let Err(error) = log.flush() {
                eprintln!("waypoint: writing the journey log: {error}");
            }
        }
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Submit(submission) => self.submit(*submission),
            Command::Swap { backend, reply } => {
                let _ = reply.send(self.swap(backend));
            }
            Command::CachedBlocks(reply) => {
                let now = self.parts.clock.now_ns();
                let answer = match self.engine.export_state(now) {
                    Ok(state) => cached_blocks(&state).map_err(|error| error.to_string()),
                    Err(error) => {
                        let message = error.to_string();
                        self.backend_fault(&error);
                        Err(message)
                    }
                };
                let _ = reply.send(answer);
            }
            Command::Shutdown => self.stopping = true,
            Command::Abort(id) => {
                if !self.engine.is_live(&id) {
                    return;
                }
                self.parts.metrics.request_aborted();
                let now = self.parts.clock.now_ns();
                match self.engine.finish(&[id], FinishStatus::Aborted, now) {
                    // Nobody is listening: the span ends, and the stream goes with the record.
                    Ok(mut finished) => {
                        self.journey(&finished.journey_events, &mut finished.completions);
                        for (completion, client) in finished.completions {
                            self.end_span(client, completion.finish_ns);
                        }
                    }
                    Err(error) => self.backend_fault(&error),
                }
            }
        }
    }

    fn submit(&mut self, submission: Submission) {
        let Submission {
            request,
            stop,
            trace_parent,
            events,
        } = submission;
        if self.availability.reason().is_some() {
            if let Err(reason) = self.reload("the scheduler was reloaded") {
                let _ = events.send(StreamEvent::Rejected(Rejection::Unavailable(reason)));
                return;
            }
        }
        let mut request = request;
        let id = self.unused_id(&request.request.id);
        request.request.id = id.to_string();
        let mut client = Client {
            events,
            text: TextStream::new(stop),
            span: None,
            journey: JourneyTally::default(),
        };
        // A fault while the request is added names it; after the recovery it is added again,
        // until faults have named it as often as any request may be.
        let mut attempts = 1;
        let (now, added) = loop {
            let now = self.parts.clock.now_ns();
            match self.engine.add(request, client, now) {
                Err(Refused {
                    error: error @ BackendError::Guest(_),
                    request: refused,
                    payload,
                }) if attempts < self.parts.faults.max_faults_per_request => {
                    attempts += 1;
                    self.fault(&error, FaultSite::adding(&error));
                    if self.availability.reason().is_some() {
                        let refused = Refused {
                            error,
                            request: refused,
                            payload,
                        };
                        break (now, Err(refused));
                    }
                    (request, client) = (*refused, payload);
                }
                added => break (now, added),
            }
        };
        match added {
            Ok(journey) => {
                if let Some(client) = self.engine.payload_mut(&id) {
                    if let (Some(spans), Some(parent)) = (self.parts.spans.as_ref(), &trace_parent)
                    {
                        client.span = Some(spans.open(&id, parent, now));
                    }
                    let _ = client.events.send(StreamEvent::Accepted {
                        at_ns: now,
                        id: id.clone(),
                    });
                }
                self.journey(&journey, &mut []);
            }
            Err(Refused {
                error: BackendError::Request(error),
                payload,
                ..
            }) => {
                let rejection = Rejection::Invalid(error.to_string());
                let _ = payload.events.send(StreamEvent::Rejected(rejection));
            }
            Err(Refused { error, payload, .. }) => {
                let rejection = Rejection::Unavailable(error.to_string());
                let _ = payload.events.send(StreamEvent::Rejected(rejection));
                if self.availability.reason().is_none() {
                    self.fault(&error, FaultSite::adding(&error));
                }
            }
        }
    }

    /// Swap the policy between steps; the journeys, streams and spans of live requests go on.
    fn swap(&mut self, backend: Box<dyn SchedulerBackend + Send>) -> Result<Swapped, String> {
        if let Some(reason) = self.availability.reason() {
            return Err(format!(
                "the scheduler cannot take a new policy now: {reason}"
            ));
        }
        let now = self.parts.clock.now_ns();
        let from = self.engine.policy().clone();
        self.engine
            .swap_backend(backend, now)
            .map_err(|error| format!("moving the running state into the new policy: {error}"))?;
        let to = self.engine.policy().clone();
        // A new policy starts with a clean record.
        self.fault_times.clear();
        self.on_fallback = false;
        let pause_ns = self.parts.clock.now_ns().saturating_sub(now);
        eprintln!(
            "waypoint: scheduling policy swapped from {from} to {to} ({:.2} ms between two steps, {} live requests)",
            pause_ns as f64 / 1e6,
            self.engine.num_unfinished()
        );
        self.policy_changed(&from, &to, now);
        Ok(Swapped {
            policy: to,
            pause_ns,
            live_requests: self.engine.num_unfinished(),
        })
    }

    /// The policy `to` replaced `from`: the policy gauge, and an event on the open step window
    /// and every live request's span.
    fn policy_changed(&mut self, from: &PolicyDescription, to: &PolicyDescription, now: u64) {
        self.parts
            .metrics
            .policy_running((&to.name, &to.version), Some((&from.name, &from.version)));
        if let Some(spans) = self.parts.spans.as_mut() {
            let requests = self
                .engine
                .payloads_mut()
                .filter_map(|client| client.span.as_mut());
            spans.policy_swapped(requests, &from.to_string(), &to.to_string(), now);
        }
    }

    /// `wanted`, or `wanted-1`, `wanted-2`, ... if a live request holds it: a client's
    /// `X-Request-Id` names its request even when another client sent the same one.
    fn unused_id(&self, wanted: &str) -> RequestId {
        let wanted: RequestId = wanted.into();
        if !self.engine.is_live(&wanted) {
            return wanted;
        }
        (1u64..)
            .map(|n| RequestId::from(format!("{wanted}-{n}").as_str()))
            .find(|id| !self.engine.is_live(id))
            .unwrap_or(wanted)
    }

    fn step(&mut self) {
        let clock = self.parts.clock;
        let StepResult {
            tokens,
            tokens_ns,
            mut finished,
            journey_events,
            step_events,
            kv_events,
            scheduled_tokens,
            ..
        } = match self.engine.step(clock.now_ns(), || clock.now_ns()) {
            Ok(result) => result,
            Err(error) => return self.backend_fault(&error),
        };
        if let Some(publisher) = &self.parts.kv_events {
            publisher.publish(clock.since_epoch(tokens_ns).as_secs_f64(), kv_events);
        }
        if scheduled_tokens > 0 {
            self.parts.metrics.iteration(scheduled_tokens);
        }
        self.journey(&journey_events, &mut finished);
        if let Some(spans) = self.parts.spans.as_mut() {
            spans.steps(&step_events, tokens_ns);
        }
        let mut stopped = Vec::new();
        for token in &tokens {
            let Some(client) = client_of(&mut self.engine, &mut finished, &token.id) else {
                continue;
            };
            let was_stopped = client.text.stopped;
            let text = client.text.push(&self.parts.vocabulary, token.token_id);
            if client.text.stopped && !was_stopped {
                stopped.push(token.id.clone());
            }
            let _ = client.events.send(StreamEvent::Delta {
                text,
                token_ids: vec![token.token_id],
                at_ns: tokens_ns,
            });
        }
        for (completion, client) in finished {
            self.complete(completion, client);
        }
        // Those that finished in this step are no longer live, and need no stopping.
        stopped.retain(|id| self.engine.is_live(id));
        if !stopped.is_empty() {
            match self
                .engine
                .finish(&stopped, FinishStatus::Stopped, clock.now_ns())
            {
                Ok(Finished {
                    mut completions,
                    journey_events,
                }) => {
                    self.journey(&journey_events, &mut completions);
                    for (completion, client) in completions {
                        self.complete(completion, client);
                    }
                }
                Err(error) => return self.backend_fault(&error),
            }
        }
        match self.engine.stats(clock.now_ns()) {
            Ok(stats) => self.parts.metrics.scheduler_stats(&stats),
            Err(error) => self.backend_fault(&error),
        }
    }

    /// Send a finished request's held-back text and its completion, and end its span.
    fn complete(&mut self, completion: Completion, mut client: Client) {
        let rest = client.text.finish(&self.parts.vocabulary);
        if !rest.is_empty() {
            let _ = client.events.send(StreamEvent::Delta {
                text: rest,
                token_ids: Vec::new(),
                at_ns: completion.finish_ns,
            });
        }
        let finish_ns = completion.finish_ns;
        let journey = std::mem::take(&mut client.journey);
        let _ = client
            .events
            .send(StreamEvent::Finished(Box::new(completion), journey));
        self.end_span(client, finish_ns);
    }

    fn end_span(&self, client: Client, now_ns: u64) {
        if let (Some(spans), Some(span)) = (self.parts.spans.as_ref(), client.span) {
            spans.finish(span, now_ns);
        }
    }

    /// Write journey events to the log, and to the spans of the requests they name: live ones,
    /// or those in `finishing`.
    fn journey(&mut self, events: &[JourneyEvent], finishing: &mut [(Completion, Client)]) {
        if events.is_empty() {
            return;
        }
        for event in events {
            let Some(client) = client_of(&mut self.engine, finishing, &event.request_id) else {
                continue;
            };
            client.journey.record(event);
            if let (Some(spans), Some(span)) = (self.parts.spans.as_ref(), client.span.as_mut()) {
                spans.journey(span, event);
            }
        }
        self.write_journey_log(events);
    }

    fn write_journey_log(&mut self, events: &[JourneyEvent]) {
        if let Some(log) = self.parts.journey_log.as_mut() {
            for event in events {
                if let Err(error) = writeln!(log, "{}", event.to_json_line()) {
                    eprintln!("waypoint: writing the journey log: {error}");
                    self.parts.journey_log = None;
                    break;
                }
            }
        }
    }

    /// Fail a request the scheduler no longer holds: its journey ends with FINISHED(error),
    /// which no scheduler will write for it, its span fails, and its client hears why.
    fn fail_client(&mut self, client: Client, message: String, now_ns: u64) {
        let finished = client.journey.failed_end(now_ns);
        if let Some(event) = &finished {
            self.write_journey_log(std::slice::from_ref(event));
        }
        if let (Some(spans), Some(span)) = (self.parts.spans.as_ref(), client.span) {
            spans.fail(span, &message, finished.as_ref(), now_ns);
        }
        let _ = client.events.send(StreamEvent::Failed { error: message });
    }

    /// A scheduler call failed: a fault, naming the request the violation is about, if any.
    fn backend_fault(&mut self, error: &BackendError) {
        let named: Vec<RequestId> = match error {
            BackendError::Guest(GuestFault::Contract(violation)) => {
                match violation.named_request() {
                    Some(NamedRequest::Id(id)) => vec![id.into()],
                    Some(NamedRequest::Handle(handle)) => {
                        self.engine.id_of(handle).cloned().into_iter().collect()
                    }
                    None => Vec::new(),
                }
            }
            _ => Vec::new(),
        };
        self.fault(error, FaultSite::Held(&named));
    }

    /// The scheduler faulted: resubmit what it held to a fresh instance (or, once the policy
    /// has faulted `policy_fault_limit` times in the window, to the fallback), failing only the
    /// requests that faults have named `max_faults_per_request` times. A scheduler that
    /// faults again while taking them back is one more fault; if the fallback does, every
    /// request fails and the server says why it cannot serve. A fault on the fallback that
    /// comes from the load (it names no request, and none was being added) sheds the newest
    /// half of the live requests instead of resubmitting them.
    fn fault(&mut self, error: &dyn std::fmt::Display, site: FaultSite) {
        let FaultPolicy {
            max_faults_per_request,
            policy_fault_limit,
            window_ns,
        } = self.parts.faults;
        let mut reason = error.to_string();
        let (mut named, mut from_load) = match site {
            FaultSite::Held(named) => (named.to_vec(), named.is_empty()),
            FaultSite::Adding => (Vec::new(), false),
        };
        // Each round is one more fault in the window, so the fallback takes over within
        // `policy_fault_limit` rounds; one that faults as well ends it.
        for round in 1u32.. {
            let now = self.parts.clock.now_ns();
            self.fault_times.push_back(now);
            while self
                .fault_times
                .front()
                .is_some_and(|&at| now.saturating_sub(at) > window_ns)
            {
                self.fault_times.pop_front();
            }
            let from = self.engine.policy().clone();
            let was_on_fallback = self.on_fallback;
            let replacement = match self.parts.fallback.as_mut() {
                Some(build)
                    if !self.on_fallback
                        && self.fault_times.len() >= policy_fault_limit as usize =>
                {
                    match build() {
                        Ok(backend) => Some(backend),
                        Err(error) => {
                            eprintln!("waypoint: starting the fallback scheduler failed: {error}");
                            None
                        }
                    }
                }
                _ => None,
            };
            if replacement.is_some() {
                self.on_fallback = true;
                self.fault_times.clear();
            }
            let live = self.engine.num_unfinished();
            // A fault that names no request, on the last scheduler there is to give way to,
            // comes from the load as a whole (its memory or its time limit): taking every
            // request back would fault again, forever. The newest half is shed instead, so the
            // rest fit and go on.
            let last_resort = was_on_fallback || self.parts.fallback.is_none();
            let to_shed = if from_load && last_resort {
                live.div_ceil(2)
            } else {
                0
            };
            let Recovered {
                failed,
                shed,
                journey_events,
                result,
            } = self
                .engine
                .recover(replacement, &named, to_shed, max_faults_per_request, now);
            self.cache_cleared(now);
            let resubmitted = live.saturating_sub(failed.len() + shed.len());
            eprintln!(
                "waypoint: scheduler fault: {reason}; {resubmitted} of {live} live requests \
                 resubmitted, {} failed, {} shed",
                failed.len(),
                shed.len()
            );
            self.parts.metrics.scheduler_fault(resubmitted, shed.len());
            if self.on_fallback && !was_on_fallback {
                let to = self.engine.policy().clone();
                eprintln!(
                    "waypoint: {from} faulted {policy_fault_limit} times within {} s; replaced by {to}",
                    window_ns / 1_000_000_000
                );
                self.parts.metrics.policy_fallback();
                self.policy_changed(&from, &to, now);
            }
            let shed_count = shed.len();
            let failed = failed.into_iter().map(|(id, client)| {
                let message = format!(
                    "request {id} failed: {max_faults_per_request} scheduler faults named it; the last: {reason}"
                );
                (message, client)
            });
            let shed = shed.into_iter().map(|(id, client)| {
                let message = format!(
                    "request {id} was shed: the scheduler faulted with {live} requests live ({reason}), \
                     and the newest {shed_count} were dropped so that the others could go on; retry it later"
                );
                (message, client)
            });
            for (message, client) in failed.chain(shed) {
                self.fail_client(client, message, now);
            }
            self.journey(&journey_events, &mut []);
            match result {
                Ok(()) => {
                    self.availability.set(None);
                    return;
                }
                Err(error) if was_on_fallback || round > policy_fault_limit => {
                    let message = format!("the scheduler failed: {error}");
                    self.availability.set(Some(format!(
                        "the scheduler is being reloaded after a fault: {error}"
                    )));
                    // A failed reload is retried on the next submission; its reason is what
                    // `/health` says.
                    let _ = self.reload(&message);
                    return;
                }
                Err(error) => {
                    reason = error.to_string();
                    named.clear();
                    from_load = true;
                }
            }
        }
    }

    /// A fresh scheduler took over with an empty prefix cache: KV-event consumers drop their
    /// index of this replica.
    fn cache_cleared(&self, now_ns: u64) {
        if let Some(publisher) = &self.parts.kv_events {
            publisher.cleared(self.parts.clock.since_epoch(now_ns).as_secs_f64());
        }
    }

    /// Reload the scheduler, failing every request it held with `message`, or say why it
    /// cannot serve.
    fn reload(&mut self, message: &str) -> Result<(), String> {
        let Reloaded { lost, result } = self.engine.reload();
        let now = self.parts.clock.now_ns();
        self.cache_cleared(now);
        for (_, client) in lost {
            self.fail_client(client, message.to_owned(), now);
        }
        match result {
            Ok(()) => {
                self.availability.set(None);
                Ok(())
            }
            Err(error) => {
                eprintln!("waypoint: reloading the scheduler failed: {error}");
                let reason = format!("the scheduler could not be reloaded after a fault: {error}");
                self.availability.set(Some(reason.clone()));
                Err(reason)
            }
        }
    }
}
