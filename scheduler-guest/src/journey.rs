//! Request journeys: the lifecycle events with their progress snapshots, the per-request journey
//! state behind them, and the canonical JSON Lines form.
//!
//! Semantics are those of the reference system's span era: QUEUED when `add_request` enqueues,
//! SCHEDULED(FIRST|RESUME) on admission from the waiting queue, PREEMPTED after a preemption,
//! FIRST_TOKEN when the output count leaves 0, FINISHED on every terminal path. Waypoint adds
//! RECOVERED: `add_request` of a request resubmitted after a fault, in place of a second QUEUED.
//! Events are returned by the call that produced them; nothing is buffered across calls.

use alloc::string::String;

use serde::{Deserialize, Serialize};

use crate::map::FxHashMap;
use crate::request::{FinishStatus, Request, RequestId};
use crate::table::ReqIdx;

/// The kind of a journey event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JourneyEventType {
    /// Placed in the waiting queue.
    Queued,
    /// Moved to RUNNING (first admission or resume).
    Scheduled,
    /// Output count went from 0 to 1.
    FirstToken,
    /// Moved from RUNNING to PREEMPTED.
    Preempted,
    /// Reached a terminal status.
    Finished,
    /// Resubmitted to a fresh scheduler after the one holding it faulted: it waits again, with
    /// the tokens it had, to be recomputed like a preempted request (an extension of the
    /// reference system's five events).
    Recovered,
}

impl JourneyEventType {
    /// The bare name (`QUEUED`, …); span events are called `journey.<name>`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "QUEUED",
            Self::Scheduled => "SCHEDULED",
            Self::FirstToken => "FIRST_TOKEN",
            Self::Preempted => "PREEMPTED",
            Self::Finished => "FINISHED",
            Self::Recovered => "RECOVERED",
        }
    }
}

/// Whether a SCHEDULED event is a first admission or a resume after preemption.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ScheduleKind {
    /// The request was WAITING.
    First,
    /// The request was PREEMPTED.
    Resume,
}

impl ScheduleKind {
    /// `FIRST` or `RESUME`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::First => "FIRST",
            Self::Resume => "RESUME",
        }
    }
}

/// The phase label of an event: WAITING on QUEUED, otherwise PREFILL until the first output
/// token and DECODE after it (regardless of status, as in the reference system).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Phase {
    /// Only on QUEUED.
    Waiting,
    /// No output token yet.
    Prefill,
    /// At least one output token.
    Decode,
}

impl Phase {
    /// The phase of any event but QUEUED, and of a request's step snapshot: PREFILL until the
    /// first output token, DECODE after it.
    pub fn of_progress(decode_done_tokens: u32) -> Self {
        if decode_done_tokens == 0 {
            Self::Prefill
        } else {
            Self::Decode
        }
    }

    /// `WAITING`, `PREFILL` or `DECODE`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Waiting => "WAITING",
            Self::Prefill => "PREFILL",
            Self::Decode => "DECODE",
        }
    }
}

/// One journey event with its progress snapshot. Serialized, it is one line of the canonical
/// journey log: exactly these field names, in this order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JourneyEvent {
    /// Engine request id.
    pub request_id: RequestId,
    /// Event kind.
    pub event_type: JourneyEventType,
    /// The `now_ns` passed to the call that produced the event.
    pub ts_monotonic_ns: u64,
    /// Scheduler step (see the scheduler docs for which step each event carries).
    pub scheduler_step: u64,
    /// Prompt tokens scheduled so far (high-water mark, capped at the prompt length).
    pub prefill_done_tokens: u32,
    /// Prompt length.
    pub prefill_total_tokens: u32,
    /// Output tokens so far.
    pub decode_done_tokens: u32,
    /// The request's `max_tokens`.
    pub decode_max_tokens: u32,
    /// Phase label.
    pub phase: Phase,
    /// Preemptions so far (after the increment, on PREEMPTED).
    pub num_preemptions_so_far: u32,
    /// Only on SCHEDULED.
    pub schedule_kind: Option<ScheduleKind>,
    /// Only on FINISHED.
    pub finish_status: Option<FinishStatus>,
    /// The request's client index, for routing per client.
    pub client_index: u32,
}

impl JourneyEvent {
    /// The event as one canonical JSON line (no trailing newline).
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).expect("journey events contain no maps or floats to fail on")
    }

    /// Parse one canonical JSON line.
    pub fn from_json_line(line: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(line)
    }

    /// The FINISHED(error) that ends a journey whose latest event is this one, for a request
    /// failed outside the scheduler (its faults, a load it could not hold): the scheduler that
    /// would have written it no longer holds the request.
    pub fn failed_after(&self, now_ns: u64) -> Self {
        Self {
            request_id: self.request_id.clone(),
            event_type: JourneyEventType::Finished,
            ts_monotonic_ns: now_ns.max(self.ts_monotonic_ns),
            phase: Phase::of_progress(self.decode_done_tokens),
            schedule_kind: None,
            finish_status: Some(FinishStatus::Error),
            ..*self
        }
    }
}

/// Journey state of one sampled request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Progress {
    prefill_hiwater: u32,
    first_token_emitted: bool,
}

/// Journey state of every sampled live request. Exists only while journey tracing is enabled.
#[derive(Clone, Debug, Default)]
pub(crate) struct JourneyRecorder {
    progress: FxHashMap<u32, Progress>,
}

impl JourneyRecorder {
    pub(crate) fn track(&mut self, idx: ReqIdx) {
        self.progress.insert(idx.slot(), Progress::default());
    }

    pub(crate) fn forget(&mut self, idx: ReqIdx) {
        self.progress.remove(&idx.slot());
    }

    pub(crate) fn num_tracked(&self) -> usize {
        self.progress.len()
    }

    pub(crate) fn prefill_hiwater(&self, idx: ReqIdx) -> Option<u32> {
        self.progress
            .get(&idx.slot())
            .map(|progress| progress.prefill_hiwater)
    }

    /// `(prefill high-water mark, FIRST_TOKEN emitted)` of a tracked request.
    pub(crate) fn progress_of(&self, idx: ReqIdx) -> Option<(u32, bool)> {
        self.progress
            .get(&idx.slot())
            .map(|progress| (progress.prefill_hiwater, progress.first_token_emitted))
    }

    pub(crate) fn restore(&mut self, idx: ReqIdx, prefill_hiwater: u32, first_token_emitted: bool) {
        self.progress.insert(
            idx.slot(),
            Progress {
                prefill_hiwater,
                first_token_emitted,
            },
        );
    }

    /// Raise the prefill high-water mark after `request`'s computed count advanced; only
    /// before its first output token.
    pub(crate) fn advance_prefill(&mut self, idx: ReqIdx, request: &Request) {
        if request.num_output_tokens() > 0 {
            return;
        }
        if let Some(progress) = self.progress.get_mut(&idx.slot()) {
            let done = request.num_computed_tokens.min(request.prompt_len);
            progress.prefill_hiwater = progress.prefill_hiwater.max(done);
        }
    }

    /// Whether FIRST_TOKEN is due now; marks it emitted.
    pub(crate) fn take_first_token(&mut self, idx: ReqIdx) -> bool {
        match self.progress.get_mut(&idx.slot()) {
            Some(progress) if !progress.first_token_emitted => {
                progress.first_token_emitted = true;
                true
            }
            _ => false,
        }
    }

    pub(crate) fn event(
        &self,
        idx: ReqIdx,
        request: &Request,
        event_type: JourneyEventType,
        now_ns: u64,
        step: u64,
    ) -> JourneyEvent {
        let hiwater = self
            .progress
            .get(&idx.slot())
            .map_or(0, |progress| progress.prefill_hiwater);
        let phase = match event_type {
            JourneyEventType::Queued => Phase::Waiting,
            _ => Phase::of_progress(request.num_output_tokens()),
        };
        JourneyEvent {
            request_id: request.id.clone(),
            event_type,
            ts_monotonic_ns: now_ns,
            scheduler_step: step,
            prefill_done_tokens: hiwater.min(request.prompt_len),
            prefill_total_tokens: request.prompt_len,
            decode_done_tokens: request.num_output_tokens(),
            decode_max_tokens: request.max_tokens,
            phase,
            num_preemptions_so_far: request.num_preemptions,
            schedule_kind: None,
            finish_status: None,
            client_index: request.client_index,
        }
    }
}

/// Why a journey broke the event grammar.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("journey of request {request_id:?}: {reason} (at {event_type:?}, step {scheduler_step})")]
pub struct JourneyViolation {
    /// The request whose journey broke.
    pub request_id: String,
    /// The offending event's type.
    pub event_type: JourneyEventType,
    /// The offending event's step.
    pub scheduler_step: u64,
    /// What rule it broke.
    pub reason: &'static str,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Queued,
    Running,
    Preempted,
}

#[derive(Clone, Copy, Debug)]
struct Seen {
    stage: Stage,
    first_token: bool,
    last: (u64, u64),
    preemptions: u32,
}

/// Checks journeys event by event against the grammar
/// `QUEUED SCHEDULED(FIRST) [FIRST_TOKEN] (PREEMPTED [FINISHED] | SCHEDULED(RESUME) [FIRST_TOKEN])* FINISHED`
/// or `QUEUED FINISHED(aborted|error|ignored)`, where RECOVERED may come after any event but
/// FINISHED: the request waits again in a fresh scheduler, and is next SCHEDULED(RESUME) if it
/// had been scheduled, SCHEDULED(FIRST) if not. The fresh scheduler counts its own steps, so the
/// step may go down at RECOVERED (timestamps may not). Plus: FIRST_TOKEN at most once and present
/// whenever the request produced a token, steps and timestamps never decrease, progress stays
/// within its totals, the preemption count rises by one on each PREEMPTED and nowhere else, and
/// the phase label follows the phase rule. A request preempted and then aborted or failed
/// (`PREEMPTED FINISHED`) is allowed: a client can leave while its request waits to resume.
///
/// State is kept only for requests between QUEUED and FINISHED, so memory stays flat over a
/// long log.
#[derive(Clone, Debug, Default)]
pub struct JourneyValidator {
    open: FxHashMap<RequestId, Seen>,
}

impl JourneyValidator {
    /// A validator with no journey open.
    pub fn new() -> Self {
        Self::default()
    }

    /// Requests whose journey has begun and not finished.
    pub fn num_open(&self) -> usize {
        self.open.len()
    }

    /// Check the next event of some request's journey.
    pub fn observe(&mut self, event: &JourneyEvent) -> Result<(), JourneyViolation> {
        let fail = |reason| JourneyViolation {
            request_id: String::from(&*event.request_id),
            event_type: event.event_type,
            scheduler_step: event.scheduler_step,
            reason,
        };
        if event.prefill_done_tokens > event.prefill_total_tokens {
            return Err(fail("prefill_done_tokens exceeds prefill_total_tokens"));
        }
        if event.decode_done_tokens > event.decode_max_tokens {
            return Err(fail("decode_done_tokens exceeds decode_max_tokens"));
        }
        let expected_phase = match event.event_type {
            JourneyEventType::Queued => Phase::Waiting,
            _ => Phase::of_progress(event.decode_done_tokens),
        };
        if event.phase != expected_phase {
            return Err(fail("phase label breaks the phase rule"));
        }
        if event.schedule_kind.is_some() != (event.event_type == JourneyEventType::Scheduled) {
            return Err(fail("schedule_kind is set exactly on SCHEDULED"));
        }
        if event.finish_status.is_some() != (event.event_type == JourneyEventType::Finished) {
            return Err(fail("finish_status is set exactly on FINISHED"));
        }
        let now = (event.scheduler_step, event.ts_monotonic_ns);
        if event.event_type == JourneyEventType::Queued {
            if self.open.contains_key(&event.request_id) {
                return Err(fail("QUEUED twice"));
            }
            if event.num_preemptions_so_far != 0 || event.decode_done_tokens != 0 {
                return Err(fail("QUEUED with progress"));
            }
            self.open.insert(
                event.request_id.clone(),
                Seen {
                    stage: Stage::Queued,
                    first_token: false,
                    last: now,
                    preemptions: 0,
                },
            );
            return Ok(());
        }
        let Some(seen) = self.open.get_mut(&event.request_id) else {
            return Err(fail("event before QUEUED or after FINISHED"));
        };
        let recovered = event.event_type == JourneyEventType::Recovered;
        if (now.0 < seen.last.0 && !recovered) || now.1 < seen.last.1 {
            return Err(fail("step or timestamp decreased"));
        }
        seen.last = now;
        let expected_preemptions = match event.event_type {
            JourneyEventType::Preempted => seen.preemptions + 1,
            _ => seen.preemptions,
        };
        if event.num_preemptions_so_far != expected_preemptions {
            return Err(fail("preemption count does not follow PREEMPTED events"));
        }
        seen.preemptions = expected_preemptions;
        let natural = matches!(
            event.finish_status,
            Some(FinishStatus::Stopped | FinishStatus::LengthCapped)
        );
        seen.stage = match (seen.stage, event.event_type, event.schedule_kind) {
            (Stage::Queued, JourneyEventType::Scheduled, Some(ScheduleKind::First)) => {
                Stage::Running
            }
            (Stage::Preempted, JourneyEventType::Scheduled, Some(ScheduleKind::Resume)) => {
                Stage::Running
            }
            (Stage::Running | Stage::Preempted, JourneyEventType::FirstToken, _) => {
                if seen.first_token {
                    return Err(fail("FIRST_TOKEN twice"));
                }
                seen.first_token = true;
                seen.stage
            }
            (Stage::Running, JourneyEventType::Preempted, _) => Stage::Preempted,
            (Stage::Queued, JourneyEventType::Recovered, _) => Stage::Queued,
            (Stage::Running | Stage::Preempted, JourneyEventType::Recovered, _) => Stage::Preempted,
            (Stage::Queued, JourneyEventType::Finished, _) if !natural => Stage::Queued,
            (Stage::Running | Stage::Preempted, JourneyEventType::Finished, _) => seen.stage,
            _ => return Err(fail("event out of order")),
        };
        if event.event_type == JourneyEventType::Finished {
            if event.decode_done_tokens > 0 && !seen.first_token {
                return Err(fail("FINISHED with output tokens but no FIRST_TOKEN"));
            }
            self.open.remove(&event.request_id);
        }
        Ok(())
    }
}
