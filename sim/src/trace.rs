//! Chrome/Perfetto trace output, streamed: one track per request with waiting, prefill, decode
//! and preempted slices and an instant event per journey event, and a scheduler track with the
//! batch composition as counters. Opens in ui.perfetto.dev or chrome://tracing.

use std::io::{self, Write};

use serde_json::{json, Value};
use waypoint_scheduler::{JourneyEvent, JourneyEventType};

use crate::StepSample;

/// Process id of the request tracks.
const REQUESTS_PID: u32 = 1;
/// Process id of the scheduler track.
const SCHEDULER_PID: u32 = 2;

/// Writes trace events as a JSON array, one event per line.
pub struct ChromeTrace<W: Write> {
    out: W,
    first: bool,
}

fn micros(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

impl<W: Write> ChromeTrace<W> {
    /// Start a trace.
    pub fn new(mut out: W) -> io::Result<Self> {
        out.write_all(b"[\n")?;
        let mut trace = Self { out, first: true };
        trace.event(json!({"name": "process_name", "ph": "M", "pid": REQUESTS_PID, "args": {"name": "requests"}}))?;
        trace.event(json!({"name": "process_name", "ph": "M", "pid": SCHEDULER_PID, "args": {"name": "scheduler"}}))?;
        Ok(trace)
    }

    fn event(&mut self, event: Value) -> io::Result<()> {
        if !self.first {
            self.out.write_all(b",\n")?;
        }
        self.first = false;
        serde_json::to_writer(&mut self.out, &event)?;
        Ok(())
    }

    fn slice(&mut self, phase: &str, name: &str, tid: u64, ts: f64) -> io::Result<()> {
        self.event(json!({"name": name, "ph": phase, "pid": REQUESTS_PID, "tid": tid, "ts": ts}))
    }

    /// Record one journey event of the request with track `tid`.
    pub fn journey(&mut self, tid: u64, event: &JourneyEvent) -> io::Result<()> {
        let ts = micros(event.ts_monotonic_ns);
        let phase_after = if event.decode_done_tokens == 0 {
            "prefill"
        } else {
            "decode"
        };
        match event.event_type {
            JourneyEventType::Queued => {
                self.event(
                    json!({"name": "thread_name", "ph": "M", "pid": REQUESTS_PID, "tid": tid,
                    "args": {"name": &*event.request_id}}),
                )?;
                self.slice("B", "waiting", tid, ts)?;
            }
            JourneyEventType::Scheduled => {
                self.slice("E", "", tid, ts)?;
                self.slice("B", phase_after, tid, ts)?;
            }
            JourneyEventType::FirstToken => {
                self.slice("E", "", tid, ts)?;
                self.slice("B", "decode", tid, ts)?;
            }
            JourneyEventType::Preempted => {
                self.slice("E", "", tid, ts)?;
                self.slice("B", "preempted", tid, ts)?;
            }
            JourneyEventType::Recovered => {
                self.slice("E", "", tid, ts)?;
                self.slice("B", "recovered", tid, ts)?;
            }
            JourneyEventType::Finished => self.slice("E", "", tid, ts)?,
        }
        let args = serde_json::to_value(event)?;
        self.event(
            json!({"name": event.event_type.as_str(), "ph": "i", "s": "t", "pid": REQUESTS_PID,
            "tid": tid, "ts": ts, "args": args}),
        )
    }

    /// Record one step's batch composition as counters.
    pub fn step(&mut self, sample: &StepSample) -> io::Result<()> {
        let ts = micros(sample.now_ns);
        for (name, value) in [
            ("kv_usage", json!(sample.kv_cache_usage)),
            ("running", json!(sample.num_running)),
            ("waiting", json!(sample.num_waiting)),
            ("scheduled_tokens", json!(sample.scheduled_tokens)),
        ] {
            self.event(json!({"name": name, "ph": "C", "pid": SCHEDULER_PID, "ts": ts, "args": {name: value}}))?;
        }
        Ok(())
    }

    /// Close the array and flush.
    pub fn finish(mut self) -> io::Result<()> {
        self.out.write_all(b"\n]\n")?;
        self.out.flush()
    }
}
